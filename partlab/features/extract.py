"""Upsample-and-concatenate features for a batch or a whole dataset, with a small in-memory cache.

This is the "cached features" path of CPU quick mode: baselines and methods that only need frozen
features of a fixed collection compute them once.

Cache: in memory only (no files), at most :data:`CACHE_ENTRIES` results, keyed by
``(extractor name, weights hash, layers, weights, size, dataset identity)``. A dataset's identity is
its ``cache_key`` attribute when it has one, else its ``repr`` when its class defines ``__repr__``,
else it is not cached. A tensor batch's identity is a SHA-1 of its bytes. Results live on the CPU.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from partlab import utils

Size = Union[int, Tuple[int, int]]
Layers = Union[str, Sequence[str], Mapping[str, float]]

CACHE_ENTRIES = 8
_CACHE: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()


def resolve_layers(extractor, layers: Layers, weights: Optional[Union[Sequence[float], Mapping[str, float]]] = None
                   ) -> Dict[str, float]:
    """``layers`` as ``{layer: weight}``.

    ``layers`` may be a layer name, a recipe name of the extractor (``"scops"``, ``"contrastive"``,
    ``"kmeans"``, ``"dff"``, ``"perceptual"``), a list of names, or a dict of weights. ``weights``
    (a list aligned with ``layers`` or a dict) overrides; the default weight is 1.
    """
    if isinstance(layers, str):
        if layers in extractor.layers:
            spec = {layers: 1.0}
        elif layers in extractor.recipes:
            spec = extractor.layers_for(layers)
        else:
            raise ValueError(f"{layers!r} is neither a layer nor a recipe of extractor {extractor.name!r}; "
                             f"layers: {list(extractor.layers)}, recipes: {sorted(extractor.recipes)}")
    elif isinstance(layers, Mapping):
        spec = {str(k): float(v) for k, v in layers.items()}
    else:
        spec = {str(k): 1.0 for k in layers}
    if weights is not None:
        if isinstance(weights, Mapping):
            spec.update({str(k): float(v) for k, v in weights.items()})
        else:
            weights = list(weights)
            if len(weights) != len(spec):
                raise ValueError(f"{len(weights)} weights for {len(spec)} layers {list(spec)}")
            spec = {k: float(v) for k, v in zip(spec, weights)}
    extractor._check_layers(list(spec))
    return spec


def upsample_concat(features: Mapping[str, torch.Tensor], weights: Mapping[str, float],
                    size: Optional[Size] = None) -> torch.Tensor:
    """Bilinearly upsample each ``features[layer]`` to ``size`` (default: the largest map), multiply
    by ``weights[layer]`` and concatenate along channels, in the order of ``weights`` -> (B, sum C, h, w).

    Example (contrastive part discovery): ``weights={"relu3_2": 0.33, "relu5_4": 1.0}``.
    """
    names = list(weights)
    if size is None:
        size = max((tuple(features[n].shape[-2:]) for n in names), key=lambda s: s[0] * s[1])
    elif isinstance(size, int):
        size = (size, size)
    size = (int(size[0]), int(size[1]))
    out = []
    for name in names:
        f = features[name]
        if tuple(f.shape[-2:]) != size:
            f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
        out.append(f * weights[name] if weights[name] != 1.0 else f)
    return torch.cat(out, dim=1)


def _identity(images_or_dataset) -> Optional[str]:
    if torch.is_tensor(images_or_dataset):
        t = images_or_dataset.detach().cpu().contiguous()
        return "tensor:" + hashlib.sha1(t.numpy().tobytes()).hexdigest() + str(tuple(t.shape))
    key = getattr(images_or_dataset, "cache_key", None)
    if callable(key):
        key = key()
    if key is not None:
        return f"{type(images_or_dataset).__qualname__}:{key}"
    if type(images_or_dataset).__repr__ is not object.__repr__:
        return f"{type(images_or_dataset).__qualname__}:{images_or_dataset!r}:{len(images_or_dataset)}"
    return None


def _image_batches(images_or_dataset, batch_size: int, progress: Optional[bool], desc: str):
    if torch.is_tensor(images_or_dataset):
        x = images_or_dataset
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) in [0, 1], got {tuple(x.shape)}")
        starts = range(0, x.shape[0], batch_size)
        for s in utils.progress(starts, total=len(starts), desc=desc, enabled=progress):
            yield x[s:s + batch_size]
        return
    n = len(images_or_dataset)
    starts = range(0, n, batch_size)
    for s in utils.progress(starts, total=len(starts), desc=desc, enabled=progress):
        items = [images_or_dataset[i] for i in range(s, min(n, s + batch_size))]
        yield torch.stack([item["image"] if isinstance(item, Mapping) else item for item in items])


def extract_features(extractor, images_or_dataset, layers: Layers, size: Optional[Size] = None,
                     batch_size: int = 32, weights=None, cache: bool = True,
                     progress: Optional[bool] = None) -> torch.Tensor:
    """Features of a batch or a dataset, upsampled to one size, weighted and concatenated.

    Args:
        extractor: a :class:`~partlab.features.FeatureExtractor` (see :func:`get_extractor`).
        images_or_dataset: images (N, 3, H, W) in [0, 1], or a dataset of dicts with ``"image"``.
        layers: a layer, a recipe name (e.g. ``"contrastive"``), a list of layers or ``{layer: weight}``.
        size: output (h, w) (int or pair); None = the largest map among the requested layers.
        batch_size: images per forward pass.
        weights: per-layer multipliers (list aligned with ``layers`` or dict); see :func:`resolve_layers`.
        cache: reuse / store the result in the in-memory cache (see the module docstring).
        progress: progress bar; None follows ``PARTLAB_PROGRESS``.

    Returns:
        (N, sum C, h, w) float32 on the CPU.
    """
    spec = resolve_layers(extractor, layers, weights)
    out_size = None if size is None else ((size, size) if isinstance(size, int) else (int(size[0]), int(size[1])))
    ident = _identity(images_or_dataset) if cache else None
    key = None
    if ident is not None:
        key = (extractor.name, extractor.weights_hash, tuple(spec.items()), out_size, ident)
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    dev = next((b.device for b in extractor.buffers()), torch.device("cpu"))
    chunks = []
    for batch in _image_batches(images_or_dataset, batch_size, progress, desc=f"features ({extractor.name})"):
        with torch.no_grad():
            feats = extractor(batch.to(dev), layers=list(spec))
            chunks.append(upsample_concat(feats, spec, out_size).float().cpu())
        if out_size is None:
            out_size = tuple(chunks[0].shape[-2:])
    result = torch.cat(chunks)
    if key is not None:
        _CACHE[key] = result
        while len(_CACHE) > CACHE_ENTRIES:
            _CACHE.popitem(last=False)
    return result


def clear_feature_cache() -> None:
    """Empty the in-memory feature cache."""
    _CACHE.clear()
