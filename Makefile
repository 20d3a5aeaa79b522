# Developer interface. `make demo` and `make test` work on a fresh machine with Python 3.11 + pip.
#
# TORCH selects how torch is installed before the project (the project itself only needs torch>=2.4):
#   default             torch==2.13.0  (a CPU machine without CUDA gets whatever pip resolves; on
#                                        Linux/PyPI that is the CUDA build, on our CI the local CPU wheel)
#   CPU-only anywhere   make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
#   a specific CUDA     make setup TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
export NUMBA_CACHE_DIR ?= $(CURDIR)/.numba_cache

.PHONY: setup test demo
.DEFAULT_GOAL := help

help:
	@echo "make demo   - whole pipeline on a generated ETH3D-format scene, tiny model, CPU"
	@echo "make test   - the test suite"
	@echo "make setup  - create $(VENV) and install the project (TORCH=... to choose the torch build)"

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

setup: $(VENV)/.installed

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m dataengine synth build/demo/eth3d --scene demo_facade --images 12 --scale 0.1 --seed 0
