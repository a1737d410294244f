# Two commands on a fresh machine: `make demo` and `make test`. Everything else is optional.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# Re-install when the project's dependencies change. The demo needs only the library itself;
# tests, benchmarks and the UI need the extras (a larger environment, built once).
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: install test test-fast lint format typecheck demo dev emulator bench screenshots clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@echo "Setting up $(VENV): dagster-together with its test, benchmark and UI extras (once; a few minutes)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	scripts/install-chromium
	scripts/install-postgres
	touch $(STAMP) $(DEMO_STAMP)

# pip shows each package as it goes (the first run downloads about 70). setuptools' notice
# box about editable installs in general is information for packagers, not for the demo.
$(DEMO_STAMP): pyproject.toml
	@echo "Setting up $(VENV): dagster-together and what it needs to run (once; about a minute)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation:UserWarning" $(BIN)/python -m pip install -e .
	touch $(DEMO_STAMP)
	@echo "Ready."

test: $(STAMP)
	$(BIN)/ruff check dagster_together tests example_project bench
	$(BIN)/mypy
	$(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder

# The fast layer: every test but those marked `slow` (real processes, multi-second scenarios).
test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check dagster_together tests example_project bench
	$(BIN)/ruff format --check dagster_together tests example_project bench

format: $(STAMP)
	$(BIN)/ruff format dagster_together tests example_project bench
	$(BIN)/ruff check --fix dagster_together tests example_project bench

typecheck: $(STAMP)
	$(BIN)/mypy

# The example pipeline end to end on the embedded defaults: the local emulator and local files.
demo: $(DEMO_STAMP)
	$(BIN)/python -m example_project.demo

# The Dagster UI on the example project (`dg dev`), with the emulator running.
dev: $(STAMP)
	$(BIN)/python -m example_project.dev

emulator: $(DEMO_STAMP)
	$(BIN)/python -m dagster_together.emulator --port 8765

bench: $(STAMP)
	$(BIN)/python -m bench

# Retake docs/images/*.png: the example driven in the Dagster UI in Debian's Chromium.
screenshots: $(STAMP)
	$(BIN)/python -m scripts.screenshots

clean:
	rm -rf $(VENV) .demo .dagster_home bench/out *.egg-info
