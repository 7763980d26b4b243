"""How recoverable are parts from a feature extractor, layer by layer? (diagnostic; prints a table)

On the synthetic world's *validation* split (never test), for each layer of the extractor:
K-means and DFF part maps with the true foreground mask, scored by pooled FG-ARI (part identities
shared across instances) and per-image FG-ARI (segmentation within each image), and a linear probe
of the true part labels from the frozen features (a diagnostic only: no method sees part labels).
Then, on the features contrastive discovery reads (its layer roles), what L_c can teach: its value on
the true parts, on the true parts renamed per image, and at collapse, where training starts
(``partlab.losses.contrastive.contrastive_reference_values``; batches of 8, temperature 0.19).

    python scripts/probe_features.py                                  # the default stand-in, both worlds
    python scripts/probe_features.py --standin data/standin/standin_v1.pt --world varied --n 200
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def validation(world: str, category: str, n: int, size: int, seed: int = 0) -> dict:
    """The ``n`` validation images of ``world``, stacked (what both probes read)."""
    from partlab.data import SyntheticParts, stack_dataset

    return stack_dataset(SyntheticParts(category, size=size, length=n, seed=seed, split="val", config=world))


def probe(extractor, val: dict, world: str, category: str, n: int, size: int, layers, seed: int = 0) -> dict:
    from partlab import baselines, metrics
    from partlab.data import SyntheticParts, stack_dataset
    from partlab.data.synthetic import num_parts
    from partlab.features import extract_features

    probe_train = stack_dataset(SyntheticParts(category, size=size, length=n, seed=seed + 1, split="train",
                                               config=world))
    k = num_parts(category)
    rows = {}
    for layer in layers:
        feats = extract_features(extractor, val["image"], layers={layer: 1.0})
        row = {}
        for name, out in (("kmeans", baselines.kmeans_parts(feats, val["fg"], k, seed=seed)),
                          ("dff", baselines.dff_parts(feats, k, fg=val["fg"], seed=seed))):
            row[f"{name}_pooled"] = metrics.pixel_nmi_ari(out["labels"], val["parts"], variant="fg")["ari"]
            row[f"{name}_image"] = metrics.pixel_nmi_ari(out["labels"], val["parts"], variant="fg",
                                                         reduction="mean")["ari"]
        train_feats = extract_features(extractor, probe_train["image"], layers={layer: 1.0})
        row["probe_miou"] = metrics.linear_probe_miou(train_feats, probe_train["parts"], feats, val["parts"],
                                                      k + 1)["miou"]
        rows[layer] = {key: round(float(v), 3) for key, v in row.items()}
    return rows


def lc_reference(extractor, val: dict, category: str, seed: int = 0) -> dict:
    """L_c on the true, renamed and collapsed parts of the validation images (the contrastive layers)."""
    import torch.nn.functional as F

    from partlab.data import one_hot_parts
    from partlab.data.synthetic import num_parts
    from partlab.features import extract_features
    from partlab.losses.contrastive import contrastive_reference_values

    parts = one_hot_parts(val["parts"], num_parts(category))[:, 1:]
    feats = extract_features(extractor, val["image"], layers="contrastive")
    feats = F.interpolate(feats, size=parts.shape[-2:], mode="bilinear", align_corners=False)
    ref = contrastive_reference_values(feats, parts, val["fg"], batch_size=8, temperature=0.19, batches=200,
                                       seed=seed)
    return {key: round(v, 3) for key, v in ref.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--standin", default=None, help="a stand-in file (default: the shipped one)")
    parser.add_argument("--features", default="standin", help="standin (default) or rgb / vgg19")
    parser.add_argument("--world", nargs="+", default=["default", "varied"])
    parser.add_argument("--category", default="bird")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--layers", nargs="+", default=["relu3_2", "relu4_1", "relu4_2", "relu5_1", "relu5_2"])
    parser.add_argument("--json", default=None, help="also write the table here")
    args = parser.parse_args(argv)
    from partlab.features import get_extractor
    from partlab.features.standin import StandinFeatures

    extractor = StandinFeatures(args.standin) if args.standin else get_extractor(args.features, device="cpu")
    layers = args.layers if extractor.name == "standin" else [extractor.layers[-1]]
    start = time.time()
    table = {}
    for world in args.world:
        val = validation(world, args.category, args.n, args.size)
        table[world] = probe(extractor, val, world, args.category, args.n, args.size, layers)
        print(f"{args.category}, {world} world, validation split, {args.n} images, {args.size} px "
              f"({extractor.description})")
        cols = list(next(iter(table[world].values())))
        print(f"{'layer':10s}" + "".join(f"{c:>14s}" for c in cols))
        for layer, row in table[world].items():
            print(f"{layer:10s}" + "".join(f"{row[c]:14.3f}" for c in cols))
        ref = lc_reference(extractor, val, args.category)
        table[world]["L_c"] = ref
        print(f"L_c on the contrastive layers: true parts {ref['true']:.3f}, renamed per image "
              f"{ref['permuted']:.3f}, collapsed {ref['collapsed']:.3f} (training starts there)")
    print(f"({time.time() - start:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
