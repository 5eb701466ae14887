# Every target creates or reuses .venv and installs what it needs.
# A stamp per extras set is refreshed whenever setup.cfg or pyproject.toml change.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: demo test bench bench-quick lint format clean venv chaos browser dask-tests

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade "pip>=24" "setuptools>=68" wheel

$(VENV)/.stamp-%: setup.cfg pyproject.toml | $(BIN)/python
	$(PIP) install -e ".[$*]"
	@touch $@

venv: $(VENV)/.stamp-all

demo: $(VENV)/.stamp-all
	$(BIN)/dask oxigdal demo $(DEMO_ARGS)

# Headless Chromium for tests/test_browser.py, from Debian's packages (never a
# downloaded browser build); installed only when missing, with sudo only if not root.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q chromium chromium-driver; }

# Dask's own test modules (unchanged copies in ../shared/dask-tests, see its README),
# run against the installed distributed with our extension preloaded in every
# scheduler and the full default policy list. tests/dask_suite/oxigdal_dask_suite.py
# fails the run if no scheduler ran the extension or a policy was disabled.
# A Dask test that fails the same way without the preload may be deselected here,
# each with its reason (none is today).
DASK_TESTS_DIR     := ../shared/dask-tests
DASK_TEST_MODULES  := test_priorities.py test_steal.py test_resources.py test_reschedule.py \
                      test_failed_workers.py test_worker_client.py test_cancelled_state.py \
                      test_spans.py
DASK_TESTS_DESELECT :=

dask-tests: $(VENV)/.stamp-all
	cd $(DASK_TESTS_DIR) && \
	  DASK_DISTRIBUTED__SCHEDULER__PRELOAD='["dask_oxigdal.preload"]' PYTHONDONTWRITEBYTECODE=1 \
	  PYTHONPATH=$(CURDIR)/tests/dask_suite \
	  $(CURDIR)/$(BIN)/python -m pytest -p no:randomly -p oxigdal_dask_suite \
	    $(DASK_TEST_MODULES) $(DASK_TESTS_DESELECT)

# pytest runs last so that its closing "N passed" line is the last thing CI prints.
test: $(VENV)/.stamp-all browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python benchmarks/bench_kernels.py --quick
	$(MAKE) --no-print-directory dask-tests
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the coordinator's full chaos runs: 10 runs x 1,000 acknowledged writes per test (CI runs 2 x 300)
chaos: $(VENV)/.stamp-all
	OXIGDAL_CHAOS_RUNS=10 OXIGDAL_CHAOS_WRITES=1000 $(BIN)/python -m pytest \
		tests/test_coordination_chaos.py -p no:cacheprovider --timeout=3600 -v

bench: $(VENV)/.stamp-all
	$(BIN)/python benchmarks/bench_kernels.py

bench-quick: $(VENV)/.stamp-all
	$(BIN)/python benchmarks/bench_kernels.py --quick

lint: $(VENV)/.stamp-all
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.stamp-all
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -prune -exec rm -rf {} +
