# The two commands of the README. Both create .venv if it is missing and install the project.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SCENARIO ?= scenarios/default.yaml

.PHONY: run test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

run: $(VENV)/.installed
	$(BIN)/simserve run $(SCENARIO) --plots
	$(BIN)/simserve antipatterns

test: $(VENV)/.installed-dev
	$(BIN)/ruff check simserve tests
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check simserve tests

bench: $(VENV)/.installed
	$(BIN)/simserve bench

clean:
	rm -rf $(VENV) runs
