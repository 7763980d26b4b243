"""``python -m partlab.notebooks run [--quick] [--only NAME] [-p KEY VALUE] [--html] [--jobs N] [--update-baselines]``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def parse_value(text: str):
    """``-p`` values: JSON when they parse (numbers, true/false, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_parser(prog: str = "python -m partlab.notebooks") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Run the partlab curriculum headlessly (papermill).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute notebooks into outputs/, gather metrics, compare with baselines")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="quick", action="store_true", default=True,
                      help="small and fast (default; what CI runs)")
    mode.add_argument("--full", dest="quick", action="store_false", help="full size (meant for a GPU)")
    run.add_argument("--only", action="append", metavar="NAME", help="a notebook name or prefix (repeatable)")
    run.add_argument("-p", "--parameter", nargs=2, action="append", metavar=("KEY", "VALUE"), default=[],
                     help="pass a parameter to every notebook run (e.g. -p device cpu -p seed 3)")
    run.add_argument("--output-dir", default="outputs")
    run.add_argument("--notebooks", default=None, help="folder of notebooks (default: the checkout's notebooks/)")
    run.add_argument("--html", action="store_true", help="also export each executed notebook to HTML")
    run.add_argument("--no-check", dest="check", action="store_false", help="do not compare with baselines")
    run.add_argument("-j", "--jobs", type=int, default=None, metavar="N",
                     help="notebooks run at once, longest first, each kernel on cores/N threads "
                          "(default: the number of cores)")
    run.add_argument("--update-baselines", action="store_true",
                     help="store this run's metrics as the baseline for its parameters and print what moved")
    run.add_argument("--baselines", default=None, metavar="FILE",
                     help="the baselines file (default: tests/baselines/quick.json, or full.json with --full)")
    sub.add_parser("list", help="list the curriculum")
    sub.add_parser("tidy", help="write this environment's kernelspec and language_info into every notebook, "
                                "so that JupyterLab opens them unmodified")
    return parser


def main(argv: Optional[List[str]] = None, prog: str = "python -m partlab.notebooks") -> int:
    from partlab import notebooks as nbs

    args = build_parser(prog).parse_args(argv)
    if args.command == "list":
        for path in nbs.list_notebooks():
            print(path.stem)
        return 0
    if args.command == "tidy":
        changed = [path.stem for path in nbs.list_notebooks() if nbs.tidy(path)]
        print(f"tidied {', '.join(changed)}" if changed else "every notebook already carries this kernel's metadata")
        return 0
    parameters = {key: parse_value(value) for key, value in args.parameter}
    try:
        results = nbs.run_curriculum(quick=args.quick, only=args.only, parameters=parameters,
                                     output_dir=args.output_dir, html=args.html, check=args.check,
                                     notebooks=args.notebooks, jobs=args.jobs,
                                     update_baselines=args.update_baselines, baselines_file=args.baselines)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bad = [r for r in results if r.status not in ("ok", "updated", "no baseline")]
    if bad:
        print(f"\n{len(bad)} notebook(s) did not pass: " + ", ".join(f"{r.name} ({r.status})" for r in bad),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
