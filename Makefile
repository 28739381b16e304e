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

test: setup
	$(BIN)/pytest

clean:
	rm -rf $(VENV)
