"""The synthetic benchmark: one scorer for every method, baseline and the supervised oracle.

A method's predictions on a test set, ``pred = dict(probs=(N, K+1, H, W), labels=(N, H, W))``, are
scored against the synthetic world's exact ground truth with the protocols of the papers
(:mod:`partlab.metrics`):

============== ============================================================== ==========
key            protocol                                                       better
============== ============================================================== ==========
fg_nmi, fg_ari pixels inside the true foreground, argmax over parts only,     higher
               all test images pooled in one table: part k must be the same
               true part in every image (the co-part score the papers report)
fg_nmi_image,  the same pixels and argmax, NMI/ARI within each image, mean    higher
fg_ari_image   over images: segments only, blind to part k being the head in
               one image and the tail in the next (images with < 2 foreground
               pixels skipped; a one-part image scores 1 or 0)
nmi, ari       every pixel, background = 0 from the true mask ("full")        higher
kp_fg_nmi/ari  label at each visible landmark's nearest pixel (FG variant)    higher
miou           Hungarian-matched mIoU of the labels (background included)     higher
fg_iou         union of predicted parts vs true foreground (pooled IoU)       higher
landmark_error part centres -> landmarks by linear regression fitted on the   lower
               train split (SCOPS protocol; IOD-normalised for faces; other
               categories fitted and measured in box-relative coordinates,
               as the original's CUB code), mean over test images
============== ============================================================== ==========
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch

from partlab import metrics, utils
from partlab.geometry import part_centers

BENCHMARK_METRICS = ("fg_ari", "fg_nmi", "fg_ari_image", "fg_nmi_image", "ari", "nmi", "kp_fg_ari", "kp_fg_nmi",
                     "miou", "fg_iou", "landmark_error")
HIGHER_IS_BETTER = {m: m != "landmark_error" for m in BENCHMARK_METRICS}


def centers_of(probs: torch.Tensor) -> torch.Tensor:
    """Part centres (no eps) of the foreground channels ``probs[:, 1:]`` -> (N, K, 2): the landmark inputs."""
    return part_centers(probs[:, 1:].float(), eps=0.0)


@torch.no_grad()
def predict_dataset(model, images: torch.Tensor, *, batch_size: int = 32, device="auto",
                    fg: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """``model.predict`` over a stack of images in batches -> dict(probs, labels, centers) on the CPU.

    ``fg`` (``(N, H, W)`` or ``(N, 1, H, W)``): a foreground mask handed to ``model.predict(images, fg=...)``,
    for methods that segment parts inside a given mask (:class:`partlab.methods.ContrastiveParts`);
    a method without that argument gets a clear error.
    """
    import inspect

    if fg is not None and "fg" not in inspect.signature(model.predict).parameters:
        raise ValueError(f"{type(model).__name__}.predict takes no foreground mask; score it without fg "
                         f"(fg=None), or use a method that segments inside a mask (ContrastiveParts)")
    dev = utils.device(device)
    model = model.to(dev).eval()
    probs, labels = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size].to(dev)
        out = (model.predict(batch) if fg is None
               else model.predict(batch, fg=fg[start:start + batch_size].to(dev)))
        probs.append(out["probs"].float().cpu())
        labels.append(out["labels"].cpu())
    probs = torch.cat(probs)
    return {"probs": probs, "labels": torch.cat(labels), "centers": centers_of(probs)}


def landmark_normalization(category: Optional[str]) -> str:
    """``"iod"`` for faces (SCOPS/MAFL protocol), ``"bbox"`` for every other category (SCOPS/CUB)."""
    return "iod" if category == "face" else "bbox"


def score_parts(pred: Mapping[str, torch.Tensor], truth: Mapping[str, torch.Tensor], *,
                pred_train: Optional[Mapping[str, torch.Tensor]] = None,
                truth_train: Optional[Mapping[str, torch.Tensor]] = None,
                category: Optional[str] = None) -> Dict[str, float]:
    """Every benchmark metric for one method (see the module docstring).

    Args:
        pred: test predictions, ``probs (N, K+1, H, W)`` and/or ``labels (N, H, W)``; ``centers (N, K, 2)``
            optional (computed from probs when absent).
        truth: the test batch: ``parts (N, H, W)``, ``fg (N, 1, H, W)``, ``landmarks (N, L, 2)``,
            ``visible (N, L)``, ``bbox (N, 4)``.
        pred_train, truth_train: the same on the train split, for the landmark regression; without
            them ``landmark_error`` is left out.
        category: picks the landmark normalisation (:func:`landmark_normalization`).
    """
    labels = pred["labels"] if "labels" in pred else pred["probs"].argmax(1)
    soft = pred.get("probs", labels)
    gt, fg = truth["parts"], truth["fg"]
    num_classes = int(max(int(gt.max()), int(labels.max()))) + 1
    out: Dict[str, float] = {}
    fg_scores = metrics.pixel_nmi_ari(soft, gt, variant="fg")                         # pooled: co-parts
    fg_image = metrics.pixel_nmi_ari(soft, gt, variant="fg", reduction="mean")      # per image: segments
    full_scores = metrics.pixel_nmi_ari(labels, gt, variant="full", fg=fg)
    kp = metrics.keypoint_nmi_ari(soft, truth["landmarks"], truth["visible"], variant="fg")
    out.update(fg_nmi=fg_scores["nmi"], fg_ari=fg_scores["ari"], fg_nmi_image=fg_image["nmi"],
               fg_ari_image=fg_image["ari"], nmi=full_scores["nmi"], ari=full_scores["ari"],
               kp_fg_nmi=kp["nmi"], kp_fg_ari=kp["ari"])
    out["miou"] = metrics.hungarian_miou(labels, gt, num_classes)["miou"]
    out["fg_iou"] = metrics.foreground_iou(labels, fg)
    if pred_train is not None and truth_train is not None:
        centers = pred["centers"] if "centers" in pred else centers_of(pred["probs"])
        centers_train = pred_train["centers"] if "centers" in pred_train else centers_of(pred_train["probs"])
        normalize = landmark_normalization(category)
        out["landmark_error"] = metrics.landmark_regression_error(
            centers_train, truth_train["landmarks"], centers, truth["landmarks"], normalize=normalize,
            visible_test=truth["visible"], **({"bbox_train": truth_train["bbox"], "bbox_test": truth["bbox"]}
                                              if normalize == "bbox" else {}))
    return {k: float(v) for k, v in out.items()}


def split_predictions(pred: Mapping[str, torch.Tensor], n_first: int):
    """Split a dict of predictions made on ``cat([first, second])`` back into the two parts."""
    first = {k: v[:n_first] for k, v in pred.items() if torch.is_tensor(v) and v.dim() > 0}
    second = {k: v[n_first:] for k, v in pred.items() if torch.is_tensor(v) and v.dim() > 0}
    return first, second


def format_table(results: Mapping[str, Mapping[str, float]], columns: Sequence[str] = BENCHMARK_METRICS) -> str:
    """A plain-text table: one row per method, one column per metric (arrows say which way is better),
    each column as wide as its header (values to 3 decimals), two spaces apart."""
    columns = [c for c in columns if any(c in r for r in results.values())]
    headers = [c + (" ↑" if HIGHER_IS_BETTER.get(c, True) else " ↓") for c in columns]
    widths = [max(len(h), len("-0.000")) + 2 for h in headers]
    width = max([len("method")] + [len(name) for name in results])
    head = "method".ljust(width) + "".join(f"{h:>{w}s}" for h, w in zip(headers, widths))
    lines = [head, "-" * len(head)]
    for name, row in results.items():
        cells = "".join(f"{row[c]:{w}.3f}" if c in row else f"{'-':>{w}s}" for c, w in zip(columns, widths))
        lines.append(name.ljust(width) + cells)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the synthetic benchmark end to end: data, baselines, oracle
# ---------------------------------------------------------------------------------------------

BASELINES = ("kmeans", "dff")                                   # on frozen CNN features: the default rows
POSITION_BASELINES = {"position": "object", "xy": "xy", "rgbxy": "rgbxy"}  # name -> coords; no features
ALL_BASELINES = BASELINES + tuple(POSITION_BASELINES)


def benchmark_splits(category: str = "bird", size: int = 64, n_train: int = 200, n_test: int = 200,
                     seed: int = 0, config=None, test_split: str = "test"):
    """The synthetic benchmark's train and test splits of ``category``, each stacked into one dict of
    tensors (``image``, ``parts``, ``fg``, ``landmarks``, ``visible``, ``bbox``, ...). The train split
    only fits the landmark regressors (and trains the oracle); every score is on the test split.
    ``test_split="val"`` scores on the validation split instead: where settings are chosen."""
    from partlab.data import SyntheticParts, stack_dataset

    train = stack_dataset(SyntheticParts(category, size=size, length=n_train, seed=seed, split="train", config=config))
    test = stack_dataset(SyntheticParts(category, size=size, length=n_test, seed=seed, split=test_split, config=config))
    return train, test


def baseline_parts(name: str, images: torch.Tensor, fg: torch.Tensor, num_parts: int, *, extractor=None,
                   features: str = "auto", device="auto", seed: int = 0,
                   kmeans: str = "partlab", part_labels: Optional[torch.Tensor] = None,
                   part_share: float = 1.0) -> Dict[str, torch.Tensor]:
    """K-means, DFF or position part maps of a collection (true foreground as the background split, as in
    the contrastive paper's K-means baseline) -> dict(probs, labels, centers).

    ``name`` is one of :data:`ALL_BASELINES`. The feature baselines (:data:`BASELINES`) use
    ``extractor`` or :func:`partlab.features.get_extractor` ``(features)``, with the extractor's
    ``"dff"`` layer recipe, or for K-means the layers of the protocol ``kmeans``
    (:data:`partlab.baselines.KMEANS_PROTOCOLS`: ``"partlab"``, relu3_2 x 0.33 + relu5_4 at the features'
    resolution; ``"appendix"``, relu5_2 + relu5_4 upsampled to 64 x 64 as the contrastive appendix runs it).
    The position baselines (:data:`POSITION_BASELINES`: ``"position"``, K-means on where a pixel lies on
    its object; ``"xy"``, on its image position; ``"rgbxy"``, on colour and position;
    :func:`partlab.baselines.position_parts`) use no features: ``extractor``, ``features`` and
    ``kmeans`` are ignored and no extractor is built.

    ``part_labels`` ``(N, H, W)``, the true parts of ``images``: the feature baselines then read
    :func:`partlab.part_basis.part_label_features` of them in place of the CNN features (perfect features,
    scaled to the CNN's energy): what K-means and DFF reach when the features name every part, the
    comparison for ``seed_sweep(..., true_part_features=True)``. A diagnostic; the labels never reach a method.
    ``part_share`` below 1 mixes them into the CNN features instead (``part_label_features(share=)``).
    """
    from partlab import baselines

    if name not in ALL_BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choices: {list(ALL_BASELINES)}")
    if kmeans not in baselines.KMEANS_PROTOCOLS:
        raise ValueError(f"kmeans={kmeans!r}; choose one of {list(baselines.KMEANS_PROTOCOLS)}")
    if name in POSITION_BASELINES:
        out = baselines.position_parts(fg, num_parts, coords=POSITION_BASELINES[name], images=images, seed=seed)
        return {"probs": out["probs"], "labels": out["labels"], "centers": centers_of(out["probs"])}
    from partlab.features import extract_features, get_extractor

    extractor = extractor if extractor is not None else get_extractor(features, device=device)
    protocol = baselines.KMEANS_PROTOCOLS[kmeans]
    recipe = protocol["layers"] if name == "kmeans" else name
    feats = extract_features(extractor, images, layers=extractor.layers_for(recipe))
    if part_labels is not None:
        from partlab.part_basis import part_label_features

        if part_labels.shape[0] != images.shape[0]:
            raise ValueError(f"part_labels holds {part_labels.shape[0]} label maps for {images.shape[0]} images")
        feats = part_label_features(part_labels, feats, share=part_share)
    if name == "kmeans":
        out = baselines.kmeans_parts(feats, fg, num_parts, seed=seed, fit_size=protocol["fit_size"],
                                     max_iter=protocol["max_iter"])
    else:
        out = baselines.dff_parts(feats, num_parts, fg=fg, seed=seed)
    return {"probs": out["probs"], "labels": out["labels"], "centers": centers_of(out["probs"])}


BASELINE_MASKS = ("true", "rbd", "none")


def baseline_mask(images: torch.Tensor, fg: torch.Tensor, mask: str = "true", *, threshold: float = 0.5) -> torch.Tensor:
    """Where a baseline looks for parts -> ``(N, 1, H, W)`` bool.

    ``"true"``: the true foreground ``fg`` (the contrastive paper's K-means protocol: that method is
    trained with masks, so its baselines get them too; localisation is then given, not found).
    ``"rbd"``: the unsupervised saliency of :func:`partlab.saliency.saliency_maps` above ``threshold``:
    the same evidence SCOPS gets, so the fair comparison for a method trained without masks.
    ``"none"``: every pixel (DFF on whole images, as in the SCOPS paper's comparison).
    """
    if mask not in BASELINE_MASKS:
        raise ValueError(f"mask={mask!r}; choose one of {BASELINE_MASKS}")
    n, _, h, w = images.shape
    if mask == "true":
        return fg.reshape(n, 1, h, w).bool()
    if mask == "none":
        return torch.ones(n, 1, h, w, dtype=torch.bool)
    from partlab.saliency import saliency_maps

    return saliency_maps(images, method="rbd").reshape(n, 1, h, w) > threshold


def score_baseline(name: str, train: Mapping[str, torch.Tensor], test: Mapping[str, torch.Tensor], *,
                   category: Optional[str] = None, num_parts: Optional[int] = None,
                   mask: "str | torch.Tensor" = "true", true_part_features: "bool | float" = False, **kwargs):
    """Fit a baseline on the train and test images together (a collection-level method), score the
    test part -> (metrics, test predictions).

    ``true_part_features``: the feature baselines read the one-hot true parts instead of CNN features
    (:func:`baseline_parts` ``part_labels``): their ceiling, a diagnostic. A number in ``(0, 1)`` is the
    true parts' share of a mix with the CNN features (:func:`partlab.part_basis.part_label_features`).

    ``mask`` (:func:`baseline_mask`): ``"true"`` foreground (default), ``"rbd"`` saliency (what a
    method trained without masks, like SCOPS, sees), ``"none"``, or the ``(N_train + N_test, 1, H, W)``
    bool mask itself. The scores are always against the true parts; only the baseline's input changes.
    """
    k = int(num_parts) if num_parts is not None else int(test["parts"].max())
    n = len(train["image"])
    images = torch.cat([train["image"], test["image"]])
    fg = baseline_mask(images, torch.cat([train["fg"], test["fg"]]), mask) if isinstance(mask, str) else mask
    share = true_part_share(true_part_features)
    if share:
        kwargs["part_labels"] = torch.cat([train["parts"], test["parts"]])
        kwargs["part_share"] = share
    pred = baseline_parts(name, images, fg, k, **kwargs)
    pred_train, pred_test = split_predictions(pred, n)
    scores = score_parts(pred_test, test, pred_train=pred_train, truth_train=train, category=category)
    return scores, pred_test


def score_baselines(train: Mapping[str, torch.Tensor], test: Mapping[str, torch.Tensor], *,
                    names: Sequence[str] = BASELINES, masks: Sequence[str] = ("true",),
                    label: str = "{name} ({mask})", extractor=None, features: str = "auto", device="auto",
                    **kwargs):
    """:func:`score_baseline` for every baseline in ``names`` on every mask in ``masks``, with one
    extractor and each mask computed once -> ``(results, predictions)``, both keyed by
    ``label.format(name=..., mask=...)`` (e.g. ``"kmeans (rbd)"``), masks outer, names inner. An extractor
    is built only when ``names`` holds a feature baseline (:data:`BASELINES`); position baselines need none."""
    if extractor is None and any(name in BASELINES for name in names):
        from partlab.features import get_extractor

        extractor = get_extractor(features, device=device)
    images = torch.cat([train["image"], test["image"]])
    fg = torch.cat([train["fg"], test["fg"]])
    results: Dict[str, Dict[str, float]] = {}
    predictions: Dict[str, Dict[str, torch.Tensor]] = {}
    for mask in masks:
        where = baseline_mask(images, fg, mask)
        for name in names:
            key = label.format(name=name, mask=mask)
            results[key], predictions[key] = score_baseline(name, train, test, mask=where, extractor=extractor,
                                                            device=device, **kwargs)
    return results, predictions


def rank(results: Mapping[str, Mapping[str, float]], metric: str, names: Optional[Sequence[str]] = None) -> list:
    """``names`` (default: every row of ``results``) from best to worst on ``metric`` (:data:`HIGHER_IS_BETTER`)."""
    names = list(results) if names is None else list(names)
    return sorted(names, key=lambda n: results[n][metric], reverse=HIGHER_IS_BETTER.get(metric, True))


def margins(results: Mapping[str, Mapping[str, float]], method: str, others: Sequence[str],
            metrics: Sequence[str] = ("fg_ari", "landmark_error")) -> Dict[str, float]:
    """How much ``method`` beats each of ``others``: ``{"<other>.<metric>": margin}``, positive when
    ``method`` is better (``results[method] - results[other]``, sign flipped for lower-is-better metrics)."""
    out = {}
    for other in others:
        for metric in metrics:
            sign = 1.0 if HIGHER_IS_BETTER.get(metric, True) else -1.0
            out[f"{other}.{metric}"] = sign * (results[method][metric] - results[other][metric])
    return out


def score_model(model, train: Mapping[str, torch.Tensor], test: Mapping[str, torch.Tensor], *,
                category: Optional[str] = None, device="auto", batch_size: int = 32, mask: str = "own"):
    """``model.predict`` on both splits, scored on the test split -> (metrics, test predictions).

    ``mask``: ``"own"`` (the method finds the object itself) or ``"true"`` (each split's true
    foreground handed to ``predict(images, fg=...)``: the contrastive paper's protocol, where the
    parts are judged inside a given mask, as the K-means and DFF baselines with ``mask="true"``).
    """
    if mask not in ("own", "true"):
        raise ValueError(f"mask must be 'own' or 'true', got {mask!r}")
    fg_train, fg_test = (train["fg"], test["fg"]) if mask == "true" else (None, None)
    pred_train = predict_dataset(model, train["image"], batch_size=batch_size, device=device, fg=fg_train)
    pred_test = predict_dataset(model, test["image"], batch_size=batch_size, device=device, fg=fg_test)
    scores = score_parts(pred_test, test, pred_train=pred_train, truth_train=train, category=category)
    return scores, pred_test


# ---------------------------------------------------------------------------------------------
# seeds: a result is a mean +- std over training seeds, not one lucky run
# ---------------------------------------------------------------------------------------------


def ablation_overrides(method: str, ablation: str) -> Dict[str, Any]:
    """The recipe changes (dotted keys, :meth:`partlab.recipes.Recipe.override`) of one of ``method``'s
    ablations: a loss term's weight as ``weights.<term>`` (0 removes it), a setting as ``model.<name>``.

    >>> ablation_overrides("scops", "no_sc")
    {'weights.sc': 0.0, 'weights.orthonormal': 0.0}
    >>> ablation_overrides("scops", "no_saliency")
    {'model.saliency': 'none'}
    """
    from partlab.methods.registry import get_method

    entry = get_method(method)
    entry.ablation(ablation)                                        # ValueError naming the choices
    return {(f"weights.{key}" if key in entry.terms else f"model.{key}"): value
            for key, value in entry.ablations[ablation].items()}


class SeedSweep(dict):
    """The result of :func:`seed_sweep`: ``{"per_seed": {seed: scores}, "mean": {...}, "std": {...}}`` (a dict,
    so it is written to JSON as is). ``std`` is the sample standard deviation over seeds (ddof = 1; 0 for
    one seed). :meth:`format` gives ``"0.235 ± 0.061"`` per metric."""

    def format(self, metric: str, digits: int = 3) -> str:
        return f"{self['mean'][metric]:.{digits}f} ± {self['std'][metric]:.{digits}f}"


def summarize_seeds(per_seed: Mapping[int, Mapping[str, float]]) -> SeedSweep:
    """Mean and sample standard deviation of every metric over the seeds of ``per_seed``."""
    import numpy as np

    if not per_seed:
        raise ValueError("no seed to summarise")
    metrics_ = sorted(set.intersection(*(set(scores) for scores in per_seed.values())))
    values = {m: np.array([per_seed[s][m] for s in per_seed], dtype=float) for m in metrics_}
    mean = {m: float(v.mean()) for m, v in values.items()}
    std = {m: float(v.std(ddof=1)) if len(v) > 1 else 0.0 for m, v in values.items()}
    return SeedSweep(per_seed={int(s): dict(v) for s, v in per_seed.items()}, mean=mean, std=std)


def seed_sweep(method: str, recipe="quick", seeds: Sequence[int] = (0, 1, 2, 3, 4), *,
               overrides: Optional[Mapping] = None, n_eval: int = 150, mask: str = "own", device="auto",
               progress: Optional[bool] = None, split_seed: int = 0, split: str = "test",
               ablation: Optional[str] = None, true_part_features: "bool | float" = False,
               baselines: Sequence[str] = (), baseline_masks: Sequence[str] = ("true",)) -> SeedSweep:
    """Train ``method`` with ``recipe`` once per training seed and score every run on the *same* test images.

    Args:
        method: a registry name (``"scops"``, ``"contrastive"``, ``"motion"``, ``"oracle"``, ``"maskcontrast"``).
        recipe: a recipe name of the method or a :class:`partlab.recipes.Recipe`; ``overrides`` (dotted keys,
            e.g. ``{"fit.max_steps": 400, "data.n_train": 256}``) change it.
        seeds: the training seeds (``fit.seed``: the training images, the initialisation and the
            augmentations all change with it).
        n_eval: train (landmark regression) and test images of the benchmark split, drawn once with
            ``split_seed`` so that every seed is scored on the same birds. A scenes method (MaskContrast) is
            scored on ``n_eval`` test scenes (:func:`scene_splits`) by the K-means protocol on their true
            objects (:func:`semantic_benchmark`, K = the number of classes, with overclustering at 2K and 4K:
            ``miou``, ``miou@8``, ``miou@16``, ``acc``, ``nmi``, ``ari``), not on birds.
        split: ``"test"`` (reported results) or ``"val"`` (choosing settings: never on test).
        mask: ``"own"`` or ``"true"`` (:func:`score_model`); part methods only.
        ablation: one of the method's ablations (``"no_sc"``, ...; :func:`ablation_overrides`), applied
            before ``overrides``: a 5-seed ablation table is one sweep per variant.
        true_part_features: train on features that name every part (the one-hot true part labels,
            :func:`partlab.part_basis.part_label_features`) in place of the recipe's cached CNN features: the
            method's ceiling when its features are perfect, a diagnostic (they come from labels), not a result.
            A number in ``(0, 1]`` is the true parts' share of a mix with the CNN features (``0.5``: half
            and half; :func:`partlab.part_basis.part_label_features`), for the baselines too.
        baselines: training-free baselines (:data:`ALL_BASELINES`: ``"kmeans"``, ``"dff"``, ``"position"``, ...)
            scored once on the same images with the same K, world and features as the runs (with
            ``true_part_features``, on the true parts as features too), inside each mask of ``baseline_masks``
            (:func:`baseline_mask`: ``"rbd"`` is what SCOPS sees, ``"true"`` what contrastive discovery is
            given): part methods only.

    Returns:
        a :class:`SeedSweep`: per-seed scores, their mean and standard deviation, and with ``baselines``
        ``"baselines"``: ``{"kmeans (rbd)": scores, ...}``.
    """
    from partlab.methods.registry import get_method
    from partlab.train import fit

    entry = get_method(method)
    base = entry.recipe(recipe) if isinstance(recipe, str) else recipe
    if ablation is not None:
        base = base.override(ablation_overrides(method, ablation))
    base = base.override(overrides)
    data = base.data
    scenes = entry.data == "scenes"
    share = true_part_share(true_part_features)
    if share and scenes:
        raise ValueError(f"true_part_features is for part methods; {method} learns object categories of scenes")
    # the baselines' names and masks are checked here, before minutes of training, not after
    if baselines and scenes:
        raise ValueError(f"baselines are scored on birds; {method} is compared with its own scene baselines "
                         f"(colour and frozen features) by semantic_benchmark")
    unknown = [b for b in baselines if b not in ALL_BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choices: {list(ALL_BASELINES)}")
    bad_masks = [m for m in baseline_masks if m not in BASELINE_MASKS]
    if bad_masks:
        raise ValueError(f"baseline_masks {bad_masks}; choose from {list(BASELINE_MASKS)}")
    if scenes:
        if mask != "own":
            raise ValueError(f"mask={mask!r} is for part methods; {method} is scored on the true objects of each "
                             f"scene (the K-means protocol): leave mask='own'")
        _, test = scene_splits(size=data.size, n_train=1, n_test=n_eval, seed=split_seed, config=data.world,
                               objects=data.scene_objects, test_split=split)
    else:
        train_eval, test = benchmark_splits(data.category, size=data.size, n_train=n_eval, n_test=n_eval,
                                            seed=split_seed, config=data.world, test_split=split)
    per_seed = {}
    for seed in seeds:
        model, dataset, info = base.override({"fit.seed": int(seed)}).build(device=device)
        if share:
            use_true_part_features(dataset, method, share=share)
        settings = dict(info["fit"]) if progress is None else dict(info["fit"], progress=progress)
        fit(model, dataset, **settings)
        if scenes:
            k = model.num_parts
            per_seed[int(seed)] = semantic_benchmark({method: model}, test, k, clusters=(2 * k, 4 * k),
                                                     baselines=())[method]
        else:
            per_seed[int(seed)], _ = score_model(model, train_eval, test, category=data.category, device=device,
                                                 mask=mask)
    sweep = summarize_seeds(per_seed)
    if baselines:
        sweep["baselines"], _ = score_baselines(train_eval, test, names=baselines, masks=baseline_masks,
                                                category=data.category, num_parts=model.num_parts,
                                                features=data.features, device=device,
                                                true_part_features=share)
    return sweep


def true_part_share(value: "bool | float | None") -> float:
    """``true_part_features`` as the true parts' share in ``[0, 1]``: ``True`` -> 1, ``False`` / ``None`` -> 0."""
    share = float(value or 0.0)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"true_part_features is True, False or the true parts' share in [0, 1], got {value!r}")
    return share


def use_true_part_features(dataset, method: str = "the method", share: float = 1.0) -> None:
    """Replace a quick recipe's cached features (``dataset.extras["features"]``, a
    :class:`partlab.data.extras.WithExtras`) by :func:`partlab.part_basis.part_label_features` of the training
    images' true part labels, in place: ``seed_sweep(..., true_part_features=True)``; ``share`` below 1 mixes
    them into the cached features instead."""
    from partlab.data.collate import stack_dataset
    from partlab.data.extras import WithExtras
    from partlab.part_basis import part_label_features

    if not isinstance(dataset, WithExtras) or "features" not in dataset.extras:
        raise ValueError(f"true part features replace the features a recipe caches; {method}'s training set has "
                         f"none (a recipe with data.cache=true and a feature-reading method: scops, contrastive)")
    parts = stack_dataset(dataset.dataset, keys=["parts"])["parts"]
    dataset.extras["features"] = part_label_features(parts, dataset.extras["features"], share=share)


# ---------------------------------------------------------------------------------------------
# the benchmark every training notebook runs: the method(s) against K-means, DFF and the oracle
# ---------------------------------------------------------------------------------------------

HEADLINE_METRICS = ("fg_ari", "landmark_error")
FIGURE_METRICS = ("fg_ari", "fg_ari_image", "fg_nmi", "kp_fg_ari", "miou", "fg_iou", "landmark_error")


class Benchmark:
    """What :func:`benchmark` returns: ``results`` (one row of metrics per model, baseline and the oracle,
    in that order), ``predictions`` (the test predictions of each row), and which rows are the methods
    (``methods``; the first is the headline), the ``baselines`` and the ``oracle`` (its row name or None)."""

    def __init__(self, results, predictions, methods, baselines, oracle=None, *,
                 metrics: Sequence[str] = HEADLINE_METRICS, figure_metrics: Sequence[str] = FIGURE_METRICS,
                 columns: Sequence[str] = BENCHMARK_METRICS):
        self.results: Dict[str, Dict[str, float]] = dict(results)
        self.predictions: Dict[str, Dict[str, torch.Tensor]] = dict(predictions)
        self.methods, self.baselines, self.oracle = list(methods), list(baselines), oracle
        # what the headline, the margins and the verdict compare, what the figure and the table show
        self.metrics, self.figure_metrics, self.columns = tuple(metrics), tuple(figure_metrics), tuple(columns)

    @property
    def method(self) -> str:
        """The headline row: the first model given to :func:`benchmark`."""
        return self.methods[0]

    def table(self, columns: Optional[Sequence[str]] = None) -> str:
        return format_table(self.results, self.columns if columns is None else columns)

    def margins(self, method: Optional[str] = None, metrics: Optional[Sequence[str]] = None) -> Dict[str, float]:
        """:func:`margins` of ``method`` (default: the headline) over every baseline: > 0 where it is better."""
        metrics = self.metrics if metrics is None else metrics
        return margins(self.results, method or self.method, self.baselines, metrics)

    def wins(self, method: Optional[str] = None, metrics: Optional[Sequence[str]] = None) -> Dict[str, list]:
        """``{baseline: [metrics on which method beats it]}``."""
        metrics = self.metrics if metrics is None else metrics
        margin = self.margins(method, metrics)
        return {b: [m for m in metrics if margin[f"{b}.{m}"] > 0] for b in self.baselines}

    def verdict(self, method: Optional[str] = None, metrics: Optional[Sequence[str]] = None) -> str:
        """One line per baseline: ``"scops vs kmeans (rbd): better on ['landmark_error'] of fg_ari, landmark_error"``."""
        metrics = self.metrics if metrics is None else metrics
        name = method or self.method
        return "\n".join(f"{name} vs {b}: better on {won or 'neither'} of {', '.join(metrics)}"
                         for b, won in self.wins(name, metrics).items())

    def summary(self, method: Optional[str] = None, metrics: Optional[Sequence[str]] = None) -> str:
        """The headline in numbers: the method's value of each metric next to the best baseline's and the
        oracle's, with the gap to the oracle (how far self-supervision is from the upper bound)."""
        metrics = self.metrics if metrics is None else metrics
        name = method or self.method
        lines = []
        for metric in metrics:
            arrow = "higher" if HIGHER_IS_BETTER.get(metric, True) else "lower"
            value = self.results[name][metric]
            parts = [f"{metric} ({arrow} is better): {name} {value:.3f}"]
            if self.baselines:
                best = rank(self.results, metric, self.baselines)[0]
                parts.append(f"best baseline {best} {self.results[best][metric]:.3f}")
            if self.oracle:
                parts.append(f"oracle {self.results[self.oracle][metric]:.3f}")
            lines.append(", ".join(parts))
        return "\n".join(lines)

    def headline(self, method: Optional[str] = None, metrics: Optional[Sequence[str]] = None) -> str:
        """One line for the curriculum's summary table: each metric of ``method`` (default: the headline)
        against the best baseline and the oracle, e.g. ``"scops: fg_ari 0.240 (per image 0.270) vs 0.198 kmeans
        (rbd), oracle 0.428; landmark_error↓ 0.195 vs 0.214 dff (rbd), oracle 0.099"`` (FG-ARI pooled over
        the test images, the method's per-image FG-ARI in brackets)."""
        metrics = self.metrics if metrics is None else metrics
        name = method or self.method
        parts = []
        for metric in metrics:
            text = f"{metric}{'' if HIGHER_IS_BETTER.get(metric, True) else '↓'} {self.results[name][metric]:.3f}"
            if metric == "fg_ari" and "fg_ari_image" in self.results[name]:     # pooled, then per image
                text += f" (per image {self.results[name]['fg_ari_image']:.3f})"
            if self.baselines:
                best = rank(self.results, metric, self.baselines)[0]
                text += f" vs {self.results[best][metric]:.3f} {best}"
            if self.oracle:
                text += f", oracle {self.results[self.oracle][metric]:.3f}"
            parts.append(text)
        return f"{name}: " + "; ".join(parts)

    def headline_metrics(self, method: Optional[str] = None, metrics: Optional[Sequence[str]] = None) -> List[str]:
        """The keys of :meth:`flat` that :meth:`headline` shows: each metric of ``method``, of its best
        baseline and of the oracle (for :func:`partlab.notebooks.write_metrics`, whose report plots them)."""
        metrics = self.metrics if metrics is None else metrics
        name = method or self.method
        keys = []
        for metric in metrics:
            rows = [name] + ([rank(self.results, metric, self.baselines)[0]] if self.baselines else [])
            rows += [self.oracle] if self.oracle else []
            keys += [f"{row}.{metric}" for row in rows if f"{row}.{metric}" not in keys]
        return keys

    def flat(self) -> Dict[str, float]:
        """``{"<row>.<metric>": value}`` and ``{"margin.<baseline>.<metric>": margin}`` of the headline, for
        :func:`partlab.notebooks.write_metrics`."""
        out = {f"{row}.{metric}": value for row, scores in self.results.items() for metric, value in scores.items()}
        out.update({f"margin.{key}": value for key, value in self.margins().items()} if self.baselines else {})
        return out


def benchmark(models, train: Mapping[str, torch.Tensor], test: Mapping[str, torch.Tensor], *,
              category: Optional[str] = None, num_parts: Optional[int] = None,
              baselines: Sequence[str] = BASELINES, masks: Sequence[str] = ("rbd",), features: str = "auto",
              kmeans: str = "partlab", oracle_steps: Optional[int] = None, n_train: int = 256, size: Optional[int] = None,
              seed: int = 0, device="auto", progress: Optional[bool] = None,
              metrics: Sequence[str] = HEADLINE_METRICS) -> Benchmark:
    """Score trained models, the K-means and DFF baselines and (optionally) the supervised oracle on one
    benchmark split: the cells every training notebook shares.

    Args:
        models: ``{name: model}`` (scored with its own foreground, ``mask="own"``) or
            ``{name: (model, mask)}`` with ``mask`` ``"own"`` or ``"true"`` (:func:`score_model`); one
            model alone is named after its registry entry.
        train, test: :func:`benchmark_splits` (landmark regressors are fitted on ``train``).
        baselines, masks: every baseline (default :data:`BASELINES`, K-means and DFF; any of
            :data:`ALL_BASELINES`) on every mask (``"true"``, ``"rbd"``, ``"none"``; :func:`score_baselines`),
            rows named ``"kmeans (rbd)"``; ``()`` for none.
        kmeans: the K-means protocol (``"partlab"`` or ``"appendix"``, :data:`partlab.baselines.KMEANS_PROTOCOLS`).
        oracle_steps: train the supervised oracle (its quick recipe on ``n_train`` images of ``category`` at
            ``size``, seed ``seed``) for this many steps and add its row ``"oracle"``; None: no oracle.
        metrics: what the headline, the margins and the verdict compare (default FG-ARI and landmark error;
            the motion notebook: foreground IoU and landmark error, the motion paper's Table 1).

    Returns:
        a :class:`Benchmark`.
    """
    if not isinstance(models, Mapping):
        from partlab.methods.registry import method_of

        models = {method_of(type(models)).name: models}
    if not models:
        raise ValueError("benchmark needs at least one model")
    category = category or "bird"
    results: Dict[str, Dict[str, float]] = {}
    predictions: Dict[str, Dict[str, torch.Tensor]] = {}
    for name, entry in models.items():
        model, mask = entry if isinstance(entry, tuple) else (entry, "own")
        results[name], predictions[name] = score_model(model, train, test, category=category, device=device, mask=mask)
        num_parts = num_parts or getattr(model, "num_parts", None)
    rows = []
    if baselines and masks:
        scores, preds = score_baselines(train, test, names=baselines, masks=masks, category=category,
                                        num_parts=num_parts, features=features, device=device, seed=seed,
                                        kmeans=kmeans)
        results.update(scores)
        predictions.update(preds)
        rows = list(scores)
    oracle = None
    if oracle_steps:
        from partlab.methods.registry import get_recipe
        from partlab.train import fit

        recipe = get_recipe("oracle", "quick").override({
            "data.category": category, "data.size": int(size or test["image"].shape[-1]), "data.n_train": n_train,
            "fit.seed": seed, "fit.max_steps": int(oracle_steps)})
        model, dataset, info = recipe.build(device=device)
        fit(model, dataset, **(info["fit"] if progress is None else dict(info["fit"], progress=progress)))
        oracle = "oracle"
        results[oracle], predictions[oracle] = score_model(model, train, test, category=category, device=device)
    return Benchmark(results, predictions, list(models), rows, oracle, metrics=metrics)


# ---------------------------------------------------------------------------------------------
# semantic segmentation of scenes (MaskContrast): object vectors -> K-means -> Hungarian mIoU
# ---------------------------------------------------------------------------------------------

SEMANTIC_BASELINES = ("rgb", "features")
# The same inputs clustered per pixel, as the supplementary scores its baselines (Sec. 4: K-means on each pixel's
# backbone features): every object pixel gets its own cluster, so one object may be split.
PIXEL_BASELINES = ("rgb pixels", "features pixels")


def _baseline_input(name: str) -> str:
    """The maps a semantic baseline clusters: ``"rgb pixels"`` clusters the maps of ``"rgb"``, per pixel."""
    return name[:-len(" pixels")] if name.endswith(" pixels") else name


def object_vectors(maps: torch.Tensor, objects: torch.Tensor, normalize: bool = True) -> tuple:
    """One mean (L2-normalised unless ``normalize=False``) of ``maps`` ``(N, D, h, w)`` per object: ``objects`` ``(N, H, W)`` holds object ids
    (0 none; an image's saliency mask is object 1, the scenes' ``"instances"`` one id per object), resized to
    ``h x w`` by nearest sampling when the sizes differ. Returns ``(vectors (M, D), image (M,), object id (M,))``
    for the M objects with at least one pixel."""
    import torch.nn.functional as F

    objects = objects[:, 0] if objects.dim() == 4 else objects
    objects = objects.long()
    if objects.shape[-2:] != maps.shape[-2:]:
        objects = F.interpolate(objects[:, None].float(), size=maps.shape[-2:], mode="nearest")[:, 0].long()
    vectors, images, ids = [], [], []
    for i in range(len(maps)):
        for o in objects[i].unique().tolist():
            if o == 0:
                continue
            on = objects[i] == o
            vectors.append(maps[i][:, on].float().mean(1))
            images.append(i)
            ids.append(o)
    if not vectors:
        return torch.zeros(0, maps.shape[1]), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    vectors = torch.stack(vectors)
    return (F.normalize(vectors, dim=1) if normalize else vectors), torch.tensor(images), torch.tensor(ids)


def object_kmeans_miou(maps: torch.Tensor, objects: torch.Tensor, semantic: torch.Tensor, num_classes: int, *,
                       clusters: Optional[int] = None, seed: int = 0, normalize: bool = True) -> dict:
    """MaskContrast's K-means protocol: K-means (``clusters``, default ``num_classes``; sklearn, 10 inits) on the
    mean vector of every object (:func:`object_vectors` of ``maps`` and ``objects``), every pixel of an object
    labelled ``1 + its cluster``, the rest background 0; scored against ``semantic`` ``(N, H, W)`` (0
    background, 1..``num_classes``) by :func:`partlab.metrics.hungarian_miou` over the whole set (background a
    class): one-to-one with ``num_classes`` clusters, each cluster to its best-IoU class when overclustering.
    ``normalize``: spherical K-means on L2-normalised object vectors (embeddings, CNN features), or plain
    K-means on the means (raw colours). Returns its dict plus ``"num_objects"`` and ``"labels"`` ``(N, H, W)``
    (0 background, ``1 + cluster`` on every object's pixels: the clusters' own numbers, not matched to classes)."""
    from sklearn.cluster import KMeans

    clusters = num_classes if clusters is None else int(clusters)
    objects = (objects[:, 0] if objects.dim() == 4 else objects).long()
    vectors, image, ids = object_vectors(maps, objects, normalize)
    if len(vectors) < clusters:
        raise ValueError(f"K-means with {clusters} clusters needs at least as many objects, got {len(vectors)}")
    assignment = KMeans(clusters, n_init=10, random_state=seed).fit(vectors.double().numpy()).labels_
    labels = torch.zeros_like(objects)
    for i, o, c in zip(image.tolist(), ids.tolist(), assignment.tolist()):
        labels[i][objects[i] == o] = 1 + c
    return _score_clusters(labels, semantic, num_classes, clusters, len(vectors))


def _score_clusters(labels: torch.Tensor, semantic: torch.Tensor, num_classes: int, clusters: int,
                    num_objects: int) -> dict:
    """Hungarian mIoU of cluster ``labels`` (0 background, ``1 + cluster``) against ``semantic`` over the whole set
    (one-to-one with ``num_classes`` clusters, each cluster to its best-IoU class when overclustering), plus
    ``"num_objects"`` and ``"labels"``: the scoring both K-means protocols share."""
    out = metrics.hungarian_miou(labels.numpy(), semantic.long().numpy(), num_classes + 1,
                                 many_to_one=clusters != num_classes, num_clusters=clusters + 1)
    out["num_objects"] = num_objects
    out["labels"] = labels
    return out


def pixel_kmeans_miou(maps: torch.Tensor, objects: torch.Tensor, semantic: torch.Tensor, num_classes: int, *,
                      clusters: Optional[int] = None, seed: int = 0, normalize: bool = True,
                      max_fit: int = 20000) -> dict:
    """The baselines' protocol of the supplementary: K-means (``clusters``, default ``num_classes``; sklearn, 10
    inits, fitted on at most ``max_fit`` object pixels drawn with ``seed``) on the vector of every object pixel
    (``objects`` ``(N, H, W)`` > 0: the same objects :func:`object_kmeans_miou` is given), each pixel labelled
    ``1 + its cluster``, the rest background 0, scored by Hungarian mIoU as :func:`object_kmeans_miou`.
    ``normalize``: L2-normalise each pixel's vector (CNN features) or not (raw colours). Unlike the object
    protocol, the pixels of one object may fall into different clusters. Returns the same keys."""
    import numpy as np
    import torch.nn.functional as F
    from sklearn.cluster import KMeans

    clusters = num_classes if clusters is None else int(clusters)
    objects = (objects[:, 0] if objects.dim() == 4 else objects).long()
    if objects.shape[-2:] != maps.shape[-2:]:
        raise ValueError(f"pixel_kmeans_miou needs maps at the objects' size {tuple(objects.shape[-2:])}, "
                         f"got {tuple(maps.shape[-2:])}")
    on = objects > 0
    vectors = maps.float().permute(0, 2, 3, 1)[on]
    vectors = F.normalize(vectors, dim=1) if normalize else vectors
    if len(vectors) < clusters:
        raise ValueError(f"K-means with {clusters} clusters needs at least as many object pixels, got {len(vectors)}")
    data = vectors.double().numpy()
    rng = np.random.default_rng(seed)
    fit = data if len(data) <= max_fit else data[rng.choice(len(data), max_fit, replace=False)]
    kmeans = KMeans(clusters, n_init=10, random_state=seed).fit(fit)
    labels = torch.zeros_like(objects)
    labels[on] = torch.from_numpy(kmeans.predict(data)).long() + 1
    return _score_clusters(labels, semantic, num_classes, clusters, int(sum((o.unique() > 0).sum() for o in objects)))


@torch.no_grad()
def semantic_baseline_vectors(name: str, images: torch.Tensor, *, extractor=None, batch_size: int = 64) -> torch.Tensor:
    """Per-pixel maps a semantic baseline clusters: ``"rgb"`` the raw colours ``(N, 3, H, W)``, ``"features"`` the
    frozen extractor's (default ``get_extractor("auto")``) ``"kmeans"`` layers (those of partlab's K-means part
    baseline) upsampled to the image size and concatenated."""
    name = _baseline_input(name)
    if name == "rgb":
        return images.float()
    if name != "features":
        raise ValueError(f"unknown semantic baseline {name!r}; choose one of {SEMANTIC_BASELINES + PIXEL_BASELINES}")
    from partlab.features import extract_features, get_extractor

    extractor = get_extractor("auto") if extractor is None else extractor
    layers = extractor.layers_for("kmeans")
    return extract_features(extractor, images, layers, size=tuple(images.shape[-2:]), batch_size=batch_size)


def scene_embeddings(model, images: torch.Tensor, batch_size: int = 64) -> tuple:
    """``model.embed`` (:meth:`partlab.methods.MaskContrast.embed`) over a stack of scenes in batches:
    ``(embeddings (N, D, H, W), saliency (N, 1, H, W))`` on the CPU."""
    maps, saliency = [], []
    for start in range(0, len(images), batch_size):
        out = model.embed(images[start:start + batch_size])
        maps.append(out["embeddings"].cpu())
        saliency.append(out["saliency"].cpu())
    return torch.cat(maps), torch.cat(saliency)


def semantic_benchmark(models: Mapping[str, object], scenes: Mapping[str, torch.Tensor], num_classes: int, *,
                       clusters: Sequence[int] = (), objects: str = "instances",
                       baselines: Sequence[str] = SEMANTIC_BASELINES + PIXEL_BASELINES, extractor=None, seed: int = 0
                       ) -> Dict[str, Dict[str, float]]:
    """K-means mIoU of each model (and baseline) on ``scenes`` (``"image"``, ``"semantic"``, ``"saliency"``,
    ``"instances"``): ``{name: {"miou", "acc", "nmi", "ari", "miou@C" for C in clusters}}``.

    ``objects``: what is clustered, one mean vector each: ``"instances"`` every true object of a scene (the
    scenes hold up to three objects of different categories), ``"saliency"`` each image's true salient region
    as one object (the paper's VOC protocol, which mixes categories in a scene), or ``"predicted"`` each
    model's own saliency head > 0.5 as one object (baselines then use the true saliency). Models give their
    embeddings with :meth:`partlab.methods.MaskContrast.embed`.

    ``baselines``: ``"rgb"`` and ``"features"`` are clustered as the models are, one mean vector per object (the
    stricter comparison: each object gets one label for free); ``"rgb pixels"`` and ``"features pixels"`` per
    pixel (:func:`pixel_kmeans_miou`), the supplementary's protocol for its baselines."""
    unknown = [b for b in baselines if b not in SEMANTIC_BASELINES + PIXEL_BASELINES]
    if unknown:
        raise ValueError(f"unknown semantic baseline(s) {unknown}; choose from {SEMANTIC_BASELINES + PIXEL_BASELINES}")
    if objects not in ("instances", "saliency", "predicted"):
        raise ValueError(f"objects={objects!r}; choose 'instances', 'saliency' or 'predicted'")
    semantic = scenes["semantic"].long()
    truth = scenes["instances"].long() if objects == "instances" else (scenes["saliency"][:, 0] > 0.5).long()
    sources: Dict[str, tuple] = {}
    for name, model in models.items():
        maps, saliency = scene_embeddings(model, scenes["image"])
        sources[name] = (maps, (saliency[:, 0] > 0.5).long() if objects == "predicted" else truth)
    inputs: Dict[str, torch.Tensor] = {}                  # "rgb" and "rgb pixels" cluster the same maps
    for name in baselines:
        base = _baseline_input(name)
        if base not in inputs:
            inputs[base] = semantic_baseline_vectors(base, scenes["image"], extractor=extractor)
        sources[f"kmeans ({name})"] = (inputs[base], truth)
    results: Dict[str, Dict[str, float]] = {}
    for name, (maps, found) in sources.items():
        options = {"seed": seed, "normalize": not name.startswith("kmeans (rgb")}
        protocol = pixel_kmeans_miou if name.endswith(" pixels)") else object_kmeans_miou
        scored = protocol(maps, found, semantic, num_classes, **options)
        row = {k: scored[k] for k in ("miou", "acc", "nmi", "ari")}
        for c in clusters:
            row[f"miou@{c}"] = protocol(maps, found, semantic, num_classes, clusters=c, **options)["miou"]
        results[name] = row
    return results


def semantic_linear_probe(models: Mapping[str, object], train: Mapping[str, torch.Tensor],
                          test: Mapping[str, torch.Tensor], num_classes: int, *,
                          baselines: Sequence[str] = SEMANTIC_BASELINES, extractor=None, steps: int = 300,
                          seed: int = 0, device="cpu") -> Dict[str, Dict[str, float]]:
    """MaskContrast's linear evaluation, small: a 1x1 conv on frozen features trained on ``train`` scenes'
    semantic labels (background a class), plain mIoU on ``test`` (:func:`partlab.metrics.linear_probe_miou`).
    Models are probed on their decoder features (:meth:`partlab.methods.MaskContrast.embed`), baselines on
    raw colours and the frozen extractor's K-means layers. Returns ``{name: {"miou", "acc"}}``."""
    def model_features(model, images):
        return torch.cat([model.embed(images[i:i + 64])["features"].cpu() for i in range(0, len(images), 64)])

    results: Dict[str, Dict[str, float]] = {}
    sources = {name: (lambda images, m=model: model_features(m, images)) for name, model in models.items()}
    for name in baselines:
        sources[f"probe ({name})"] = lambda images, n=name: semantic_baseline_vectors(n, images, extractor=extractor)
    for name, features in sources.items():
        out = metrics.linear_probe_miou(features(train["image"]), train["semantic"].long(), features(test["image"]),
                                        test["semantic"].long(), num_classes + 1, steps=steps, seed=seed,
                                        device=device)
        results[name] = {"miou": out["miou"], "acc": out["acc"]}
    return results


def attach_probe(results: Dict[str, Dict[str, float]], probed: Mapping[str, Mapping[str, float]]) -> None:
    """Write each :func:`semantic_linear_probe` mIoU into ``results[...]["probe_miou"]``, in place: a model's
    under its own name, a baseline input's (``"probe (rgb)"``) under both rows that cluster it, per object and
    per pixel (``"rgb"``, ``"rgb pixels"``). A linear probe reads pixels either way, so the two rows share it."""
    for name, scores in probed.items():
        source = name[len("probe ("):-1] if name.startswith("probe (") else None
        for target in [name] if source is None else [source, f"{source} pixels"]:
            if target in results:
                results[target]["probe_miou"] = scores["miou"]


SEMANTIC_METRICS = ("miou", "probe_miou")          # a scene benchmark's headline: K-means mIoU and the probe


def scene_splits(size: int = 64, n_train: int = 200, n_test: int = 200, seed: int = 0, config=None,
                 objects=(1, 3), test_split: str = "test"):
    """The synthetic scenes' benchmark splits, stacked (``image``, ``semantic``, ``instances``, ``saliency``,
    ...): ``train`` (the first ``n_train`` training scenes of ``seed``: the linear probe and the oracle learn
    on them) and ``test`` (every score; ``test_split="val"`` where settings are chosen)."""
    from partlab.data import SyntheticScenes, stack_dataset

    common = dict(size=size, seed=seed, config=config, objects=objects)
    train = stack_dataset(SyntheticScenes(length=n_train, split="train", **common))
    test = stack_dataset(SyntheticScenes(length=n_test, split=test_split, **common))
    return train, test


def scene_benchmark(models, train: Mapping[str, torch.Tensor], test: Mapping[str, torch.Tensor],
                    num_classes: int, *, clusters: Sequence[int] = (), probe: bool = True,
                    baselines: Sequence[str] = SEMANTIC_BASELINES + PIXEL_BASELINES, objects: str = "instances",
                    probe_steps: int = 300, extractor=None, seed: int = 0, device="cpu") -> Benchmark:
    """The semantic methods' benchmark (MaskContrast) as one :class:`Benchmark`, the counterpart of
    :func:`benchmark` for part methods: one row per model and per baseline input (``"rgb"``: raw colours,
    ``"features"``: the frozen extractor, one mean per object as the models; ``"rgb pixels"``, ``"features
    pixels"``: the same clustered per pixel, the supplementary's baseline protocol; their probe is the same
    as the per-object row's, since a linear probe reads pixels either way).

    Columns: ``miou`` (K-means with K = ``num_classes`` on one mean vector per object, Hungarian mIoU,
    :func:`semantic_benchmark`), ``miou@C`` for each C in ``clusters`` (overclustering, majority vote),
    ``probe_miou`` (a linear probe on the frozen features, trained on ``train``'s labels:
    :func:`semantic_linear_probe`). The headline metrics are :data:`SEMANTIC_METRICS`. There is no oracle row:
    the K-means columns judge given objects, so a supervised segmenter's plain mIoU would not compare; the
    supervised reference is fine-tuning on every label (:func:`partlab.finetune.finetune_table`)."""
    models = dict(models) if isinstance(models, Mapping) else {"maskcontrast": models}
    if not models:
        raise ValueError("scene_benchmark needs at least one model")
    if any(b.startswith("features") for b in baselines) and extractor is None:
        from partlab.features import get_extractor

        extractor = get_extractor("auto", device=device)
    kmeans = semantic_benchmark(models, test, num_classes, clusters=clusters, objects=objects, baselines=baselines,
                                extractor=extractor, seed=seed)
    rename = {f"kmeans ({name})": name for name in baselines}
    results = {rename.get(name, name): row for name, row in kmeans.items()}
    if probe:
        inputs = tuple(dict.fromkeys(_baseline_input(b) for b in baselines))
        probed = semantic_linear_probe(models, train, test, num_classes, baselines=inputs, extractor=extractor,
                                       steps=probe_steps, seed=seed, device=device)
        attach_probe(results, probed)
    columns = tuple(next(iter(results.values())))
    headline = tuple(m for m in SEMANTIC_METRICS if m in columns)
    figure = ("miou",) + tuple(f"miou@{c}" for c in clusters) + (("probe_miou",) if probe else ())
    return Benchmark(results, {}, list(models), list(baselines), None, metrics=headline, figure_metrics=figure,
                     columns=columns)
