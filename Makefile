# lmforge: the two quick-start targets install what they need, then run.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
# On a machine without a CUDA GPU, install the small CPU build of torch first so that the open
# `torch>=2.6` requirement is already met and pip does not pull several GB of CUDA wheels.
TORCH_CPU ?= torch==2.13.0

.PHONY: install train test test-all lint format

install:
	@if ! $(PYTHON) -c "import torch" 2>/dev/null; then \
		if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install torch; \
		else $(PIP) install "$(TORCH_CPU)"; fi; \
	fi
	$(PIP) install -q -e ".[dev]"

train: install
	HF_HUB_OFFLINE=1 $(PYTHON) -m lmforge $(ARGS)

lint:
	ruff format --check src tests scripts benchmarks
	ruff check src tests scripts benchmarks

format:
	ruff format src tests scripts benchmarks
	ruff check --fix src tests scripts benchmarks

test: install lint
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q

test-all: install lint
	HF_HUB_OFFLINE=1 $(PYTHON) -m pytest -q -m "slow or not slow"
