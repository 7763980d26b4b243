"""The curriculum runner: execute the notebooks headlessly with papermill and guard their metrics.

``python -m partlab.notebooks run [--quick] [--only NAME] [-p KEY VALUE] [--html] [--jobs N]`` executes
every notebook of ``notebooks/`` (or the ones named) into ``outputs/``, ``N`` at a time, each with its
``metrics_path`` and ``figures_dir`` parameters pointed there, gathers the metrics JSON files into one
table, and compares each notebook's metrics with the stored baseline of the same parameters in
``tests/baselines/`` (:mod:`partlab.notebooks.regression`). A metric outside its tolerance, a missing
metric or a failing notebook makes the run exit non-zero, naming what failed: the regression run. A run
with parameters no baseline was made with says "no baseline"; ``--update-baselines`` stores one. Each run
appends to ``outputs/history.jsonl`` and writes ``outputs/index.html`` (:mod:`partlab.notebooks.report`).

Notebook contract (DESIGN.md): one cell tagged ``parameters`` defining at least ``quick``, ``device``,
``dataset``, ``data_root``, ``seed``, ``metrics_path``; no committed outputs; the last cell writes the
metrics JSON (use :func:`write_metrics`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

REQUIRED_PARAMETERS = ("quick", "device", "dataset", "data_root", "seed", "metrics_path")
KERNEL_NAME = "python3"


def repo_root() -> Path:
    """The checkout partlab is installed from (editable install), else the current folder."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "notebooks").is_dir() else Path.cwd()


def notebooks_dir() -> Path:
    return repo_root() / "notebooks"


def baselines_path(quick: bool = True) -> Path:
    return repo_root() / "tests" / "baselines" / ("quick.json" if quick else "full.json")


def list_notebooks(folder: "str | Path | None" = None) -> List[Path]:
    """The curriculum in order: ``notebooks/NN_name.ipynb`` sorted by name."""
    folder = Path(folder) if folder is not None else notebooks_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"notebooks folder {folder} does not exist; run from the partlab checkout "
                                f"or pass --notebooks DIR")
    return sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))


def select(notebooks: Sequence[Path], only: Optional[Iterable[str]]) -> List[Path]:
    """Keep the notebooks named in ``only`` (stem, prefix such as ``00`` or substring)."""
    if not only:
        return list(notebooks)
    chosen = []
    for name in only:
        hits = [p for p in notebooks if p.stem == name or p.stem.startswith(name) or name in p.stem]
        if not hits:
            raise ValueError(f"--only {name!r} matches no notebook; choose from {[p.stem for p in notebooks]}")
        chosen.extend(h for h in hits if h not in chosen)
    return chosen


def notebook_parameters(path: "str | Path") -> Dict[str, Any]:
    """The names (and literal values, where simple) assigned in a notebook's ``parameters`` cell."""
    import ast

    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            values = {}
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            try:
                                values[target.id] = ast.literal_eval(node.value)
                            except ValueError:
                                values[target.id] = None
            return values
    raise ValueError(f"{path} has no cell tagged 'parameters'")


def kernel_metadata(kernel_name: str = KERNEL_NAME) -> Dict[str, Any]:
    """The notebook metadata JupyterLab writes when it opens a notebook on this environment's kernel: the
    kernelspec (with its display name) and the kernel's ``language_info`` (with this Python's version). A
    notebook that carries exactly this opens unmodified."""
    from ipykernel.ipkernel import IPythonKernel
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(kernel_name)
    return {"kernelspec": {"display_name": spec.display_name, "language": spec.language, "name": kernel_name},
            "language_info": json.loads(json.dumps(IPythonKernel.language_info))}


def tidy(path: "str | Path") -> bool:
    """Write :func:`kernel_metadata` into a notebook (and nothing else); returns whether it changed."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    wanted = kernel_metadata(nb.metadata.get("kernelspec", {}).get("name", KERNEL_NAME))
    if all(nb.metadata.get(key) == value for key, value in wanted.items()):
        return False
    nb.metadata.update(wanted)
    nbformat.write(nb, str(path))
    return True


def _finite(value: Any, key: str) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _finite(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v, key) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"metric {key!r} is {value}: a report must not carry NaN or infinity")
    return value


HEADLINE = "headline"
HEADLINE_METRICS = "headline_metrics"


def write_metrics(metrics: Mapping[str, Any], path: "str | Path", headline: Optional[str] = None,
                  headline_metrics: Optional[Sequence[str]] = None) -> Path:
    """Write a notebook's metrics as JSON (folders created). NaN or infinite values raise ``ValueError``.

    ``headline``: one line, the notebook's result in words and numbers (e.g. the method against its best
    baseline, :meth:`partlab.evaluation.Benchmark.headline`), shown by the summary table and the report.
    ``headline_metrics``: the (flattened) metric names the headline is made of
    (:meth:`partlab.evaluation.Benchmark.headline_metrics`); the report plots them over the runs. A name
    that is not a numeric metric raises ``ValueError``."""
    path = Path(path)
    clean = {str(k): _finite(v, str(k)) for k, v in metrics.items()}
    if headline_metrics is not None:
        flat = flatten(clean)
        bad = [k for k in headline_metrics if not isinstance(flat.get(k), (int, float)) or isinstance(flat.get(k), bool)]
        if bad:
            raise ValueError(f"headline_metrics {bad} are not numeric metrics of this notebook")
        clean[HEADLINE_METRICS] = [str(k) for k in headline_metrics]
    if headline is not None:
        clean[HEADLINE] = " ".join(str(headline).split())
    from partlab.utils import atomic_write_text

    return atomic_write_text(path, json.dumps(clean, indent=2, sort_keys=True))


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested metrics -> ``{"a.b": value}``."""
    flat: Dict[str, Any] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def compare(metrics: Mapping[str, Any], expected: Mapping[str, Mapping[str, float]]) -> List[str]:
    """Check metrics against baselines; return one message per violation (empty list = pass).

    Each baseline entry is a dict with any of ``value`` (+ ``atol``, ``rtol``: pass when
    ``|x - value| <= atol + rtol * |value|``), ``min`` and ``max``.
    """
    flat = flatten(metrics)
    problems = []
    for name, rule in expected.items():
        if name not in flat:
            problems.append(f"metric {name!r} is missing (expected {rule})")
            continue
        x = flat[name]
        if not isinstance(x, (int, float)):
            problems.append(f"metric {name!r} = {x!r} is not a number")
            continue
        if "value" in rule:
            tol = rule.get("atol", 0.0) + rule.get("rtol", 0.0) * abs(rule["value"])
            if abs(float(x) - float(rule["value"])) > tol:
                problems.append(f"metric {name!r} = {x:.6g} differs from baseline {rule['value']:.6g} by more "
                                f"than {tol:.3g}")
        if "min" in rule and float(x) < rule["min"]:
            problems.append(f"metric {name!r} = {x:.6g} is below its floor {rule['min']:.6g}")
        if "max" in rule and float(x) > rule["max"]:
            problems.append(f"metric {name!r} = {x:.6g} is above its ceiling {rule['max']:.6g}")
    return problems


@dataclass
class NotebookResult:
    name: str
    status: str  # "ok", "failed", "regressed", "no baseline", "updated" (after --update-baselines)
    seconds: float
    metrics: Dict[str, Any] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    output: Optional[Path] = None
    parameters: Dict[str, Any] = field(default_factory=dict)     # the run's effective, keyed parameters
    baseline: Optional[Dict[str, Dict[str, float]]] = None       # the rules it was compared with


def run_parameters(path: "str | Path", quick: bool = True,
                   parameters: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The parameters a run of this notebook is keyed by: the defaults of its ``parameters`` cell, then
    ``quick``, then ``parameters``, without the paths (:data:`regression.UNKEYED`)."""
    from partlab.notebooks import regression

    effective = dict(notebook_parameters(path))
    effective["quick"] = bool(quick)
    effective.update(parameters or {})
    return regression.canonical(effective)


def check_parameters(path: "str | Path", parameters: Optional[Mapping[str, Any]]) -> None:
    """``ValueError`` naming the parameters that the notebook's ``parameters`` cell does not declare."""
    declared = notebook_parameters(path)
    unknown = sorted(set(parameters or {}) - set(declared))
    if unknown:
        raise ValueError(f"{Path(path).stem}: parameter(s) {unknown} are not declared in its parameters cell "
                         f"(it declares {sorted(declared)})")


def run_notebook(path: "str | Path", output_dir: "str | Path" = "outputs", *, quick: bool = True,
                 parameters: Optional[Mapping[str, Any]] = None, html: bool = False,
                 baselines: Optional[Mapping[str, Sequence[Mapping[str, Any]]]] = None) -> NotebookResult:
    """Execute one notebook with papermill into ``output_dir`` and check its metrics.

    The notebook receives ``quick``, ``metrics_path`` (``output_dir/metrics/NAME.json``) and
    ``figures_dir`` (``output_dir/figures/NAME``) plus ``parameters``. Progress bars are silenced
    (``PARTLAB_PROGRESS=0``) so papermill output stays readable. ``baselines`` (a loaded baselines file,
    :func:`regression.load`): the metrics are compared with the entry of this run's parameters; with
    none, the status is "no baseline". A failed notebook keeps its executed copy with the traceback.
    """
    import papermill as pm

    from partlab.notebooks import regression

    path = Path(path)
    output_dir = Path(output_dir).resolve()
    name = path.stem
    metrics_path = output_dir / "metrics" / f"{name}.json"
    figures_dir = output_dir / "figures" / name
    executed = output_dir / f"{name}.ipynb"
    output_dir.mkdir(parents=True, exist_ok=True)
    if metrics_path.exists():
        metrics_path.unlink()
    params = {"quick": quick, "metrics_path": str(metrics_path), "figures_dir": str(figures_dir)}
    params.update(parameters or {})
    check_parameters(path, parameters)
    keyed = run_parameters(path, quick, parameters)
    os.environ["PARTLAB_PROGRESS"] = "0"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    start = time.perf_counter()
    status, problems, metrics, rules = "ok", [], {}, None
    try:
        pm.execute_notebook(str(path), str(executed), parameters=params, kernel_name=KERNEL_NAME,
                            cwd=str(path.parent), progress_bar=False, log_output=False,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])   # no kernel start-up warnings
    except pm.PapermillExecutionError as exc:
        status = "failed"
        problems.append(f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}")
    except Exception as exc:                          # the kernel died (memory), a cell timed out, ...
        status = "failed"
        problems.append(f"{type(exc).__name__}: {exc}".strip())
    seconds = time.perf_counter() - start
    if status == "ok":
        if not metrics_path.is_file():
            status = "failed"
            problems.append(f"it wrote no metrics to {metrics_path} (its last cell must call write_metrics)")
        else:
            metrics = json.loads(metrics_path.read_text())
            if baselines is not None:
                entries = baselines.get(name, [])
                entry = regression.find(entries, keyed)
                if entry is None:
                    status = "no baseline"
                    problems = [f"no baseline for these parameters ({regression.difference(entries, keyed)}); "
                                f"store one with --update-baselines"]
                else:
                    rules = entry["metrics"]
                    problems = compare(metrics, rules)
                    status = "regressed" if problems else "ok"
    if executed.is_file():
        trust(executed)
    if html and executed.is_file():
        export_html(executed, output_dir / "html" / f"{name}.html")
    return NotebookResult(name, status, seconds, metrics, problems, executed, keyed, rules)


def trust(notebook: "str | Path") -> bool:
    """Sign an executed notebook with this user's Jupyter notary (``jupyter trust``), so that JupyterLab shows
    its outputs and widgets (papermill stores the widget state) as they were, not as text. Returns whether
    it is trusted; a notary that cannot be written (a read-only home) leaves it untrusted."""
    import nbformat
    from nbformat.sign import NotebookNotary

    try:
        nb = nbformat.read(str(notebook), as_version=4)
        notary = NotebookNotary()
        notary.sign(nb)
        return bool(notary.check_signature(nb))
    except Exception:                                    # sqlite or permission trouble: untrusted, not a failure
        return False


def export_html(notebook: "str | Path", target: "str | Path") -> Path:
    """Export an executed notebook to a standalone HTML page (readable without Jupyter)."""
    import nbformat
    from nbconvert import HTMLExporter

    from partlab.utils import atomic_write_text

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(notebook), as_version=4))
    return atomic_write_text(target, body)


def _short(metrics: Mapping[str, Any], n: int = 4) -> str:
    if isinstance(metrics.get(HEADLINE), str):
        return metrics[HEADLINE]
    flat = flatten({k: v for k, v in metrics.items() if k != HEADLINE_METRICS})
    keys = list(flat)[:n]
    parts = []
    for k in keys:
        v = flat[k]
        parts.append(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}")
    more = len(flat) - len(keys)
    return ", ".join(parts) + (f" (+{more})" if more > 0 else "")


def summary_table(results: Sequence[NotebookResult]) -> str:
    """A plain-text table: notebook, status, seconds, and its headline (else its first metrics)."""
    rows = [("notebook", "status", "seconds", "headline")]
    rows += [(r.name, r.status, f"{r.seconds:.1f}", _short(r.metrics)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = []
    for j, row in enumerate(rows):
        lines.append("  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3])
        if j == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 11)
    return "\n".join(lines)


def available_cores() -> int:
    """The CPU cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                                    # macOS, Windows
        return max(1, os.cpu_count() or 1)


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def _limit_threads(threads: int) -> None:
    """A worker's initializer: its notebook kernels (which inherit the environment) use ``threads``."""
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)


def expected_seconds(name: str, parameters: Mapping[str, Any], baselines: Mapping[str, Any],
                     history: Sequence[Mapping[str, Any]]) -> float:
    """How long a notebook is expected to take: its last run in the history, else its baseline entry's
    ``seconds``, else infinity (unknown ones are started first)."""
    from partlab.notebooks import regression

    for record in reversed(list(history)):
        if record.get("notebook") == name and record.get("status") != "failed":
            return float(record.get("seconds", math.inf))
    entry = regression.find(baselines.get(name, []), parameters)
    return float(entry["seconds"]) if entry and "seconds" in entry else math.inf


def run_curriculum(*, quick: bool = True, only: Optional[Iterable[str]] = None,
                   parameters: Optional[Mapping[str, Any]] = None, output_dir: "str | Path" = "outputs",
                   html: bool = False, check: bool = True, notebooks: "str | Path | None" = None,
                   jobs: Optional[int] = 1, update_baselines: bool = False,
                   baselines_file: "str | Path | None" = None, echo=print) -> List[NotebookResult]:
    """Run the curriculum (or the notebooks in ``only``), print the summary, write ``output_dir/summary.json``,
    append to ``output_dir/history.jsonl`` and write the report ``output_dir/index.html``.

    ``jobs``: notebooks run at once (``None``: one per core), longest first; each job's kernel gets
    ``cores // jobs`` threads. ``update_baselines``: store each run's metrics as the baseline for its
    parameters in ``baselines_file`` (default :func:`baselines_path`) and print what moved; a run that
    breaks a floor or ceiling is not stored.
    """
    from partlab.notebooks import regression, report
    from partlab.utils import atomic_write_text

    paths = select(list_notebooks(notebooks), only)
    bpath = Path(baselines_file) if baselines_file is not None else baselines_path(quick)
    stored = regression.load(bpath) if (check or update_baselines) else {}
    out = Path(output_dir)
    history_file = out / "history.jsonl"
    history = regression.read_history(history_file)
    jobs = available_cores() if jobs is None else max(1, int(jobs))
    jobs = min(jobs, len(paths)) or 1
    for path in paths:
        check_parameters(path, parameters)
    keyed = {p.stem: run_parameters(p, quick, parameters) for p in paths}
    order = sorted(paths, key=lambda p: -expected_seconds(p.stem, keyed[p.stem], stored, history))
    kwargs = dict(quick=quick, parameters=parameters, html=html, baselines=stored if check else None)
    done: Dict[str, NotebookResult] = {}

    def finished(result: NotebookResult) -> None:
        done[result.name] = result
        if jobs > 1:
            echo(f"  {result.name}: {result.status} ({result.seconds:.0f} s)", flush=True)
        for problem in result.problems:
            echo(f"  {result.name}: {problem}", flush=True)

    if jobs == 1:
        for path in paths:
            echo(f"running {path.name} ...", flush=True)
            finished(run_notebook(path, out, **kwargs))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, available_cores() // jobs)
        echo(f"running {len(paths)} notebooks, {jobs} at a time ({threads} thread{'s' * (threads > 1)} each), "
             f"longest first ...", flush=True)
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_limit_threads, initargs=(threads,)) as pool:
            futures = {pool.submit(run_notebook, path, out, **kwargs): path for path in order}
            for future in as_completed(futures):
                try:
                    finished(future.result())
                except Exception as exc:                  # its worker process died: report, keep the others
                    path = futures[future]
                    finished(NotebookResult(path.stem, "failed", 0.0, problems=[f"{type(exc).__name__}: {exc}"],
                                            output=out.resolve() / path.name, parameters=keyed[path.stem]))
    results = [done[p.stem] for p in paths]

    if update_baselines:
        changed = False
        for r in results:
            if r.status == "failed":
                echo(f"{r.name}: failed, its baseline is left as it was")
                continue
            entries = [dict(e) for e in stored.get(r.name, [])]
            entry, changes = regression.update_entry(entries, r.parameters, flatten(r.metrics), r.seconds)
            breaks = [p for p in compare(r.metrics, entry["metrics"])]
            if breaks:
                r.status, r.problems = "regressed", breaks + ["not stored as a baseline: it breaks a floor or ceiling"]
                echo(f"{r.name}: not stored as a baseline: " + "; ".join(breaks))
                continue
            stored[r.name], changed = entries, True
            r.status, r.problems, r.baseline = "updated", [], entry["metrics"]
            label = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted((parameters or {}).items())) or "defaults"
            echo(f"{r.name} [{label}]: " + ("; ".join(changes) if changes else "baseline unchanged"))
        if changed:
            regression.save(stored, bpath)
            echo(f"baselines written to {bpath}")

    out.mkdir(parents=True, exist_ok=True)
    summary = [{"notebook": r.name, "status": r.status, "seconds": round(r.seconds, 2), "metrics": r.metrics,
                "problems": r.problems, "parameters": r.parameters} for r in results]
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    run_id = time.strftime("%Y%m%dT%H%M%S")
    commit_id = regression.commit(repo_root())
    new = [regression.history_record(r, run_id, commit_id) for r in results]
    regression.append_history(history_file, new)
    index = report.write_index(results, out, history=history + new,
                               info={"commit": commit_id, "mode": "quick" if quick else "full",
                                     "parameters": dict(parameters or {}) or "defaults", "jobs": jobs,
                                     "baselines": bpath if check else "not checked"})
    echo("")
    echo(summary_table(results))
    missing = [r.name for r in results if r.status == "no baseline"]
    if missing:
        echo(f"\nno baseline for these parameters: {', '.join(missing)} (store one with --update-baselines)")
    echo(f"\nreport: {index}\nexecuted notebooks, figures and metrics are in {out.resolve()}"
         + (f" (HTML in {out.resolve() / 'html'})" if html else ""))
    return results


from partlab.notebooks.session import Session, setup, training_summary  # noqa: E402  (the notebooks' setup call)
