# partlab: two commands on a fresh machine - `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.partlab-installed
PIPFLAGS ?=       # pip's output goes to $(VENV)/setup.log (its tail is shown when setup fails)
MIN_FREE_GB ?= 7  # disk space a fresh environment needs (checked before the install; 0: no check)
JOBS ?=           # notebooks run at once by `make demo` (empty: one per core)

.PHONY: setup browser demo test lab bench clean

setup: $(STAMP)

# Pinned, reproducible install: constraints.txt is the lock file for regression runs.
# Installer output (deprecation notices, this machine's index warnings) goes to a log, not the screen.
$(STAMP): pyproject.toml constraints.txt
	@echo "setting up $(VENV): pinned install from constraints.txt (log: $(VENV)/setup.log) ..."
	@test -x $(BIN)/python || { free=$$(df -Pk $(dir $(VENV)) | awk 'NR==2 {print int($$4 / 1048576)}'); \
	  [ "$$free" -ge $(strip $(MIN_FREE_GB)) ] || { echo "setup needs about $(strip $(MIN_FREE_GB)) GiB free for $(VENV) (torch and its CUDA libraries take 5 GiB), but $$free GiB are free on that disk: free some space (old clones' .venv folders) or put the environment elsewhere (make VENV=/roomier/disk/venv ...; MIN_FREE_GB=0 skips this check)"; exit 1; }; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@{ $(BIN)/python -m pip install $(PIPFLAGS) --upgrade pip setuptools wheel \
	   && $(BIN)/python -m pip install $(PIPFLAGS) -c constraints.txt -e ".[dev]"; } >$(VENV)/setup.log 2>&1 \
	  || { tail -n 30 $(VENV)/setup.log; echo "setup failed: the whole log is $(VENV)/setup.log"; exit 1; }
	@touch $(STAMP)
	@echo "setup done"

## demo: run the whole curriculum headlessly (quick mode) into outputs/, JOBS notebooks at a time (default:
## one per core), export HTML, print the summary with each notebook's headline; the report is outputs/index.html
demo: setup
	@$(BIN)/python -m partlab.notebooks run --quick --html $(if $(strip $(JOBS)),--jobs $(JOBS))

## browser: Debian's chromium + chromium-driver for tests/test_browser.py, installed when missing (root only;
## otherwise that test skips and says why); apt's output goes to $(VENV)/apt-browser.log
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver (log: $(VENV)/apt-browser.log)"; mkdir -p $(VENV); \
	    { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
	      chromium chromium-driver; } >$(VENV)/apt-browser.log 2>&1 \
	      || { tail -n 20 $(VENV)/apt-browser.log; exit 1; }; \
	  else \
	    echo "chromium/chromedriver missing and not root: the browser test will be skipped"; \
	  fi; \
	fi

## test: unit tests + a papermill run of every notebook in quick mode + the widgets in headless Chromium
## (TEST_WORKERS pytest processes of one thread each: 2 suits 2 cores; more cores, more workers; a worker that
## crashes ends the run with its test named, since xdist 3.8 waits forever for a replaced one under loadgroup)
TEST_WORKERS ?= 2
test: setup browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup --max-worker-restart 0

## lab: JupyterLab on the notebooks
lab: setup
	$(BIN)/jupyter lab notebooks

## bench: speed benchmarks (print numbers; never part of the tests)
bench: setup
	$(BIN)/python scripts/bench_synthetic.py
	$(BIN)/python scripts/bench_scops.py

clean:
	rm -rf outputs .pytest_cache
