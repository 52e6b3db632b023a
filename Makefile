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

# The fault suites at length: kill -9 right after every step starts as well as after it acts
# (make test: after it acts), and inside every step of a failing release under simulated users,
# three times each (make test runs three such trials).
soak: setup fleet-tools
	DEPLOYCTL_SOAK=1 DEPLOYCTL_KILLS=27 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q \
		tests/test_faults.py tests/test_crash.py

# Results as `name value` lines on stdout (progress on stderr); a few minutes, own throwaway cluster.
bench: setup
	@$(BIN)/python -m bench

lint: setup
	$(BIN)/ruff check deployctl tests examples
	$(BIN)/mypy deployctl

clean:
	-$(BIN)/python -m deployctl.localpg destroy .demo/pg
	rm -rf .demo .deployctl
