"""Regression baselines keyed by the parameters that made them, and the metrics history of the runs.

A baselines file (``tests/baselines/quick.json``, ``full.json``) maps each notebook to a list of entries::

    {"05_train_scops": [{"parameters": {"quick": true, "seed": 0, "category": "bird", ...},
                         "metrics": {"scops.fg_ari": {"value": 0.235, "atol": 0.05, "min": 0.1}, ...},
                         "seconds": 250}]}

``parameters`` are the run's effective parameters: the defaults of the notebook's ``parameters`` cell with
the runner's and the user's values on top, less the paths that differ between machines
(:data:`UNKEYED`). A run is compared with the entry of exactly its parameters; with none it has "no
baseline" (never "regressed"). :func:`update_entry` writes a run's metrics as the new values for its
parameters, keeping the tolerances, floors and ceilings (floors and ceilings are claims, not snapshots),
and says what moved.

The history (``outputs/history.jsonl``) gets one line per notebook run: when, the commit, the parameters,
the status, the seconds, the headline and every numeric metric; :mod:`partlab.notebooks.report` plots it.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

UNKEYED = ("metrics_path", "figures_dir", "data_root")   # where files go or come from, not what was run
RULE_KEYS = ("atol", "rtol", "min", "max")
DEFAULT_RULE = {"atol": 0.02, "rtol": 0.1}            # for a metric no entry of the notebook has a rule for


def canonical(parameters: Mapping[str, Any]) -> Dict[str, Any]:
    """Parameters as JSON gives them back (tuples become lists), sorted, without :data:`UNKEYED`."""
    clean = {k: v for k, v in parameters.items() if k not in UNKEYED}
    return json.loads(json.dumps(clean, sort_keys=True, default=str))


def load(path: "str | Path") -> Dict[str, List[Dict[str, Any]]]:
    """Read a baselines file; a missing file is an empty one. An entry in the old unkeyed layout (rules
    directly under the notebook's name) is an error that says how to rewrite it."""
    path = Path(path)
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    for name, entries in data.items():
        if not isinstance(entries, list) or not all(isinstance(e, dict) and "parameters" in e and "metrics" in e
                                                    for e in entries):
            raise ValueError(f"{path}: the baseline of {name!r} is not a list of {{'parameters', 'metrics'}} "
                             f"entries; rewrite it with `python -m partlab.notebooks run --only {name} "
                             f"--update-baselines`")
    return data


def save(baselines: Mapping[str, List[Dict[str, Any]]], path: "str | Path") -> Path:
    """Write a baselines file atomically (one key per line, sorted, so that a diff shows what moved)."""
    from partlab.utils import atomic_write_text

    return atomic_write_text(path, json.dumps(baselines, indent=1, sort_keys=True) + "\n")


def find(entries: Sequence[Mapping[str, Any]], parameters: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The entry made with exactly these parameters, else ``None``."""
    key = canonical(parameters)
    for entry in entries:
        if canonical(entry["parameters"]) == key:
            return dict(entry)
    return None


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def difference(entries: Sequence[Mapping[str, Any]], parameters: Mapping[str, Any]) -> str:
    """Why no entry matches: the parameters of the nearest stored entry that differ from this run's."""
    key = canonical(parameters)
    if not entries:
        return "none is stored for this notebook"
    best = None
    for entry in entries:
        stored = canonical(entry["parameters"])
        diff = [(k, stored.get(k, "<unset>"), key.get(k, "<unset>")) for k in sorted(set(stored) | set(key))
                if stored.get(k, "<unset>") != key.get(k, "<unset>")]
        if best is None or len(diff) < len(best):
            best = diff
    return "the nearest stored one has " + ", ".join(f"{k}={_show(old)} (this run: {_show(new)})"
                                                    for k, old, new in best)


def numeric(flat: Mapping[str, Any]) -> Dict[str, float]:
    """The numbers of a flat metrics mapping (booleans and strings left out)."""
    return {k: float(v) for k, v in flat.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))}


def _round(value: float) -> float:
    return float(f"{value:.4g}")


def update_entry(entries: List[Dict[str, Any]], parameters: Mapping[str, Any], flat_metrics: Mapping[str, Any],
                 seconds: Optional[float] = None) -> Tuple[Dict[str, Any], List[str]]:
    """Store a run's metrics as the baseline for its parameters (in place in ``entries``).

    The guarded metrics are those of the entry for these parameters, else those of the notebook's other
    entries (first entry first), else every numeric metric with :data:`DEFAULT_RULE`. Each keeps its
    tolerances, floor and ceiling; only ``value`` is replaced. Returns the entry and one line per change
    (``"scops.fg_ari 0.235 -> 0.179"``, ``"new: ..."``, ``"gone: ..."``).
    """
    values = numeric(flat_metrics)
    own = find(entries, parameters)
    templates: Dict[str, Dict[str, Any]] = {}
    for entry in ([own] if own else []) + list(entries):
        for name, rule in entry["metrics"].items():
            templates.setdefault(name, rule)
    if not templates:
        templates = {name: dict(DEFAULT_RULE, value=v) for name, v in values.items()}
    rules, changes = {}, []
    old_rules = own["metrics"] if own else {}
    for name, template in sorted(templates.items()):
        if name not in values:
            if name in old_rules:
                changes.append(f"gone: {name} (was {old_rules[name].get('value')}; not in this run's metrics)")
            continue
        rule = {k: template[k] for k in RULE_KEYS if k in template}
        if "value" in template or not (set(rule) & {"min", "max"}):
            rule["value"] = _round(values[name])
        rules[name] = rule
        old = old_rules.get(name, {}).get("value")
        if name not in old_rules:
            changes.append(f"new: {name} = {rule.get('value', values[name]):.4g}")
        elif old is not None and "value" in rule and rule["value"] != old:
            changes.append(f"{name} {old:.4g} -> {rule['value']:.4g}")
    entry = {"parameters": canonical(parameters), "metrics": rules}
    if seconds is not None:
        entry["seconds"] = int(round(seconds))
    if own:
        index = next(i for i, e in enumerate(entries) if canonical(e["parameters"]) == canonical(parameters))
        entries[index] = entry
    else:
        entries.append(entry)
    return entry, changes


def commit(root: "str | Path") -> str:
    """``git describe``-like: the short commit of ``root``, ``+dirty`` when the tree has changes;
    ``"unknown"`` outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=20)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=20)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def append_history(path: "str | Path", records: Sequence[Mapping[str, Any]]) -> Path:
    """Append one JSON line per record to the history file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True, default=str) + "\n")
    return path


def read_history(path: "str | Path") -> List[Dict[str, Any]]:
    """The history's records, oldest first; lines that do not parse (a run killed mid-write) are skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def history_record(result, run_id: str, commit_id: str) -> Dict[str, Any]:
    """The history line of one :class:`partlab.notebooks.NotebookResult`."""
    from partlab.notebooks import HEADLINE, HEADLINE_METRICS, flatten

    flat = flatten({k: v for k, v in result.metrics.items() if k not in (HEADLINE, HEADLINE_METRICS)})
    return {"run": run_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "commit": commit_id,
            "notebook": result.name, "parameters": canonical(result.parameters), "status": result.status,
            "seconds": round(result.seconds, 2), "headline": result.metrics.get(HEADLINE),
            "headline_metrics": list(result.metrics.get(HEADLINE_METRICS, [])), "metrics": numeric(flat)}
