"""Gather a whole (small) dataset into one batch: the quick-mode way to hold a test set in memory."""

from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence

import torch
from torch.utils.data import default_collate


def stack_dataset(dataset, n: Optional[int] = None, keys: Optional[Iterable[str]] = None,
                  indices: Optional[Sequence[int]] = None) -> Dict[str, torch.Tensor]:
    """Collate items of a dataset of dicts into one dict of stacked tensors.

    Args:
        dataset: any indexable dataset of dicts (e.g. :class:`~partlab.data.synthetic.SyntheticParts`).
        n: take the first ``n`` items (default: all); ignored when ``indices`` is given.
        keys: keep only these keys (default: all).
        indices: explicit item indices.

    >>> from partlab.data import SyntheticParts
    >>> batch = stack_dataset(SyntheticParts("bird", size=32, length=4))
    >>> tuple(batch["image"].shape), tuple(batch["parts"].shape)
    ((4, 3, 32, 32), (4, 32, 32))
    """
    if indices is None:
        total = len(dataset)
        if n is not None and (n < 0 or n > total):
            raise ValueError(f"n={n} must lie in 0..{total} (the dataset's length)")
        indices = range(total if n is None else n)
    items = [dataset[int(i)] for i in indices]
    if not items:
        raise ValueError("stack_dataset got no items to stack")
    if keys is not None:
        keys = list(keys)
        missing = [k for k in keys if k not in items[0]]
        if missing:
            raise KeyError(f"dataset items have no key(s) {missing}; they have {sorted(items[0])}")
        items = [{k: item[k] for k in keys} for item in items]
    return default_collate(items)
