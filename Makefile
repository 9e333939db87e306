# Two commands for a fresh machine: `make run` (the app, on the built-in demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit bench package clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "MoE Studio needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

## Install into .venv and start the app (the demo model when no MODEL is given).
run: $(STAMP)
	$(BIN)/moe-studio $(MODEL)

## Install into .venv and run everything CI runs: lint, types, layering, tests.
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# mypy cannot see through the editable install's import hook: check a tree of links laid out as
# the installed package is (build/typecheck/moe_studio/core → core/, …).
typecheck: $(STAMP)
	mkdir -p build/typecheck/moe_studio
	for part in core gui resources; do ln -sfn ../../../$$part build/typecheck/moe_studio/$$part; done
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/pytest

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

package: $(STAMP)
	bash packaging/build.sh

clean:
	rm -rf $(VENV) build dist *.egg-info
