"""Segmentation networks: images ``(B, 3, H, W)`` in [0, 1] -> logits ``(B, C, H, W)`` at the input size.

- :class:`UNet` - small, GroupNorm, for CPU quick mode (from scratch);
- :class:`StandinUNet` - a U-Net whose encoder is the offline stand-in's trunk (quick mode's pretrained
  start: encoder at the base learning rate, decoder and head at 10x, as DeepLab's head);
- :class:`DeepLabV2` - DeepLab-v2 ResNet-50 (output stride 8, ASPP-sum head), as in SCOPS;
- :class:`DeepLabV3` - DeepLab-v3 ResNet-50 (output stride 8, ASPP + 256-d decoder), as in MaskContrast.

Both accept ``return_features=True`` to also return decoder/backbone features (for linear probes).
"""

from __future__ import annotations

from torch import nn

from partlab.models.deeplab import DeepLabV2, DeepLabV3
from partlab.models.standin_unet import StandinUNet
from partlab.models.unet import UNet

NETWORKS: dict[str, type[nn.Module]] = {"unet": UNet, "standin_unet": StandinUNet, "deeplab": DeepLabV2,
                                       "deeplab_v3": DeepLabV3}

# The U-Net of CPU quick mode, shared by every method and the oracle (same capacity, fair comparison).
QUICK_UNET: dict[str, int] = {"base_channels": 16, "depth": 3}


def build_network(name: str, out_channels: int, **kwargs) -> nn.Module:
    """Build a network by name (``"unet"``, ``"standin_unet"``, ``"deeplab"`` or ``"deeplab_v3"``); ``kwargs`` go to its constructor.

    >>> build_network("unet", 9, base_channels=8).head.out_channels
    9
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(NETWORKS)}")
    return NETWORKS[name](out_channels, **kwargs)


__all__ = ["DeepLabV2", "DeepLabV3", "NETWORKS", "QUICK_UNET", "StandinUNet", "UNet", "build_network"]
