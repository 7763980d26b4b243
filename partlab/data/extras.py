"""Attach per-item precomputed tensors to a dataset: the "cached features" of CPU quick mode.

Frozen CNN features and saliency maps of a fixed training collection never change, so they are
computed once (:func:`partlab.features.extract_features`, :func:`partlab.saliency.cached_saliency`)
and handed to the training loop next to the images:

>>> import torch
>>> items = [{"image": torch.rand(3, 8, 8)} for _ in range(3)]
>>> ds = WithExtras(items, saliency=torch.ones(3, 1, 8, 8), features=torch.zeros(3, 16, 2, 2))
>>> sorted(ds[1])
['features', 'image', 'saliency']
>>> ds[1]["features"].shape
torch.Size([16, 2, 2])

Item ``i`` gets ``item[key] = tensor[i]``: row ``i`` of each tensor belongs to item ``i`` of the
wrapped dataset (the order the extraction helpers produce).
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch
from torch.utils.data import Dataset

from partlab import utils

__all__ = ["WithExtras", "WithSaliency"]


class WithExtras(Dataset):
    """A dataset of dicts whose items carry extra precomputed tensors.

    Args:
        dataset: a map-style dataset of dicts (e.g. :class:`partlab.data.synthetic.SyntheticParts`).
        **tensors: ``name -> (N, ...)`` tensors (or arrays) with ``N = len(dataset)``; item ``i``
            gains ``item[name] = tensor[i]``. Names the items already have are refused (checked on
            item 0), so a precomputed map never silently replaces the data.

    Attributes of the wrapped dataset (``num_parts``, ``part_names``, ``size``, ...) are reachable
    through the wrapper; ``dataset`` and ``extras`` hold the two parts.
    """

    def __init__(self, dataset, /, **tensors: Any) -> None:
        if not tensors:
            raise ValueError("WithExtras needs at least one name=tensor to add, e.g. features=extract_features(...)")
        n = len(dataset)
        extras: Dict[str, torch.Tensor] = {}
        for name, value in tensors.items():
            if isinstance(value, np.ndarray):
                value = torch.from_numpy(value)
            if not isinstance(value, torch.Tensor) or value.dim() < 1:
                got = tuple(value.shape) if hasattr(value, "shape") else type(value).__name__
                raise ValueError(f"WithExtras: {name} must be a tensor of shape (N, ...) with N = {n}, got {got}")
            if value.shape[0] != n:
                raise ValueError(f"WithExtras: {name} has {value.shape[0]} rows but the dataset has {n} items; "
                                 f"compute it on this very dataset (row i = item i)")
            extras[name] = value
        if n > 0:
            first = dataset[0]
            if not isinstance(first, dict):
                raise ValueError(f"WithExtras wraps datasets of dicts, but item 0 is a {type(first).__name__}")
            clash = sorted(set(first) & set(extras))
            if clash:
                raise ValueError(f"WithExtras: the items already have {clash}; pick other names for the extras")
        self.dataset = dataset
        self.extras = extras

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        i = utils.dataset_index(index, len(self))
        item = dict(self.dataset[i])
        for name, value in self.extras.items():
            item[name] = value[i]
        return item

    def __getattr__(self, name: str) -> Any:
        # only called when normal lookup fails: forward to the wrapped dataset (num_parts, size, ...)
        if name in ("dataset", "extras") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.extras.items())
        return f"WithExtras({self.dataset!r}, {shapes})"


class WithSaliency(Dataset):
    """A dataset of dicts whose items gain a saliency map computed from their own image when read.

    The paper recipes train on 10k images at 256 px without per-image caches in RAM, so a map such as
    RBD (~0.1 s a 256 px image, numpy on one CPU thread) is computed per item here: a DataLoader's
    ``num_workers`` processes then compute the maps of a batch in parallel while the GPU trains, where
    computing them inside the model's loss would stall every step on one CPU thread.

    Args:
        dataset: a map-style dataset of dicts with ``"image"`` ``(3, H, W)`` (and ``"fg"`` for ``"oracle"``).
        method: as in :func:`partlab.saliency.saliency_maps` (``"rbd"``, ``"oracle"``, ``"none"``).
        key: the item key the map is stored under (refused if the items already have it).
        **rbd_kwargs: passed to :func:`partlab.saliency.robust_background_saliency`.

    >>> items = [{"image": torch.rand(3, 8, 8)} for _ in range(2)]
    >>> WithSaliency(items, "none")[1]["saliency"].shape
    torch.Size([1, 8, 8])
    """

    def __init__(self, dataset, /, method: str = "rbd", key: str = "saliency", **rbd_kwargs: Any) -> None:
        from partlab.saliency import _check_method

        _check_method(method)
        if rbd_kwargs and method != "rbd":
            raise ValueError(f"keyword arguments {sorted(rbd_kwargs)} apply to method='rbd' only, not {method!r}")
        if len(dataset) > 0:
            first = dataset[0]
            if not isinstance(first, dict) or "image" not in first:
                raise ValueError("WithSaliency wraps datasets of dicts with an 'image' (3, H, W)")
            if key in first:
                raise ValueError(f"WithSaliency: the items already have {key!r}; pick another key")
        self.dataset, self.method, self.key, self.rbd_kwargs = dataset, method, key, rbd_kwargs

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        from partlab.saliency import saliency_maps

        item = dict(self.dataset[utils.dataset_index(index, len(self))])
        fg = item.get("fg")
        maps = saliency_maps(item["image"][None], self.method, fg=None if fg is None else fg[None], **self.rbd_kwargs)
        item[self.key] = maps[0]
        return item

    def __getattr__(self, name: str) -> Any:
        if name in ("dataset", "method", "key", "rbd_kwargs") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __repr__(self) -> str:
        return f"WithSaliency({self.dataset!r}, method={self.method!r}, key={self.key!r})"
