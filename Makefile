# Development tasks; `make help` lists them. Everything runs from the virtualenv in .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
RUN_ARGS ?=
# set to 1 to let `make test` pass when pytest collects no test (exit code 5)
ALLOW_NO_TESTS ?=

.DEFAULT_GOAL := help
.PHONY: help venv install chromium run test services-start services-stop services-status \
	lint clean-data

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) \
		| awk -F':.*## ' '{printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}'

venv: $(STAMP) ## create .venv and install the dependencies (again only when pyproject.toml changes)

install: $(STAMP) ## same as venv

$(PY):
	$(PYTHON) -m venv $(VENV)

# The project is not an installable package (packages = []): install its dependency lists,
# main + [test], read from pyproject.toml. (`pip install -e .` would work too but leaves
# roomchat.egg-info behind in the work tree.)
# Local development settings, written once: DEBUG on and a random SECRET_KEY (settings default
# to DEBUG off; a deployment sets its own environment, docs/deploy.md).
.env:
	@printf '# local development (written by make; not for production)\nDEBUG=true\nSECRET_KEY=%s\n' \
		"$$($(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(50))')" > $@
	@echo "wrote .env (DEBUG=true, a random SECRET_KEY) for local development"

$(STAMP): pyproject.toml | $(PY) .env
	$(PY) -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
		print("\n".join(p["dependencies"] + p["optional-dependencies"]["test"]))' \
		> $(VENV)/requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(VENV)/requirements.txt
	touch $@

chromium: ## install Debian's chromium (browser tests) unless /usr/bin/chromium exists
	@if [ ! -x /usr/bin/chromium ]; then \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update && \
		$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	fi

run: $(STAMP) ## run the chat: Postgres+Redis (embedded), Daphne, Celery worker, sweeper and beat under one supervisor (RUN_ARGS="--port 8001 --asgi 2")
	$(PY) -m stack run $(RUN_ARGS)

test: $(STAMP) chromium ## run the tests (PYTEST_ARGS="-x -k name" passes options to pytest)
	@rc=0; $(PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ] && [ -n "$(ALLOW_NO_TESTS)" ] && [ "$(ALLOW_NO_TESTS)" != 0 ]; then \
		echo "pytest collected no tests (allowed by ALLOW_NO_TESTS)"; rc=0; \
	fi; exit $$rc

services-start: $(STAMP) ## start the embedded PostgreSQL and Redis (data in .devdata)
	$(PY) -m stack services start

services-stop: ## stop the embedded PostgreSQL and Redis
	@if [ -x $(PY) ] && [ -d .devdata ]; then $(PY) -m stack services stop; fi

services-status: ## show whether the embedded PostgreSQL and Redis are running
	@$(PY) -m stack services status

lint: $(STAMP) ## ruff check, ruff format --check, mypy, and Django's deployment checks with production settings; CI runs it before the tests
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	DEBUG=false ALLOWED_HOSTS=chat.example.com \
		SECRET_KEY="$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))')" \
		$(PY) manage.py check --deploy --fail-level WARNING

clean-data: services-stop ## stop the embedded services and delete .devdata (database, Redis data, static)
	rm -rf .devdata

LOAD_ARGS ?=
.PHONY: load
load: $(STAMP) ## load test of one Daphne: 1000 idle sockets, 100 streaming (LOAD_ARGS="--sockets 100 --active 10")
	$(PY) -m bench.load $(LOAD_ARGS)

CHAOS_ARGS ?=
.PHONY: chaos
chaos: $(STAMP) ## fault-injection run checking every room guarantee, 3 min (CHAOS_ARGS="--duration 600")
	$(PY) -m bench.chaos $(CHAOS_ARGS)

BENCH_ARGS ?=
.PHONY: bench bench-quick
bench: $(STAMP) ## performance figures vs floors measured in the same run, a few minutes; rewrites docs/performance.md's table (BENCH_ARGS="--profile")
	$(PY) -m bench.perf $(BENCH_ARGS)

bench-quick: $(STAMP) ## the same, smaller sizes, about a minute (BENCH_ARGS="--only fanout,latency")
	$(PY) -m bench.perf --quick $(BENCH_ARGS)
