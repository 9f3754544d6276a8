# usvl — common tasks. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
CONFIG ?= configs/thyroid_cls.yaml

.DEFAULT_GOAL := help
.PHONY: help install demo test test-full lint format clean-runs

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(BIN)/usvl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	@touch $(BIN)/usvl

install: $(BIN)/usvl ## Create .venv and install usvl with its dev tools (pip install -e ".[dev]")

demo: $(BIN)/usvl ## Train Mona adapters on embedded thyroid ultrasound, then test the best checkpoint
	$(BIN)/usvl fit --config $(CONFIG)

test: $(BIN)/usvl ## Run the fast test suite (offline, CPU)
	$(BIN)/python -m pytest -q

test-full: $(BIN)/usvl ## Run every test, slow ones included
	$(BIN)/python -m pytest -q -m "not gpu"

lint: $(BIN)/usvl ## Check style with ruff and the import-layer contracts (.importlinter) with lint-imports
	$(BIN)/ruff check usvl tests benchmarks
	$(BIN)/lint-imports

format: $(BIN)/usvl ## Format the code with ruff
	$(BIN)/ruff format usvl tests benchmarks
	$(BIN)/ruff check --fix usvl tests benchmarks

clean-runs: ## Delete training runs (runs/); asks first
	@read -p "Delete runs/? [y/N] " answer && [ "$$answer" = y ] && rm -rf runs || echo kept
