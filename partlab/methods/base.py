"""The interface every part-segmentation method implements, so that one training loop and one set of
metrics serve them all.

A method is an ``nn.Module`` with

- ``forward(images) -> logits (B, K+1, H, W)``, channel 0 the background;
- ``losses(batch) -> dict`` of named scalar loss terms, the weighted total under ``"loss"``
  (what :func:`partlab.train.fit` minimises);
- ``predict(images) -> dict(probs=(B, K+1, H, W), labels=(B, H, W))`` (a default is given here).

Optional hooks read by :func:`partlab.train.fit`: ``param_groups(config)`` (per-group lr, momentum,
weight decay, ``"clip"``) and ``on_step(step)`` (called after each optimiser step).

Every method remembers the arguments it was built with (``init_args``), so that a trained model can
be written to a run folder and rebuilt later (:mod:`partlab.methods.runs`).
"""

from __future__ import annotations

import abc

import torch
from torch import nn

MIN_IMAGE_SIZE = 16


def check_images(images: torch.Tensor, min_size: int = MIN_IMAGE_SIZE) -> torch.Tensor:
    """Validate a batch of images ``(B, 3, H, W)``, floating point, ``H, W >= min_size``; return it.

    Raises ``ValueError`` naming the shape (or dtype) seen and the one expected.
    """
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"images must be floating point RGB in [0, 1], got dtype {images.dtype}")
    if min(images.shape[-2:]) < min_size:
        raise ValueError(f"images must be at least {min_size}x{min_size} pixels, got shape {tuple(images.shape)}")
    return images


class PartSegmenter(nn.Module, abc.ABC):
    """Base class of partlab's methods: K foreground parts plus a background channel.

    Args:
        num_parts: K, the number of foreground parts (the logits have ``K + 1`` channels).
    """

    check_images = staticmethod(check_images)

    def __new__(cls, *args, **kwargs):
        # Record the constructor arguments, (args, kwargs), before any subclass __init__ runs:
        # partlab.methods.runs.constructor_kwargs reads them to describe how to rebuild the model.
        self = super().__new__(cls)
        object.__setattr__(self, "init_args", (args, dict(kwargs)))
        return self

    def __init__(self, num_parts: int) -> None:
        super().__init__()
        if not isinstance(num_parts, int) or num_parts < 1:
            raise ValueError(f"num_parts must be a positive integer, got {num_parts!r}")
        self.num_parts = num_parts

    @abc.abstractmethod
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K+1, H, W)`` for images ``(B, 3, H, W)`` in [0, 1]."""

    @abc.abstractmethod
    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Named scalar loss terms for a batch dict (``"image"`` ``(B, 3, H, W)`` + method-specific
        keys), the weighted total under ``"loss"``."""

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Part maps for images ``(B, 3, H, W)`` (moved to the model's device).

        Runs in eval mode without gradients (the previous train/eval mode is restored) and returns
        ``probs`` ``(B, K+1, H, W)`` (softmax over channels) and ``labels`` ``(B, H, W)`` (argmax, int64).
        """
        check_images(images)
        was_training = self.training
        self.eval()
        try:
            parameter = next(self.parameters(), None)
            if parameter is not None:
                images = images.to(parameter.device)
            probs = self(images).float().softmax(dim=1)  # (B, K+1, H, W)
        finally:
            self.train(was_training)
        return {"probs": probs, "labels": probs.argmax(dim=1)}
