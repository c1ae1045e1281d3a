# The two Quick start commands: `make demo` and `make test`. Both set up .venv on first use.
#
# torch: an existing torch in $(PYTHON) (e.g. a CUDA build on a GPU machine) is reused through
# --system-site-packages and pinned, never replaced; otherwise the CPU wheel torch==2.13.0 is installed
# first, because an unpinned torch pulls gigabytes of CUDA libraries.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CPU_TORCH := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test clean-venv

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	@if $(PYTHON) -c "import torch" >/dev/null 2>&1; then \
		echo "setup: reusing the torch already installed in $(PYTHON)"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q $(CPU_TORCH); \
	fi
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e ".[test]"
	# MoGe without its declared dependencies (they drag in gradio and a CPU-broken torchvision); never `utils3d`.
	$(PY) -m pip install -q --no-deps dlr-moge==2.0.0 dlr-utils3d==1.3
	touch $@

demo: setup
	$(PY) -m gen3c_dist.run --config-name demo

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS) tests

clean-venv:
	rm -rf $(VENV)
