# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Both create (or reuse) a virtual environment in .venv and install the
# package with its dev extra into it.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test pytest docs clean

# Some of Avalanche's optional dependencies (triton, qpsolvers' solvers) are
# nanobind extensions that print "leaked ..." reports at interpreter exit,
# after pytest's summary; they are filtered so the summary stays the last line.
NANOBIND_NOISE := ^(nanobind: |  - leaked | - leaked | - \.\.\. skipped|See https://nanobind)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/quickstart.py 2>&1 | { grep -Ev '$(NANOBIND_NOISE)' || true; }

docs: $(VENV)/.installed
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html 2>&1 | { grep -Ev '$(NANOBIND_NOISE)' || true; }

pytest: $(VENV)/.installed
	$(PY) -m pytest 2>&1 | { grep -Ev '$(NANOBIND_NOISE)' || true; }

test: docs pytest

clean:
	rm -rf docs/_build outputs .pytest_cache
