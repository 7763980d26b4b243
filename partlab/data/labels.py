"""Label maps as part maps: the true parts in the shape every method predicts."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def one_hot_parts(labels: torch.Tensor, num_parts: int) -> torch.Tensor:
    """Integer labels ``(B, H, W)`` (0 = background, 1..K = parts) -> one-hot ``probs (B, K+1, H, W)``.

    The true parts as a "perfect prediction": feed them to the losses, the centres or the metrics
    exactly like a method's softmax output.

    >>> one_hot_parts(torch.tensor([[[0, 2], [1, 1]]]), 2)[0, :, 0, 1]
    tensor([0., 0., 1.])
    """
    if labels.dim() != 3 or labels.is_floating_point():
        raise ValueError(f"labels must be an integer (B, H, W) map, got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > num_parts):
        raise ValueError(f"labels hold values in [{int(labels.min())}, {int(labels.max())}], "
                         f"outside 0..{num_parts} (num_parts={num_parts})")
    return F.one_hot(labels.long(), num_parts + 1).permute(0, 3, 1, 2).float()
