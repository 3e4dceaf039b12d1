# One command each, from nothing: `make demo` (the synthetic end-to-end demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test rehearsal demo lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[interop,eval,dicom,dev]'
	touch $(STAMP)

setup: $(STAMP)

# One pytest worker per core (`make test JOBS=N` to choose), one test module each at a time
# (module fixtures are built once). Modules go out in the order tests/conftest.py gives them
# (the slowest first).
JOBS ?= $(shell nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(JOBS) --dist loadscope --no-loadscope-reorder tests

# The paper configuration through the commands users run, at batch 2 for 4 steps on synthetic
# studies (launch/rehearsal.py): kill + resume bitwise, beam evaluation, predict, export parity.
rehearsal: $(STAMP)
	$(PY) launch/rehearsal.py --out runs/rehearsal

# Train and validate, score the test split, then print how it went and what to run next.
demo: $(STAMP)
	$(PY) -m real_jax.main --config=configs/real.py:synthetic --workdir=runs/synthetic
	$(PY) -m real_jax.main --config=configs/real.py:synthetic --workdir=runs/synthetic \
		--mode=evaluate --split=test
	$(PY) -m real_jax.summary --workdir=runs/synthetic --config=configs/real.py:synthetic

# ruff, and the import contracts of pyproject.toml (also run by tests/test_layers.py)
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

clean:
	rm -rf $(VENV) runs
