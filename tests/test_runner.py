"""The curriculum runner: metric comparison, the metrics file, and a real papermill run of tiny notebooks."""

import json

import nbformat
import pytest

from partlab import notebooks as nbs
from partlab.notebooks.__main__ import main, parse_value


def test_compare_rules_name_the_metric():
    expected = {"ari": {"value": 0.5, "atol": 0.05}, "err": {"max": 0.2}, "n": {"min": 3}, "gone": {"min": 0}}
    problems = nbs.compare({"ari": 0.6, "err": 0.3, "n": 3}, expected)
    assert any("'ari'" in p and "differs" in p for p in problems)
    assert any("'err'" in p and "ceiling" in p for p in problems)
    assert any("'gone'" in p and "missing" in p for p in problems)
    assert not any("'n'" in p for p in problems)
    assert nbs.compare({"ari": 0.52, "err": 0.1, "n": 4, "gone": 1}, expected) == []
    assert nbs.compare({"a": {"b": 1.0}}, {"a.b": {"value": 1.0}}) == []


def test_a_metric_without_a_stored_baseline_is_not_checked():
    """A new metric (e.g. ``kmeans.fg_ari_image``) passes until someone stores a baseline for it."""
    expected = {"kmeans.fg_ari": {"value": 0.16, "atol": 0.03}}
    assert nbs.compare({"kmeans": {"fg_ari": 0.17, "fg_ari_image": 0.55, "fg_nmi_image": 0.6}}, expected) == []


def test_write_metrics_refuses_nan(tmp_path):
    path = nbs.write_metrics({"x": 1.0, "nested": {"y": 2}}, tmp_path / "m" / "a.json")
    assert json.loads(path.read_text()) == {"nested": {"y": 2}, "x": 1.0}
    with pytest.raises(ValueError, match="'z'.*nan"):
        nbs.write_metrics({"z": float("nan")}, tmp_path / "b.json")


def test_the_summary_table_shows_each_notebooks_headline(tmp_path):
    path = nbs.write_metrics({"scops.fg_ari": 0.24}, tmp_path / "a.json",
                             headline="scops: fg_ari 0.240 vs 0.198 kmeans (rbd);\n  landmark_error↓ 0.195")
    metrics = json.loads(path.read_text())
    assert metrics["headline"] == "scops: fg_ari 0.240 vs 0.198 kmeans (rbd); landmark_error↓ 0.195"   # one line
    with_headline = nbs.NotebookResult("05_train_scops", "ok", 12.0, metrics, [], path)
    without = nbs.NotebookResult("02_x", "ok", 1.0, {"b": 2.0, "a": 1.0}, [], path)
    table = nbs.summary_table([with_headline, without]).splitlines()
    assert table[0].split() == ["notebook", "status", "seconds", "headline"]
    assert table[2].endswith("scops: fg_ari 0.240 vs 0.198 kmeans (rbd); landmark_error↓ 0.195")
    assert table[3].endswith("b=2, a=1")                                  # no headline: the first metrics


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("true") is True and parse_value("cpu") == "cpu"


def _notebook(path, body: str, params: str = "quick = True\nmetrics_path = 'm.json'\nfigures_dir = 'f'\nk = 1"):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


def test_select_and_parameters(tmp_path):
    a = _notebook(tmp_path / "00_a.ipynb", "pass")
    b = _notebook(tmp_path / "01_b.ipynb", "pass")
    assert nbs.list_notebooks(tmp_path) == [a, b]
    assert nbs.select([a, b], ["01"]) == [b]
    with pytest.raises(ValueError, match="matches no notebook"):
        nbs.select([a, b], ["zz"])
    assert nbs.notebook_parameters(a)["k"] == 1
    with pytest.raises(FileNotFoundError, match="does not exist"):
        nbs.list_notebooks(tmp_path / "missing")


@pytest.mark.notebook
def test_run_curriculum_end_to_end(tmp_path, capsys):
    """Two tiny notebooks through papermill: one passes and writes metrics, one raises."""
    folder = tmp_path / "nb"
    folder.mkdir()
    _notebook(folder / "00_ok.ipynb",
              "from partlab.notebooks import write_metrics\nwrite_metrics({'k2': k * 2}, metrics_path)")
    _notebook(folder / "01_bad.ipynb", "raise RuntimeError('boom')")
    out = tmp_path / "out"
    results = nbs.run_curriculum(notebooks=folder, output_dir=out, parameters={"k": 4}, html=True, check=False)
    ok, bad = results
    assert ok.status == "ok" and ok.metrics == {"k2": 8}
    assert (out / "00_ok.ipynb").is_file() and (out / "html" / "00_ok.html").is_file()
    assert bad.status == "failed" and "boom" in bad.problems[0]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["status"] for s in summary] == ["ok", "failed"]
    assert "00_ok" in capsys.readouterr().out
    # the command line exits non-zero and names the failing notebook; an undeclared parameter is an error
    assert main(["run", "--notebooks", str(folder), "--output-dir", str(out), "--no-check", "--only", "01"]) == 1
    assert main(["run", "--notebooks", str(folder), "--output-dir", str(out), "--no-check",
                 "-p", "nope", "1"]) == 2
