# Vitrine: `make demo` and `make test` each set everything up from a clean clone, then do their job.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow proto bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	# torch 2.14.1 / torchvision 0.29.1 are pinned in pyproject.toml (served from local disk here).
	$(PIP) install -q -e '.[test,plot]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(PY) -m cli.main demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. proto/vitrine/v1/search.proto

bench: $(STAMP)
	$(PY) bench/first_stage.py

clean:
	rm -rf $(VENV) .cache .pytest_cache
