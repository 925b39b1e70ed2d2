# rhapsody-prefect: set up, run the example, run the tests.
#   make example   set up a virtualenv and run the main example flow (concurrent backend)
#   make test      set up everything (Debian MPI + Chromium, Python packages) and run all tests
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# Prefect's anonymous analytics off unless the caller set them (offline, the server's telemetry
# service logs "ERROR ... Failed to send telemetry" on every run).
NO_ANALYTICS := PREFECT_SERVER_ANALYTICS_ENABLED="$${PREFECT_SERVER_ANALYTICS_ENABLED:-false}" \
  DO_NOT_TRACK="$${DO_NOT_TRACK:-1}"
# RADICAL-Pilot starts helper executables from the virtualenv's bin.
RUN := PATH="$(abspath $(VENV))/bin:$$PATH" VIRTUAL_ENV="$(abspath $(VENV))" $(NO_ANALYTICS)
# postgresql: tests/system/test_prefect_yaml_deploy.py runs `prefect server` on a throwaway cluster
# (initdb/pg_ctl from /usr/lib/postgresql/*/bin, started and stopped by the test).
DEBIAN_PACKAGES := mpich chromium fonts-liberation slurm-wlm munge postgresql

.PHONY: example test test-fast lint bench screenshot system-deps slurm-up slurm-down

# Two stamps: the example needs only the package (its `concurrent` backend is built in);
# the tests and benchmarks add the test and bench extras (all backends, pytest, ruff, ...).
$(VENV)/.installed-example: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-example
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

example: $(VENV)/.installed-example
	$(RUN) $(PY) flows/ensemble.py

lint: $(VENV)/.installed-test
	$(PY) -m ruff check .

test: system-deps $(VENV)/.installed-test lint
	$(RUN) $(PY) -m pytest -ra --durations=30 -m "slow or not slow"

test-fast: $(VENV)/.installed-test
	$(RUN) $(PY) -m pytest -ra

bench: $(VENV)/.installed-test
	$(RUN) $(PY) bench/run.py

# Regenerate the committed docs/ui-flow-run.png (the tests write their screenshots to temp dirs).
screenshot: system-deps $(VENV)/.installed-test
	RHAPSODY_UI_SCREENSHOT="$(abspath docs/ui-flow-run.png)" $(RUN) $(PY) -m pytest -ra \
	  -m "slow or not slow" tests/system/test_ui.py

# A real 2-node Slurm on this machine (root; see docs/hpc.md). Then: eval "$$(scripts/slurm-cluster.sh env)"
slurm-up: system-deps
	scripts/slurm-cluster.sh start

slurm-down:
	scripts/slurm-cluster.sh stop
