"""Pretrained weights from the local torch cache, never from the network.

partlab runs offline by default. ImageNet weights (VGG19 for semantic features, ResNet-50 for the
DeepLab backbone) are used when their files already sit in torch's hub cache
(``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``). When they are asked for
and absent, :class:`PretrainedWeightsMissing` says which file is missing and how to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


class PretrainedWeightsMissing(FileNotFoundError):
    """Raised when ImageNet weights are requested but are not in the local torch cache."""


def cache_dir() -> Path:
    """Where torchvision keeps downloaded weights (``torch.hub.get_dir()/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_path(weights) -> Path:
    """The cache path of a torchvision ``WeightsEnum`` member, e.g. ``VGG19_Weights.IMAGENET1K_V1``."""
    return cache_dir() / os.path.basename(weights.url)


def weights_available(weights) -> bool:
    """True when the weights file is in the local cache (no network access is attempted)."""
    return weights_path(weights).is_file()


def load_state_dict(weights) -> dict:
    """Load a torchvision weights enum member's state dict from the local cache.

    Raises :class:`PretrainedWeightsMissing` with the file name, the expected folder and the
    command that fetches it on a machine with internet access.
    """
    path = weights_path(weights)
    if not path.is_file():
        raise PretrainedWeightsMissing(
            f"pretrained weights {weights} are not in the local torch cache (expected {path}). "
            f"partlab never downloads at run time. On a machine with internet access run "
            f"`python -c \"import torchvision; torchvision.models.get_weight('{weights}').get_state_dict()\"` "
            f"and copy {path.name} into {path.parent} (or set TORCH_HOME), or use the offline features "
            f"(features='standin')."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise PretrainedWeightsMissing(
            f"could not read pretrained weights file {path} ({exc.__class__.__name__}: {exc}); "
            f"delete it and fetch it again on a machine with internet access"
        ) from exc
