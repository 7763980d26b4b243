"""Losses of contrastive part discovery (Choudhury et al., NeurIPS 2021, "Unsupervised part
discovery from contrastive reconstruction").

The network predicts K part maps inside the object (softmax over K channels, **no background
channel**: the foreground mask ``fg`` says where the object is). Four terms shape them:

====================================  ===========  ============================================================
function                              paper        what it asks of the parts ``m_k = parts_k * fg``
====================================  ===========  ============================================================
:func:`part_consistency_loss`         L_f, L_v     every pixel's value is close to its part's mean value:
                                                   on CNN features (L_f, "feature reconstruction") and on
                                                   the Lab image (L_v, "visual consistency")
:func:`part_prototypes`               -            the mask-weighted mean feature of each part (prototype)
:func:`part_contrastive_loss`         L_c          a part's prototype is closer to the same part in another
                                                   image than to every other part of any image
:func:`masked_equivariance_loss`      L_e          the parts of a warped, colour-jittered image = the warped
                                                   parts (KL), on the warped foreground only
====================================  ===========  ============================================================

Weights of the original (CUB, DeepFashion): ``lambda_f`` 5, ``lambda_c`` 2.3e3, ``lambda_v`` 30,
``lambda_e`` 5.7e3 (PASCAL-Part 5.7e4); temperature 0.19 (REFERENCE_NOTES.md). Reductions as in
the original are stated in each docstring: L_f is summed over the images of a batch, L_v
averaged (``part_consistency_loss(..., reduction="sum" | "mean")``).

Non-finite inputs are not checked (no device syncs in a training step): they give a non-finite loss.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from partlab.geometry import Warp, warp_images
from partlab.precision import float32

__all__ = ["contrastive_reference_values", "cross_image_similarity", "masked_equivariance_loss",
           "part_consistency_loss", "part_contrastive_loss", "part_prototypes", "rgb_to_lab"]

MEAN_EPS = 1e-5        # part means and the per-image normaliser of L_f / L_v (the original's 1e-5)
PROTOTYPE_EPS = 1e-7   # part prototypes for L_c (the original's 1e-7)


def _shape(x) -> object:
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def _check_parts_fg(parts: torch.Tensor, fg: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Validate ``parts`` (B, K, H, W) and return ``fg`` as (B, 1, H, W) (or None)."""
    if not isinstance(parts, torch.Tensor) or parts.dim() != 4 or parts.shape[1] < 1:
        raise ValueError(f"parts must have shape (B, K, H, W) with K >= 1, got {_shape(parts)}")
    if fg is None:
        return None
    if not isinstance(fg, torch.Tensor) or fg.dim() not in (3, 4):
        raise ValueError(f"fg must have shape (B, H, W) or (B, 1, H, W), got {_shape(fg)}")
    if fg.dim() == 3:
        fg = fg[:, None]
    b, _, h, w = parts.shape
    if fg.shape != (b, 1, h, w):
        raise ValueError(f"fg must have shape (B, 1, H, W) = {(b, 1, h, w)} like parts {tuple(parts.shape)}, "
                         f"got {tuple(fg.shape)}")
    return fg.to(parts.dtype)


def _check_values(values: torch.Tensor, parts: torch.Tensor, name: str) -> None:
    if not isinstance(values, torch.Tensor) or values.dim() != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {_shape(values)}")
    if values.shape[0] != parts.shape[0] or values.shape[-2:] != parts.shape[-2:]:
        raise ValueError(f"{name} {tuple(values.shape)} must be (B, C, H, W) with B, H, W of parts "
                         f"{tuple(parts.shape)} (upsample them to the parts' size first)")


# ---------------------------------------------------------------------------------------------
# L_f and L_v: part consistency
# ---------------------------------------------------------------------------------------------


@float32
def part_consistency_loss(parts: torch.Tensor, values: torch.Tensor, fg: torch.Tensor,
                          reduction: str = "mean") -> torch.Tensor:
    """Part consistency: the feature reconstruction loss L_f and the visual consistency loss L_v.

    With the foreground-masked part maps ``m_k = parts_k * fg`` (``fg`` applied here, whether or not
    ``parts`` are masked already), each part's mean value and the spread around it::

        mu_k   = sum_p m_k(p) v(p) / (sum_p m_k(p) + 1e-5)                          (C,)
        L(img) = sum_{k, c, p} m_k(p) (v_c(p) - mu_kc)^2 / (sum_p fg(p) + 1e-5)

    i.e. the within-part variance of ``v``, weighted by the soft assignments: it is lowest when
    pixels with similar values share a part. ``v`` = CNN features (L_f, VGG19 relu3_2 x 0.33 +
    relu5_4 in the paper) or the Lab image (L_v, :func:`rgb_to_lab`).

    Args:
        parts: ``(B, K, H, W)`` soft part maps (softmax over the K parts).
        values: ``(B, C, H, W)`` features or Lab image at the parts' size.
        fg: ``(B, H, W)`` or ``(B, 1, H, W)`` foreground mask, binary or soft.
        reduction: ``"mean"`` over the images (the original's L_v, and DESIGN.md's) or ``"sum"``
            (the original's L_f, computed image by image and added up).

    Returns:
        Scalar. 0 when every part is constant in ``v`` (or the foreground is empty); a part with
        zero mass contributes 0.

    Precision: computed in float32 (under autocast too), with ``v`` centred on each image's foreground
    mean before the moments are taken, so a large common offset cancels exactly (features 1e4 + N(0, 1),
    Lab's L channel near 50-100); what rounding is left is ~1e-7 of the foreground's total variance.
    """
    fg = _check_parts_fg(parts, fg)
    if fg is None:
        raise ValueError("part_consistency_loss needs a foreground mask fg (B, 1, H, W); use torch.ones for none")
    _check_values(values, parts, "values")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    values = values.to(parts.dtype)
    m = parts * fg                                                              # (B, K, H, W)
    mass = m.sum(dim=(-2, -1))                                                  # (B, K)
    area = fg.sum(dim=(1, 2, 3))                                                # (B,)
    # Centre v on each image's foreground mean first (the loss does not change under a shift of v): the
    # expanded form below subtracts sum_p m v^2 and mass mu^2, which in float32 cancel when a part's mean
    # is large against its spread (Lab's L lives near 50-100; features 1e4 + N(0, 1) gave 28 for 4.03).
    centre = torch.einsum("bchw,bhw->bc", values, fg[:, 0]) / (area[:, None] + MEAN_EPS)   # (B, C)
    values = values - centre[..., None, None]                                   # (B, C, H, W)
    first = torch.einsum("bkhw,bchw->bkc", m, values)                           # sum_p m v
    second = torch.einsum("bkhw,bchw->bkc", m, values * values)                 # sum_p m v^2
    mu = first / (mass[..., None] + MEAN_EPS)                                   # (B, K, C)
    # sum_p m (v - mu)^2 = sum_p m v^2 - 2 mu sum_p m v + mu^2 sum_p m, without a (B, K, C, H, W) tensor
    spread = (second - 2 * mu * first + mu * mu * mass[..., None]).clamp_min(0)  # (B, K, C)
    per_image = spread.sum(dim=(1, 2)) / (area + MEAN_EPS)                      # (B,)
    return per_image.mean() if reduction == "mean" else per_image.sum()


@float32
def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """CIE Lab of RGB images in [0, 1] (``(B, 3, H, W)``): L in [0, 100], a and b about +-100, D65
    white, the values of ``skimage.color.rgb2lab`` that the original's L_v compares (not rescaled)."""
    import kornia

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W) RGB in [0, 1], got {_shape(images)}")
    return kornia.color.rgb_to_lab(images.float().clamp(0, 1))


# ---------------------------------------------------------------------------------------------
# L_c: contrastive loss on part prototypes
# ---------------------------------------------------------------------------------------------


@float32
def part_prototypes(parts: torch.Tensor, features: torch.Tensor, fg: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Part prototypes: the (foreground-masked) mass-weighted mean feature of each part::

        z_k = sum_p m_k(p) f(p) / (sum_p m_k(p) + 1e-7),    m_k = parts_k * fg

    Args:
        parts: ``(B, K, H, W)`` soft part maps; features ``(B, C, H, W)`` at the same size;
        fg: optional ``(B, H, W)`` / ``(B, 1, H, W)`` mask (``None`` = every pixel).

    Returns:
        ``(B, K, C)``, not normalised (:func:`part_contrastive_loss` L2-normalises). A part with no
        mass gets the zero vector.
    """
    fg = _check_parts_fg(parts, fg)
    _check_values(features, parts, "features")
    m = parts if fg is None else parts * fg
    mass = m.sum(dim=(-2, -1))                                                  # (B, K)
    return torch.einsum("bkhw,bchw->bkc", m, features.to(parts.dtype)) / (mass[..., None] + PROTOTYPE_EPS)


@float32
def part_contrastive_loss(prototypes: torch.Tensor, temperature: float = 0.19, positives: str = "random",
                          generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Contrastive loss L_c on part prototypes (InfoNCE across the images of a batch).

    Prototypes are L2-normalised, ``s(x, y) = <x, y> / temperature``. Every part ``i`` of every image
    ``a`` is an anchor; its positive is the same part ``i`` of another image ``b != a``; its
    negatives are all parts ``j != i`` of every image, its own included (``B * (K - 1)``)::

        l(a, i, b) = -log( exp s(z_ai, z_bi) / (exp s(z_ai, z_bi) + sum_{b', j != i} exp s(z_ai, z_b'j)) )

    Args:
        prototypes: ``(B, K, C)`` part prototypes (:func:`part_prototypes`), B >= 2.
        temperature: 0.19 in the original's configuration.
        positives: ``"random"``: one positive per anchor, drawn uniformly from the B - 1 other
            images (the original draws one at random each step); ``"all"``: the mean of ``l`` over
            every other image, the expectation of ``"random"`` (deterministic; for teaching and tests).
        generator: optional generator for ``"random"`` (on the prototypes' device).

    Returns:
        Scalar: **mean over the B*K anchors** (cross-entropy). With K = 1 there are no negatives and
        the loss is 0.
    """
    if not isinstance(prototypes, torch.Tensor) or prototypes.dim() != 3:
        raise ValueError(f"prototypes must have shape (B, K, C), got {_shape(prototypes)}")
    b, k, _ = prototypes.shape
    if b < 2:
        raise ValueError(f"part_contrastive_loss needs at least 2 images (the positive is the same part in "
                         f"another image), got a batch of {b}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if positives not in ("random", "all"):
        raise ValueError(f"positives must be 'random' or 'all', got {positives!r}")
    z = F.normalize(prototypes.to(torch.promote_types(prototypes.dtype, torch.float32)), dim=-1)  # fp32 at least
    scores = torch.einsum("aic,bjc->aibj", z, z) / temperature                  # (B, K, B, K)
    same_part = torch.eye(k, dtype=torch.bool, device=z.device)                  # (K, K)
    # negatives of anchor (a, i): every (b', j) with j != i  -> (B, K, B * (K - 1))
    negatives = scores.permute(0, 1, 3, 2)[:, ~same_part].reshape(b, k, -1) if k > 1 else None  # (a, i, j, b)
    # positives of anchor (a, i): (b, i) for b != a  -> (B, K, B - 1)
    diagonal = scores.diagonal(dim1=1, dim2=3)                                   # (B, B, K): [a, b, i] = s(z_ai, z_bi)
    other = ~torch.eye(b, dtype=torch.bool, device=z.device)
    pos = diagonal.permute(0, 2, 1)[other[:, None, :].expand(b, k, b)].reshape(b, k, b - 1)
    if positives == "random":
        pick = torch.randint(0, b - 1, (b, k, 1), generator=generator, device=z.device)
        pos = pos.gather(-1, pick)                                               # (B, K, 1)
    if negatives is None:
        return (pos - pos).mean()                                                # -log(1) = 0, keeps the graph
    # cross-entropy with the positive as class 0, for each chosen positive
    neg_lse = torch.logsumexp(negatives, dim=-1, keepdim=True)                  # (B, K, 1)
    loss = torch.logaddexp(pos, neg_lse) - pos                                   # (B, K, P)
    return loss.mean()


@float32
def cross_image_similarity(prototypes: torch.Tensor) -> torch.Tensor:
    """What L_c pulls together and pushes apart: the mean cosine similarity between part ``i`` of one
    image and part ``j`` of *another* image, ``S_ij = mean_{a != b} <z^_ai, z^_bj>`` (``z^`` the
    L2-normalised prototypes ``(B, K, C)``, B >= 2) -> ``(K, K)``. L_c raises the diagonal (the same
    part across images) above the rest."""
    if not isinstance(prototypes, torch.Tensor) or prototypes.dim() != 3 or prototypes.shape[0] < 2:
        raise ValueError(f"prototypes must have shape (B, K, C) with B >= 2, got {_shape(prototypes)}")
    z = F.normalize(prototypes.float(), dim=-1)
    b = z.shape[0]
    total = torch.einsum("aic,bjc->ij", z, z) - torch.einsum("aic,ajc->ij", z, z)   # all pairs minus a == b
    return total / (b * (b - 1))


@torch.no_grad()
def contrastive_reference_values(features: torch.Tensor, parts: torch.Tensor, fg: torch.Tensor, *,
                                 batch_size: int = 8, temperature: float = 0.19, batches: int = 100,
                                 seed: int = 0) -> dict[str, float]:
    """How much L_c can teach with these features (a diagnostic; no method sees part labels).

    L_c averaged over ``batches`` random batches of ``batch_size`` images (``positives="all"``) at three
    part assignments: ``"true"``, the true parts; ``"permuted"``, the true parts renamed by a fresh
    permutation in every image (segments right, identities not shared); ``"collapsed"``, every part the
    same (all prototypes equal), where L_c is ``ln(1 + B(K - 1))``, the value it starts from. Training
    can only pull the parts towards shared identities if ``"true"`` lies clearly below ``"collapsed"``
    and ``"permuted"``.

    Args:
        features: ``(N, C, H, W)`` features at the parts' size (foreground-masked here).
        parts: ``(N, K, H, W)`` true part maps (one-hot or soft), K >= 2.
        fg: ``(N, H, W)`` or ``(N, 1, H, W)`` foreground mask.
        batch_size: B >= 2 and <= N; temperature: as in :func:`part_contrastive_loss`.

    Returns:
        ``{"true", "permuted", "collapsed"}`` in nats.
    """
    if isinstance(parts, torch.Tensor):
        parts = parts.float()
    fg = _check_parts_fg(parts, fg)
    if fg is None:
        raise ValueError("contrastive_reference_values needs the foreground mask fg (N, H, W)")
    _check_values(features, parts, "features")
    n, k = parts.shape[:2]
    if k < 2:
        raise ValueError(f"contrastive_reference_values needs K >= 2 parts, got {k}")
    if not 2 <= batch_size <= n:
        raise ValueError(f"batch_size must be in [2, N = {n}], got {batch_size}")
    if batches < 1:
        raise ValueError(f"batches must be >= 1, got {batches}")
    generator = torch.Generator().manual_seed(seed)
    renamed = torch.stack([parts[i, torch.randperm(k, generator=generator)] for i in range(n)])
    features = features.float() * fg
    totals = {"true": 0.0, "permuted": 0.0}
    for _ in range(batches):
        idx = torch.randperm(n, generator=generator)[:batch_size]
        for name, assignment in (("true", parts), ("permuted", renamed)):
            prototypes = part_prototypes(assignment[idx], features[idx], fg[idx])
            totals[name] += float(part_contrastive_loss(prototypes, temperature, positives="all"))
    out = {name: total / batches for name, total in totals.items()}
    out["collapsed"] = math.log(1 + batch_size * (k - 1))
    return out


# ---------------------------------------------------------------------------------------------
# L_e: equivariance on the foreground
# ---------------------------------------------------------------------------------------------


@float32
def masked_equivariance_loss(logits_transformed: torch.Tensor, logits_original: torch.Tensor, warp: Warp,
                             fg: torch.Tensor) -> torch.Tensor:
    """Equivariance L_e: ``KL(target || pred)`` per pixel on the warped foreground.

    ``target = softmax(warp(logits_original)).detach()`` (logits warped, bilinear, zero padding),
    ``pred = log_softmax(logits_transformed)``, the prediction for the warped, colour-jittered image;
    ``fg`` is the original image's foreground, warped the same way (zero outside the image). The order
    is the original code's, ``KL(T(p) || p')`` with the warped prediction ``T(p)`` as a detached target
    (as SCOPS' code does, whose paper writes ``D_KL(R' || T_s(R))``, Eq. 3)::

        L_e = mean_b  sum_{k, p} fg_T(p) KL_k(p) / (sum_p fg_T(p) + 1e-7)

    Args:
        logits_transformed, logits_original: ``(B, K, H, W)`` (the K parts; no background channel).
        warp: the spatial transform of the transformed image (:mod:`partlab.geometry`).
        fg: ``(B, H, W)`` or ``(B, 1, H, W)`` foreground of the original image.

    Returns:
        Scalar: KL **summed over channels, averaged over each image's warped foreground, mean over
        the batch** (the original's per-image normalisation; SCOPS' masked KL averages over the
        pixels of the whole batch instead). 0 for an equivariant prediction or an empty foreground.
    """
    for name, x in (("logits_transformed", logits_transformed), ("logits_original", logits_original)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            raise ValueError(f"{name} must have shape (B, K, H, W), got {_shape(x)}")
    if logits_transformed.shape != logits_original.shape:
        raise ValueError(f"logits_transformed {tuple(logits_transformed.shape)} and logits_original "
                         f"{tuple(logits_original.shape)} must have the same shape")
    if not isinstance(warp, Warp):
        raise ValueError(f"warp must be a partlab.geometry.Warp, got {type(warp).__name__}")
    fg = _check_parts_fg(logits_original, fg)
    target = warp_images(logits_original.detach(), warp).softmax(dim=1)        # (B, K, H, W)
    fg_warped = warp_images(fg, warp)                                           # (B, 1, H, W)
    kl = F.kl_div(logits_transformed.log_softmax(dim=1), target, reduction="none").sum(dim=1, keepdim=True)
    per_image = (kl * fg_warped).sum(dim=(1, 2, 3)) / (fg_warped.sum(dim=(1, 2, 3)) + PROTOTYPE_EPS)
    return per_image.mean()
