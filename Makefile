# The two commands of the README: `make dev` and `make test`. Both create .venv and install first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv dev test test-fast lint bench soak screenshots deploy deploy-check teardown clean

$(STAMP): requirements.txt requirements-dev.txt requirements-emulators.txt client/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-emulators.txt
	touch $(STAMP)

venv: $(STAMP)

dev: $(STAMP)
	$(PY) -m gateway dev

# On several workers (pytest-xdist), a test file to a worker: its module-scoped stack starts once, and each
# worker starts the emulators it needs on free ports. Most stack tests wait on the clock, not the CPU.
WORKERS ?= 4
test: $(STAMP)
	$(PY) -m pytest -n $(WORKERS) --dist loadfile

# Everything but the tests marked `stack` (emulators, the local stack, other processes): well under a minute.
test-fast: $(STAMP)
	$(PY) -m pytest -m "not stack" -n $(WORKERS) --dist loadfile

lint: $(STAMP)
	$(PY) -m ruff check gateway tests main.py bench soak deploy client examples

bench: $(STAMP)
	$(PY) -m bench
	$(PY) -m bench.follow
	$(PY) -m bench.rows
	$(PY) -m bench.admission

soak: $(STAMP)
	$(PY) -m soak --minutes 10

# README's console screenshots, made by the real-browser test (needs Chromium).
screenshots: $(STAMP)
	CONSOLE_SCREENSHOTS_DIR=docs $(PY) -m pytest tests/test_console_browser.py -q

clean:
	rm -rf $(VENV) .state .pytest_cache .hypothesis

ENV ?= deploy/env
deploy:
	deploy/deploy.sh --env $(ENV)

deploy-check:
	deploy/deploy.sh --env $(ENV) --dry-run | $(PYTHON) deploy/gcloud_argcheck.py

teardown:
	deploy/teardown.sh --env $(ENV)
