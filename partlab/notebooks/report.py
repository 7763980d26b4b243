"""The regression run's report: ``outputs/index.html``, a page a person reads in a browser.

One row per notebook: a link to the executed notebook (its HTML export when there is one, else the
``.ipynb``, failed ones included, with their traceback), its status, seconds, headline, the guarded
metrics that moved against their baseline, and thumbnails of the figures it saved. Below, one trend plot
per notebook: its headline metrics over the runs in ``history.jsonl`` with the same parameters, labelled
by commit.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from partlab.notebooks import regression

STATUS_COLOURS = {"ok": "#1a7f37", "updated": "#1a7f37", "failed": "#cf222e", "regressed": "#cf222e",
                  "no baseline": "#9a6700"}
MAX_MOVED = 6
NOISE = 0.1                # a metric "moved" when it differs from its baseline by more than this part of its tolerance
MAX_THUMBNAILS = 6

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #1f2328; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #d0d7de; padding: 6px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
.status { font-weight: 600; white-space: nowrap; }
.moved { font-family: ui-monospace, monospace; font-size: 0.85em; }
.bad { color: #cf222e; }
img.thumb { height: 56px; max-width: 160px; object-fit: cover; margin: 0 4px 4px 0; border: 1px solid #d0d7de; }
.trend { display: inline-block; margin: 0 12px 12px 0; }
"""


def moved_metrics(flat: Mapping[str, Any], rules: Optional[Mapping[str, Mapping[str, float]]]) -> List[Dict[str, Any]]:
    """The guarded metrics that differ from their baseline by more than :data:`NOISE` of their tolerance,
    largest move (in tolerances) first:
    ``[{"name", "baseline", "value", "delta", "tolerance", "outside"}]``."""
    moved = []
    for name, rule in (rules or {}).items():
        x = flat.get(name)
        if "value" not in rule or not isinstance(x, (int, float)) or isinstance(x, bool):
            continue
        delta = float(x) - float(rule["value"])
        tol = rule.get("atol", 0.0) + rule.get("rtol", 0.0) * abs(rule["value"])
        if abs(delta) <= NOISE * tol or delta == 0:          # rounding of the stored value, not a move
            continue
        moved.append({"name": name, "baseline": rule["value"], "value": float(x), "delta": delta,
                      "tolerance": tol, "outside": abs(delta) > tol})
    return sorted(moved, key=lambda m: -abs(m["delta"]) / max(m["tolerance"], 1e-12))


def _link(result, output_dir: Path) -> str:
    page = output_dir / "html" / f"{result.name}.html"
    target = page if page.is_file() else (Path(result.output) if result.output else None)
    if target is None or not Path(target).is_file():
        return html.escape(result.name)
    return f'<a href="{html.escape(os.path.relpath(target, output_dir))}">{html.escape(result.name)}</a>'


def _thumbnails(result, output_dir: Path) -> str:
    folder = output_dir / "figures" / result.name
    figures = sorted(folder.glob("*.png")) if folder.is_dir() else []
    tags = [f'<a href="{html.escape(os.path.relpath(f, output_dir))}"><img class="thumb" loading="lazy" '
            f'src="{html.escape(os.path.relpath(f, output_dir))}" title="{html.escape(f.stem)}" '
            f'alt="{html.escape(f.stem)}"></a>' for f in figures[:MAX_THUMBNAILS]]
    more = len(figures) - MAX_THUMBNAILS
    return "".join(tags) + (f" +{more} more" if more > 0 else "")


def _moved_cell(result) -> str:
    from partlab.notebooks import flatten

    lines = []
    for m in moved_metrics(flatten(result.metrics), result.baseline)[:MAX_MOVED]:
        text = (f"{html.escape(m['name'])} {m['baseline']:.4g} &rarr; {m['value']:.4g} ({m['delta']:+.3g}, "
                f"tolerance {m['tolerance']:.3g})")
        lines.append(f'<span class="{"bad" if m["outside"] else "ok"}">{text}</span>')
    problems = [f'<span class="bad">{html.escape(p)}</span>' for p in result.problems]
    return '<div class="moved">' + "<br>".join(problems + lines) + "</div>" if problems or lines else ""


def trend_figure(records: Sequence[Mapping[str, Any]], keys: Sequence[str], title: str, path: "str | Path") -> Optional[Path]:
    """Plot ``keys`` of the history ``records`` (oldest first) against the run, labelled by commit; ``None``
    when there is nothing to plot."""
    points = [r for r in records if any(k in r.get("metrics", {}) for k in keys)]
    if not points or not keys:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from partlab.viz import save_figure

    fig, ax = plt.subplots(figsize=(4.6, 2.6))
    xs = list(range(len(points)))
    for key in keys:
        ys = [r["metrics"].get(key, float("nan")) for r in points]
        ax.plot(xs, ys, marker="o", label=key)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(r.get("commit", "?"))[:12] for r in points], rotation=30, ha="right", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    path = save_figure(fig, path)
    plt.close(fig)
    return path


def write_index(results: Sequence, output_dir: "str | Path", *, history: Sequence[Mapping[str, Any]] = (),
                info: Optional[Mapping[str, Any]] = None) -> Path:
    """Write ``output_dir/index.html`` (and the trend plots under ``output_dir/report/``); returns its path."""
    from partlab.notebooks import HEADLINE, HEADLINE_METRICS

    output_dir = Path(output_dir).resolve()
    rows = []
    for r in results:
        colour = STATUS_COLOURS.get(r.status, "#1f2328")
        rows.append(f"<tr><td>{_link(r, output_dir)}</td>"
                    f'<td class="status" style="color:{colour}">{html.escape(r.status)}</td>'
                    f"<td>{r.seconds:.1f}</td><td>{html.escape(str(r.metrics.get(HEADLINE, '')))}</td>"
                    f"<td>{_moved_cell(r)}</td><td>{_thumbnails(r, output_dir)}</td></tr>")
    trends = []
    for r in results:
        keys = list(r.metrics.get(HEADLINE_METRICS, []))
        mine = [h for h in history if h.get("notebook") == r.name
                and h.get("parameters") == regression.canonical(r.parameters)]
        figure = trend_figure(mine, keys, r.name, output_dir / "report" / f"trend_{r.name}.png")
        if figure is not None:
            src = html.escape(os.path.relpath(figure, output_dir))
            trends.append(f'<div class="trend"><img src="{src}" alt="trend of {html.escape(r.name)}"></div>')
    info_items = "".join(f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>"
                         for k, v in (info or {}).items())
    counts = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>partlab regression run</title><style>{STYLE}</style></head>
<body>
<h1>partlab regression run</h1>
<p id="counts">{html.escape(", ".join(f"{n} {s}" for s, n in sorted(counts.items())))}</p>
<ul>{info_items}</ul>
<table id="notebooks">
<tr><th>notebook</th><th>status</th><th>seconds</th><th>headline</th><th>moved against the baseline</th><th>figures</th></tr>
{chr(10).join(rows)}
</table>
<h2>Headline metrics over the runs (same parameters; <a href="history.jsonl">history.jsonl</a>)</h2>
{"".join(trends) or "<p>no headline metrics recorded yet</p>"}
</body></html>
"""
    from partlab.utils import atomic_write_text

    return atomic_write_text(output_dir / "index.html", page)
