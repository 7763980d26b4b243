"""The method registry: one entry per method, from which everything that lists methods is derived.

An entry (:class:`MethodEntry`) holds the method's class, the kind of data it trains on (``"images"``,
``"frame pairs"``, ``"scenes"``), its loss terms (the class's ``TERMS``, named as in ``losses()``), its
ablations (name -> overrides keyed by term name for weights, or by setting name) and its recipes
(:mod:`partlab.recipes`: at least ``quick`` and ``paper``). The CLI's choices and dispatch
(``partlab train <method>``), run folders (:mod:`partlab.methods.runs`), :func:`train_variants`, the
loss-weight explorer (:mod:`partlab.widgets`) and the registry test read it; nothing else names a
method by hand. Adding a method is its module plus one line in :data:`REGISTRY`.

>>> sorted(REGISTRY)
['contrastive', 'maskcontrast', 'motion', 'oracle', 'scops']
>>> get_method("scops").terms
('con', 'eqv', 'lmeqv', 'sc', 'orthonormal')
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from partlab.methods import contrastive, maskcontrast, motion, oracle, scops
from partlab.methods.base import PartSegmenter

DATA_KINDS = ("images", "frame pairs", "scenes")


@dataclasses.dataclass(frozen=True)
class MethodEntry:
    """One method of the registry (see the module docstring).

    Attributes:
        name: the name on the command line and in run folders (``"scops"``).
        cls: the :class:`~partlab.methods.base.PartSegmenter` subclass.
        data: what it trains on: ``"images"``, ``"frame pairs"`` or ``"scenes"``.
        recipes: recipe name -> function returning that :class:`~partlab.recipes.Recipe`.
        ablations: ablation name -> overrides: a term name sets that term's weight (0 removes the
            term), another name a constructor setting (e.g. SCOPS' ``{"saliency": "none"}``).
        setup: ``setup(recipe, device, run_dir) -> (model, train_dataset, info)``.
        description: one line for listings.
    """

    name: str
    cls: type
    data: str
    recipes: Mapping[str, Callable[[], Any]]
    ablations: Mapping[str, Mapping[str, Any]]
    setup: Callable[..., tuple]
    description: str = ""

    def __post_init__(self) -> None:
        if self.data not in DATA_KINDS:
            raise ValueError(f"{self.name}: data={self.data!r}; choose one of {DATA_KINDS}")
        missing = {"quick", "paper"} - set(self.recipes)
        if missing:
            raise ValueError(f"{self.name}: every method has the recipes quick and paper; missing {sorted(missing)}")

    @property
    def terms(self) -> tuple[str, ...]:
        """The loss terms of ``losses()`` (without the total ``"loss"``)."""
        return tuple(self.cls.TERMS)

    @property
    def weighted_terms(self) -> tuple[str, ...]:
        """The terms with a weight (a ``lambda_<term>`` constructor argument)."""
        return tuple(term for term in self.terms if f"lambda_{term}" in self._parameters())

    def default_weights(self) -> dict[str, float]:
        """``{term: default weight}`` of the constructor (``None`` where the class derives it, e.g. SCOPS'
        ``lambda_eqv = 1e3 / (K + 1)``)."""
        parameters = self._parameters()
        return {term: parameters[f"lambda_{term}"].default for term in self.weighted_terms}

    def _parameters(self) -> Mapping[str, inspect.Parameter]:
        return inspect.signature(self.cls.__init__).parameters

    def weight_kwargs(self, weights: Mapping[str, float]) -> dict[str, float]:
        """Constructor arguments for weights keyed by term name: ``{"con": 0}`` -> ``{"lambda_con": 0.0}``."""
        unknown = sorted(set(weights) - set(self.weighted_terms))
        if unknown:
            raise ValueError(f"{self.name} has no loss term(s) {unknown} to weigh; its weighted terms are "
                             f"{list(self.weighted_terms)}")
        return {f"lambda_{term}": float(value) for term, value in weights.items()}

    def check_model_settings(self, settings: Mapping[str, Any]) -> None:
        """Refuse recipe model settings the class (and its network) does not take, naming the accepted ones."""
        from partlab.methods.base import accepted_kwargs

        reserved = {f"lambda_{term}" for term in self.weighted_terms} | {"features", "feature_channels"}
        given = set(settings) & reserved
        if given:
            raise ValueError(f"model settings {sorted(given)} are not set this way: weights go in weights.<term>, "
                             f"features in data.features")
        accepted = accepted_kwargs(self.cls, settings) - reserved
        unknown = sorted(set(settings) - accepted)
        if unknown:
            raise ValueError(f"unknown model setting(s) {unknown} for {self.cls.__name__} with network "
                             f"{settings.get('network', 'unet')!r}; it takes {sorted(accepted)}")

    def ablation(self, name: str) -> dict[str, Any]:
        """Constructor overrides of ablation ``name`` (weights as ``lambda_<term>``)."""
        if name not in self.ablations:
            raise ValueError(f"{self.name} has no ablation {name!r}; choices: {list(self.ablations)}")
        return self.overrides(self.ablations[name])

    def overrides(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor overrides for ``changes`` keyed by term name (weights) or setting name."""
        weights = {key: value for key, value in changes.items() if key in self.terms}
        settings = {key: value for key, value in changes.items() if key not in self.terms}
        if settings:
            self.check_model_settings(settings)
        return {**self.weight_kwargs(weights), **settings}

    def recipe(self, name: str):
        """The recipe ``name`` (a fresh :class:`~partlab.recipes.Recipe`)."""
        if name not in self.recipes:
            raise ValueError(f"{self.name} has no recipe {name!r}; choices: {list(self.recipes)}")
        return self.recipes[name]()


REGISTRY: dict[str, MethodEntry] = {entry.name: entry for entry in (
    MethodEntry("scops", scops.SCOPS, "images", scops.RECIPES, scops.ABLATIONS, scops.setup,
                "SCOPS (Hung et al. 2019): concentration, equivariance, semantic consistency"),
    MethodEntry("contrastive", contrastive.ContrastiveParts, "images", contrastive.RECIPES,
                contrastive.CONTRASTIVE_ABLATIONS, contrastive.setup,
                "contrastive part discovery (Choudhury et al. 2021), inside the foreground"),
    MethodEntry("motion", motion.MotionCoPart, "frame pairs", motion.RECIPES, motion.ABLATIONS, motion.setup,
                "motion-supervised co-part segmentation (Siarohin et al. 2020): part motion rebuilds the target frame"),
    MethodEntry("maskcontrast", maskcontrast.MaskContrast, "scenes", maskcontrast.RECIPES, maskcontrast.ABLATIONS,
                maskcontrast.setup, "MaskContrast (Van Gansbeke et al. 2021): pixels pulled to object-mask prototypes"),
    MethodEntry("oracle", oracle.SupervisedOracle, "images", oracle.RECIPES, {}, oracle.setup,
                "supervised oracle: the same network on the true part labels (upper bound)"),
)}


def get_method(name: str) -> MethodEntry:
    """The registry entry ``name``; ``ValueError`` naming the known methods otherwise."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def method_of(model_or_class: Union[nn.Module, type]) -> MethodEntry:
    """The registry entry of a model (or class); ``ValueError`` for a class that is not registered."""
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    for entry in REGISTRY.values():
        if entry.cls is cls:
            return entry
    raise ValueError(f"{cls.__name__} is not in the method registry ({sorted(REGISTRY)})")


def classes() -> dict[str, type[PartSegmenter]]:
    """``{class name: class}`` of every registered method (what run folders' ``model.json`` names)."""
    return {entry.cls.__name__: entry.cls for entry in REGISTRY.values()}


def get_recipe(method: str, name: str = "quick"):
    """The recipe ``name`` of ``method`` (:mod:`partlab.recipes`)."""
    return get_method(method).recipe(name)


def train_variants(method: str, variants: Union[Sequence[str], Mapping[str, Mapping[str, Any]]], train, info: dict, *,
                   max_steps: Optional[int] = None, progress=None, **fit_overrides: Any) -> dict[str, nn.Module]:
    """Train one model of ``method`` per variant on the same training set (an ablation study).

    Args:
        method: a registry name (``"scops"``, ``"contrastive"``, ...).
        variants: names of the method's ablations (e.g. ``["full", "no_sc"]``) or
            ``{name: overrides}`` keyed by term name for weights (``{"con": 0}``) or by setting name
            (``{"num_parts": 4}``: K; the cached features serve every K).
        train, info: from the method's setup (its cached features and maps are reused, so every variant
            sees the same data, seed and network initialisation); ``info["model_kwargs"]`` and
            ``info["fit"]`` are read.
        max_steps, progress, **fit_overrides: change ``info["fit"]`` (e.g. fewer steps in quick mode).

    Returns:
        ``{name: trained model}`` (each with its ``history``), in the order given.
    """
    from partlab.train import fit

    entry = get_method(method)
    if isinstance(variants, Mapping):
        overrides = {name: entry.overrides(changes) for name, changes in variants.items()}
    else:
        overrides = {name: entry.ablation(name) for name in variants}
    config = dict(info["fit"], **fit_overrides)
    if max_steps is not None:
        config["max_steps"] = int(max_steps)
    if progress is not None:
        config["progress"] = progress
    models = {}
    for name, changes in overrides.items():
        changes = dict(changes)
        num_parts = int(changes.pop("num_parts", info["num_parts"]))          # {"num_parts": 4}: a K study
        torch.manual_seed(config.get("seed", 0))
        model = entry.cls(num_parts, **dict(info["model_kwargs"], **changes))
        models[name] = fit(model, train, **config)
    return models
