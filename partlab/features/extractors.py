"""Frozen CNN feature extractors: ImageNet VGG19, the offline stand-in, raw RGB.

Every extractor takes images ``(B, 3, H, W)`` in [0, 1] (ImageNet normalisation happens inside) and
returns a dict ``layer name -> (B, C, h, w)``. Layers are named after VGG's blocks (``relu3_2`` =
second ReLU of block 3). Methods ask for *roles* instead of names, so the same code runs on either
network: ``extractor.layers_for("scops")`` gives ``{"relu5_2": 1.0, "relu5_4": 1.0}`` on VGG19 and
the stand-in's matching layers offline.

The network is frozen (``requires_grad=False``, eval mode). Gradients still flow to the *input*
when the input requires them (the motion method's perceptual loss needs that); otherwise no graph is
built. Only the modules up to the deepest requested layer run.

>>> from partlab.features import get_extractor
>>> extractor = get_extractor("standin", device="cpu")       # doctest: +SKIP
>>> extractor(images, layers=["relu3_2", "relu4_2"])["relu4_2"].shape   # doctest: +SKIP
torch.Size([B, 128, H/8, W/8])
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from partlab import pretrained, utils

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision ``vgg19().features`` index of every ReLU (the conv before it sits at index - 1).
VGG19_LAYERS: Dict[str, int] = {
    "relu1_1": 1, "relu1_2": 3,
    "relu2_1": 6, "relu2_2": 8,
    "relu3_1": 11, "relu3_2": 13, "relu3_3": 15, "relu3_4": 17,
    "relu4_1": 20, "relu4_2": 22, "relu4_3": 24, "relu4_4": 26,
    "relu5_1": 29, "relu5_2": 31, "relu5_3": 33, "relu5_4": 35,
}

# Which layers (and weights) each method uses on VGG19 (REFERENCE_NOTES.md).
VGG19_RECIPES: Dict[str, Dict[str, float]] = {
    "scops": {"relu5_2": 1.0, "relu5_4": 1.0},                  # semantic consistency, 1024 ch
    "contrastive": {"relu3_2": 0.33, "relu5_4": 1.0},           # L_f features
    "kmeans": {"relu3_2": 0.33, "relu5_4": 1.0},                # K-means baseline, partlab's default protocol
    "kmeans_appendix": {"relu5_2": 1.0, "relu5_4": 1.0},        # K-means as the contrastive appendix runs it
    "dff": {"relu5_4": 1.0},                                    # DFF: relu5_4 only
    "perceptual": {f"relu{b}_1": 10.0 for b in range(1, 6)},    # motion method, weight 10 each
}

# "standin" is the current stand-in; earlier ones stay loadable by version name
_STANDIN_NAMES = ("standin_v1", "standin_v2")
_EXTRACTOR_CHOICES = ("auto", "vgg19", "standin") + _STANDIN_NAMES + ("rgb",)


class FeatureExtractor(nn.Module):
    """Base class: a frozen network exposing named layers.

    Attributes:
        name: short id (``"vgg19"``, ``"standin"``, ``"rgb"``), part of cache keys.
        description: one line saying which network, which weights and where they came from.
        layers: every layer name this extractor can return, shallow to deep.
        channels: layer name -> number of channels.
        strides: layer name -> spatial stride (input size / feature size).
        recipes: method name -> {layer: weight}; see :meth:`layers_for`.
        semantic_layers: role -> layer name, ``"mid"`` (VGG relu3_2-like) and ``"high"`` (relu5_4-like).
        weights_hash: short hash of the weights file (cache keys; ``"none"`` when there is no file).
    """

    name: str = "base"
    description: str = ""
    layers: tuple = ()
    channels: Dict[str, int] = {}
    strides: Dict[str, int] = {}
    recipes: Dict[str, Dict[str, float]] = {}
    semantic_layers: Dict[str, str] = {}
    weights_hash: str = "none"

    def layers_for(self, method: str) -> Dict[str, float]:
        """``{layer: weight}`` that ``method`` uses on this extractor (scops, contrastive, kmeans, dff, perceptual)."""
        if method not in self.recipes:
            raise ValueError(f"no layer recipe {method!r} for extractor {self.name!r}; choices: {sorted(self.recipes)}")
        return dict(self.recipes[method])

    def _check_layers(self, layers: Optional[Iterable[str]]) -> list:
        if layers is None:
            return list(self.layers)
        if isinstance(layers, str):
            layers = [layers]
        layers = list(layers)
        unknown = [name for name in layers if name not in self.layers]
        if unknown:
            raise ValueError(f"extractor {self.name!r} has no layer(s) {unknown}; available: {list(self.layers)}")
        return layers

    @staticmethod
    def _check_images(images: torch.Tensor) -> None:
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"images must be a (B, 3, H, W) tensor in [0, 1], got {shape}")

    def forward(self, images: torch.Tensor, layers: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def train(self, mode: bool = True) -> "FeatureExtractor":
        """Always stays in eval mode: the extractor is frozen."""
        return super().train(False)

    def extra_repr(self) -> str:
        return self.description


class _NormalisedSequential(FeatureExtractor):
    """A frozen ``nn.Sequential`` whose ReLU outputs are named; ImageNet normalisation in front."""

    def __init__(self, features: nn.Sequential, layer_index: Mapping[str, int]):
        super().__init__()
        self.features = features
        self.layer_index = dict(layer_index)
        self.layers = tuple(sorted(self.layer_index, key=self.layer_index.get))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        self.channels, self.strides = self._probe()

    def _probe(self):
        with torch.no_grad():
            size = 64
            out = self.forward(torch.zeros(1, 3, size, size, device=self.mean.device))
        channels = {name: int(t.shape[1]) for name, t in out.items()}
        strides = {name: size // int(t.shape[-1]) for name, t in out.items()}
        return channels, strides

    def forward(self, images: torch.Tensor, layers: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        """images (B, 3, H, W) in [0, 1] -> {layer: (B, C, h, w)}; runs only up to the deepest requested layer."""
        self._check_images(images)
        wanted = self._check_layers(layers)
        index_to_name = {self.layer_index[name]: name for name in wanted}
        last = max(index_to_name)
        x = (images.to(self.mean.device, self.mean.dtype) - self.mean) / self.std
        out = {}
        for i, module in enumerate(self.features):
            x = module(x)
            if i in index_to_name:
                out[index_to_name[i]] = x
            if i == last:
                break
        return {name: out[name] for name in wanted}


def vgg19_features_module() -> nn.Sequential:
    """The untrained ``torchvision.models.vgg19().features`` stack (no classifier is built)."""
    from torchvision.models import vgg

    return vgg.make_layers(vgg.cfgs["E"], batch_norm=False)


class VGG19Features(_NormalisedSequential):
    """VGG19 ``features`` with ImageNet weights (``VGG19_Weights.IMAGENET1K_V1``) from the local torch cache.

    ``relu3_2``: 256 channels, stride 4; ``relu5_x``: 512 channels, stride 16. Raises
    :class:`partlab.pretrained.PretrainedWeightsMissing` when the weights are not cached.
    """

    name = "vgg19"

    def __init__(self):
        from torchvision.models import VGG19_Weights

        weights = VGG19_Weights.IMAGENET1K_V1
        state = pretrained.load_state_dict(weights)
        path = pretrained.weights_path(weights)
        features = vgg19_features_module()
        prefix = "features."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            features.load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            raise pretrained.PretrainedWeightsMissing(
                f"{path} does not hold VGG19 'features.*' weights ({exc}); delete it and fetch it again "
                f"on a machine with internet access, or use features='standin'"
            ) from exc
        super().__init__(features, VGG19_LAYERS)
        self.recipes = {k: dict(v) for k, v in VGG19_RECIPES.items()}
        self.semantic_layers = {"mid": "relu3_2", "high": "relu5_4"}
        self.weights_hash = _file_tag(path)
        self.description = f"VGG19 features, torchvision ImageNet weights IMAGENET1K_V1 from the local cache ({path})"


class RGBFeatures(FeatureExtractor):
    """Raw pixels as 'features' (layer ``"rgb"``, 3 channels, stride 1): the sanity reference for baselines."""

    name = "rgb"
    description = "raw RGB pixels in [0, 1] (no network): a sanity reference, not semantic features"
    layers = ("rgb",)
    channels = {"rgb": 3}
    strides = {"rgb": 1}
    recipes = {m: {"rgb": 1.0} for m in VGG19_RECIPES}
    semantic_layers = {"mid": "rgb", "high": "rgb"}
    weights_hash = "none"

    def forward(self, images: torch.Tensor, layers: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
        self._check_images(images)
        self._check_layers(layers)
        return {"rgb": images.float()}


def _file_tag(path: Path) -> str:
    """Cheap identity of a weights file: size + mtime + hash of its first MiB (12 hex digits)."""
    stat = Path(path).stat()
    h = hashlib.sha1(f"{stat.st_size}:{int(stat.st_mtime)}".encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
    return h.hexdigest()[:12]


_CACHE: Dict[tuple, FeatureExtractor] = {}
_ANNOUNCED: set = set()                                 # the 'auto' choices already printed


def get_extractor(features: str = "auto", device: "str | torch.device" = "auto", verbose: bool = True) -> FeatureExtractor:
    """The one entry point for semantic features.

    Args:
        features: ``"vgg19"`` (ImageNet weights from the local torch cache, error if absent),
            ``"standin"`` (partlab's offline network shipped in ``data/standin/``; an earlier version by
            name, e.g. ``"standin_v1"``),
            ``"auto"`` (vgg19 when its weights are cached, else standin; the choice is printed),
            ``"rgb"`` (raw pixels, a reference).
        device: ``"auto"`` (cuda, mps, cpu) or an explicit device.
        verbose: print the one-line choice when ``features="auto"``, once per process (it is always logged).

    Returns:
        a frozen :class:`FeatureExtractor` (instances are cached per name and device).
    """
    if features not in _EXTRACTOR_CHOICES:
        raise ValueError(f"features={features!r} is not known; choices: {list(_EXTRACTOR_CHOICES)}")
    dev = utils.device(device)
    if features == "auto":
        from torchvision.models import VGG19_Weights

        weights = VGG19_Weights.IMAGENET1K_V1
        if pretrained.weights_available(weights):
            chosen = "vgg19"
            why = f"ImageNet VGG19 weights found in {pretrained.cache_dir()}"
        else:
            chosen = "standin"
            why = (f"no ImageNet VGG19 weights in {pretrained.cache_dir()} "
                   f"({pretrained.weights_path(weights).name}); using the offline stand-in")
        extractor = get_extractor(chosen, dev, verbose=False)
        message = f"partlab.features: features='auto' -> {chosen} ({why}): {extractor.description}"
        logger.info(message)
        if verbose and message not in _ANNOUNCED:          # printed once per process, not per call
            _ANNOUNCED.add(message)
            print(message, file=sys.stdout)
        return extractor
    key = (features, str(dev))
    if key not in _CACHE:
        if features == "vgg19":
            extractor = VGG19Features()
        elif features == "standin" or features in _STANDIN_NAMES:
            from partlab.features.standin import StandinFeatures

            extractor = StandinFeatures(None if features == "standin" else features)
        else:
            extractor = RGBFeatures()
        _CACHE[key] = extractor.to(dev)
    return _CACHE[key]


def extractor_on(extractor: FeatureExtractor, device: "str | torch.device") -> FeatureExtractor:
    """``extractor`` on ``device``: itself when it is there already (or holds no tensors); for an instance
    that :func:`get_extractor` cached, its cached instance for ``device`` (the one other users hold stays
    where it is); any other extractor is moved there in place."""
    dev = torch.device(device)
    where = utils.module_device(extractor)
    if where is None or where == dev:
        return extractor
    for (name, _), cached in list(_CACHE.items()):
        if cached is extractor:
            return get_extractor(name, dev, verbose=False)
    return extractor.to(dev)


def clear_cache() -> None:
    """Forget the extractors built by :func:`get_extractor` and the choices it printed (tests; after changing
    TORCH_HOME)."""
    _CACHE.clear()
    _ANNOUNCED.clear()
