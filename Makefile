# The two commands of the README: `make demo` (site in a box) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
DURATION ?= 30

.PHONY: setup test-setup demo test lint bench clean

setup:
	@./scripts/setup.sh

demo: setup
	$(PY) -m provisioning demo --duration $(DURATION)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --explicit-package-bases tests/bench/device.py

test-setup:
	@./scripts/setup.sh --test

test: test-setup lint
	$(PY) -m pytest

BENCHES ?= decode device ingest trace

bench: setup
	@for b in $(BENCHES); do echo "== tests/bench/$$b.py"; $(PY) tests/bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) .demo .mypy_cache .pytest_cache .ruff_cache
