# Two commands: `make run` starts the whole stack, `make test` runs the tests.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: install services run test lint bench kube kube-down

install: $(STAMP)

# A regular (compat) editable install: the default one adds an import hook that
# costs every interpreter start in the venv, and every job starts one.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet --editable ".[test]" --config-settings editable_mode=compat
	touch $@

services:
	scripts/ensure-services

run: install services
	scripts/run-stack

test: install services
	scripts/ensure-test-tools
	$(VENV)/bin/pytest -q

bench: install services
	$(VENV)/bin/python bench/run.py $(ARGS)

lint: install
	$(VENV)/bin/ruff check .

# A real Kubernetes control plane on loopback (built once from Debian's
# packages, several minutes; then seconds): export the KUBECONFIG it prints.
kube:
	scripts/kube-up

kube-down:
	scripts/kube-down
