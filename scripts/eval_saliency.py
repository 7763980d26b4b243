"""How good is the unsupervised saliency on the synthetic world, and how fast?

Prints, per category, the mean foreground IoU of ``saliency > 0.5`` and the mean absolute error of
the soft map against the true foreground masks, next to a centred-box prior (the middle half of
each side), and the milliseconds per image of RBD.

    python scripts/eval_saliency.py                       # 20 images per category at 64 px
    python scripts/eval_saliency.py --size 128 --n 10 --categories bird face
"""

from __future__ import annotations

import argparse
import time

import torch

from partlab.data.synthetic import CATEGORIES, SyntheticParts
from partlab.saliency import saliency_maps


def mean_iou(pred: torch.Tensor, fg: torch.Tensor) -> float:
    """Mean over images of IoU(pred, fg); both boolean (N, 1, H, W)."""
    inter = (pred & fg).flatten(1).sum(1).float()
    union = (pred | fg).flatten(1).sum(1).clamp(min=1).float()
    return float((inter / union).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--categories", nargs="+", default=list(CATEGORIES))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n", type=int, default=20, help="images per category")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    q = args.size // 4
    print(f"RBD saliency vs true fg, {args.n} images per category at {args.size} px (seed {args.seed})")
    print(f"{'category':10s} {'IoU':>6s} {'MAE':>6s} {'box IoU':>8s} {'box MAE':>8s} {'ms/img':>7s}")
    for category in args.categories:
        ds = SyntheticParts(category, size=args.size, length=args.n, seed=args.seed)
        images = torch.stack([ds[i]["image"] for i in range(args.n)])                 # (N, 3, H, W)
        fg = torch.stack([ds[i]["fg"] for i in range(args.n)]) > 0.5                   # (N, 1, H, W)
        start = time.perf_counter()
        sal = saliency_maps(images, method="rbd")                                      # (N, 1, H, W)
        ms = 1000 * (time.perf_counter() - start) / args.n
        box = torch.zeros_like(fg)
        box[..., q:args.size - q, q:args.size - q] = True
        print(f"{category:10s} {mean_iou(sal > 0.5, fg):6.3f} {float((sal - fg.float()).abs().mean()):6.3f} "
              f"{mean_iou(box, fg):8.3f} {float((box.float() - fg.float()).abs().mean()):8.3f} {ms:7.1f}")


if __name__ == "__main__":
    main()
