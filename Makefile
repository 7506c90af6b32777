# Candlewire: `make run` sets up and starts the server; `make test` sets up and runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

CHROMIUM ?= /usr/bin/chromium

.PHONY: setup browser run populate test fuzz check format bench bench-profile clean constraints

setup: $(STAMP) node_modules/.installed

# The web page's only dependency (lightweight-charts), pinned in package-lock.json.
node_modules/.installed: package.json $(wildcard package-lock.json)
	@command -v npm >/dev/null || { echo "npm (Node.js) is required for the web page"; exit 1; }
	if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
	touch $@

# The versions in constraints.txt are those the suite last passed with (pyproject.toml keeps
# the ranges that are allowed): a fresh machine gets the same set, not whatever came out
# since. `make constraints` writes the current venv's versions back after an upgrade.
$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

populate: setup
	$(BIN)/python populate.py

run: populate
	$(BIN)/python server.py $(if $(HOST),--host $(HOST)) $(if $(PORT),--port $(PORT))

# Browser tests drive Debian's chromium through Playwright (it cannot download browsers here).
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "install chromium (e.g. sudo apt-get install chromium) for the browser tests"; fi; }

# Four test files at a time (pytest-xdist; a file's tests stay together, sharing its server;
# the slowest files first, as tests/conftest.py orders them, not xdist's most-tests-first):
# most tests wait on real servers and sockets, so on 2 cores four workers keep both busy
# (one commit, 2026-12-06: 563 s with four, 589 s and 603 s with three; the machine was 95 %
# busy with four).
TEST_WORKERS ?= 4

# The suite starts some 300 Python processes (servers, provider processes, populate): with
# PYTHONDONTWRITEBYTECODE set (as on this machine) each compiled the project's
# modules from source again. Their bytecode is cached under .venv instead (not the checkout).
test: setup browser
	PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX=$(CURDIR)/$(VENV)/pycache \
	  $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

# The subscription model with many more random interleavings than `make test` runs.
fuzz: setup
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest tests/test_subscription_model.py --timeout=1800

check: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The benchmark suite (about 8 minutes, 2+ cores): every figure next to its ceiling.
bench: setup
	$(BIN)/python bench/run_all.py

# Where the time goes at saturation (py-spy on the hub and provider processes).
bench-profile: setup
	$(BIN)/python -m pip install --quiet py-spy
	$(BIN)/python bench/fanout.py --clients 1000 --profile 10
	$(BIN)/python bench/ingest.py --profile 8
	$(BIN)/python bench/history.py --keys 50 --profile 6

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# After `pip install -U ...` in the venv and a passing `make check test`: pin what passed.
constraints: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -i '^py-spy==' > constraints.txt
