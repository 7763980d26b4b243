"""The ``partlab`` command line.

    partlab info                               what partlab will use here (device, features, data)
    partlab render --category bird -n 16 out.png   a grid of synthetic samples with part overlays
    partlab notebooks run [--quick] [--only NAME] [-p KEY VALUE] [--html]   the curriculum (papermill)
    partlab notebooks list

Errors a user can fix (a missing folder, a bad argument) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional


def _cmd_info(args) -> int:
    from partlab import utils

    print(f"partlab {__import__('partlab').__version__}")
    print(f"device (auto): {utils.describe_device('auto')}")
    from partlab.data import synthetic

    print(f"synthetic categories: {', '.join(synthetic.CATEGORIES)}")
    return 0


def _cmd_render(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import torch

    from partlab import viz
    from partlab.data.synthetic import SyntheticParts

    data = SyntheticParts(category=args.category, size=args.size, length=args.n, seed=args.seed, split=args.split)
    items = [data[i] for i in range(len(data))]
    images = torch.stack([it["image"] for it in items])
    labels = torch.stack([it["parts"] for it in items])
    landmarks = torch.stack([it["landmarks"] for it in items])
    visible = torch.stack([it["visible"] for it in items])
    fig = viz.show_parts(images, labels, landmarks=landmarks, visible=visible, side_by_side=True,
                         ncols=min(8, args.n))
    path = viz.save_figure(fig, args.output)
    print(f"wrote {path} ({args.n} {args.category} samples, {args.size}px, seed {args.seed}, split {args.split})")
    return 0


def _cmd_notebooks(args) -> int:
    from partlab.notebooks.__main__ import main as notebooks_main

    return notebooks_main(args.rest, prog="partlab notebooks")


COMMANDS: Dict[str, Callable] = {"info": _cmd_info, "render": _cmd_render, "notebooks": _cmd_notebooks}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="partlab", description="Self-supervised co-part segmentation toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="device, features and data partlab will use here")
    render = sub.add_parser("render", help="draw synthetic samples with part overlays to a PNG")
    render.add_argument("output", help="PNG file to write")
    render.add_argument("--category", default="bird")
    render.add_argument("-n", type=int, default=8, help="number of samples")
    render.add_argument("--size", type=int, default=64)
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--split", default="train")
    nb = sub.add_parser("notebooks", help="run or list the curriculum notebooks (see `partlab notebooks -h`)",
                        add_help=False)
    nb.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError, IndexError) as exc:
        print(f"partlab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
