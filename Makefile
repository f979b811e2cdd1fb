# Two commands on a fresh machine: `make demo` and `make test`; each installs what it needs.
PY ?= python3
PIP = $(PY) -m pip install -q --disable-pip-version-check
DATA ?= ../shared/data
OUT ?= out/demo

.PHONY: install-runtime install test demo bench

install-runtime:
	$(PIP) -e .

install:
	$(PIP) -e ".[train,dev]"

test: install
	$(PY) -m pytest -q

demo: install-runtime
	$(PY) -m npseg.cli segment $(DATA)/kvasir-seg/images --limit 12 --out $(OUT)

bench: install
	OPENBLAS_NUM_THREADS=1 $(PY) benchmarks/speed.py
