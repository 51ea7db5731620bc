# Two commands matter: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_PACKAGES := orthanc orthanc-dicomweb orthanc-webviewer redis-server chromium postgresql nginx

.PHONY: demo test run bench chaos lint format system-deps fhir-server venv clean scale

$(STAMP): pyproject.toml
	@test -d $(VENV) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	# The CPU wheel of torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(VENV)/bin/pip install --quiet torch==2.13.0
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(MAKE) --no-print-directory fhir-server

fhir-server:
	@if [ -f tools/fhir-server/package.json ] && [ ! -d tools/fhir-server/node_modules ]; then \
		cd tools/fhir-server && npm ci --silent --no-audit --no-fund; fi

test: system-deps $(STAMP)
	TRIAGE_DEBUG=1 $(PY) -m tools.testrun

demo: system-deps $(STAMP)
	TRIAGE_DEBUG=1 $(PY) -m tools.demo

run: $(STAMP)
	$(PY) -m tools.run

bench: system-deps $(STAMP)
	TRIAGE_DEBUG=1 $(PY) -m tools.bench

chaos: system-deps $(STAMP)
	TRIAGE_DEBUG=1 $(PY) -m tools.chaos

scale: system-deps $(STAMP)
	TRIAGE_DEBUG=1 $(PY) -m tools.scale

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) staticfiles .run
