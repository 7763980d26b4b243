"""A U-Net whose encoder is the offline stand-in's trunk: quick mode's pretrained start.

In the papers every method fine-tunes a segmentation network that starts from ImageNet weights
(DeepLab-ResNet-50 in SCOPS, ...): a low learning rate for the pretrained backbone, a higher one for
the new head. Offline there are no ImageNet weights, so quick mode does the same with partlab's own
label-free stand-in (:mod:`partlab.features.standin`): its VGG-style blocks 1-3 (and, with
``encoder_blocks=4``, the dilated block 4) are the encoder, loaded from the stand-in file with
``pretrained=True``; the decoder (bilinear upsampling, skip concatenation, conv - GroupNorm - ReLU,
as :class:`partlab.models.UNet`) and the 1x1 head are new.

``backbone_parameters()`` (the encoder) and ``head_parameters()`` (decoder and head) let the methods'
optimiser give the new part 10x the base learning rate, as for DeepLab
(:meth:`partlab.methods.base.PartSegmenter.network_groups`).

Inputs are RGB in [0, 1]; the ImageNet normalisation the stand-in was trained with happens inside.

>>> import torch
>>> net = StandinUNet(5, pretrained=False)
>>> net(torch.rand(2, 3, 64, 48)).shape
torch.Size([2, 5, 64, 48])
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from partlab.models.unet import _conv_block



class StandinUNet(nn.Module):
    """U-Net with the stand-in's first ``encoder_blocks`` VGG blocks as its encoder.

    Args:
        out_channels: number of output maps (``K + 1`` for a part segmenter).
        pretrained: ``True``: the encoder's weights come from the stand-in file (``standin``: a version
            name such as ``"standin_v2"`` or a path; default the current stand-in); ``False``: random
            (the scratch start of the same architecture, for comparisons).
        encoder_blocks: 3 (strides 1, 2, 4) or 4 (plus the dilated block 4 at stride 4).
        freeze_encoder: keep the encoder's weights fixed (a linear-probe-like ablation).
    """

    def __init__(self, out_channels: int, pretrained: bool = True, standin: Optional[str] = None,
                 encoder_blocks: int = 3, freeze_encoder: bool = False) -> None:
        super().__init__()
        from partlab.features.extractors import IMAGENET_MEAN, IMAGENET_STD
        from partlab.features.standin import STANDIN_LAYOUT, standin_network

        if out_channels < 1:
            raise ValueError(f"StandinUNet needs out_channels >= 1, got {out_channels}")
        if encoder_blocks not in (3, 4):
            raise ValueError(f"encoder_blocks={encoder_blocks!r}; use 3 or 4")
        if pretrained not in (True, False):
            raise ValueError(f"pretrained={pretrained!r}; use True or False")
        self.pretrained, self.standin_source = bool(pretrained), None
        trunk, index = standin_network()
        if pretrained:
            trunk, index, self.standin_source = _load_trunk(standin)
        # a sentence naming the start, as DeepLab's (run records and notebooks print it)
        self.weights_used = (f"encoder: stand-in {self.standin_source}, blocks 1-{encoder_blocks}" if pretrained
                             else "random initialisation (pretrained=False)")
        widths = {int(name[0]): out for name, out, _, _ in STANDIN_LAYOUT}
        # cut the trunk into levels: a level ends at its block's second ReLU (the pool starts the next)
        cuts = [index[f"relu{b}_2"] + 1 for b in range(1, encoder_blocks + 1)]
        starts = [0] + cuts[:-1]
        self.encoder = nn.ModuleList([nn.Sequential(*list(trunk)[a:b]) for a, b in zip(starts, cuts)])
        # stride of each level: 1, 2, 4 (block 4 is dilated, still 4)
        levels = [widths[b] for b in range(1, encoder_blocks + 1)]
        deep = levels[-1]
        self.up = nn.ModuleList([_conv_block(deep + levels[1], levels[1], 1),
                                 _conv_block(levels[1] + levels[0], 32, 1)])
        self.head = nn.Conv2d(32, out_channels, 1)
        self.feature_channels = 32
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if freeze_encoder:
            for p in self.encoder.parameters():
                p.requires_grad_(False)

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        return (p for p in self.encoder.parameters() if p.requires_grad)

    def head_parameters(self) -> Iterator[nn.Parameter]:
        return (p for m in (self.up, self.head) for p in m.parameters())

    def forward(self, images: torch.Tensor, return_features: bool = False):
        """Logits ``(B, out_channels, H, W)`` (and the last decoder features ``(B, 32, H, W)``)."""
        height, width = images.shape[-2:]
        if min(height, width) < 4:
            raise ValueError(f"StandinUNet needs inputs of at least 4x4 pixels, got {height}x{width}")
        x = (images - self.mean) / self.std
        outs = []
        for level in self.encoder:
            x = level(x)
            outs.append(x)
        x = outs[-1]
        for block, skip in zip(self.up, (outs[1], outs[0])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        logits = self.head(x)
        return (logits, x) if return_features else logits


def _load_trunk(standin: Optional[str]):
    """The stand-in's trained ``(trunk, index, description)``: a version name, a path or the default."""
    from partlab.features.standin import StandinFeatures

    extractor = StandinFeatures(standin) if standin is not None else StandinFeatures()
    return _unfrozen_copy(extractor.features), dict(extractor.layer_index), \
        f"{extractor.version} ({extractor.weights_hash})"


def _unfrozen_copy(module: nn.Module) -> nn.Module:
    import copy

    module = copy.deepcopy(module)
    for p in module.parameters():
        p.requires_grad_(True)
    return module.train()
