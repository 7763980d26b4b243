"""The setup every training notebook shares: one call builds the method from its recipe and says what is used.

>>> s = setup("scops", n_train=8, n_eval=4, steps=2, echo=False)          # doctest: +SKIP
>>> s.fit(); bench = s.benchmark(oracle_steps=2)                          # doctest: +SKIP

:func:`setup` checks the dataset parameter, seeds everything, builds the method's quick recipe
(:mod:`partlab.recipes`; ``quick=False``: the same recipe on more images for longer), draws the
benchmark split, and prints the device, the data, the recipe and the features. The
:class:`Session` it returns trains (:meth:`Session.fit`, :meth:`Session.train_variants`) and scores
(:meth:`Session.benchmark`, :func:`partlab.evaluation.benchmark`) with those settings.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

#: notebook sizes: (training images, benchmark images per split, training steps); ``None`` keeps the recipe's
QUICK_SIZES = {"n_train": None, "n_eval": 150, "steps": None}
FULL_SIZES = {"n_train": 2048, "n_eval": 500, "steps": 4000}


@dataclasses.dataclass
class Session:
    """A training notebook's state: the method, its recipe, the model (untrained until :meth:`fit`), the
    training set, the setup's ``info`` and the benchmark split (``train_eval``: landmark regressors are
    fitted on it; ``test``: every score)."""

    method: str
    recipe: Any
    model: Any
    train_set: Any
    info: dict
    train_eval: dict
    test: dict
    device: str
    quick: bool
    data: str = "images"          # the method's data kind: "images" (part benchmark) or "scenes" (semantic)

    @property
    def scenes(self) -> bool:
        """A semantic method (MaskContrast): scenes of several categories, scored by :func:`scene_benchmark`."""
        return self.data == "scenes"

    @property
    def category(self) -> str:
        return self.recipe.data.category

    @property
    def size(self) -> int:
        return self.recipe.data.size

    @property
    def n_train(self) -> int:
        return self.recipe.data.n_train

    @property
    def steps(self) -> int:
        return self.recipe.fit.max_steps

    @property
    def seed(self) -> int:
        return self.recipe.fit.seed

    @property
    def num_parts(self) -> int:
        return self.info["num_parts"]

    @property
    def features(self) -> str:
        """The feature extractor's name (``"standin"``, ``"vgg19"``, ...)."""
        return str(self.info.get("features", "none")).split(":")[0]

    def fit(self, model=None, **overrides: Any):
        """Train ``model`` (default: the session's) with the recipe's settings (``overrides`` change them,
        e.g. ``max_steps=``); returns the model, its ``history`` filled."""
        from partlab.train import fit

        return fit(self.model if model is None else model, self.train_set, **dict(self.info["fit"], **overrides))

    def train_variants(self, variants, **overrides: Any) -> dict:
        """:func:`partlab.methods.registry.train_variants` of this method on this training set (same data,
        seed and initialisation for every variant) for the session's steps."""
        from partlab.methods.registry import train_variants

        return train_variants(self.method, variants, self.train_set, self.info, **overrides)

    def benchmark(self, models=None, **kwargs: Any):
        """:func:`partlab.evaluation.benchmark` on this session's split, category, K, features, seed and
        device; ``models`` defaults to ``{method: model}``. ``oracle_steps=`` adds the supervised oracle
        (trained on as many images as the method). A scenes method (MaskContrast) is scored with
        :func:`partlab.evaluation.scene_benchmark` instead (K-means mIoU with K = its classes, ``clusters=``
        for overclustering, the linear probe; ``oracle_steps=`` a supervised network)."""
        from partlab.evaluation import benchmark, scene_benchmark

        models = {self.method: self.model} if models is None else models
        if self.scenes:
            settings = dict(seed=self.seed, device=self.device)
            return scene_benchmark(models, self.train_eval, self.test, self.num_parts, **dict(settings, **kwargs))
        settings = dict(category=self.category, num_parts=self.num_parts, features=self.recipe.data.features,
                        n_train=self.n_train, size=self.size, seed=self.seed, device=self.device)
        return benchmark(models, self.train_eval, self.test, **dict(settings, **kwargs))

    def variant(self, settings: Mapping[str, Any], *, echo: bool = False) -> "Session":
        """The same session (data, benchmark split, seed, steps) with other recipe settings by dotted key,
        e.g. ``{"model.network": "standin_unet", "model.pretrained": True, "fit.lr": 1e-4}``: a fresh,
        untrained model to compare with this one after the same training."""
        return self._built(self.method, self.recipe.override(dict(settings)), self.data, echo)

    def _built(self, method: str, recipe, data: str, echo: bool) -> "Session":
        """A fresh session of ``recipe`` (seeded with this session's seed) on this session's benchmark split."""
        from partlab import utils

        utils.seed_everything(self.seed)
        model, train_set, info = recipe.build(device=self.device)
        session = Session(method, recipe, model, train_set, info, self.train_eval, self.test,
                          info["fit"]["device"], self.quick, data)
        if echo:
            print(session.describe())
        return session

    def other(self, method: str, *, steps: Optional[int] = None, settings: Optional[Mapping[str, Any]] = None,
              echo: bool = False, recipe: str = "quick") -> "Session":
        """A session of another registry method on this session's data: the same benchmark split (scored on the
        same test images), seed, category, world, image size, features, device and training-set size, with
        ``method``'s own quick recipe, or its ``recipe`` by name (``steps``, ``settings``: changes by dotted key,
        as for :func:`setup`). The motion notebook trains SCOPS and contrastive discovery this way, to score
        them next to the motion model."""
        from partlab.methods.registry import get_method

        entry = get_method(method)
        if (entry.data == "scenes") != self.scenes:          # part methods share the birds; scenes are scored apart
            raise ValueError(f"{method!r} trains on {entry.data}, this session's method {self.method!r} on "
                             f"{self.data}: they cannot share a benchmark split")
        d = self.recipe.data
        changes: dict = {"data.category": d.category, "data.world": d.world, "data.size": d.size,
                         "fit.seed": self.seed, "data.n_train": self.n_train}
        if getattr(entry.cls, "feature_role", ""):
            changes["data.features"] = d.features
        if steps is not None:
            changes["fit.max_steps"] = int(steps)
        recipe = entry.recipe(recipe).override({**changes, **dict(settings or {})})
        return self._built(entry.name, recipe, entry.data, echo)

    @property
    def world(self) -> str:
        return self.recipe.data.world

    def across_worlds(self, model=None, *, worlds=("default", "varied"), mask: str = "true",
                      baselines=("position",), baseline_mask: str = "true") -> dict:
        """The model (default: the session's) on the test images of each world in ``worlds`` (the same
        scenes: the varied world repaints them): ``{world: {"test", "pred", "scores", "baselines"}}``,
        where ``scores`` holds pooled FG-ARI/NMI (``fg_ari``: part k the same part in every image) and
        per-image FG-ARI/NMI (``fg_ari_image``: segments within each image), and ``baselines`` the
        feature-free position baselines (:data:`partlab.evaluation.POSITION_BASELINES`) on the same images
        and ``baseline_mask`` (:func:`partlab.evaluation.baseline_mask`). ``mask``: ``"true"`` (the model's
        parts judged inside the true foreground) or ``"own"`` (its own foreground).

        A scenes method (MaskContrast) is scored by the K-means protocol on the true objects
        (:func:`partlab.evaluation.object_kmeans_miou`, K = the number of classes): ``scores`` holds ``miou``,
        ``pred["labels"]`` each object's cluster (one fixed colour per cluster in :func:`partlab.viz.part_grid`),
        and ``baselines`` the same K-means on raw colours (``"rgb"``); ``mask`` and ``baseline_mask`` do not apply."""
        from partlab.evaluation import benchmark_splits, predict_dataset, score_baseline, score_parts

        model = self.model if model is None else model
        if self.scenes:
            return self._scenes_across_worlds(model, worlds)
        n = len(self.test["image"])
        out = {}
        for world in dict.fromkeys(worlds):
            train, test = (self.train_eval, self.test) if world == self.world else benchmark_splits(
                self.category, size=self.size, n_train=len(self.train_eval["image"]), n_test=n, seed=self.seed,
                config=world)
            pred = predict_dataset(model, test["image"], device=self.device, fg=test["fg"] if mask == "true" else None)
            scores = {k: v for k, v in score_parts(pred, test).items() if k.startswith("fg_")}
            floors = {name: {k: v for k, v in score_baseline(name, train, test, num_parts=self.num_parts,
                                                             seed=self.seed, mask=baseline_mask)[0].items() if k.startswith("fg_")}
                      for name in baselines}
            out[world] = {"test": test, "pred": pred, "scores": scores, "baselines": floors}
        return out

    def _scenes_across_worlds(self, model, worlds) -> dict:
        from partlab.evaluation import object_kmeans_miou, scene_embeddings, scene_splits, semantic_baseline_vectors

        out = {}
        for world in dict.fromkeys(worlds):
            test = self.test if world == self.world else scene_splits(
                size=self.size, n_train=1, n_test=len(self.test["image"]), seed=self.seed, config=world,
                objects=self.recipe.data.scene_objects)[1]
            maps, _ = scene_embeddings(model, test["image"])
            scored = object_kmeans_miou(maps, test["instances"], test["semantic"], self.num_parts, seed=self.seed)
            rgb = object_kmeans_miou(semantic_baseline_vectors("rgb", test["image"]), test["instances"],
                                     test["semantic"], self.num_parts, seed=self.seed, normalize=False)
            keys = ("miou", "acc", "nmi", "ari")
            out[world] = {"test": test, "pred": {"labels": scored["labels"]}, "scores": {k: scored[k] for k in keys},
                          "baselines": {"rgb": {k: rgb[k] for k in keys}}}
        return out

    def describe(self) -> str:
        d = self.recipe.data
        what = (f"scenes of {self.num_parts} categories ({d.scene_objects[0]}-{d.scene_objects[1]} objects each)"
                if self.scenes else f"category={d.category}")
        lines = [f"device: {self.info['device']}",
                 f"data: partlab synthetic world ({d.world}), {what}, {d.size}px, {d.n_train} training images, "
                 f"seed={self.seed}; benchmark split {len(self.train_eval['image'])} + {len(self.test['image'])} images",
                 self.recipe.describe()]
        for key in ("features", "network", "saliency", "foreground"):
            if key in self.info:
                lines.append(f"{key}: {self.info[key]}")
        return "\n".join(lines)


def setup(method: str, *, quick: bool = True, device: str = "auto", dataset: str = "synthetic", seed: int = 0,
          category: str = "bird", world: str = "default", features: Optional[str] = "auto", n_train: Optional[int] = None,
          n_eval: Optional[int] = None, steps: Optional[int] = None, settings: Optional[Mapping[str, Any]] = None,
          data_root=None, echo: bool = True, recipe: str = "quick") -> Session:
    """A training notebook's first cell, in one call.

    Args:
        method: a registry name (``"scops"``, ``"contrastive"``, ``"oracle"``, ``"maskcontrast"``: scenes of
            the four categories, the benchmark split :func:`partlab.evaluation.scene_splits`).
        quick: the method's quick recipe (CPU, minutes); ``False``: the same recipe on 2048 images for
            4000 steps, scored on 500 + 500 (:data:`FULL_SIZES`). The paper recipe is for
            ``partlab train METHOD --recipe paper`` on a GPU.
        device, seed, category, world, features: the notebook's parameters (``fit.seed``, ``data.category``,
            ``data.world``: ``"default"`` or ``"varied"`` colours, ``data.features``).
        dataset, data_root: the training notebooks run on the synthetic world; another dataset is refused
            with one message (real datasets are scored with ``partlab evaluate``).
        n_train, n_eval, steps: change the sizes.
        settings: more recipe overrides by dotted key (``{"model.saliency": "none", "weights.con": 0}``).
        echo: print what is used (:meth:`Session.describe`).
        recipe: the method's recipe by name (``"quick"``; contrastive discovery also has ``"coparts"``), at the
            sizes above. Not ``"paper"``: that one is for a GPU, ``partlab train METHOD --recipe paper``.
    """
    from partlab import utils
    from partlab.evaluation import benchmark_splits, scene_splits
    from partlab.methods.registry import get_method

    if dataset != "synthetic":
        raise ValueError(f"dataset={dataset!r}: the training notebooks train on the embedded synthetic world; "
                         f"use dataset='synthetic' (real data: partlab train/evaluate)")
    entry = get_method(method)
    if recipe == "paper":
        raise ValueError(f"setup(recipe='paper'): the paper recipe trains DeepLab at 256 px for 100k steps; run it on a "
                         f"GPU with `partlab train {entry.name} --recipe paper` (recipes here: "
                         f"{[name for name in entry.recipes if name != 'paper']})")
    sizes = dict(QUICK_SIZES if quick else FULL_SIZES)
    sizes.update({k: v for k, v in (("n_train", n_train), ("n_eval", n_eval), ("steps", steps)) if v is not None})
    changes: dict = {"data.category": category, "data.world": world, "fit.seed": int(seed)}
    if features is not None and getattr(entry.cls, "feature_role", ""):
        changes["data.features"] = features
    if sizes["n_train"] is not None:
        changes["data.n_train"] = int(sizes["n_train"])
    if sizes["steps"] is not None:
        changes["fit.max_steps"] = int(sizes["steps"])
    recipe = entry.recipe(recipe).override({**changes, **dict(settings or {})})
    utils.seed_everything(int(seed))
    model, train_set, info = recipe.build(device=device)
    if entry.data == "scenes":
        train_eval, test = scene_splits(size=recipe.data.size, n_train=sizes["n_eval"], n_test=sizes["n_eval"],
                                        seed=int(seed), config=recipe.data.world, objects=recipe.data.scene_objects)
    else:
        train_eval, test = benchmark_splits(recipe.data.category, size=recipe.data.size, n_train=sizes["n_eval"],
                                            n_test=sizes["n_eval"], seed=int(seed), config=recipe.data.world)
    session = Session(entry.name, recipe, model, train_set, info, train_eval, test, info["fit"]["device"], quick,
                      entry.data)
    if echo:
        print(session.describe())
    return session


def training_summary(model, terms=None) -> str:
    """The weighted loss and each term at the first and the last record of ``model.history``."""
    first, last = model.history[0], model.history[-1]
    names = ["loss"] + [t for t in (terms or [k for k in last if k not in ("step", "loss")]) if t in last]
    return ", ".join(f"{t} {first[t]:.3g} -> {last[t]:.3g}" for t in names)


__all__ = ["FULL_SIZES", "QUICK_SIZES", "Session", "setup", "training_summary"]
