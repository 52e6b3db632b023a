# Everything a fresh machine needs, from two commands: `make demo` and `make test`.
# No `make`? Debian: `apt-get install make` (or run the recipes below by hand).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test-setup postgres fleet-tools demo test soak bench lint clean

# What running deployctl needs (the demo, the bench); the tests and linters need more.
setup: $(VENV)/.installed-run postgres
test-setup: $(VENV)/.installed-test postgres

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "deployctl needs Python 3.11 or newer as '$(PYTHON)' (Debian: apt-get install python3;" \
		     "or make PYTHON=/path/to/python3.11)" >&2; exit 1; }
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
		echo "Python's venv module is missing (Debian: apt-get install python3-venv)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@ $(VENV)/.installed-run

# The PostgreSQL server and client binaries (Debian: installed when missing and we are root).
postgres:
	@bash scripts/ensure-postgres

# sshd, HAProxy and nginx, which the fleet tests run for real (installed likewise).
fleet-tools:
	@bash scripts/ensure-fleet-tools

demo: setup
	$(BIN)/python examples/demo.py

test: test-setup fleet-tools
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q

# The fault suites at length: kill -9 right after every step starts as well as after it acts
# (make test: after it acts), and inside every step of a failing release under simulated users,
# three times each (make test runs three such trials).
soak: test-setup fleet-tools
	DEPLOYCTL_SOAK=1 DEPLOYCTL_KILLS=27 PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q \
		tests/test_faults.py tests/test_crash.py

# Results as `name value` lines on stdout (progress on stderr); a few minutes, own throwaway cluster.
bench: setup
	@$(BIN)/python -m bench

lint: test-setup  # also checked by tests/test_code_style.py
	$(BIN)/ruff check deployctl tests examples bench
	$(BIN)/mypy deployctl

clean:
	-$(BIN)/python -m deployctl.localpg destroy .demo/pg
	rm -rf .demo .deployctl
