"""Shared test setup: quiet progress bars, a headless matplotlib, few threads (CI has 2 cores).

``make test`` runs pytest on ``TEST_WORKERS`` processes (pytest-xdist, default 2): each worker, and each
notebook kernel it starts, then uses one thread, which on 2 cores gets ~1.3x more work done than one
process on two threads. The notebook runs go first, longest first, so the workers finish together.
"""

import json
import os
from pathlib import Path

os.environ.setdefault("PARTLAB_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:      # before torch is imported; kernels inherit it
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_name] = "1"

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import pytest  # noqa: E402


# the notebook runs by their time in quick mode (the baselines' "seconds", on 2 cores); unknown ones go last
_BASELINES = json.loads((Path(__file__).parent / "baselines" / "quick.json").read_text())
NOTEBOOK_SECONDS = {name: max([e.get("seconds", 0) for e in entries] or [0]) for name, entries in _BASELINES.items()}


def pytest_collection_modifyitems(config, items):
    """The notebook runs first, longest first (xdist hands them out in this order)."""
    def notebook_seconds(item):
        if item.get_closest_marker("notebook") is None:
            return None
        stem = item.callspec.id if hasattr(item, "callspec") else ""
        return NOTEBOOK_SECONDS.get(stem, 0)

    runs = [item for item in items if notebook_seconds(item) is not None]
    rest = [item for item in items if notebook_seconds(item) is None]
    items[:] = sorted(runs, key=lambda item: -notebook_seconds(item)) + rest


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
