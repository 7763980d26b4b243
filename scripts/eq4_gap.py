"""How much does SCOPS' semantic consistency (Eq. 4) reward the true parts? (diagnostic; prints a table)

On the synthetic world's *validation* birds (never test), with the true mask as the saliency D and the
stand-in's SCOPS layers, Eq. 4 at its optimum for fixed part maps (``partlab.part_basis.fit_part_basis``),
relative to no parts, for: one part covering the bird, the true parts, and the true parts renamed per
image (a shared basis cannot follow them). Three targets V: the features as they are (the paper's), the
features plus the position on the object (``SCOPS(semantic_features="features+position")``), and the
features centred per channel over the object and split into their positive and negative halves.

    python scripts/eq4_gap.py --world varied --n 96
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def centred_halves(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``relu(features)`` standardised per channel over the object pixels, as ``[relu(z), relu(-z)]``."""
    from partlab.methods.contrastive import contrast_features

    values = features.relu()
    inside = (F.interpolate(mask, size=values.shape[-2:], mode="area") >= 0.5).float()
    z = contrast_features(values, inside, "standardised")
    return torch.cat([z.relu(), (-z).relu()], dim=1)


def main(argv=None) -> int:
    from partlab.data import SyntheticParts, one_hot_parts, stack_dataset
    from partlab.data.synthetic import num_parts
    from partlab.features import extract_features, get_extractor
    from partlab.losses.scops import semantic_consistency_loss
    from partlab.methods.scops import semantic_features
    from partlab.part_basis import fit_part_basis

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="varied")
    parser.add_argument("--features", default="standin", help="standin (default), standin_v2, vgg19")
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--seed", type=int, default=100, help="seed of the validation birds")
    args = parser.parse_args(argv)

    val = stack_dataset(SyntheticParts("bird", size=64, length=args.n, seed=args.seed, split="val", config=args.world))
    extractor = get_extractor(args.features, device="cpu")
    feats = extract_features(extractor, val["image"], layers=extractor.layers_for("scops"))
    size = feats.shape[-2:]
    fg = val["fg"].float()
    fg = fg[:, None] if fg.dim() == 3 else fg
    saliency = F.interpolate(fg, size=size, mode="area")
    parts = F.interpolate(one_hot_parts(val["parts"], num_parts("bird")).float(), size=size, mode="area")[:, 1:]
    k = parts.shape[1]
    g = torch.Generator().manual_seed(1)
    maps = {"one part": parts.sum(1, keepdim=True), "true parts": parts,
            "renamed per image": torch.stack([p[torch.randperm(k, generator=g)] for p in parts])}
    print(f"Eq. 4 relative to no parts, {args.n} validation birds of the {args.world} world (seed {args.seed}), "
          f"{extractor.description}")
    print(f"{'target V':22s}" + "".join(f"{name:>20s}" for name in maps) + "   true vs one part")
    for mode in ("features", "features+position", "centred halves"):
        V = centred_halves(feats, fg) if mode == "centred halves" else semantic_features(feats, fg, mode)
        none = semantic_consistency_loss(torch.zeros_like(parts), V, torch.zeros(k, V.shape[1]), saliency).item()
        row = {name: semantic_consistency_loss(R, V, fit_part_basis(R, V, saliency), saliency).item() / none
               for name, R in maps.items()}
        gap = 1 - row["true parts"] / row["one part"]
        print(f"{mode:22s}" + "".join(f"{v:20.3f}" for v in row.values()) + f"   {100 * gap:.0f}% below")
    return 0


if __name__ == "__main__":
    sys.exit(main())
