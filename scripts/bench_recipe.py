"""Throughput, memory and finiteness of any method's recipe, as it trains (prints numbers; never a test).

    python scripts/bench_recipe.py scops                          # the paper recipe on this machine's device
    python scripts/bench_recipe.py motion --amp bf16 --channels-last --workers 8 --json bench.jsonl
    python scripts/bench_recipe.py contrastive --recipe quick --device cpu --steps 5
    python scripts/bench_recipe.py maskcontrast --set fit.batch_size=16 --steps 3 --warmup 1   # a CPU smoke

Builds the recipe as ``partlab train`` does (the paper recipes with ``--allow-random-init`` when the
ImageNet weights are not in the torch cache: a random backbone and the offline stand-in features, which
costs the same time), then runs :func:`partlab.train.fit` on its data loader for ``--warmup`` untimed and
``--steps`` timed steps. Prints seconds per step, images per second, the data loader's own images per
second (``--workers`` processes, no network), peak memory (CUDA: ``max_memory_allocated``; CPU: peak
RSS), and whether every recorded loss term stayed finite; ``--json`` appends the row to a JSON-lines file.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch

from partlab import utils
from partlab.methods.registry import REGISTRY, get_recipe
from partlab.recipes import load_recipe
from partlab.train import fit


def _data_rate(dataset, batch_size: int, workers: int, batches: int) -> float:
    """Images per second that the recipe's dataset yields through a DataLoader, workers' start-up included."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         generator=torch.Generator().manual_seed(0))
    batches = max(batches, 2 * workers + 2)      # more than the workers prefetch; their start-up is counted
    start = time.perf_counter()
    it = iter(loader)
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=list(REGISTRY))
    parser.add_argument("--recipe", default="paper", help="quick, paper (default) or a recipe.json file")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.NAME=VALUE")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (at least 1)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", choices=("off", "fp16", "bf16"), default="off")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader worker processes (fit.num_workers; "
                        "default: the recipe's, up to 8 in the paper recipes)")
    parser.add_argument("--data-batches", type=int, default=5, help="batches timed through the loader alone "
                        "(0: skip)")
    parser.add_argument("--json", default=None, help="append the numbers as one JSON line to this file")
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")

    recipe = load_recipe(args.recipe) if args.recipe.endswith(".json") else get_recipe(args.method, args.recipe)
    recipe = recipe.override(list(args.set))
    if recipe.imagenet:
        try:
            recipe.check_imagenet()
        except ValueError:
            recipe = recipe.override({"allow_random_init": True})
    dev = utils.device(args.device)
    model, dataset, info = recipe.build(device=str(dev))
    settings = dict(info["fit"], max_steps=args.warmup + args.steps, checkpoint_dir=None, progress=False,
                    log_every=1, amp=False if args.amp == "off" else args.amp, channels_last=args.channels_last,
                    num_workers=info["fit"]["num_workers"] if args.workers is None else args.workers)
    batch, workers = settings["batch_size"], settings["num_workers"]
    data_rate = _data_rate(dataset, batch, workers, args.data_batches) if args.data_batches else math.nan
    marks: dict = {"finite": True}

    def clock(step: int, record: dict) -> None:        # called after every step (log_every=1)
        marks["finite"] &= all(math.isfinite(v) for k, v in record.items() if isinstance(v, float))
        marks["skipped"] = record.get("skipped", 0)
        marks["last"] = {k: v for k, v in record.items() if k not in ("step", "lr", "seconds", "skipped")}
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        marks["end"] = time.perf_counter()         # the last step's; fit's end-of-run work is not a step
        if step == args.warmup:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            marks["start"] = marks["end"]

    fit(model, dataset, callback=clock, **settings)
    seconds = (marks["end"] - marks["start"]) / args.steps
    memory = utils.peak_memory(dev)
    row = {"method": args.method, "recipe": recipe.name, "size": recipe.data.size, "batch": batch,
           "network": recipe.model.get("network", "default"), "amp": args.amp, "channels_last": args.channels_last,
           "workers": workers, "device": utils.describe_device(dev), "torch": torch.__version__,
           "s_per_step": seconds, "images_per_s": batch / seconds, "loader_images_per_s": data_rate,
           "memory": memory, "finite": marks["finite"], "skipped": marks["skipped"],
           "random_init": recipe.allow_random_init and recipe.imagenet, "last": marks["last"]}
    print(f"{args.method}/{recipe.name}: {recipe.data.size} px, batch {batch}, network {row['network']}, "
          f"amp={args.amp}, channels_last={args.channels_last}, {workers} workers on {row['device']} "
          f"({platform.machine()})")
    print(f"  {seconds:.3f} s/step ({batch / seconds:.1f} images/s; the loader alone {data_rate:.1f} images/s); "
          f"{memory}; loss terms finite: {marks['finite']} ({marks['skipped']} steps skipped)")
    print("  last step: " + "  ".join(f"{k} {v:.4g}" for k, v in marks["last"].items()))
    if args.json:
        with open(args.json, "a") as handle:
            handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
