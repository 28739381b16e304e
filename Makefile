# The two commands of the README: `make run` (the main job) and `make test` (the suite).
# Both create the virtualenv on first use and are safe to repeat.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Every extra, so the two commands do everything: the UI's servers, PostgreSQL, the joblib
# launcher, the benchmarks' peers, and the suite's own tools.
EXTRAS := ui,postgres,joblib,bench,test
# The exact versions the suite passed with, pip, setuptools, wheel and uv included; `make pins`
# refreshes them. CONSTRAINTS= (empty) installs the newest releases instead.
CONSTRAINTS ?= constraints.txt
CONSTRAIN   := $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
# uv installs the pinned set about 5 times faster than pip (fresh clones: 27 s and 47 s, against 136 s and 221 s).
# pip puts uv (pinned) into the venv first, so nothing is installed by hand. uv reaches PyPI
# directly, reading none of pip's configuration (set UV_DEFAULT_INDEX for a mirror); where it
# fails, pip installs the same set. INSTALLER=pip skips uv (it is still installed: it is pinned).
INSTALLER ?= uv
PIP_INSTALL := $(BIN)/pip install --quiet $(CONSTRAIN)
# --compile-bytecode: uv leaves the .pyc files out, and where PYTHONDONTWRITEBYTECODE is set (as on
# this project's machines) every process then compiles TensorFlow, Keras, MLflow and Optuna from
# source, about twice as long to start (benchmarks/startup.py; figures in benchmarks/README.md),
# paid by each command, trial worker and test subprocess (pip compiles by default). ~30 s once.
UV_INSTALL  := $(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python $(CONSTRAIN)
PROJECT     := -e '.[$(EXTRAS)]'

.PHONY: setup run test lint docs pins check-pins readme-answer clean

$(BIN)/regsweep: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip setuptools wheel uv
ifeq ($(INSTALLER),uv)
	$(UV_INSTALL) $(PROJECT) || { echo "make setup: uv failed, installing with pip"; $(PIP_INSTALL) $(PROJECT); }
else
	$(PIP_INSTALL) $(PROJECT)
endif
	touch $@

setup: $(BIN)/regsweep

run: setup
	$(BIN)/regsweep sweep

# Two processes, each taking whole test files (module fixtures stay shared): most tests wait on
# process start-up and I/O, so two cores finish the suite in about half the time. The files go
# out in conftest's order, longest first (xdist would sort them by their number of tests).
test: setup
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder

# What .ci/run checks before the tests: ruff's lint and format (configured in pyproject.toml),
# and the docs site, where a broken link or a page missing from the nav fails the build.
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

docs: setup
	$(BIN)/mkdocs build --strict --site-dir build/site

# The README's answer block, regenerated from `make run` on a fresh clone of HEAD (committed
# work only), naming the commit, the date and the wall time: review the diff and commit it.
readme-answer: setup
	$(BIN)/python benchmarks/readme_answer.py

# The venv holds exactly the pinned set, nothing more or less: pip freeze hides pip, setuptools
# and wheel on Python < 3.12 unless given --all, and they are pinned too. A venv that an older
# constraints.txt set up may hold packages no longer pinned: make clean setup starts it afresh.
check-pins: setup
	$(if $(CONSTRAINTS),$(BIN)/pip freeze --all --exclude-editable | diff - $(CONSTRAINTS),@echo "check-pins: no constraints file")

# Refresh constraints.txt: the newest releases in a scratch venv, through everything CI runs
# (bash .ci/run: lint, docs and the whole suite with its services); the file is rewritten only
# when all of it passes. Review the diff and commit it with the changes it needed.
pins:
	@set -e; scratch=$$(mktemp -d -t regsweep-pins.XXXXXX); trap 'rm -rf "$$scratch"' EXIT; \
	VENV="$$scratch/venv" CONSTRAINTS= bash .ci/run; \
	"$$scratch/venv/bin/pip" freeze --all --exclude-editable > "$$scratch/constraints.txt"; \
	mv "$$scratch/constraints.txt" constraints.txt; \
	echo "make pins: constraints.txt now holds the newest releases the suite passed with"

clean:
	rm -rf $(VENV)
