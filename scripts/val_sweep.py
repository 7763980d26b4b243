"""Choose quick-recipe settings on the *validation* split (never test): train a method over seeds with
recipe overrides and print its validation scores next to K-means with the same mask.

    python scripts/val_sweep.py scops --seeds 0 1 2 --set model.network=standin_unet fit.lr=1e-4
    python scripts/val_sweep.py contrastive --world varied --features standin_v1

Scores: a validation split of ``--n-eval`` images (``split="val"``) and as many train images for the
landmark regression, drawn with seed 100 (never the test split).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def val_splits(category: str, world: str, size: int, n: int):
    from partlab.data import SyntheticParts, stack_dataset

    train = stack_dataset(SyntheticParts(category, size=size, length=n, seed=100, split="train", config=world))
    val = stack_dataset(SyntheticParts(category, size=size, length=n, seed=100, split="val", config=world))
    return train, val


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--world", default="default")
    parser.add_argument("--features", default=None)
    parser.add_argument("--n-eval", type=int, default=150)
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides key=value")
    parser.add_argument("--mask", default=None, help="own / true (default: true for contrastive, own else)")
    parser.add_argument("--kmeans", action="store_true", help="also K-means with the same mask")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from partlab import evaluation
    from partlab.methods.registry import get_method
    from partlab.train import fit

    entry = get_method(args.method)
    recipe = entry.recipe("quick")
    changes = dict(s.split("=", 1) for s in args.set)
    changes["data.world"] = args.world
    if args.features:
        changes["data.features"] = args.features
    recipe = recipe.override([f"{k}={v}" for k, v in changes.items()])
    mask = args.mask or ("true" if args.method == "contrastive" else "own")
    train, val = val_splits(recipe.data.category, args.world, recipe.data.size, args.n_eval)
    rows = {}
    for seed in args.seeds:
        start = time.time()
        model, dataset, info = recipe.override({"fit.seed": seed}).build()
        fit(model, dataset, **dict(info["fit"], progress=False))
        scores, _ = evaluation.score_model(model, train, val, category=recipe.data.category, mask=mask)
        rows[seed] = {k: round(v, 4) for k, v in scores.items()}
        terms = {k: round(v, 3) for k, v in model.history[-1].items() if k not in ("step", "lr", "seconds")}
        print(f"seed {seed} ({time.time() - start:.0f} s): " + " ".join(
            f"{k} {rows[seed][k]:.3f}" for k in ("fg_ari", "fg_ari_image", "fg_iou", "landmark_error") if k in rows[seed])
            + f" | last terms {terms}", flush=True)
    keys = list(next(iter(rows.values())))
    import statistics as st
    summary = {k: (st.mean(r[k] for r in rows.values()), st.pstdev([r[k] for r in rows.values()])) for k in keys}
    print(f"{args.method} {args.world} {changes} mask={mask}: " + " ".join(
        f"{k} {m:.3f}+-{s:.3f}" for k, (m, s) in summary.items() if k in ("fg_ari", "fg_ari_image", "fg_iou", "landmark_error")))
    if args.kmeans:
        masks = "true" if mask == "true" else "rbd"
        res, _ = evaluation.score_baselines(train, val, names=("kmeans",), masks=(masks,), category=recipe.data.category,
                                            features=recipe.data.features)
        for name, r in res.items():
            print(f"  {name}: " + " ".join(f"{k} {r[k]:.3f}" for k in ("fg_ari", "fg_ari_image", "fg_iou", "landmark_error") if k in r))
    if args.json:
        Path(args.json).write_text(json.dumps({"changes": changes, "seeds": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
