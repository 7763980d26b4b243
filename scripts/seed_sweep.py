"""Train a method at several seeds and print mean +- std per metric (the README's seed tables).

    python scripts/seed_sweep.py scops --seeds 0 1 2 3 4 --set fit.max_steps=400 --set data.n_train=256
    python scripts/seed_sweep.py contrastive --seeds 0 1 2 3 4 --mask true --json outputs/sweep_contrastive.json
    python scripts/seed_sweep.py contrastive --mask true --set model.num_parts=4 --columns kp_fg_nmi kp_fg_ari nmi ari
    python scripts/seed_sweep.py scops --split val --split-seed 100 --seeds 0 1 2 --set model.network=standin_unet
    python scripts/seed_sweep.py scops --ablation no_sc        # one row of a 5-seed ablation table
    python scripts/seed_sweep.py maskcontrast --n-eval 300     # scenes: K-means mIoU (K = 4, 8, 16 clusters)
    python scripts/seed_sweep.py scops --split val --true-part-features   # the ceiling with perfect features
    python scripts/seed_sweep.py scops --split val --true-part-features 0.5 --baselines kmeans --baseline-mask rbd
    python scripts/seed_sweep.py scops --split val --baselines kmeans position --baseline-mask rbd  # and its floor

Settings are chosen with ``--split val`` (the validation split); the test split only reports them.

Every seed is scored on the same synthetic images (:func:`partlab.evaluation.seed_sweep`); the
per-seed rows and the mean +- std row are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from partlab import evaluation
from partlab.methods.registry import REGISTRY

COLUMNS = ("fg_ari", "fg_nmi", "kp_fg_ari", "miou", "fg_iou", "landmark_error")
SCENE_COLUMNS = ("miou", "miou@8", "miou@16")      # a scenes method (MaskContrast), K = 4 classes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=list(REGISTRY))
    parser.add_argument("--recipe", default="quick")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--ablation", help="one of the method's ablations (e.g. scops: no_sc, no_con, "
                        "no_eqv, no_saliency, only_sc), applied before --set")
    parser.add_argument("--true-part-features", type=float, nargs="?", const=1.0, default=0.0, metavar="SHARE",
                        help="train on the one-hot true part labels as features (the method's ceiling with perfect "
                             "features; a diagnostic, not a result); SHARE in (0, 1) mixes them into the CNN's "
                             "features: (1 - SHARE) * features + SHARE * parts, for the baselines too")
    parser.add_argument("--baselines", nargs="+", default=[], choices=list(evaluation.ALL_BASELINES),
                        help="also score these training-free baselines once on the same images, K, world and "
                             "features (on the true parts as features with --true-part-features)")
    parser.add_argument("--baseline-mask", nargs="+", default=["true"], choices=list(evaluation.BASELINE_MASKS),
                        help="where the baselines look for parts: true (default), rbd (what SCOPS sees), none")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.NAME=VALUE")
    parser.add_argument("--mask", choices=("own", "true"), default="own")
    parser.add_argument("--n-eval", type=int, default=150)
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="where the runs are scored: test (reported results) or val (choosing settings)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the scored images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--columns", nargs="+",
                        help="metrics in the table (all are in --json); default: " + " ".join(COLUMNS) + " (scenes: "
                             + " ".join(SCENE_COLUMNS) + "); the appendix's Tables 1-2: kp_fg_nmi kp_fg_ari nmi ari")
    parser.add_argument("--json", help="also write the sweep to this file")
    args = parser.parse_args()
    scenes = REGISTRY[args.method].data == "scenes"
    columns = args.columns or list(SCENE_COLUMNS if scenes else COLUMNS)
    known = ("miou", "acc", "nmi", "ari") if scenes else evaluation.BENCHMARK_METRICS
    unknown = [c for c in columns if c not in known and not (scenes and c.startswith("miou@"))]
    if scenes and args.mask != "own":
        parser.error(f"--mask is for part methods; {args.method} is scored on the true objects of each scene")
    if scenes and args.baselines:
        parser.error(f"--baselines is for part methods; {args.method}'s scene baselines are in its notebook")
    if not 0.0 <= args.true_part_features <= 1.0:
        parser.error(f"--true-part-features takes the true parts' share in [0, 1], got {args.true_part_features}")
    if unknown:
        parser.error(f"unknown column(s) {unknown} for {args.method}; choose from {list(known)}"
                     + (" or miou@C (C clusters: 8, 16 at K = 4)" if scenes else ""))

    start = time.perf_counter()
    sweep = evaluation.seed_sweep(args.method, args.recipe, args.seeds, overrides=args.set, n_eval=args.n_eval,
                                  mask=args.mask, device=args.device, progress=False, split=args.split,
                                  split_seed=args.split_seed, ablation=args.ablation,
                                  true_part_features=args.true_part_features, baselines=args.baselines,
                                  baseline_masks=args.baseline_mask)
    minutes = (time.perf_counter() - start) / 60
    share = args.true_part_features
    parts_label = "true part features" if share == 1.0 else f"features {1 - share:g} CNN + {share:g} true parts"
    on_parts = " on the true parts" if share == 1.0 else f" on the {parts_label}"
    changes = (([f"ablation {args.ablation}"] if args.ablation else [])
               + ([parts_label] if args.true_part_features else []) + args.set)
    scored = "the true objects, K-means" if scenes else f"mask {args.mask}"
    what = "scenes" if scenes else "images"
    print(f"{args.method} ({args.recipe} recipe, {' '.join(changes) or 'as is'}), {scored}, "
          f"{len(args.seeds)} seeds, {args.n_eval} {args.split} {what} (seed {args.split_seed}), {minutes:.1f} min")
    print("| seed | " + " | ".join(columns) + " |")
    print("| --- " * (len(columns) + 1) + "|")
    for seed, scores in sweep["per_seed"].items():
        print(f"| {seed} | " + " | ".join(f"{scores[c]:.3f}" for c in columns) + " |")
    print("| mean ± std | " + " | ".join(sweep.format(c) for c in columns) + " |")
    for name, scores in sweep.get("baselines", {}).items():
        perfect = args.true_part_features and name.split(" ")[0] in evaluation.BASELINES   # position reads no features
        print(f"| {name}{on_parts if perfect else ''} | "
              + " | ".join(f"{scores[c]:.3f}" for c in columns) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(sweep, indent=2) + "\n")


if __name__ == "__main__":
    main()
