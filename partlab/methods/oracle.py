"""The supervised oracle: the same network trained on the true part labels.

Every self-supervised method is compared to it: it is the upper bound on what the network can do
on a dataset. Loss: pixel-wise cross-entropy of the logits against ``batch["parts"]``,

    L = - mean_{b, p} log softmax(logits)_{b, y_bp, p}

over pixels whose label is not ``ignore_index``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from partlab.methods.base import PartSegmenter, check_images
from partlab.models import build_network


class SupervisedOracle(PartSegmenter):
    """Supervised part segmentation with ``network`` (``"unet"`` or ``"deeplab"``).

    Args:
        num_parts: K; labels are 0 (background) .. K.
        network: network name for :func:`partlab.models.build_network`.
        ignore_index: label value excluded from the loss (255, as in VOC-style annotations).
        **network_kwargs: passed to the network (e.g. ``base_channels=8``, ``pretrained="auto"``).

    >>> oracle = SupervisedOracle(3, base_channels=8)
    >>> oracle(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 4, 32, 32])
    """

    def __init__(self, num_parts: int, network: str = "unet", ignore_index: int = 255, **network_kwargs) -> None:
        super().__init__(num_parts)
        self.ignore_index = ignore_index
        self.network = build_network(network, num_parts + 1, **network_kwargs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K+1, H, W)``."""
        return self.network(check_images(images))

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """``{"loss": ce, "ce": ce}``: mean cross-entropy against ``batch["parts"]`` ``(B, H, W)``."""
        if "parts" not in batch:
            raise KeyError(f"SupervisedOracle needs the true part labels: batch['parts'] of shape (B, H, W) "
                           f"with values 0..{self.num_parts}; the batch has only {sorted(batch)}")
        labels = batch["parts"]
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"batch['parts'] must be integer labels, got dtype {labels.dtype}")
        logits = self(batch["image"])  # (B, K+1, H, W)
        expected = (logits.shape[0], *logits.shape[2:])
        if tuple(labels.shape) != expected:
            raise ValueError(f"batch['parts'] must have shape (B, H, W) = {expected}, got {tuple(labels.shape)}")
        labels = labels.long()
        valid = labels[labels != self.ignore_index]
        if valid.numel() and (valid.min() < 0 or valid.max() > self.num_parts):
            raise ValueError(f"batch['parts'] holds labels in [{int(valid.min())}, {int(valid.max())}], "
                             f"but the oracle has num_parts={self.num_parts} (labels 0..{self.num_parts})")
        ce = F.cross_entropy(logits.float(), labels, ignore_index=self.ignore_index)
        return {"loss": ce, "ce": ce.detach()}

    def param_groups(self, config) -> list[dict]:
        """One group, or for DeepLab the backbone at ``config.lr`` and the head at 10x (as in SCOPS)."""
        if hasattr(self.network, "head_parameters"):
            return [{"params": self.network.backbone_parameters()},
                    {"params": self.network.head_parameters(), "lr": 10 * config.lr}]
        return [{"params": list(self.parameters())}]
