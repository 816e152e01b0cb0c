# Two entry points: `make demo` (the main job on the embedded default) and `make test`.
# Each creates .venv and installs what it needs; torch prefers the local CPU wheel (torch==2.13.0).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q "torch>=2.3"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cbs-opt study --out report

# One BLAS/OpenMP thread per test worker: two workers on two cores, no oversubscription (a threaded
# factorisation on a busy 2-core machine can be 1000x slower, and the time-limit tests measure wall time).
test: $(STAMP)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -q -n 2

clean:
	rm -rf $(VENV) report .pytest_cache
