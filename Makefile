# Two commands: `make run` starts the whole stack, `make test` runs the tests.
# Each installs only what it needs, at the versions in constraints.txt (the lock).
VENV ?= .venv
PYTHON ?= python3
LOCK := constraints.txt
# uv installs (from its cache) in seconds what pip takes a minute or two for.
# A regular (compat) editable install: the default one adds an import hook that
# costs every interpreter start in the venv, and every job starts one.
PIP_INSTALL = $(VENV)/bin/uv pip install --quiet --python $(VENV)/bin/python \
	--constraint $(LOCK) --config-setting editable_mode=compat --editable
SOURCES := pyproject.toml setup.py $(LOCK)

.PHONY: install services run test lint bench lock kube kube-down

# Everything a developer uses: running, the tests, the linters.
install: $(VENV)/.installed-test $(VENV)/.installed-dev

# The system's pip puts uv in a venv made without pip (ensurepip is slower);
# uv then adds pip, for people who use it.
$(VENV)/bin/uv: $(LOCK)
	$(PYTHON) -m venv --without-pip $(VENV)
	$(PYTHON) -m pip --python $(VENV)/bin/python install --quiet --constraint $(LOCK) uv

$(VENV)/.installed-run: $(SOURCES) $(VENV)/bin/uv
	$(PIP_INSTALL) . pip
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed-run
	$(PIP_INSTALL) ".[test]"
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed-run
	$(PIP_INSTALL) ".[dev]"
	touch $@

services:
	scripts/ensure-services rabbitmq postgresql

# Running needs RabbitMQ only: the default job store is a SQLite file.
run: $(VENV)/.installed-run
	scripts/ensure-services rabbitmq
	scripts/run-stack

test: $(VENV)/.installed-test services
	scripts/ensure-test-tools
	$(VENV)/bin/pytest -q

bench: $(VENV)/.installed-test services
	$(VENV)/bin/python bench/run.py $(ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# Pin what pyproject.toml asks for, keeping the pins that still fit;
# `make lock LOCK_ARGS=--upgrade` moves every pin to the newest version allowed.
lock: $(VENV)/.installed-dev
	$(VENV)/bin/uv pip compile pyproject.toml --all-extras --universal \
		--python-version 3.11 --no-annotate $(LOCK_ARGS) \
		--custom-compile-command "make lock" --output-file $(LOCK)

# A real Kubernetes control plane on loopback (built once from Debian's
# packages, several minutes; then seconds): export the KUBECONFIG it prints.
kube:
	scripts/kube-up

kube-down:
	scripts/kube-down
