"""The part basis of SCOPS' semantic consistency loss (Eq. 4), fitted or learned without a network.

SCOPS asks every pixel's (saliency-masked) feature vector to be a mix of K part basis vectors
``w_k`` shared by all images, weighted by the part responses ``R``::

    D * relu(V)(u, v)  ~  sum_k R(k, u, v) relu(w_k)            (Eq. 4, partlab.losses.semantic_consistency_loss)

Two questions a reader asks about that term, each answered by one function here:

- *How good can the loss get for given part maps?* :func:`fit_part_basis` solves Eq. 4 for the
  basis with ``R`` fixed: a non-negative least-squares problem. For one-hot parts its answer is each
  part's mean feature vector.
- *What can the method do with features that name every part?* :func:`part_label_features` turns the
  true part labels into such features (one channel per part), to train a method on them instead of a
  CNN's (``seed_sweep(..., true_part_features=True)``): the method's ceiling, with the features' share
  of the problem taken away; ``share=`` mixes them into the CNN's features (``true_part_features=0.5``).
- *What do part maps and basis become when both are optimised with Eq. 4?* :func:`factorize_features`
  trains free per-pixel part maps (softmax over K+1 channels, channel 0 background) and the basis
  with Adam: a soft non-negative matrix factorisation of the features, SCOPS' term without the
  network (DFF, :func:`partlab.baselines.dff`, is the hard version).

:func:`basis_cosine` gives ``W^ W^T``, the cosine similarities of the basis vectors that the
orthonormal constraint (Eq. 5) pushes towards the identity.

>>> parts = torch.zeros(1, 2, 1, 2); parts[0, 0, 0, 0] = 1; parts[0, 1, 0, 1] = 1   # two one-pixel parts
>>> features = torch.tensor([[[[3.0, 1.0]], [[0.0, 2.0]]]])                         # (1, C=2, 1, 2)
>>> fit_part_basis(parts, features)                        # row k = the feature of part k's pixel
tensor([[3., 0.],
        [1., 2.]])
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F

from partlab import utils
from partlab.losses import orthonormal_loss

__all__ = ["FactorizationRun", "basis_cosine", "factorize_features", "fit_part_basis", "part_label_features"]


def _target(features: torch.Tensor, saliency: Optional[torch.Tensor]) -> torch.Tensor:
    """``D * relu(V)`` ``(B, C, H, W)``, the target of Eq. 4 (``saliency`` ``(B, H, W)`` or ``(B, 1, H, W)``)."""
    target = features.relu()
    if saliency is None:
        return target
    if saliency.dim() == 3:
        saliency = saliency[:, None]
    if saliency.shape != (features.shape[0], 1, *features.shape[-2:]):
        raise ValueError(f"saliency must have shape (B, H, W) or (B, 1, H, W) matching features "
                         f"{tuple(features.shape)}, got {tuple(saliency.shape)}")
    return target * saliency.to(target.dtype)


def fit_part_basis(parts: torch.Tensor, features: torch.Tensor, saliency: Optional[torch.Tensor] = None,
                   iters: int = 500, tol: float = 1e-9) -> torch.Tensor:
    """The non-negative part basis that minimises SCOPS Eq. (4) for fixed part maps.

    Minimises ``sum_{b,u,v} || D * relu(V) - sum_k R_k w_k ||^2`` over ``w >= 0``: per feature
    channel a least-squares problem with the same K x K normal matrix ``G = R^T R`` (pixels as rows).
    Solved by the unconstrained solution ``G^+ R^T (D relu V)`` (pseudo-inverse: an empty part gets a
    zero row), lifted to a small positive floor, then refined by Lee-Seung multiplicative updates
    ``w <- w * (R^T D relu V) / (G w)`` (non-negative least squares; the NMF update of the basis with
    the part maps held fixed). For one-hot parts ``G`` is diagonal and the answer is exact at once:
    **row k is the mean feature of part k's pixels**.

    Args:
        parts: ``(B, K, H, W)`` non-negative part maps ``R`` (e.g. ``probs[:, 1:]``).
        features: ``(B, C, H, W)`` features ``V`` at the parts' size (relu applied inside).
        saliency: ``(B, H, W)`` or ``(B, 1, H, W)`` soft saliency ``D``; ``None`` means 1.
        iters: at most this many multiplicative updates after the least-squares start.
        tol: stop when no entry changes by more than ``tol`` times the largest entry (one-hot parts:
            after the first update).

    Returns:
        ``(K, C)`` basis with non-negative entries, so ``relu(basis) == basis`` and
        ``semantic_consistency_loss(parts, features, basis, saliency)`` is its minimum over bases (up to
        the stopping tolerance of the updates when ``G`` is not diagonal).
    """
    if parts.dim() != 4 or features.dim() != 4 or parts.shape[0] != features.shape[0] \
            or parts.shape[-2:] != features.shape[-2:]:
        raise ValueError(f"parts (B, K, H, W) {tuple(parts.shape)} and features (B, C, H, W) "
                         f"{tuple(features.shape)} must share B, H and W")
    if bool((parts < 0).any()):
        raise ValueError("parts must be non-negative (part responses, e.g. softmax probabilities)")
    r = parts.double()
    target = _target(features, saliency).double()                         # (B, C, H, W)
    gram = torch.einsum("bkhw,bjhw->kj", r, r)                           # (K, K) = R^T R
    rhs = torch.einsum("bkhw,bchw->kc", r, target)                       # (K, C) = R^T (D relu V)
    basis = (torch.linalg.pinv(gram) @ rhs).clamp_min(0)                # (K, C) least squares, clipped
    basis = basis.clamp_min(1e-3 * float(basis.mean()))                  # a floor the updates can leave
    for _ in range(iters):
        updated = basis * rhs / (gram @ basis + 1e-30)                   # NNLS multiplicative update
        converged = bool((updated - basis).abs().max() <= tol * updated.abs().max())
        basis = updated
        if converged:
            break
    return basis.to(features.dtype)


def part_label_features(parts: torch.Tensor, like: torch.Tensor, share: float = 1.0) -> torch.Tensor:
    """Features that name every part: the one-hot true part labels in place of a CNN's features ``like``.

    Channel ``p - 1`` holds part ``p``'s share of each feature cell (the one-hot labels ``1..P`` averaged
    over the cell, background 0), the other channels are 0; each map is scaled so that its mean squared
    norm over the foreground cells equals that of ``like`` there (the losses keep their usual magnitude).
    Used as a method's features (L_sc of SCOPS, L_f / L_c of contrastive discovery), they measure what
    the method can do when the features are perfect: its ceiling, not a result (they come from labels).
    With ``share`` below 1 they are mixed into ``like``: ``(1 - share) * like + share * parts``, a ladder of
    feature quality between the CNN's (0) and perfect (1), to see whether a method gains from better
    features as much as its baselines do (the README's "Better features lift K-means at least as far as SCOPS").

    Args:
        parts: ``(N, H, W)`` or ``(N, 1, H, W)`` integer part labels, 0 background, ``1..P`` parts.
        like: ``(N, C, h, w)`` the features they replace (``C >= P``, ``h, w`` divide ``H, W``).
        share: the true parts' weight in ``[0, 1]`` (1: the parts alone; 0: ``like`` unchanged).

    Returns:
        ``(N, C, h, w)`` features of ``like``'s dtype, non-negative where ``like`` is.

    >>> parts = torch.tensor([[[0, 1], [2, 2]]])                      # (1, 2, 2): background, part 1, part 2
    >>> part_label_features(parts, torch.ones(1, 3, 2, 2))[0, :, 1, 1]  # a part-2 pixel: squared norm 3, as like's
    tensor([0.0000, 1.7321, 0.0000])
    """
    if parts.dim() == 4:
        parts = parts[:, 0]
    if parts.dim() != 3 or like.dim() != 4 or parts.shape[0] != like.shape[0]:
        raise ValueError(f"parts must be (N, H, W) and like (N, C, h, w) with the same N, got "
                         f"{tuple(parts.shape)} and {tuple(like.shape)}")
    share = float(share)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share is the true parts' weight in [0, 1], got {share}")
    parts = parts.long()
    p = int(parts.max()) if parts.numel() else 0
    _, c, h, w = like.shape
    if p > c:
        raise ValueError(f"{p} parts need at least as many feature channels, the features have {c}")
    if p == 0:
        return (1.0 - share) * like if share < 1.0 else torch.zeros_like(like)
    onehot = F.one_hot(parts, p + 1).permute(0, 3, 1, 2)[:, 1:].to(like.dtype)           # (N, P, H, W)
    onehot = F.adaptive_avg_pool2d(onehot, (h, w))                                       # (N, P, h, w)
    fg = onehot.sum(dim=1) > 0.5                                                         # (N, h, w) foreground cells
    if not bool(fg.any()):
        fg = onehot.sum(dim=1) > 0
    energy_like = like.relu().pow(2).sum(dim=1)[fg].mean()
    energy_parts = onehot.pow(2).sum(dim=1)[fg].mean().clamp_min(1e-12)
    out = torch.zeros_like(like)
    out[:, :p] = onehot * torch.sqrt(energy_like / energy_parts)
    return out if share == 1.0 else (1.0 - share) * like + share * out


def basis_cosine(basis: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``W^ W^T`` ``(K, K)``: cosine similarity between the rectified basis vectors ``relu(w_k)``.

    The orthonormal constraint (Eq. 5) is ``|| basis_cosine(w) - I ||_F^2``
    (:func:`partlab.losses.orthonormal_loss`); the diagonal is 1 (0 for an all-zero row).
    """
    if basis.dim() != 2:
        raise ValueError(f"basis must have shape (K, C), got {tuple(basis.shape)}")
    w = basis.relu()
    w_hat = w / torch.sqrt((w * w).sum(dim=1, keepdim=True) + eps)     # (K, C), rows of unit length
    return w_hat @ w_hat.T


@dataclass
class FactorizationRun:
    """The result of :func:`factorize_features`.

    Attributes:
        logits: ``(B, K+1, H, W)`` final logits of the free part maps (channel 0 background), detached.
        basis: ``(K, C)`` final raw basis ``w`` (use ``relu(basis)``), detached.
        history: per step ``{"step", "sc", "orthonormal", "loss"}`` (step 0 = the initial state).
    """

    logits: torch.Tensor
    basis: torch.Tensor
    history: list = field(default_factory=list)

    @property
    def probs(self) -> torch.Tensor:
        """``(B, K+1, H, W)`` part maps, softmax over channels."""
        return self.logits.softmax(dim=1)


def factorize_features(features: torch.Tensor, num_parts: int, saliency: Optional[torch.Tensor] = None, *,
                       steps: int = 200, lr: float = 0.05, orthonormal_weight: float = 0.0, init_std: float = 0.5,
                       seed: int = 0, device: "str | torch.device" = "cpu",
                       progress: Optional[bool] = None) -> FactorizationRun:
    """Learn free part maps and a part basis with SCOPS Eq. (4) (+ Eq. 5): a soft NMF of the features.

    Parameters are one logit per image, channel and pixel (``(B, K+1, H, W)``, ``init_std * N(0, 1)``)
    and the raw basis ``w`` (``(K, C)``, ``|N(0, 1)|`` as in the original); both are updated by Adam on::

        loss = semantic_consistency_loss(probs[:, 1:], features, w, saliency)
               + orthonormal_weight * orthonormal_loss(w)

    With no network there is no spatial prior: each pixel only picks the mix of basis vectors that
    explains its feature, as in NMF; where the saliency ``D`` is 0 the loss asks for a zero
    reconstruction (SCOPS Eq. 6): those pixels go to the background channel 0 or to parts whose basis
    vectors are 0 there. The loss is evaluated in expanded form (:func:`_residual_energy`): the same
    value as :func:`~partlab.losses.semantic_consistency_loss`, without building the ``(B, C, H, W)``
    residual at every step.

    Args:
        features: ``(B, C, H, W)`` features ``V`` (relu applied inside).
        num_parts: K.
        saliency: ``(B, H, W)`` or ``(B, 1, H, W)`` soft saliency ``D``; ``None`` means 1.
        steps, lr: Adam updates and learning rate (shared by the logits and the basis).
        orthonormal_weight: weight of Eq. 5 relative to Eq. 4 (0 = off).
        seed: seeds the initial logits and basis (CPU generator).
        device: where to optimise (``"auto"`` allowed).

    Returns:
        a :class:`FactorizationRun` (logits, basis, loss history), on the CPU.
    """
    if not isinstance(num_parts, int) or num_parts < 1:
        raise ValueError(f"num_parts must be a positive integer, got {num_parts!r}")
    if features.dim() != 4:
        raise ValueError(f"features must have shape (B, C, H, W), got {tuple(features.shape)}")
    dev = utils.device(device)
    b, c, h, w = features.shape
    gen = torch.Generator().manual_seed(int(seed))
    logits = (init_std * torch.randn(b, num_parts + 1, h, w, generator=gen)).to(dev).requires_grad_()
    basis = torch.randn(num_parts, c, generator=gen).abs().to(dev).requires_grad_()
    target = _target(features.float(), None if saliency is None else saliency.float()).to(dev)   # (B, C, H, W)
    pixels = target.permute(0, 2, 3, 1).reshape(-1, c)                 # (P, C), P = B*H*W
    energy = pixels.double().pow(2).sum()
    optimizer = torch.optim.Adam([logits, basis], lr=lr)
    history = []
    for step in utils.progress(range(steps + 1), desc="Eq. 4 factorisation", enabled=progress):
        parts = F.softmax(logits, dim=1)[:, 1:].permute(0, 2, 3, 1).reshape(-1, num_parts)   # (P, K)
        sc = _residual_energy(parts, pixels, basis.relu(), energy) / pixels.numel()
        on = orthonormal_loss(basis)
        loss = sc + orthonormal_weight * on
        history.append({"step": step, "sc": sc.item(), "orthonormal": on.item(), "loss": loss.item()})
        if step == steps:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return FactorizationRun(logits.detach().cpu(), basis.detach().cpu(), history)


def _residual_energy(parts: torch.Tensor, pixels: torch.Tensor, basis: torch.Tensor,
                     energy: torch.Tensor) -> torch.Tensor:
    """``sum_p || t_p - sum_k R_pk w_k ||^2`` without the ``(P, C)`` residual, expanded as
    ``||T||^2 - 2 <R, T W^T> + <R W W^T, R>`` (``parts`` R ``(P, K)``, ``pixels`` T ``(P, C)``, ``basis``
    W ``(K, C)`` rectified, ``energy`` = ``||T||^2``): the same value as
    :func:`partlab.losses.semantic_consistency_loss` times B*C*H*W, several times faster on a CPU."""
    cross = (parts * (pixels @ basis.T)).sum()                          # <R, T W^T>
    quadratic = ((parts @ (basis @ basis.T)) * parts).sum()            # <R W W^T, R>
    return (energy - 2 * cross.double() + quadratic.double()).clamp_min(0).float()
