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


# --- baselines keyed by parameters, the history, the report, parallel runs ---------------------------------

from partlab.notebooks import regression, report  # noqa: E402


def test_a_baseline_is_found_only_for_the_parameters_that_made_it():
    entries = [{"parameters": {"quick": True, "seed": 0, "size": [64, 64]}, "metrics": {"a": {"value": 1.0}}}]
    assert regression.find(entries, {"seed": 0, "quick": True, "size": (64, 64), "metrics_path": "x"}) is not None
    assert regression.find(entries, {"seed": 1, "quick": True, "size": (64, 64)}) is None
    assert regression.difference(entries, {"seed": 1, "quick": True, "size": [64, 64]}) == \
        "the nearest stored one has seed=0 (this run: 1)"
    assert "none is stored" in regression.difference([], {"seed": 1})


def test_update_entry_keeps_tolerances_and_floors_and_says_what_moved():
    entries = [{"parameters": {"seed": 0}, "metrics": {"fg_ari": {"value": 0.235, "atol": 0.05, "min": 0.1},
                                                       "err": {"max": 0.3}, "gone": {"value": 1.0}}}]
    entry, changes = regression.update_entry(entries, {"seed": 1}, {"fg_ari": 0.179, "err": 0.2, "extra": 5.0})
    assert entry["parameters"] == {"seed": 1} and len(entries) == 2 and entries[0]["parameters"] == {"seed": 0}
    assert entry["metrics"] == {"fg_ari": {"value": 0.179, "atol": 0.05, "min": 0.1}, "err": {"max": 0.3}}
    assert "new: fg_ari = 0.179" in changes
    entry, changes = regression.update_entry(entries, {"seed": 0}, {"fg_ari": 0.2, "err": 0.2}, seconds=12.4)
    assert len(entries) == 2 and entries[0] is entry and entry["seconds"] == 12
    assert "fg_ari 0.235 -> 0.2" in changes and any(c.startswith("gone: gone") for c in changes)
    fresh, _ = regression.update_entry([], {"seed": 0}, {"x": 2.0, "name": "text"})
    assert fresh["metrics"] == {"x": dict(regression.DEFAULT_RULE, value=2.0)}


def test_the_old_unkeyed_layout_is_refused_with_the_fix(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({"05_x": {"a": {"value": 1}}}))
    with pytest.raises(ValueError, match="--update-baselines"):
        regression.load(tmp_path / "b.json")
    assert regression.load(tmp_path / "missing.json") == {}


def test_write_metrics_checks_the_headline_metrics(tmp_path):
    path = nbs.write_metrics({"a": {"b": 1.5}, "c": "x"}, tmp_path / "m.json", headline="h", headline_metrics=["a.b"])
    assert json.loads(path.read_text())["headline_metrics"] == ["a.b"]
    with pytest.raises(ValueError, match=r"\['c', 'zz'\]"):
        nbs.write_metrics({"a": 1.0, "c": "x"}, tmp_path / "n.json", headline_metrics=["a", "c", "zz"])


def test_moved_metrics_rank_by_tolerance():
    moved = report.moved_metrics({"a": 0.30, "b": 1.0, "c": 5.0, "d": 0.50001},
                                 {"a": {"value": 0.20, "atol": 0.05}, "b": {"value": 1.0}, "c": {"value": 4.0, "rtol": 1.0},
                                  "d": {"value": 0.5, "atol": 0.03}})                 # d: rounding, not a move
    assert [m["name"] for m in moved] == ["a", "c"] and moved[0]["outside"] and not moved[1]["outside"]


TINY = ("from partlab.notebooks import write_metrics\nimport matplotlib.pyplot as plt, os\n"
        "os.makedirs(figures_dir, exist_ok=True)\nfig, ax = plt.subplots(); ax.plot([0, seed]); "
        "fig.savefig(f'{figures_dir}/line.png')\n"
        "write_metrics({'score': 0.5 + 0.1 * seed, 'threads': int(os.environ.get('OMP_NUM_THREADS', 0))}, "
        "metrics_path, headline=f'score {0.5 + 0.1 * seed:.2f}', headline_metrics=['score'])")
PARAMS = "quick = True\nmetrics_path = 'm.json'\nfigures_dir = 'f'\nseed = 0"


@pytest.mark.notebook
def test_a_run_with_other_parameters_has_no_baseline_until_one_is_stored(tmp_path, capfd):
    folder, out, bfile = tmp_path / "nb", tmp_path / "out", tmp_path / "baselines.json"
    folder.mkdir()
    _notebook(folder / "00_tiny.ipynb", TINY, PARAMS)
    run = ["run", "--notebooks", str(folder), "--output-dir", str(out), "--baselines", str(bfile), "--jobs", "1"]
    # seed 0 stores the first baseline; then a seed-1 run has none: "no baseline", exit 0, not "regressed"
    assert main(run + ["--update-baselines"]) == 0
    first = capfd.readouterr()
    assert "new: score = 0.5" in first.out
    noise = [line for line in (first.out + first.err).splitlines()          # the kernels' stderr included
             if "warning" in line.lower() or "Kernel is running" in line]
    assert not noise, noise
    assert main(run + ["-p", "seed", "1"]) == 0
    text = capfd.readouterr().out
    assert "no baseline" in text and "seed=0 (this run: 1)" in text and "regressed" not in text
    # --update-baselines stores a seed-1 entry beside the seed-0 one; then seed 1 passes
    assert main(run + ["-p", "seed", "1", "--update-baselines"]) == 0
    assert "[seed=1]: new: score = 0.6" in capfd.readouterr().out
    stored = regression.load(bfile)["00_tiny"]
    assert sorted(e["parameters"]["seed"] for e in stored) == [0, 1]
    assert main(run + ["-p", "seed", "1"]) == 0
    assert json.loads((out / "summary.json").read_text())[0]["status"] == "ok"
    # a metric pushed past its tolerance still fails loudly, naming the metric
    for entry in stored:
        entry["metrics"]["score"]["value"] += 0.5
    regression.save({"00_tiny": stored}, bfile)
    assert main(run + ["-p", "seed", "1"]) == 1
    captured = capfd.readouterr()
    assert "'score'" in captured.out and "00_tiny (regressed)" in captured.err
    # every run left one line in the history, with the commit and its parameters
    history = regression.read_history(out / "history.jsonl")
    assert len(history) == 5 and [h["parameters"]["seed"] for h in history] == [0, 1, 1, 1, 1]
    assert history[-1]["status"] == "regressed" and history[-1]["metrics"]["score"] == pytest.approx(0.6)
    assert history[-1]["headline_metrics"] == ["score"] and history[-1]["commit"]


@pytest.mark.notebook
def test_parallel_run_writes_the_report(tmp_path, capsys):
    folder, out = tmp_path / "nb", tmp_path / "out"
    folder.mkdir()
    _notebook(folder / "00_tiny.ipynb", TINY, PARAMS)
    _notebook(folder / "01_other.ipynb", TINY, PARAMS)
    _notebook(folder / "02_bad.ipynb", "raise RuntimeError('boom')", PARAMS)
    results = nbs.run_curriculum(notebooks=folder, output_dir=out, html=True, check=False, jobs=2)
    assert [r.name for r in results] == ["00_tiny", "01_other", "02_bad"]           # curriculum order
    assert [r.status for r in results] == ["ok", "ok", "failed"]
    assert "2 at a time" in capsys.readouterr().out
    assert all(r.metrics["threads"] >= 1 for r in results[:2])                       # each kernel limited
    executed = nbformat.read(str(out / "02_bad.ipynb"), as_version=4)                # kept, with the traceback
    from nbformat.sign import NotebookNotary
    assert NotebookNotary().check_signature(nbformat.read(str(out / "00_tiny.ipynb"), as_version=4))  # trusted
    assert any(o.get("ename") == "RuntimeError" for c in executed.cells for o in c.get("outputs", []))
    page = (out / "index.html").read_text()
    for name in ("00_tiny", "01_other", "02_bad"):
        assert f'href="html/{name}.html"' in page
    assert 'src="figures/00_tiny/line.png"' in page and "RuntimeError: boom" in page
    assert 'src="report/trend_00_tiny.png"' in page and (out / "report" / "trend_00_tiny.png").is_file()


@pytest.mark.notebook
def test_a_kernel_that_dies_fails_its_notebook_only(tmp_path):
    folder = tmp_path / "nb"
    folder.mkdir()
    _notebook(folder / "00_dead.ipynb", "import os\nos._exit(1)", PARAMS)
    _notebook(folder / "01_tiny.ipynb", TINY, PARAMS)
    dead, tiny = nbs.run_curriculum(notebooks=folder, output_dir=tmp_path / "out", check=False, echo=lambda *a, **k: None)
    assert dead.status == "failed" and "DeadKernelError" in dead.problems[0]
    assert tiny.status == "ok"
    with pytest.raises(ValueError, match=r"\['nope'\] are not declared"):            # checked before any run
        nbs.run_curriculum(notebooks=folder, output_dir=tmp_path / "out", parameters={"nope": 1}, jobs=2)


def test_tidy_writes_the_kernels_metadata_once(tmp_path):
    path = _notebook(tmp_path / "00_a.ipynb", "pass")
    assert nbs.tidy(path) is True and nbs.tidy(path) is False
    metadata = nbformat.read(str(path), as_version=4).metadata
    assert metadata["kernelspec"] == nbs.kernel_metadata()["kernelspec"]
    assert metadata["language_info"]["version"] == nbs.kernel_metadata()["language_info"]["version"]
