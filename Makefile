# Vitrine: `make demo` and `make test` each set everything up from a clean clone, then do their job.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test test-slow proto lock bench figures clean

# constraints.txt pins every package (and pip itself) to the versions CI tested, so a new machine installs
# what passed; `make lock` rewrites it from the current environment after a deliberate upgrade.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt --upgrade pip setuptools wheel
	# torch 2.14.1 / torchvision 0.29.1 are pinned in pyproject.toml (served from local disk here).
	$(PIP) install -q -c constraints.txt -e '.[test,plot,ray]'
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vitrine demo

test: $(STAMP) browser
	$(PY) -m pytest -q

# The workbench's browser tests (tests/server/test_workbench_browser.py) drive Debian's Chromium and ChromeDriver
# with Selenium; installed here when missing (as root, or with sudo that asks no password). Without them those tests
# skip and say why; nothing else needs them.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] || sudo -n true 2>/dev/null; then \
	  echo "installing Debian's chromium and chromium-driver for the browser tests"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo -n); \
	  $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 \
	    || { $$SUDO apt-get update -q >/dev/null 2>&1 && $$SUDO apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; } \
	    || echo "could not install chromium; the browser tests will skip"; \
	else echo "no chromium and no root to install it (apt-get install chromium chromium-driver): the browser tests will skip"; fi

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -I . --python_out=. --grpc_python_out=. --pyi_out=. proto/vitrine/v1/search.proto
	# the stubs are installed as vitrine.proto (see pyproject.toml), not as a top-level `proto`
	sed -i 's/^from proto\.vitrine\.v1 import/from vitrine.proto import/' proto/vitrine/v1/search_pb2_grpc.py

lock: $(STAMP)
	{ $(PIP) freeze --exclude-editable; $(PIP) list --format=freeze 2>/dev/null | grep -E '^(pip|setuptools|wheel)=='; } \
	  | sort -f > constraints.txt

bench: $(STAMP)
	$(PY) bench/first_stage.py

figures: $(STAMP)
	$(PY) bench/figures.py --run all

clean:
	rm -rf $(VENV) .cache .pytest_cache
