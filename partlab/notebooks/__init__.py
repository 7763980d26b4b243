"""The curriculum runner: execute the notebooks headlessly with papermill and guard their metrics.

``python -m partlab.notebooks run [--quick] [--only NAME] [-p KEY VALUE] [--html]`` executes every
notebook of ``notebooks/`` (or the ones named) into ``outputs/``, each with its ``metrics_path`` and
``figures_dir`` parameters pointed there, gathers the metrics JSON files into one table, and compares
them with the stored baselines in ``tests/baselines/`` (quick mode). A metric outside its tolerance, a
missing metric or a failing notebook makes the run exit non-zero, naming what failed: the regression run.

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


def write_metrics(metrics: Mapping[str, Any], path: "str | Path", headline: Optional[str] = None) -> Path:
    """Write a notebook's metrics as JSON (folders created). NaN or infinite values raise ``ValueError``.
    ``headline``: one line, the notebook's result in words and numbers (e.g. the method against its best
    baseline, :meth:`partlab.evaluation.Benchmark.headline`), shown by the curriculum's summary table."""
    path = Path(path)
    clean = {str(k): _finite(v, str(k)) for k, v in metrics.items()}
    if headline is not None:
        clean[HEADLINE] = " ".join(str(headline).split())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(clean, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return path


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
    status: str  # "ok", "failed", "regressed"
    seconds: float
    metrics: Dict[str, Any] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    output: Optional[Path] = None


def run_notebook(path: "str | Path", output_dir: "str | Path" = "outputs", *, quick: bool = True,
                 parameters: Optional[Mapping[str, Any]] = None, html: bool = False,
                 baselines: Optional[Mapping[str, Mapping[str, float]]] = None) -> NotebookResult:
    """Execute one notebook with papermill into ``output_dir`` and check its metrics.

    The notebook receives ``quick``, ``metrics_path`` (``output_dir/metrics/NAME.json``) and
    ``figures_dir`` (``output_dir/figures/NAME``) plus ``parameters``. Progress bars are silenced
    (``PARTLAB_PROGRESS=0``) so papermill output stays readable.
    """
    import papermill as pm

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
    declared = notebook_parameters(path)
    unknown = sorted(set(parameters or {}) - set(declared))
    if unknown:
        raise ValueError(f"{name}: parameter(s) {unknown} are not declared in its parameters cell "
                         f"(it declares {sorted(declared)})")
    os.environ["PARTLAB_PROGRESS"] = "0"
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    start = time.perf_counter()
    status, problems, metrics = "ok", [], {}
    try:
        pm.execute_notebook(str(path), str(executed), parameters=params, kernel_name=KERNEL_NAME,
                            cwd=str(path.parent), progress_bar=False, log_output=False,
                            extra_arguments=["--IPKernelApp.log_level=ERROR"])   # no kernel start-up warnings
    except pm.PapermillExecutionError as exc:
        status = "failed"
        problems.append(f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}")
    seconds = time.perf_counter() - start
    if status == "ok":
        if not metrics_path.is_file():
            status = "failed"
            problems.append(f"it wrote no metrics to {metrics_path} (its last cell must call write_metrics)")
        else:
            metrics = json.loads(metrics_path.read_text())
            if baselines is not None and name in baselines:
                problems = compare(metrics, baselines[name])
                status = "regressed" if problems else "ok"
    if html and executed.is_file():
        export_html(executed, output_dir / "html" / f"{name}.html")
    return NotebookResult(name, status, seconds, metrics, problems, executed)


def export_html(notebook: "str | Path", target: "str | Path") -> Path:
    """Export an executed notebook to a standalone HTML page (readable without Jupyter)."""
    import nbformat
    from nbconvert import HTMLExporter

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(notebook), as_version=4))
    target.write_text(body, encoding="utf-8")
    return target


def _short(metrics: Mapping[str, Any], n: int = 4) -> str:
    if isinstance(metrics.get(HEADLINE), str):
        return metrics[HEADLINE]
    flat = flatten(metrics)
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


def run_curriculum(*, quick: bool = True, only: Optional[Iterable[str]] = None,
                   parameters: Optional[Mapping[str, Any]] = None, output_dir: "str | Path" = "outputs",
                   html: bool = False, check: bool = True, notebooks: "str | Path | None" = None,
                   echo=print) -> List[NotebookResult]:
    """Run the curriculum (or the notebooks in ``only``), print the summary, write ``output_dir/summary.json``."""
    paths = select(list_notebooks(notebooks), only)
    baselines = None
    if check:
        bpath = baselines_path(quick)
        baselines = json.loads(bpath.read_text()) if bpath.is_file() else {}
    results = []
    for path in paths:
        echo(f"running {path.name} ...", flush=True)
        result = run_notebook(path, output_dir, quick=quick, parameters=parameters, html=html, baselines=baselines)
        for problem in result.problems:
            echo(f"  {result.name}: {problem}")
        results.append(result)
    out = Path(output_dir)
    summary = [{"notebook": r.name, "status": r.status, "seconds": round(r.seconds, 2), "metrics": r.metrics,
                "problems": r.problems} for r in results]
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    echo("")
    echo(summary_table(results))
    echo(f"\nexecuted notebooks, figures and metrics are in {out.resolve()}"
         + (f" (HTML in {out.resolve() / 'html'})" if html else ""))
    return results


from partlab.notebooks.session import Session, setup, training_summary  # noqa: E402  (the notebooks' setup call)
