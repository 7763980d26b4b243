"""Shared test setup: quiet progress bars, a headless matplotlib, few threads (CI has 2 cores)."""

import os

os.environ.setdefault("PARTLAB_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")
