"""``python -m partlab.features build-standin [--version V] [--steps N] [--out FILE]``: rebuild an offline stand-in;
``python -m partlab.features info``: which features ``"auto"`` picks on this machine."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    from partlab.features.standin import STANDIN_DEFAULT, STANDIN_VERSIONS

    parser = argparse.ArgumentParser(prog="python -m partlab.features", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build-standin", help="train the stand-in CNN (label-free) and write it to data/standin/")
    build.add_argument("--version", default=STANDIN_DEFAULT, choices=list(STANDIN_VERSIONS),
                       help=f"which stand-in's recipe (default {STANDIN_DEFAULT}, the default features)")
    build.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped recipe)")
    build.add_argument("--out", default=None, help="output file (default: data/standin/<version>.pt)")
    sub.add_parser("info", help="say which features features='auto' uses here")
    args = parser.parse_args(argv)
    if args.command == "build-standin":
        from partlab.features.standin import build_standin, standin_path

        record = build_standin(args.out, version=args.version, steps=args.steps)
        print(json.dumps({k: record[k] for k in ("final_loss", "seconds", "machine")}))
        print(f"wrote {args.out or standin_path(args.version)}")
        return 0
    from partlab.features import get_extractor

    get_extractor("auto", device="cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
