"""Free part maps: optimise one loss term with no network and no image, to see what it asks for.

The teaching notebooks isolate a loss term by handing it the most flexible "model" there is: a
free tensor of logits ``(1, K+1, H, W)``, one number per part and pixel, turned into part maps by
a softmax over channels (channel 0 the background, as everywhere in partlab). Whatever shape the
maps take under Adam is what the loss alone prefers.

>>> from partlab.losses import concentration_loss
>>> run = optimize_free_maps(lambda probs: concentration_loss(probs[:, 1:]), num_parts=3, size=16,
...                          steps=50, snapshot_steps=(0, 50))
>>> run.history[-1]["loss"] < run.history[0]["loss"], sorted(run.snapshots), tuple(run.probs.shape)
(True, [0, 50], (1, 4, 16, 16))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Union

import torch

from partlab import utils

__all__ = ["FreeMapsRun", "optimize_free_maps"]


@dataclass
class FreeMapsRun:
    """The result of :func:`optimize_free_maps`.

    Attributes:
        logits: ``(1, K+1, H, W)`` the final logits (detached).
        history: one record per step, ``{"step": s, "loss": value}``, the loss of the maps after
            ``s`` updates (step 0 = the initial maps); :func:`partlab.train.plot_history` draws it.
        snapshots: ``{s: probs (K+1, H, W)}`` the part maps after ``s`` updates, on the CPU.
    """

    logits: torch.Tensor
    history: list = field(default_factory=list)
    snapshots: dict = field(default_factory=dict)

    @property
    def probs(self) -> torch.Tensor:
        """``(1, K+1, H, W)`` the final part maps, softmax over channels."""
        return self.logits.softmax(dim=1)


def optimize_free_maps(loss_fn: Callable[[torch.Tensor], torch.Tensor], num_parts: int,
                       size: Union[int, tuple[int, int]], *, steps: int = 300, lr: float = 0.1,
                       init_std: float = 0.5, seed: int = 0, snapshot_steps: Iterable[int] = (),
                       device: "str | torch.device" = "cpu", progress: Optional[bool] = None) -> FreeMapsRun:
    """Minimise ``loss_fn(probs)`` over free logits with Adam; ``probs = softmax(logits)``.

    Args:
        loss_fn: maps ``probs (1, K+1, H, W)`` (channel 0 background) to a scalar tensor, e.g.
            ``lambda probs: concentration_loss(probs[:, 1:])``.
        num_parts: K foreground parts.
        size: ``H`` (square) or ``(H, W)``.
        steps: Adam updates.
        lr: Adam learning rate (the logits are the parameters, so ~0.1 moves them quickly).
        init_std: the logits start as ``init_std * N(0, 1)``, drawn from a generator seeded by ``seed``:
            nearly uniform maps with a little noise to break the symmetry between parts.
        snapshot_steps: steps (0..steps) at which to keep a copy of the maps.
        device: where to optimise (``"auto"`` allowed).
        progress: progress bar; ``None`` follows :func:`partlab.utils.progress_enabled`.

    Returns:
        a :class:`FreeMapsRun` (final logits, loss history, snapshots).
    """
    if not isinstance(num_parts, int) or num_parts < 1:
        raise ValueError(f"num_parts must be a positive integer, got {num_parts!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    keep = set(int(s) for s in snapshot_steps)
    if keep and not (min(keep) >= 0 and max(keep) <= steps):
        raise ValueError(f"snapshot_steps must lie in 0..{steps}, got {sorted(keep)}")
    dev = utils.device(device)
    generator = torch.Generator().manual_seed(int(seed))
    logits = (init_std * torch.randn(1, num_parts + 1, h, w, generator=generator)).to(dev).requires_grad_()
    optimizer = torch.optim.Adam([logits], lr=lr)
    run = FreeMapsRun(logits.detach())
    for step in utils.progress(range(steps + 1), desc="free maps", enabled=progress):
        probs = logits.softmax(dim=1)                                   # (1, K+1, H, W)
        loss = loss_fn(probs)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
        run.history.append({"step": step, "loss": loss.item()})
        if step in keep:
            run.snapshots[step] = probs[0].detach().cpu()
        if step == steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    run.logits = logits.detach()
    return run
