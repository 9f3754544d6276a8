# usvl — common tasks. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
CONFIG ?= configs/thyroid_cls.yaml
JOBS ?= 2

.DEFAULT_GOAL := help
.PHONY: help install demo test test-full test-reliability lint format clean-runs reproduce reproduce-quick llm-model

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}'

$(BIN)/usvl: pyproject.toml scripts/install_venv.py
	$(PYTHON) scripts/install_venv.py $(VENV) --extras dev
	@touch $(BIN)/usvl

install: $(BIN)/usvl ## Create .venv and install usvl with its dev tools (uv pip install -e ".[dev]" with pip's settings; USVL_INSTALLER=pip for pip)

demo: $(BIN)/usvl ## Train Mona adapters on embedded thyroid ultrasound, then test the best checkpoint
	$(BIN)/usvl fit --config $(CONFIG)

reproduce: $(BIN)/usvl ## Run the embedded experiment grid (resumable) -> results/embedded/ tables and plots
	$(BIN)/usvl reproduce --grid configs/reproduce/embedded.yaml --jobs $(JOBS)

reproduce-quick: $(BIN)/usvl ## Every dataset x method once, small data, few epochs (<= 1 h on 2 cores) -> results/quick/
	$(BIN)/usvl reproduce --grid configs/reproduce/quick.yaml --jobs $(JOBS)

llm-model: $(BIN)/usvl ## Fetch the offline LLM of the shipped refinements (Qwen2.5-Coder-0.5B-Instruct GGUF, 491 MB)
	$(BIN)/pip install --quiet -e ".[llm]"
	$(BIN)/python scripts/assemble_offline_llm.py models/qwen2.5-coder-0.5b-instruct

test: $(BIN)/usvl ## Run the fast test suite (offline, CPU)
	$(BIN)/python -m pytest -q

test-reliability: $(BIN)/usvl ## Kill-and-resume, determinism and 2-process DDP on real `usvl` runs (slow tests, ~4-5 min; CI)
	$(BIN)/python -m pytest -q -m slow tests/test_reliability.py

test-full: $(BIN)/usvl ## Run every test, slow ones included
	$(BIN)/python -m pytest -q -m "not gpu"

lint: $(BIN)/usvl ## Check style with ruff and the import-layer contracts (.importlinter) with lint-imports
	$(BIN)/ruff check usvl tests benchmarks notebooks scripts
	$(BIN)/lint-imports

format: $(BIN)/usvl ## Format the code with ruff
	$(BIN)/ruff format usvl tests benchmarks notebooks
	$(BIN)/ruff check --fix usvl tests benchmarks notebooks

clean-runs: ## Delete training runs (runs/); asks first
	@read -p "Delete runs/? [y/N] " answer && [ "$$answer" = y ] && rm -rf runs || echo kept
