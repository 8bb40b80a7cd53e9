# tasklens — `make test` and `make demo` work on a fresh machine (Python 3.11+, Debian).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Extra pip arguments of the venv's install (the lowest-versions run adds its constraints).
PIP_EXTRA ?=
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml ci/lowest.py | cksum | cut -d' ' -f1)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
LOWEST := .venv-lowest

.PHONY: install system-deps test test-lowest lint typecheck-tree demo bench bench-smoke \
	stack dashboards wheel clean upstream

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml ci/lowest.py | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]" $(PIP_EXTRA)
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP)

# Debian's Prometheus, Alertmanager and promtool/amtool (end-to-end tests, `make stack`),
# redis-server (the Celery broker of the Celery tests and the stack) and chromium (the live
# page's browser tests, driven by Playwright with executable_path=/usr/bin/chromium).
SYSTEM_TOOLS := promtool amtool prometheus-alertmanager redis-server chromium
SYSTEM_PACKAGES := prometheus prometheus-alertmanager redis-server chromium
system-deps:
	@missing=""; for t in $(SYSTEM_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing $(SYSTEM_PACKAGES) (apt-get; missing:$$missing)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends \
	    $(SYSTEM_PACKAGES) >/dev/null; \
	fi

# mypy checks the package under the names it installs with (tasklens.runtime, ...): a tree of
# symlinks mirrors the wheel's layout (pyproject's package-dir).
typecheck-tree:
	@rm -rf .typecheck && mkdir -p .typecheck/tasklens
	@for f in tasklens/*; do ln -s ../../$$f .typecheck/tasklens/; done
	@ln -s ../../runtime .typecheck/tasklens/runtime
	@ln -s ../../telemetry .typecheck/tasklens/telemetry

lint: $(STAMP) typecheck-tree
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m dashboards --check

# The suite on the newest releases (and lint), then on the lowest declared versions.
test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest

$(LOWEST)/constraints.txt: pyproject.toml ci/lowest.py
	$(PYTHON) -m venv $(LOWEST)
	$(PYTHON) ci/lowest.py > $@

test-lowest: $(LOWEST)/constraints.txt system-deps
	$(MAKE) install VENV=$(LOWEST) PIP_EXTRA="-c $(LOWEST)/constraints.txt"
	$(LOWEST)/bin/python ci/lowest.py --check
	PIP_CONSTRAINT=$(CURDIR)/$(LOWEST)/constraints.txt $(LOWEST)/bin/python -m pytest

# Starlette's and FastAPI's own test suites, plain and with every TestClient app instrumented
# (ci/upstream_suites.py): downloads their sdists and test dependencies into .upstream/ and
# takes minutes, so it is not part of `make test`. Both venvs; exit 1 if a test fails only
# instrumented and is not in ci/upstream_by_design.txt (docs/runtime.md explains those). The lowest
# versions' run needs $(LOWEST) (`make test-lowest` makes it).
upstream: $(STAMP)
	$(BIN)/python ci/upstream_suites.py --json .upstream/newest.json; a=$$?; \
	$(LOWEST)/bin/python ci/upstream_suites.py --json .upstream/lowest.json; b=$$?; \
	exit $$(( a > b ? a : b ))

demo: $(STAMP)
	$(BIN)/tasklens demo --self-traffic

# The sustained case's load generator is Debian's wrk (bench.loadgen when it is missing);
# BENCH_SUSTAINED_SECONDS sets its seconds per variant (default 30).
bench: $(STAMP)
	@if ! command -v wrk >/dev/null; then \
	  echo "installing wrk (apt-get)"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq wrk >/dev/null; \
	fi
	$(BIN)/python -m bench
	$(MAKE) -s system-deps
	$(BIN)/python -m bench.case_celery
	$(BIN)/python -m bench.case_live_page

bench-smoke: $(STAMP)
	$(BIN)/python -m bench --smoke

stack: $(STAMP) system-deps
	$(BIN)/python -m deploy.local.stack

dashboards: $(STAMP)
	$(BIN)/python -m dashboards

wheel: $(STAMP)
	rm -rf dist && $(BIN)/python -m build --outdir dist .

clean:
	rm -rf $(VENV) $(LOWEST) .upstream .pytest_cache .ruff_cache .mypy_cache .typecheck .stack dist build
