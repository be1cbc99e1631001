# The README's commands. Everything the project needs is installed from here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,hub]'
	touch $(STAMP)

## make demo: a cloud hub and two simulated edges, each with its embedded NATS (Ctrl-C stops them)
demo: $(STAMP)
	$(BIN)/python examples/demo.py

## make test: the whole suite (unit, integration with a real nats-server, fault tests)
test: $(STAMP)
	$(BIN)/pytest -q

## make lint: ruff (lint + format check) and mypy on the packages
lint: $(STAMP)
	$(BIN)/ruff check edge_agent cloud_hub tests bench image ansible
	$(BIN)/ruff format --check edge_agent cloud_hub tests bench image ansible
	$(BIN)/mypy

## make bench: every benchmark; each prints one JSON line last (bench/common.py is their helpers)
bench: $(STAMP)
	@for script in $(filter-out bench/common.py,$(wildcard bench/*.py)); do echo "== $$script"; $(BIN)/python $$script || exit 1; done

clean:
	rm -rf $(VENV) .demo-state .pytest_cache .mypy_cache .ruff_cache *.egg-info
