"""The notebook contract (DESIGN.md) and a papermill run of every notebook in quick mode.

Each notebook runs through the same runner as ``make demo`` and its metrics are compared with
``tests/baselines/quick.json``; a metric outside its stated tolerance fails the test, naming the metric.
"""

import re
from pathlib import Path

import nbformat
import papermill
import pytest

from partlab import notebooks as nbs
from partlab.notebooks import regression

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = nbs.list_notebooks(ROOT / "notebooks")
BASELINES = regression.load(ROOT / "tests" / "baselines" / "quick.json")
MAX_CELL_LINES = 15
KERNEL_METADATA = nbs.kernel_metadata()


def test_there_is_a_curriculum():
    assert NOTEBOOKS, "notebooks/ holds no notebook"
    assert all(re.fullmatch(r"\d\d_[a-z0-9_]+", p.stem) for p in NOTEBOOKS), [p.stem for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_contract(path):
    nb = nbformat.read(str(path), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [c for c in code if c.get("outputs") or c.get("execution_count")], "committed with outputs"
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    declared = nbs.notebook_parameters(path)
    missing = set(nbs.REQUIRED_PARAMETERS) - set(declared)
    assert not missing, f"parameters cell lacks {sorted(missing)}"
    assert declared["quick"] is True, "the committed default must be quick mode"
    # papermill must parse every parameter line ('=' inside a comment breaks its parser silently)
    parsed = set(papermill.inspect_notebook(str(path)))
    assert set(declared) <= parsed, f"papermill cannot parse the parameters {sorted(set(declared) - parsed)}"
    assert declared["device"] == "auto" and declared["dataset"] == "synthetic"
    assert nb.metadata.get("kernelspec", {}).get("name") == nbs.KERNEL_NAME
    # what JupyterLab writes on opening (else it marks the notebook modified): `python -m partlab.notebooks tidy`
    assert {k: nb.metadata.get(k) for k in KERNEL_METADATA} == KERNEL_METADATA, "run python -m partlab.notebooks tidy"
    assert "write_metrics" in code[-1].source, "the last cell must write the metrics JSON"
    assert path.stem in BASELINES, f"tests/baselines/quick.json has no entry for {path.stem}"
    assert regression.find(BASELINES[path.stem], nbs.run_parameters(path, True)) is not None, \
        f"tests/baselines/quick.json has no baseline for {path.stem}'s default parameters"
    long_cells = [c.source.count("\n") + 1 for c in code if c.source.count("\n") + 1 > MAX_CELL_LINES]
    assert not long_cells, f"cells of {long_cells} lines (at most {MAX_CELL_LINES}): move the code into partlab"


TRAINING = [p for p in NOTEBOOKS if "partlab.notebooks import setup" in p.read_text()]


def test_training_notebooks_share_the_skeleton():
    """DESIGN.md: one setup call, the shared benchmark call and figure, a closing cell in numbers."""
    assert {p.stem for p in TRAINING} >= {"05_train_scops", "06_scops_ablation", "08_contrastive_parts",
                                          "09_contrastive_ablation"}
    for path in TRAINING:
        nb = nbformat.read(str(path), as_version=4)
        source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert source.count("setup(") == 1, f"{path.stem}: one setup call"
        assert ".benchmark(" in source and "viz.benchmark_figure(" in source, f"{path.stem}: the shared benchmark"
        assert "score_baselines(" not in source and "oracle_quick_setup" not in source, path.stem
        closing = [c for c in nb.cells if c.cell_type == "markdown"][-1]
        assert "What you should have seen" in closing.source, f"{path.stem}: no closing summary"
        assert "print(" in nb.cells[-1].source, f"{path.stem}: the closing cell prints the numbers"


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_in_quick_mode_within_baselines(path, tmp_path):
    result = nbs.run_notebook(path, tmp_path, quick=True, baselines=BASELINES)
    assert result.status == "ok", "\n".join(result.problems)
    executed = nbformat.read(str(result.output), as_version=4)
    text = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert "device" in text, "a notebook must print the device it used"
    assert "\r" not in text, "progress bars flooded the output"
