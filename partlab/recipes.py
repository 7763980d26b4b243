"""Recipes: everything a training run uses, as one small typed object.

A :class:`Recipe` holds

- ``weights``: the loss weights, one mapping keyed by term name as in the method's ``losses()``
  (``{"con": 300.0, "sc": 1e4, ...}`` for SCOPS);
- ``model``: the method's other settings (network and its arguments, K, saliency, ...);
- ``data``: a :class:`DataSpec` (dataset, category, size, count, features and whether the features
  of every training image are computed once and held in memory: quick mode only);
- ``fit``: the :class:`partlab.train.TrainConfig`.

Every method has the recipes ``quick`` (CPU, minutes, CI) and ``paper`` (the original's settings from
REFERENCE_NOTES.md, with the original's *effective* loss weights where its reductions differ from
partlab's) in the method registry (:mod:`partlab.methods.registry`). A recipe is printed when used
(:meth:`Recipe.describe`), saved in the run folder (``recipe.json``, :meth:`Recipe.save`) and rebuilt
from it (:func:`load_recipe`), so a run can be re-run. Settings change through :meth:`Recipe.override`
with dotted keys, as ``partlab train scops --set fit.lr=1e-4 --set weights.con=100`` does.

>>> from partlab.methods.registry import get_recipe
>>> recipe = get_recipe("scops", "quick").override({"fit.max_steps": 10, "data.n_train": 16})
>>> recipe.fit.max_steps, recipe.weights["con"]
(10, 300.0)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from partlab.train import TrainConfig

RECIPE_FORMAT = "partlab.recipe/1"
RECIPE_FILE = "recipe.json"
SECTIONS = ("weights", "model", "data", "fit")
# DataLoader processes of the paper recipes (GPU runs): rendering and RBD saliency per item run beside the
# training step, up to 8, no more than this machine's CPUs (recorded in each run's recipe.json).
PAPER_NUM_WORKERS = min(8, os.cpu_count() or 1)
# Networks whose backbone starts from torchvision's ImageNet ResNet-50 (DeepLab-v2 and DeepLab-v3).
RESNET50_NETWORKS = ("deeplab", "deeplab_v3")


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """The training data of a recipe.

    Attributes:
        dataset: ``"synthetic"`` (the embedded world; real datasets arrive with their readers).
        category: synthetic category (``"bird"``, ``"quadruped"``, ``"figure"``, ``"face"``).
        world: the synthetic world by name (:data:`partlab.data.synthetic.WORLDS`): ``"default"``, or
            ``"varied"`` (instance-varied colours: colour does not name a part), ``"easy"``, ``"hard"``.
        size: image size in pixels (square).
        n_train: training images (drawn with the recipe's ``fit.seed``, which seeds the whole run).
        features: the frozen feature extractor (:func:`partlab.features.get_extractor`: ``"auto"``,
            ``"vgg19"``, ``"standin"``, ``"rgb"``).
        cache: quick mode: the features (and saliency maps) of every training image are computed once
            and held in memory. ``False`` (paper): computed on the fly on the device, at any scale.
        clip_motion: frame-pair methods (``motion``): the world's ``clip_motion``, the multiplier of the
            object's global drift between the two frames of a clip (1: the world's clips as they are).
        clip_drift: ``"similarity"`` (the world's) or ``"translation"``: the clips' global drift without its
            rotation and scale change.
        noise: the std of the training data's pixel noise, or ``None`` for the world's own (0.02 by default).
            ``clip_motion``, ``clip_drift`` and ``noise`` change the training data only; the evaluation splits
            are the world's as named.
        scene_objects: scene methods (``maskcontrast``): ``(lo, hi)`` objects per training scene.
    """

    dataset: str = "synthetic"
    category: str = "bird"
    world: str = "default"
    size: int = 64
    n_train: int = 512
    features: str = "auto"
    cache: bool = True
    clip_motion: float = 1.0
    clip_drift: str = "similarity"
    noise: Optional[float] = None
    scene_objects: tuple = (1, 3)

    def __post_init__(self) -> None:
        if self.dataset != "synthetic":
            raise ValueError(f"data.dataset={self.dataset!r}: recipes train on the synthetic world for now "
                             f"('synthetic'); real datasets arrive with their readers")
        from partlab.data.synthetic import CATEGORIES, WORLDS

        if self.world not in WORLDS:
            raise ValueError(f"data.world={self.world!r}; choose one of {list(WORLDS)}")

        if self.category not in CATEGORIES:
            raise ValueError(f"data.category={self.category!r}; choose one of {list(CATEGORIES)}")
        for name, low, high in (("size", 16, 4096), ("n_train", 1, 2**62)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"data.{name} must be an integer in [{low}, {high}], got {value!r}")
        from partlab.features.extractors import _EXTRACTOR_CHOICES

        if self.features not in _EXTRACTOR_CHOICES:
            raise ValueError(f"data.features={self.features!r}; choose one of {list(_EXTRACTOR_CHOICES)}")
        if not isinstance(self.cache, bool):
            raise ValueError(f"data.cache must be true or false, got {self.cache!r}")
        motion = self.clip_motion
        if isinstance(motion, bool) or not isinstance(motion, (int, float)) or not 0 <= motion <= 8:
            raise ValueError(f"data.clip_motion must be a number in [0, 8], got {motion!r}")
        object.__setattr__(self, "clip_motion", float(motion))
        from partlab.data.synthetic import CLIP_DRIFTS

        if self.clip_drift not in CLIP_DRIFTS:
            raise ValueError(f"data.clip_drift={self.clip_drift!r}; choose one of {list(CLIP_DRIFTS)}")
        noise = self.noise
        if noise is not None:
            if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise <= 0.5:
                raise ValueError(f"data.noise must be null (the world's) or a number in [0, 0.5], got {noise!r}")
            object.__setattr__(self, "noise", float(noise))
        objects = self.scene_objects
        if not (isinstance(objects, (list, tuple)) and len(objects) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in objects)
                and 1 <= objects[0] <= objects[1] <= 4):
            raise ValueError(f"data.scene_objects must be (lo, hi) with 1 <= lo <= hi <= 4, got {objects!r}")
        object.__setattr__(self, "scene_objects", tuple(objects))

    def world_config(self):
        """The :class:`partlab.data.synthetic.SyntheticConfig` of ``world`` with this spec's ``clip_motion`` and
        ``clip_drift`` (and ``noise`` when set)."""
        from partlab.data.synthetic import WORLDS

        config = dataclasses.replace(WORLDS[self.world](), clip_motion=self.clip_motion, clip_drift=self.clip_drift)
        return config if self.noise is None else dataclasses.replace(config, noise=self.noise)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A method's training recipe (see the module docstring).

    Attributes:
        method: the registry name (``"scops"``, ``"contrastive"``, ``"oracle"``).
        name: the recipe's name (``"quick"``, ``"paper"``).
        weights: loss weights keyed by term name (the method's ``TERMS``); the terms left out keep the
            method's defaults.
        model: the method's other constructor settings (``network``, network arguments, ``num_parts``
            (``None``: the category's number of parts), saliency, ...).
        data: the :class:`DataSpec`.
        fit: the :class:`partlab.train.TrainConfig` (its ``device``, ``checkpoint_dir`` and ``resume``
            are set by whoever runs it).
        imagenet: the recipe starts from ImageNet weights (backbone and features), as the paper's do:
            without them in the local torch cache it is refused unless ``allow_random_init``.
        allow_random_init: start without ImageNet weights anyway (random backbone, the offline stand-in
            features); recorded in the run folder.
    """

    method: str
    name: str
    weights: Mapping[str, float]
    model: Mapping[str, Any]
    data: DataSpec
    fit: TrainConfig
    imagenet: bool = False
    allow_random_init: bool = False

    def __post_init__(self) -> None:
        from partlab.methods.registry import get_method

        entry = get_method(self.method)
        unknown = sorted(set(self.weights) - set(entry.weighted_terms))
        if unknown:
            raise ValueError(f"{self.method} has no loss term(s) {unknown} to weigh; its weighted terms are "
                             f"{list(entry.weighted_terms)}")
        bad = {term: value for term, value in self.weights.items()
               if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                       and value >= 0)}
        if bad:
            raise ValueError(f"loss weights must be finite numbers >= 0 (0 switches a term off), got {bad}")
        entry.check_model_settings(self.model)
        object.__setattr__(self, "weights", {term: float(value) for term, value in self.weights.items()})
        object.__setattr__(self, "model", dict(self.model))

    # ------------------------------------------------------------------------------ overrides

    def override(self, changes: Union[Mapping[str, Any], Iterable[str], None]) -> "Recipe":
        """A copy with settings changed by dotted keys: ``{"fit.lr": 1e-4, "weights.con": 100}`` or the
        command line's ``["fit.lr=1e-4", "weights.con=100"]`` (values parsed as JSON, else kept as text: ``null``
        is None, ``none`` the word "none", a choice of several settings such as ``model.visibility=none``).
        Unknown keys are refused with the accepted ones named. Changing ``model.network`` drops the old
        network's own settings that the new one does not take (``base_channels``, ``depth`` of the U-Net)."""
        if not changes:
            return self
        if not isinstance(changes, Mapping):
            changes = dict(_parse_assignment(item) for item in changes)
        sections = {"weights": dict(self.weights), "model": dict(self.model),
                    "data": dataclasses.asdict(self.data), "fit": self.fit.to_dict()}
        top = {}
        for key, value in changes.items():
            section, _, name = str(key).partition(".")
            if section in ("imagenet", "allow_random_init") and not name:
                top[section] = _as_bool(value, section)
                continue
            if section not in sections or not name:
                raise ValueError(f"unknown recipe setting {key!r}: use section.name with a section in "
                                 f"{list(SECTIONS)} (e.g. fit.lr=1e-4, weights.con=100, data.size=128, "
                                 f"model.network=deeplab)")
            if section in ("data", "fit") and name not in sections[section]:
                raise ValueError(f"unknown recipe setting {key!r}; {section} has {sorted(sections[section])}")
            sections[section][name] = value
        network = changes.get("model.network")
        if network is not None and network != self.model.get("network"):
            # switching networks drops the old network's own settings (e.g. the U-Net's base_channels) that
            # the new one does not take, unless they were set in the same call
            from partlab.methods.base import accepted_kwargs
            from partlab.methods.registry import get_method

            accepted = accepted_kwargs(get_method(self.method).cls, {"network": network})
            for name in list(sections["model"]):
                if name not in accepted and f"model.{name}" not in changes:
                    del sections["model"][name]
        fit = sections["fit"]
        fit["betas"] = tuple(fit["betas"])
        return Recipe(self.method, self.name, sections["weights"], sections["model"], DataSpec(**sections["data"]),
                      TrainConfig.from_kwargs(**fit), top.get("imagenet", self.imagenet),
                      top.get("allow_random_init", self.allow_random_init))

    # ------------------------------------------------------------------------------ saving

    def to_dict(self) -> dict:
        """The recipe as JSON values (what ``recipe.json`` holds)."""
        from partlab.methods.runs import jsonable

        fit = self.fit.to_dict()
        fit["betas"] = list(fit["betas"])
        return {"format": RECIPE_FORMAT, "method": self.method, "name": self.name, "weights": dict(self.weights),
                "model": jsonable(self.model), "data": dataclasses.asdict(self.data), "fit": fit,
                "imagenet": self.imagenet, "allow_random_init": self.allow_random_init}

    def save(self, folder: Union[str, os.PathLike]) -> Path:
        """Write ``folder/recipe.json`` atomically; return its path."""
        from partlab.utils import atomic_write_text

        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        return atomic_write_text(Path(folder) / RECIPE_FILE, text)

    # ------------------------------------------------------------------------------ use

    def describe(self) -> str:
        """A few lines saying what this recipe uses (printed by ``partlab train`` and the notebooks)."""
        from partlab.methods.registry import get_method

        entry = get_method(self.method)
        fit = self.fit
        optimiser = f"{fit.optimizer} lr {fit.lr:g}"
        if fit.optimizer == "sgd":
            optimiser += f", momentum {fit.momentum:g}"
        if fit.weight_decay:
            optimiser += f", weight decay {fit.weight_decay:g}"
        if fit.lr_schedule == "poly":
            optimiser += f", poly {fit.poly_power:g}"
        if fit.grad_clip:
            optimiser += f", clip {fit.grad_clip:g}"
        weights = {term: self.weights.get(term, "derived" if default is None else default)
                   for term, default in entry.default_weights().items()}
        d = self.data
        features = getattr(entry.cls, "feature_role", "")
        lines = [f"recipe {self.method}/{self.name}: {entry.cls.__name__} trained on {entry.data}",
                 f"  data: {d.dataset} " + (f"scenes of every category, {d.scene_objects[0]}-{d.scene_objects[1]} objects each"
                                             if entry.data == "scenes" else d.category)
                 + (f" ({d.world} world)" if d.world != "default" else "")
                 + (f", clip motion x{d.clip_motion:g}" if d.clip_motion != 1 else "")
                 + (f", {d.clip_drift} drift" if d.clip_drift != "similarity" else "")
                 + (f", pixel noise {d.noise:g}" if d.noise is not None else "") + f", {d.size} px, {d.n_train} images"
                 + (f"; features {d.features} ({'computed once, in memory' if d.cache else 'on the fly'})"
                    if features else ""),
                 f"  model: {_short(self.model)}"]
        if weights:
            lines.append(f"  weights: {_short(weights)}")
        lines.append(f"  fit: {fit.max_steps} steps of {fit.batch_size}, {optimiser}, seed {fit.seed}"
                     + (f", amp {fit.amp}" if fit.amp else ""))
        if self.imagenet:
            lines.append("  ImageNet weights: " + ("not required (--allow-random-init)" if self.allow_random_init
                                                   else "required (backbone and features)"))
        return "\n".join(lines)

    def build(self, device: str = "auto", run_dir: Optional[Union[str, os.PathLike]] = None):
        """``(model, train_dataset, info)`` for this recipe: the method's setup, with ``info["fit"]`` the
        :func:`partlab.train.fit` keyword arguments (the recipe's ``fit`` on ``device``, without
        ``checkpoint_dir`` and ``resume``, which the caller sets) and ``info["recipe"]`` the recipe as JSON.
        ``run_dir``: where slow per-image maps may be cached on disk. A recipe that needs ImageNet weights
        is refused without them (:meth:`check_imagenet`); with ``allow_random_init`` it starts from a random
        backbone (``pretrained="auto"``) and the features ``"auto"`` picks."""
        from partlab import utils
        from partlab.methods.registry import get_method

        self.check_imagenet()
        recipe = self
        if self.imagenet and self.allow_random_init:
            model = {**self.model, **({"pretrained": "auto"} if self.model.get("pretrained") is True else {})}
            data = dataclasses.replace(self.data, features="auto" if self.data.features == "vgg19" else self.data.features)
            recipe = dataclasses.replace(self, model=model, data=data)
        dev = utils.device(device)
        model, dataset, info = get_method(self.method).setup(recipe, device=dev, run_dir=run_dir)
        fit = {key: value for key, value in recipe.fit.to_dict().items() if key not in ("checkpoint_dir", "resume")}
        info["fit"] = dict(fit, device=str(dev))
        info["recipe"] = self.to_dict()
        return model, dataset, info

    def check_imagenet(self) -> None:
        """Refuse a recipe that needs ImageNet weights when they are not in the local torch cache, with one
        message naming the missing file, where it goes, and ``--allow-random-init``."""
        if not self.imagenet or self.allow_random_init:
            return
        from torchvision.models import ResNet50_Weights, VGG19_Weights

        from partlab import pretrained

        from partlab.methods.registry import get_method

        needed = [VGG19_Weights.IMAGENET1K_V1] if getattr(get_method(self.method).cls, "feature_role", "") else []
        if self.model.get("network") in RESNET50_NETWORKS and self.model.get("pretrained", True) is True:
            needed.append(ResNet50_Weights.IMAGENET1K_V1)
        missing = [pretrained.weights_path(w) for w in needed if not pretrained.weights_available(w)]
        if missing:
            names = " and ".join(p.name for p in missing)
            raise ValueError(f"the {self.name} recipe of {self.method} starts from ImageNet weights, but {names} "
                             f"{'is' if len(missing) == 1 else 'are'} not in the torch cache {missing[0].parent}: "
                             f"copy {'it' if len(missing) == 1 else 'them'} there (torchvision's file names), or "
                             f"pass --allow-random-init (set allow_random_init=True) to start from random "
                             f"weights and the offline stand-in features")


def load_recipe(path: Union[str, os.PathLike]) -> Recipe:
    """A recipe from ``recipe.json`` (or the run folder holding it); ``ValueError`` naming the file and
    what is wrong for another format version or a malformed file."""
    path = Path(path)
    if path.is_dir():
        path = path / RECIPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no recipe at {path}")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read as JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != RECIPE_FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path} is a recipe of format {found!r}; this partlab reads {RECIPE_FORMAT!r}")
    try:
        fit = dict(raw["fit"])
        fit["betas"] = tuple(fit.get("betas", (0.9, 0.999)))
        return Recipe(raw["method"], raw["name"], raw["weights"], raw["model"], DataSpec(**raw["data"]),
                      TrainConfig.from_kwargs(**fit), bool(raw.get("imagenet", False)),
                      bool(raw.get("allow_random_init", False)))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path} is not a valid recipe: {exc}") from None


def _parse_assignment(item: str) -> tuple[str, Any]:
    if "=" not in str(item):
        raise ValueError(f"--set {item!r}: write section.name=value, e.g. fit.lr=1e-4 or weights.con=100")
    key, _, text = str(item).partition("=")
    try:
        value = json.loads(text)
    except ValueError:
        value = {"true": True, "false": False}.get(text.lower(), text)     # "none" is a choice, "null" is None
    return key.strip(), value


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _short(mapping: Mapping[str, Any]) -> str:
    return ", ".join(f"{key} {value:g}" if isinstance(value, float) else f"{key} {value}"
                     for key, value in mapping.items()) or "(defaults)"
