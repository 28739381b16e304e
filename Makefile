# The two commands of the README: `make run` (the main job) and `make test` (the suite).
# Both create the virtualenv on first use and are safe to repeat.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: setup run test clean

$(BIN)/regsweep: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/regsweep

run: setup
	$(BIN)/regsweep sweep

# Two processes, each taking whole test files (module fixtures stay shared): most tests wait on
# process start-up and I/O, so two cores finish the suite in about half the time.
test: setup
	$(BIN)/pytest -n 2 --dist loadfile

clean:
	rm -rf $(VENV)
