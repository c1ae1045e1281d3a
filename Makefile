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

.PHONY: setup demo test clean-venv gpu-bundle

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

# ---- the GPU check's bundle (benchmarks/README.md, "The GPU check") --------------------------------------------
# The pure-Python packages the runner needs that the GPU machine's image lacks, as wheels for its Python 3.12 on
# x86-64, into the ignored folder that a device call carries. Versions are those the CPU tests run with, except
# imageio-ffmpeg: 0.8.1's wheel (68 MB) alone is over the 64 MiB a call carries; 0.6.0's is 29.5 MB.
# antlr4-python3-runtime 4.9.3 (what omegaconf 2.3 pins) is published as an sdist only: pip builds its wheel here.
GPU_BUNDLE_DIR ?= .whl
GPU_WHEELS := hydra-core==1.3.8 omegaconf==2.3.1 imageio-ffmpeg==0.6.0
GPU_SDISTS := antlr4-python3-runtime==4.9.3
GPU_PLATFORM := --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	--platform manylinux1_x86_64

gpu-bundle:
	rm -rf $(GPU_BUNDLE_DIR) && mkdir -p $(GPU_BUNDLE_DIR)
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: $(GPU_PLATFORM) -d $(GPU_BUNDLE_DIR) $(GPU_WHEELS)
	$(PYTHON) -m pip wheel -q --no-deps -w $(GPU_BUNDLE_DIR) $(GPU_SDISTS)
	ls -l $(GPU_BUNDLE_DIR)
	$(PYTHON) benchmarks/travel_size.py $(GPU_BUNDLE_DIR)
