# Everything a fresh machine needs, from two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup postgres fleet-tools demo test soak bench lint clean

setup: $(STAMP) postgres

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

# The PostgreSQL server and client binaries (Debian: installed when missing and we are root).
postgres:
	@bash scripts/ensure-postgres

# sshd, HAProxy and nginx, which the fleet tests run for real (installed likewise).
fleet-tools:
	@bash scripts/ensure-fleet-tools

demo: setup
	$(BIN)/python examples/demo.py

test: setup fleet-tools
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

# The fault suites at length: kill -9 inside every step of a failing release, several times
# each, under simulated users (make test runs three such trials).
soak: setup fleet-tools
	DEPLOYCTL_KILLS=27 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q tests/test_faults.py tests/test_crash.py

# Results as `name value` lines on stdout (progress on stderr); a few minutes, own throwaway cluster.
bench: setup
	@$(BIN)/python -m bench

lint: setup
	$(BIN)/ruff check deployctl tests examples
	$(BIN)/mypy deployctl

clean:
	-$(BIN)/python -m deployctl.localpg destroy .demo/pg
	rm -rf .demo .deployctl
