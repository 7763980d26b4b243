"""Speed of the synthetic world (prints numbers; never part of the tests).

    python scripts/bench_synthetic.py            # or: make bench
    python scripts/bench_synthetic.py --strict   # exit 1 if 1,000 samples of 64 px take over 2 s

Single process, one torch thread, categories in turn (sample i is CATEGORIES[i % 4]), default
knobs unless stated; each line is the best of ``--repeat`` runs (other load only slows a run down).
The target: 1,000 samples of 64 x 64 in under 2 s on one core.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from typing import Callable

import torch

from partlab.data.synthetic import CATEGORIES, SyntheticClips, SyntheticConfig, SyntheticParts, render, render_clip

BUDGET_S = 2.0


def timed(label: str, n: int, unit: str, fn: Callable[[int], object], repeat: int) -> float:
    """Best wall time of ``repeat`` runs of fn(0..n-1) (the minimum filters out other load)."""
    for i in range(4):          # warm the per-size caches (pixel grid, noise bank)
        fn(i)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, time.perf_counter() - start)
    print(f"{label}: {best:.2f} s ({n / best:,.0f} {unit}/s, {torch.get_num_threads()} thread)")
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="samples for the 64 px runs (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement, the best is shown (default 3)")
    parser.add_argument("--strict", action="store_true", help=f"exit 1 if the 64 px run exceeds {BUDGET_S} s")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}, "
          f"best of {args.repeat}")
    n, r = args.n, args.repeat

    def cat(i: int) -> str:
        return CATEGORIES[i % len(CATEGORIES)]

    main_s = timed(f"render {n} x 64px", n, "samples", lambda i: render(cat(i), i, size=64), r)
    parts = SyntheticParts("all", size=64, length=n)
    timed(f"SyntheticParts[i] {n} x 64px (torch)", n, "samples", lambda i: parts[i], r)
    hard = SyntheticConfig.hard()
    timed(f"render {n} x 64px, hard config", n, "samples", lambda i: render(cat(i), i, size=64, config=hard), r)
    timed(f"render {n // 2} x 128px", n // 2, "samples", lambda i: render(cat(i), i, size=128), r)
    timed(f"render {n // 5} x 256px", n // 5, "samples", lambda i: render(cat(i), i, size=256), r)
    pairs = SyntheticClips("all", size=64, length=n, frames=2)
    timed(f"SyntheticClips[i] {n // 2} frame pairs x 64px", n // 2, "pairs", lambda i: pairs[i], r)
    timed(f"render_clip {n // 20} x 16 frames x 64px", n // 20, "clips",
          lambda i: render_clip(cat(i), i, frames=16, size=64), r)
    ok = main_s <= BUDGET_S * n / 1000
    print(f"budget: 1000 x 64px in {BUDGET_S:.1f} s -> {'OK' if ok else 'TOO SLOW'} "
          f"({main_s * 1000 / n:.2f} s per 1000)")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
