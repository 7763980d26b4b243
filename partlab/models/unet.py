"""A small U-Net: the CPU-friendly segmentation network of partlab's quick mode.

Encoder: ``depth`` times (two 3x3 conv - GroupNorm - ReLU, then 2x2 max-pool); decoder: bilinear
upsampling to the skip connection's exact size, concatenation, one conv block. Any input size of at
least ``2 ** depth`` works (odd and non-square included) and the logits come out at the input size.

Normalisation is GroupNorm, not BatchNorm: it does not depend on the batch, so batches of 6 (SCOPS)
or 1 (inference) behave the same in train and eval mode. Images go in as they are, RGB in [0, 1]: no
ImageNet normalisation (the first GroupNorm takes care of scale).

>>> import torch
>>> net = UNet(out_channels=5)
>>> net(torch.rand(2, 3, 65, 47)).shape
torch.Size([2, 5, 65, 47])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups (as many as divide ``channels``)."""
    return nn.GroupNorm(math.gcd(8, channels), channels)


def _conv_block(in_channels: int, out_channels: int, convs: int) -> nn.Sequential:
    """``convs`` times 3x3 conv (no bias) - GroupNorm - ReLU; keeps the spatial size."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                   _norm(out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net mapping images ``(B, in_channels, H, W)`` to logits ``(B, out_channels, H, W)``.

    Args:
        out_channels: number of output maps (``K + 1`` for a part segmenter).
        base_channels: channels at full resolution; level ``i`` has ``base_channels * 2**i``.
        depth: number of 2x down-samplings (the input must be at least ``2**depth`` pixels on each side).
        in_channels: input channels (3 for RGB).
    """

    def __init__(self, out_channels: int, base_channels: int = 16, depth: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        if out_channels < 1 or base_channels < 1 or depth < 1 or in_channels < 1:
            raise ValueError(f"UNet needs positive sizes, got out_channels={out_channels}, "
                             f"base_channels={base_channels}, depth={depth}, in_channels={in_channels}")
        self.depth = depth
        self.feature_channels = base_channels
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_conv_block(in_channels, widths[0], 2)]
                                  + [_conv_block(widths[i - 1], widths[i], 2) for i in range(1, depth + 1)])
        self.up = nn.ModuleList([_conv_block(widths[i] + widths[i - 1], widths[i - 1], 1)
                                 for i in range(depth, 0, -1)])
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, images: torch.Tensor, return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, out_channels, H, W)``; with ``return_features`` also the last decoder
        features ``(B, base_channels, H, W)`` (what a linear probe reads)."""
        height, width = images.shape[-2:]
        if min(height, width) < 2**self.depth:
            raise ValueError(f"UNet(depth={self.depth}) needs inputs of at least {2**self.depth}x{2**self.depth} "
                             f"pixels, got {height}x{width}")
        skips = []
        x = images
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))  # level i: (B, base * 2**i, H / 2**i, W / 2**i)
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        logits = self.head(x)  # (B, out_channels, H, W)
        return (logits, x) if return_features else logits
