"""The interface every part-segmentation method implements, so that one training loop and one set of
metrics serve them all.

A method is an ``nn.Module`` with

- ``forward(images) -> logits (B, K+1, H, W)``, channel 0 the background;
- ``losses(batch) -> dict`` of named scalar loss terms, the weighted total under ``"loss"``
  (what :func:`partlab.train.fit` minimises);
- ``predict(images) -> dict(probs=(B, K+1, H, W), labels=(B, H, W))`` (a default is given here).

Optional hooks read by :func:`partlab.train.fit`: ``param_groups(config)`` (per-group lr, momentum,
weight decay, ``"clip"``) and ``on_step(step)`` (called after each optimiser step).

Mixed precision (DESIGN.md): :func:`partlab.train.fit` with ``amp`` sets ``amp_dtype`` for the run;
methods call their networks through :meth:`PartSegmenter.run_network` (and frozen extractors under
:meth:`PartSegmenter.autocast`), so autocast wraps the network forward passes only, and every loss
term is computed in float32 (the loss functions are :func:`partlab.precision.float32`).

Every method remembers the arguments it was built with (``init_args``), so that a trained model can
be written to a run folder and rebuilt later (:mod:`partlab.methods.runs`).
"""

from __future__ import annotations

import abc
from typing import Optional, Sequence

import torch
from torch import nn

from partlab import precision, utils

MIN_IMAGE_SIZE = 16
HEAD_LR_FACTOR = 10         # new layers on a pretrained backbone train at this multiple of its rate


def check_images(images: torch.Tensor, min_size: int = MIN_IMAGE_SIZE) -> torch.Tensor:
    """Validate a batch of images ``(B, 3, H, W)``, floating point, ``H, W >= min_size``; return it.

    Raises ``ValueError`` naming the shape (or dtype) seen and the one expected.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point RGB in [0, 1], got dtype {images.dtype}")
    if min(images.shape[-2:]) < min_size:
        raise ValueError(f"images must be at least {min_size}x{min_size} pixels, got shape {tuple(images.shape)}")
    return images


class PartSegmenter(nn.Module, abc.ABC):
    """Base class of partlab's methods: K foreground parts plus a background channel.

    Args:
        num_parts: K, the number of foreground parts (the logits have ``K + 1`` channels).
    """

    check_images = staticmethod(check_images)
    amp_dtype: Optional[torch.dtype] = None     # autocast dtype of the networks; set by fit(amp=...) while it trains

    def __new__(cls, *args, **kwargs):
        # Record the constructor arguments, (args, kwargs), before any subclass __init__ runs:
        # partlab.methods.runs.constructor_kwargs reads them to describe how to rebuild the model.
        self = super().__new__(cls)
        object.__setattr__(self, "init_args", (args, dict(kwargs)))
        return self

    def __init__(self, num_parts: int) -> None:
        super().__init__()
        if not isinstance(num_parts, int) or num_parts < 1:
            raise ValueError(f"num_parts must be a positive integer, got {num_parts!r}")
        self.num_parts = num_parts

    @abc.abstractmethod
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K+1, H, W)`` for images ``(B, 3, H, W)`` in [0, 1]."""

    @abc.abstractmethod
    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Named scalar loss terms for a batch dict (``"image"`` ``(B, 3, H, W)`` + method-specific
        keys), the weighted total under ``"loss"``."""

    def autocast(self, device: "torch.device | str"):
        """The autocast region of this model's network forward passes on ``device``: ``amp_dtype``
        (float16 / bfloat16) while :func:`partlab.train.fit` trains with ``amp``, else a no-op."""
        return precision.autocast(device, self.amp_dtype)

    def run_network(self, images: torch.Tensor) -> torch.Tensor:
        """``self.network(images)`` under :meth:`autocast`: half precision under ``amp`` (callers cast the
        output to float32 before any loss), the network's own precision otherwise."""
        with self.autocast(images.device):
            return self.network(images)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Part maps for images ``(B, 3, H, W)`` (moved to the model's device).

        Runs in eval mode without gradients (the previous train/eval mode is restored) and returns
        ``probs`` ``(B, K+1, H, W)`` (softmax over channels) and ``labels`` ``(B, H, W)`` (argmax, int64).
        """
        probs = self.eval_forward(self, images).float().softmax(dim=1)  # (B, K+1, H, W)
        return {"probs": probs, "labels": probs.argmax(dim=1)}

    def network_groups(self, config, clip: Optional[float] = None, new: Sequence[nn.Parameter] = ()) -> list[dict]:
        """Parameter groups of ``self.network`` for :func:`partlab.train.fit`: one group at ``config.lr``,
        or for a network with a pretrained part (``head_parameters``, as DeepLab and the stand-in U-Net, unless
        its ``separate_encoder`` is False) the backbone at ``config.lr`` and the head at ``HEAD_LR_FACTOR *
        config.lr`` (10, as in the SCOPS and contrastive originals); each clipped at ``clip`` (None: the
        trainer's ``grad_clip``). ``new``: parameters of modules outside the network (motion's generator), trained
        with the head, or as a group of their own at ``config.lr`` when there is no split."""
        network = self.network
        new = [p for p in new if p.requires_grad]
        if getattr(network, "separate_encoder", hasattr(network, "head_parameters")):
            return [{"params": list(network.backbone_parameters()), "clip": clip},
                    {"params": list(network.head_parameters()) + new, "lr": HEAD_LR_FACTOR * config.lr,
                     "clip": clip}]
        groups = [{"params": [p for p in network.parameters() if p.requires_grad], "clip": clip}]
        return groups + ([{"params": new, "clip": clip}] if new else [])

    @staticmethod
    def check_weights(weights: dict[str, float]) -> dict[str, float]:
        """Loss weights as floats; ``ValueError`` naming any that is negative or NaN (0 switches a term off)."""
        weights = {name: float(value) for name, value in weights.items()}
        bad = {f"lambda_{name}": value for name, value in weights.items() if not value >= 0}
        if bad:
            raise ValueError(f"loss weights must be >= 0 (0 switches a term off), got {bad}")
        return weights

    def weighted_total(self, terms: dict[str, torch.Tensor], output: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss": sum_t self.weights[t] * terms[t], <t>: terms[t] detached}``. With no term (every
        weight 0) the loss is ``0 * output.sum()``: zero, but still a graph reaching the network."""
        total = sum(self.weights[name] * value for name, value in terms.items()) if terms else 0.0 * output.sum()
        out = {"loss": total}
        out.update({name: value.detach() for name, value in terms.items()})
        return out

    @torch.no_grad()
    def eval_forward(self, module: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """``module(images)`` (``self`` or a part of it, e.g. ``self.network``) for checked images moved
        to the model's device, in eval mode without gradients; the previous train/eval mode is restored."""
        check_images(images)
        was_training = self.training
        self.eval()
        try:
            parameter = next(self.parameters(), None)
            if parameter is not None:
                images = images.to(parameter.device)
            return module(images)
        finally:
            self.train(was_training)


_MASK_HELP = {"fg": "use a dataset with foreground masks (SyntheticParts has them)",
              "saliency": "attach maps with WithExtras(dataset, saliency=partlab.saliency.cached_saliency(dataset, "
                          "'rbd'))"}


def batch_map(batch: dict, key: str, images: torch.Tensor, size: tuple, owner: str, how: str = "") -> torch.Tensor:
    """A one-channel map of the batch (``batch[key]``: a foreground mask or a saliency map, ``(B, 1, h, w)``
    or ``(B, h, w)``) as float32 ``(B, 1, H, W)`` on the images' device, bilinearly resized to ``size``.
    A missing key or a wrong shape raises one error naming ``owner`` (e.g. ``"SCOPS(saliency='batch')"``)
    and how to provide the map (``how``, default: the usual way for ``"fg"`` / ``"saliency"``)."""
    import torch.nn.functional as F

    if key not in batch:
        raise KeyError(f"{owner} needs batch[{key!r}] (B, 1, H, W), but the batch has only {sorted(batch)}; "
                       f"{how or _MASK_HELP.get(key, 'add it to the dataset items')}")
    values = batch[key]
    if values.dim() == 3:
        values = values[:, None]
    if values.dim() != 4 or values.shape[:2] != (images.shape[0], 1):
        raise ValueError(f"batch[{key!r}] must have shape (B, 1, H, W) or (B, H, W) with B = {images.shape[0]}, "
                         f"got {tuple(values.shape)}")
    values = values.to(images.device, torch.float32)
    if tuple(values.shape[-2:]) != tuple(size):
        values = F.interpolate(values, size=tuple(size), mode="bilinear", align_corners=False)
    return values


class FrozenFeatures:
    """Mixin for methods that read frozen semantic features ``V`` (SCOPS, contrastive discovery).

    ``features="batch"``: ``batch["features"]`` ``(B, C, h, w)``, precomputed (e.g. attached by
    :class:`partlab.data.extras.WithExtras`), bilinearly upsampled to the logits' size here. A frozen
    :class:`partlab.features.FeatureExtractor`: computed on the fly from ``batch["image"]`` with its
    ``layers_for(feature_role)`` layers, on the extractor's device. The extractor is held outside the
    module tree (a plain tuple attribute): not a submodule, not in ``state_dict()``, never trained.
    """

    feature_role: str = ""                  # the extractor's layer recipe ("scops", "contrastive")

    def _init_features(self, features, feature_channels: Optional[int]) -> Optional[int]:
        """Store the feature source; return C (given, or inferred from the extractor's layers)."""
        self._extractor: tuple = ()
        self.feature_layers: Optional[dict[str, float]] = None
        if isinstance(features, str):
            if features != "batch":
                raise ValueError(f"features={features!r}: pass 'batch' (batch['features'] precomputed) or a "
                                 f"frozen extractor, e.g. features=partlab.features.get_extractor('auto')")
        elif callable(getattr(features, "layers_for", None)):
            self._extractor = (features,)
            self.feature_layers = features.layers_for(self.feature_role)
            inferred = sum(int(features.channels[name]) for name in self.feature_layers)
            if feature_channels is not None and feature_channels != inferred:
                raise ValueError(f"feature_channels={feature_channels} but the extractor's {self.feature_role!r} "
                                 f"layers {list(self.feature_layers)} have {inferred} channels")
            feature_channels = inferred
        else:
            raise ValueError(f"features must be 'batch' or a partlab.features extractor, got {type(features).__name__}")
        self.feature_channels = None if feature_channels is None else int(feature_channels)
        return self.feature_channels

    def _apply(self, fn, *args, **kwargs):
        """``.to(device)`` / ``.cuda()`` / ``.cpu()`` move the frozen extractor too (it is not a submodule,
        so ``nn.Module`` would leave it where it was built: a CPU VGG19 under a CUDA model), through
        :func:`partlab.features.extractor_on`. Dtype conversions (``.half()``, ``.double()``) leave it
        in its own precision."""
        from partlab.features import extractor_on

        module = super()._apply(fn, *args, **kwargs)
        extractor = self.extractor
        anchor = next(self.parameters(), None)
        if extractor is not None and anchor is not None:
            self._extractor = (extractor_on(extractor, anchor.device),)
        return module

    @property
    def extractor(self) -> Optional[nn.Module]:
        """The frozen feature extractor (``features=extractor``), or ``None`` with ``features="batch"``."""
        extractor = getattr(self, "_extractor", ())
        return extractor[0] if extractor else None

    def _features(self, batch: dict, images: torch.Tensor, size: tuple, purpose: str,
                  upsample: bool = True) -> torch.Tensor:
        """``V`` ``(B, C, H, W)`` at ``size``, float32, no gradient; ``purpose`` names the loss in errors.
        ``upsample=False``: at their own resolution when it is below ``size`` (the loss upsamples them
        itself, e.g. :func:`partlab.losses.semantic_consistency_loss`), else at ``size``."""
        import torch.nn.functional as F

        extractor = self.extractor
        if extractor is not None:
            from partlab.features import upsample_concat

            where = utils.module_device(extractor, images.device)
            with torch.no_grad():
                with precision.autocast(where, self.amp_dtype):
                    maps = extractor(images.detach().to(where), layers=list(self.feature_layers))
                maps = {name: value.float() for name, value in maps.items()}
                features = upsample_concat(maps, self.feature_layers, None if not upsample else size)
                return self._at_most(features, size, upsample).to(images.device)
        name = type(self).__name__
        if "features" not in batch:
            raise KeyError(
                f"{name}(features='batch') needs batch['features'] (B, C, h, w) for {purpose}, but the batch has "
                f"only {sorted(batch)}; precompute them and attach them to the dataset: WithExtras(dataset, "
                f"features=extract_features(extractor, dataset, extractor.layers_for({self.feature_role!r}))) "
                f"(partlab.data.extras, partlab.features), or build {name}(..., features=extractor) to compute "
                f"them on the fly")
        features = batch["features"]
        if not isinstance(features, torch.Tensor) or features.dim() != 4 or features.shape[0] != images.shape[0]:
            shape = tuple(features.shape) if hasattr(features, "shape") else type(features).__name__
            raise ValueError(f"batch['features'] must have shape (B, C, h, w) with B = {images.shape[0]}, got {shape}")
        if self.feature_channels is not None and features.shape[1] != self.feature_channels:
            raise ValueError(f"batch['features'] has {features.shape[1]} channels but the {name} was built for "
                             f"feature_channels={self.feature_channels}")
        return self._at_most(features.to(images.device, torch.float32), size, upsample)   # (B, C, H, W)

    @staticmethod
    def _at_most(features: torch.Tensor, size: tuple, upsample: bool) -> torch.Tensor:
        """``features`` resized to ``size``, or kept when smaller and ``upsample`` is False."""
        import torch.nn.functional as F

        h, w = features.shape[-2:]
        if (h, w) == tuple(size) or (not upsample and h < size[0] and w < size[1]):
            return features
        return F.interpolate(features, size=tuple(size), mode="bilinear", align_corners=False)


def quick_setup(cls, category: str, *, world="default", size: int, n_train: int, seed: int, features, device, num_parts,
                network: str, feature_size, quick_weights: dict, quick_fit: dict, extras: dict, settings: dict,
                model_kwargs: dict, describe: dict, cache: bool = True):
    """The steps every setup of a feature-reading method shares (:func:`partlab.methods.scops.setup`,
    :func:`partlab.methods.contrastive.setup` and their quick-mode wrappers): the synthetic ``"train"``
    split; with ``cache`` (quick mode), frozen features of every image with the extractor's
    ``layers_for(cls.feature_role)`` layers computed once and held in memory, else the extractor itself
    handed to the model (features on the fly, on the device); ``extras`` (name -> function of the dataset,
    e.g. saliency maps) attached with :class:`partlab.data.extras.WithExtras`; a ``cls`` (with
    ``network="unet"``: the quick U-Net and ``quick_weights``; then ``settings`` and ``model_kwargs``);
    ``info`` saying what was used (plus ``describe``) and ``info["fit"]``, the :func:`partlab.train.fit`
    settings (``quick_fit``).

    Returns ``(model, train_dataset, info)``.
    """
    from partlab import utils
    from partlab.data.extras import WithExtras
    from partlab.data.synthetic import SyntheticParts
    from partlab.data.synthetic import num_parts as category_parts
    from partlab.features import extract_features, get_extractor
    from partlab.models import QUICK_UNET

    dev = utils.device(device)
    dataset = SyntheticParts(category, size=size, length=n_train, seed=seed, split="train", config=world)
    extractor = get_extractor(features, device=dev) if isinstance(features, str) else features
    layers = extractor.layers_for(cls.feature_role)
    made = {name: make(dataset) for name, make in extras.items()}
    if cache:
        feats = extract_features(extractor, dataset, layers, size=feature_size)     # (N, C, h, w), CPU
        train = WithExtras(dataset, features=feats, **made)
        kwargs = {"network": network, "feature_channels": feats.shape[1], **settings}
    else:
        feats = None
        train = WithExtras(dataset, **made) if made else dataset
        kwargs = {"network": network, "features": extractor, **settings}
    k = category_parts(category) if num_parts is None else int(num_parts)
    if network == "unet":                      # quick mode: the small U-Net and its weights
        kwargs.update(QUICK_UNET)
        kwargs.update(quick_weights)
    kwargs.update(model_kwargs)
    torch.manual_seed(seed)
    model = cls(k, **kwargs)
    from partlab.methods.registry import method_of

    info = {"method": method_of(cls).name, "features": f"{extractor.name}: {extractor.description}",
            "feature_layers": layers,
            "feature_shape": tuple(feats.shape) if feats is not None else "computed on the fly", **describe,
            "device": utils.describe_device(dev), "num_parts": k, "category": category, "size": size,
            "n_train": n_train, "weights": dict(model.weights), "model_kwargs": dict(kwargs),
            "fit": dict(quick_fit, device=str(dev), seed=seed)}
    return model, train, info


def accepted_kwargs(cls: type, kwargs: "dict | None" = None) -> set:
    """The keyword arguments ``cls(**kwargs)`` accepts: its own, and when it passes ``**network_kwargs``
    to :func:`partlab.models.build_network`, those of the network ``kwargs["network"]`` names (its
    default when not given). ``ValueError`` for an unknown network."""
    import inspect

    from partlab.models import NETWORKS

    kwargs = kwargs or {}
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]          # without self
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not any(p.kind is p.VAR_KEYWORD for p in parameters):
        return named
    if "network" not in named:                                     # **kwargs not for a network: unchecked
        return named | set(kwargs)
    network = kwargs.get("network", inspect.signature(cls.__init__).parameters["network"].default)
    if network not in NETWORKS:
        raise ValueError(f"unknown network {network!r}; choose one of {sorted(NETWORKS)}")
    network_parameters = list(inspect.signature(NETWORKS[network].__init__).parameters.values())[2:]  # self, out
    return named | {p.name for p in network_parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
