"""Throughput and memory of SCOPS training steps (prints numbers; never part of the tests).

    python scripts/bench_scops.py                                     # quick mode: U-Net, 64 px, CPU
    python scripts/bench_scops.py --size 256 --network deeplab --amp --channels-last --device cuda  # the paper recipe's network
    python scripts/bench_scops.py --size 256 --network deeplab --steps 3 --warmup 1   # full mode smoke on a CPU

Random images stand in for data: the features and saliency maps of the training set are precomputed
in both modes, so a step's cost is the network (twice: the image and its warped copy), the four
losses and the optimiser. Reports seconds per step after ``--warmup`` untimed steps, images per
second, and peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak RSS).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from partlab import utils
from partlab.models import QUICK_UNET
from partlab.train import fit


class _RandomBatchSet(torch.utils.data.Dataset):
    """``n`` random images with features (C channels at stride 4) and a soft saliency map."""

    def __init__(self, n: int, size: int, channels: int):
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.features = torch.rand(n, channels, size // 4, size // 4, generator=g)
        self.saliency = torch.rand(n, 1, size, size, generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "features": self.features[i], "saliency": self.saliency[i]}


def main() -> int:
    from partlab.methods import SCOPS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--network", choices=("unet", "deeplab"), default="unet")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 (unet), 6 (deeplab, the paper's)")
    parser.add_argument("--channels", type=int, default=192, help="feature channels C (VGG19 relu5_2+5_4: 1024)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (at least 1)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()

    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    dev = utils.device(args.device)
    batch = args.batch_size or (8 if args.network == "unet" else 6)
    net = dict(QUICK_UNET) if args.network == "unet" else {"pretrained": False}
    data = _RandomBatchSet(max(batch * 4, 24), args.size, args.channels)
    model = SCOPS(8, network=args.network, feature_channels=args.channels, **net)
    optimizer = "adam" if args.network == "unet" else "sgd"
    lr = 1e-3 if args.network == "unet" else 1e-5
    common = dict(batch_size=batch, lr=lr, optimizer=optimizer, device=str(dev), amp=args.amp,
                  channels_last=args.channels_last, progress=False, log_every=1)
    marks: dict = {}

    def clock(step: int, record: dict) -> None:        # called after every step (log_every=1)
        if step == args.warmup:
            if dev.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            marks["start"] = time.perf_counter()

    fit(model, data, max_steps=args.warmup + args.steps, callback=clock, **common)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - marks["start"]) / args.steps
    memory = utils.peak_memory(dev)
    print(f"SCOPS {args.network} {args.size}px, batch {batch}, C={args.channels}, amp={args.amp}, "
          f"channels_last={args.channels_last} on {utils.describe_device(dev)} ({platform.machine()}):")
    print(f"  {seconds:.3f} s/step ({1 / seconds:.2f} steps/s, {batch / seconds:.1f} images/s); {memory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
