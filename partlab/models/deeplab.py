"""DeepLab-v2 with a ResNet-50 backbone: the segmentation network of SCOPS and contrastive part discovery.

As in the original DeepLab-v2 (and SCOPS, REFERENCE_NOTES.md): torchvision's ResNet-50 with
``replace_stride_with_dilation=[False, True, True]`` (layer3 dilation 2, layer4 dilation 4, output
stride 8) and a max-pool with ``ceil_mode=True`` (Caffe rounding), so a 256x256 input gives 33x33
features and logits, as in the original. In general each side goes
``n -> ceil(n / 2) -> ceil(./2) + (pooling) -> ceil(./2)``: 256 -> 128 -> 65 -> 33.

Classifier (ASPP-sum, DeepLab-v2): the **sum** of four 3x3 convs on the 2048-channel features with
dilation 6, 12, 18 and 24 (weights N(0, 0.01), bias 0). The logits are upsampled bilinearly to the
input size. ImageNet normalisation happens inside: images go in RGB in [0, 1].

Weights (``pretrained``): ``True`` loads ``torchvision.models.ResNet50_Weights.IMAGENET1K_V1`` from the
local torch cache (:class:`partlab.pretrained.PretrainedWeightsMissing` when absent - partlab never
downloads), ``False`` is a random initialisation, ``"auto"`` uses the cached weights when present.
:attr:`DeepLabV2.weights_used` says which it was (notebooks print it); the choice is also logged.

BatchNorm: with ImageNet weights the backbone's BatchNorm layers are frozen by default (statistics and
affine parameters kept, eval mode even in ``train()``), the usual DeepLab practice for batches of 6;
from a random initialisation they train normally. ``freeze_bn`` overrides this.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from partlab import pretrained as pretrained_weights

_log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ASPP_DILATIONS = (6, 12, 18, 24)


def resnet50_backbone(pretrained: "bool | str", owner: str) -> tuple:
    """torchvision's ResNet-50 with ``replace_stride_with_dilation=[False, True, True]`` (output stride 8) up to
    ``layer4``, as ``(nn.Sequential, weights_used sentence, imagenet loaded)``; ``pretrained`` as in the module
    docstring (the local torch cache only, never a download)."""
    if pretrained not in (True, False, "auto"):
        raise ValueError(f"pretrained={pretrained!r}; use True, False or 'auto'")
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    use_imagenet = pretrained is True or (pretrained == "auto" and pretrained_weights.weights_available(weights))
    resnet = torchvision.models.resnet50(weights=None, replace_stride_with_dilation=[False, True, True])
    if use_imagenet:
        resnet.load_state_dict(pretrained_weights.load_state_dict(weights))
        used = f"ImageNet (torchvision {weights})"
    elif pretrained == "auto":
        used = f"random initialisation ({weights} not in the local cache {pretrained_weights.weights_path(weights)})"
    else:
        used = "random initialisation (pretrained=False)"
    _log.info("%s backbone weights: %s", owner, used)
    backbone = nn.Sequential(OrderedDict(
        (name, getattr(resnet, name))
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")))
    return backbone, used, use_imagenet


class DeepLabV2(nn.Module):
    """DeepLab-v2 ResNet-50: images ``(B, 3, H, W)`` in [0, 1] -> logits ``(B, out_channels, H, W)``.

    Args:
        out_channels: number of output maps (``K + 1`` for a part segmenter).
        backbone: only ``"resnet50"``.
        pretrained: ``False`` | ``True`` | ``"auto"`` (see the module docstring).
        freeze_bn: freeze the backbone's BatchNorm layers; ``None`` = freeze exactly when ImageNet
            weights were loaded.

    Attributes:
        weights_used: a sentence naming the backbone weights, e.g. ``"ImageNet (torchvision
            ResNet50_Weights.IMAGENET1K_V1)"``.
        feature_channels: channels of the features returned with ``return_features`` (2048).
    """

    output_stride = 8

    def __init__(self, out_channels: int, backbone: str = "resnet50", pretrained: bool | str = False,
                 freeze_bn: bool | None = None) -> None:
        super().__init__()
        if backbone != "resnet50":
            raise ValueError(f"DeepLabV2 backbone={backbone!r} is not available; use 'resnet50'")
        if pretrained not in (True, False, "auto"):
            raise ValueError(f"pretrained={pretrained!r}; use True, False or 'auto'")
        self.backbone, self.weights_used, use_imagenet = resnet50_backbone(pretrained, "DeepLabV2")
        self.backbone.maxpool.ceil_mode = True  # Caffe rounding: 33x33 features for a 256x256 input
        self.feature_channels = 2048
        self.classifier = nn.ModuleList(
            nn.Conv2d(self.feature_channels, out_channels, 3, padding=d, dilation=d) for d in ASPP_DILATIONS)
        for conv in self.classifier:
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)
        self._normalise_and_freeze(use_imagenet, freeze_bn)

    def _normalise_and_freeze(self, use_imagenet: bool, freeze_bn: bool | None) -> None:
        """ImageNet normalisation buffers; the backbone's BatchNorm frozen as ``freeze_bn`` (None: with ImageNet)."""
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.bn_frozen = use_imagenet if freeze_bn is None else bool(freeze_bn)
        if self.bn_frozen:
            for module in self._batchnorms():
                module.requires_grad_(False)

    def _batchnorms(self) -> list[nn.BatchNorm2d]:
        return [m for m in self.backbone.modules() if isinstance(m, nn.BatchNorm2d)]

    def train(self, mode: bool = True) -> "DeepLabV2":
        """Like ``nn.Module.train``, but frozen BatchNorm layers stay in eval mode."""
        super().train(mode)
        if self.bn_frozen:
            for module in self._batchnorms():
                module.eval()
        return self

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Trainable ResNet parameters (the base-lr group in SCOPS)."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        """Classifier parameters (the 10x-lr group in SCOPS)."""
        return list(self.classifier.parameters())

    def forward(self, images: torch.Tensor, return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(B, out_channels, H, W)`` at the input size; with ``return_features`` also the
        backbone features ``(B, 2048, h, w)`` at output stride 8 (not upsampled; h = 33 for H = 256)."""
        features = self.backbone((images - self.mean) / self.std)  # (B, 2048, h, w)
        logits = sum(conv(features) for conv in self.classifier)  # ASPP-sum: (B, out_channels, h, w)
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return (logits, features) if return_features else logits


class DeepLabV3(DeepLabV2):
    """DeepLab-v3 ResNet-50 (MaskContrast's network): images ``(B, 3, H, W)`` in [0, 1] -> ``(B, out_channels, H, W)``.

    The same dilated ResNet-50 (output stride 8, torchvision's rounding: 256 -> 32) and weights as
    :class:`DeepLabV2`; the head is DeepLab-v3's: ASPP (1x1 conv, 3x3 convs at dilation 12, 24, 36 and image
    pooling, 256 channels each, concatenated and projected to 256 with dropout 0.5), a 3x3 conv of 256
    channels with BatchNorm and ReLU - the **decoder features** - and a last 1x1 conv to ``out_channels``
    (MaskContrast's 32-d embedding head). Outputs are upsampled bilinearly to the input size.

    Args:
        out_channels, backbone, pretrained, freeze_bn: as :class:`DeepLabV2`.
        atrous_rates: the ASPP dilations.

    Attributes:
        feature_channels: 256, the decoder features returned with ``return_features`` (what MaskContrast's
            saliency head and linear probe read).
    """

    def __init__(self, out_channels: int, backbone: str = "resnet50", pretrained: bool | str = False,
                 freeze_bn: bool | None = None, atrous_rates: tuple = (12, 24, 36)) -> None:
        nn.Module.__init__(self)
        if backbone != "resnet50":
            raise ValueError(f"DeepLabV3 backbone={backbone!r} is not available; use 'resnet50'")
        from torchvision.models.segmentation.deeplabv3 import ASPP

        self.backbone, self.weights_used, use_imagenet = resnet50_backbone(pretrained, "DeepLabV3")
        self.feature_channels = 256
        self.decoder = nn.Sequential(ASPP(2048, list(atrous_rates), 256), nn.Conv2d(256, 256, 3, padding=1, bias=False),
                                     nn.BatchNorm2d(256), nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(256, out_channels, 1)
        self._normalise_and_freeze(use_imagenet, freeze_bn)

    def head_parameters(self) -> list[nn.Parameter]:
        """ASPP, decoder and classifier parameters."""
        return list(self.decoder.parameters()) + list(self.classifier.parameters())

    def forward(self, images: torch.Tensor, return_features: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Outputs ``(B, out_channels, H, W)`` at the input size; with ``return_features`` also the decoder
        features ``(B, 256, H, W)``, upsampled to the input size like the outputs."""
        features = self.decoder(self.backbone((images - self.mean) / self.std))     # (B, 256, h, w)
        size = images.shape[-2:]
        logits = F.interpolate(self.classifier(features), size=size, mode="bilinear", align_corners=False)
        if not return_features:
            return logits
        return logits, F.interpolate(features, size=size, mode="bilinear", align_corners=False)
