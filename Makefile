# Two commands on a fresh machine: `make demo` and `make test`; each installs what it needs.
PY ?= python3
PIP = $(PY) -m pip install -q --disable-pip-version-check
DATA ?= ../shared/data
OUT ?= out/demo

.PHONY: install-runtime install test demo bench bench-accuracy pareto

install-runtime:
	$(PIP) -e .

# npseg, then the trainer (its own package, trainer/pyproject.toml: torch==2.13.0), and the test tools
install:
	$(PIP) -e ".[dev]" -e ./trainer

test: install
	$(PY) -m pytest -q

# DATA: the shared data folder, a dataset folder with images/, or any folder of frames.
# One OpenBLAS thread: npseg runs on one core, and spare BLAS threads only contend.
demo: install-runtime
	$(PY) -m npseg warmup  # compiles the bundled models' kernels once, so every later run starts in about a second
	@for dir in "$(DATA)/kvasir-seg/images" "$(DATA)/images" "$(DATA)"; do \
	  if [ -d "$$dir" ]; then \
	    OPENBLAS_NUM_THREADS=1 $(PY) -m npseg segment "$$dir" --limit 12 --out "$(OUT)" || exit $$?; \
	    echo "look at the overlays in $(OUT)/overlays/"; exit 0; \
	  fi; \
	done; \
	echo "make demo: no images at DATA=$(DATA); pass a folder of colonoscopy frames: make demo DATA=/path/to/frames" >&2; \
	exit 2

bench: install
	OPENBLAS_NUM_THREADS=1 $(PY) benchmarks/speed.py

bench-accuracy: install
	taskset -c 0 $(PY) benchmarks/accuracy.py --data $(DATA)

# every shipped model: test Dice against one-core ms (benchmarks/PARETO.md); PARETO_ARGS="--quick", "--weights FILE ..."
PARETO_ARGS ?=
pareto: install
	OPENBLAS_NUM_THREADS=1 $(PY) benchmarks/pareto.py $(PARETO_ARGS)
