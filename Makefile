# Every target sets itself up on a fresh machine: venv, pinned deps, the C++ extension.
PY_BOOT ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
PINS    := requirements/pins.txt
CPU_SRC := $(wildcard csrc/cpu/*.cpp csrc/cpu/*.h)
FMNIST  := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: all venv build data demo test bench bench-e2e bench-pytest gpu-check info clean

all: test

$(VENV)/.deps: $(PINS)
	test -x $(PY) || $(PY_BOOT) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(PINS)
	touch $@

venv: $(VENV)/.deps

# --no-build-isolation: build against the torch in the venv (an isolated build would fetch a CUDA torch).
$(VENV)/.ext: $(VENV)/.deps $(CPU_SRC) setup.py pyproject.toml
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.ext

# Fashion-MNIST from Debian's package (root only; otherwise install it yourself or pass a data dir).
data:
	@if [ ! -f $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "Fashion-MNIST missing: sudo apt-get install dataset-fashion-mnist"; fi; fi

demo: build data
	$(PY) -m ddkernels.distill.demo

test: build data
	$(PY) -m pytest tests -q

bench: build
	$(PY) -m benchmarks.run

# End-to-end trainer iterations, reference vs fused, one torch thread (benchmarks/bench_e2e.py).
bench-e2e: build data
	OMP_NUM_THREADS=1 $(PY) -m benchmarks.run --ops --e2e --threads 1

# The same per-op cases as a pytest-benchmark suite (benchmarks/test_ops.py), one benchmark per
# (op, case, provider), forward + backward; each run is saved under .benchmarks/. Compare with the
# previous run: make bench-pytest BENCH_ARGS=--benchmark-compare (add e.g. -k "scale_shift and cpu",
# --bench-cases full, --benchmark-json=out.json). Same allocator settings as `make bench`.
BENCH_ARGS ?=
bench-pytest: build
	env $$($(PY) -c 'from benchmarks.run import ALLOCATOR_ENV as e; print(*(f"{k}={v}" for k, v in e.items()))') \
	  $(PY) -m pytest benchmarks --benchmark-only --benchmark-autosave $(BENCH_ARGS)

# On a machine with one CUDA GPU: op tests on CUDA tensors, op benchmark, one iteration of every trainer
# (benchmarks/gpu_check.py, <= 8 min); elsewhere it says there is no GPU and exits 0.
gpu-check: build data
	$(PY) -m benchmarks.gpu_check

info: build
	$(PY) -m ddkernels.info

clean:
	rm -rf build ddkernels/*.so *.egg-info $(VENV)/.ext
