# rhapsody-prefect: set up, run the example, run the tests.
#   make example   set up a virtualenv and run the main example flow (concurrent backend)
#   make test      set up everything (Debian MPI + Chromium, Python packages) and run all tests
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# RADICAL-Pilot starts helper executables from the virtualenv's bin.
RUN := PATH="$(abspath $(VENV))/bin:$$PATH" VIRTUAL_ENV="$(abspath $(VENV))"
DEBIAN_PACKAGES := mpich chromium fonts-liberation

.PHONY: example test test-fast lint bench system-deps

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

example: $(VENV)/.installed
	$(RUN) $(PY) flows/ensemble.py

lint: $(VENV)/.installed
	$(PY) -m ruff check .

test: system-deps $(VENV)/.installed lint
	$(RUN) $(PY) -m pytest -ra -m "slow or not slow"

test-fast: $(VENV)/.installed
	$(RUN) $(PY) -m pytest -ra

bench: $(VENV)/.installed
	$(RUN) $(PY) bench/run.py
