# partlab: two commands on a fresh machine - `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.partlab-installed
PIPFLAGS ?= -q

.PHONY: setup demo test lab bench clean

setup: $(STAMP)

# Pinned, reproducible install: constraints.txt is the lock file for regression runs.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIPFLAGS) --upgrade pip setuptools wheel
	$(BIN)/python -m pip install $(PIPFLAGS) -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

## demo: run the whole curriculum headlessly (quick mode) into outputs/, export HTML, print a summary
demo: setup
	$(BIN)/python -m partlab.notebooks run --quick --html

## test: unit tests + a papermill run of every notebook in quick mode
test: setup
	$(BIN)/python -m pytest

## lab: JupyterLab on the notebooks
lab: setup
	$(BIN)/jupyter lab notebooks

## bench: speed benchmarks (print numbers; never part of the tests)
bench: setup
	$(BIN)/python scripts/bench_synthetic.py
	$(BIN)/python scripts/bench_scops.py

clean:
	rm -rf outputs .pytest_cache
