"""SCOPS losses (Hung et al., CVPR 2019), next to the paper's equations.

The network predicts ``probs (B, K+1, H, W)`` (softmax of logits, channel 0 background); the
foreground part maps are ``parts = probs[:, 1:]`` ``(B, K, H, W)``, written ``R`` in the paper.
Coordinates are partlab's normalised ``(x, y)`` (:mod:`partlab.geometry`).

- :func:`concentration_loss`         Eq. (2), geometric concentration
- :func:`equivariance_kl_loss`        Eq. (3), first term: part maps follow a spatial transform
- :func:`equivariance_center_loss`    Eq. (3), second term: part centres follow it
- :func:`equivariance_loss`           both terms of Eq. (3), sharing one warp of the logits
- :func:`semantic_consistency_loss`   Eq. (4) with the saliency mask ``D``
- :func:`orthonormal_loss`            Eq. (5), on the part basis

Weights of the original (config SCOPS_K8_retrain): concentration 10, equivariance KL 1e3, centre
MSE 1e2, semantic consistency 1e4, orthonormal 0.1; the method class combines the terms.

Non-finite inputs (NaN features, say) are not checked, to keep training steps free of device
syncs: they give a non-finite loss.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from partlab.geometry import Warp, part_centers, pixel_grid, warp_images
from partlab.precision import float32

__all__ = [
    "concentration_loss",
    "equivariance_center_loss",
    "equivariance_kl_loss",
    "equivariance_loss",
    "orthonormal_loss",
    "semantic_consistency_loss",
]


def _shape(x) -> object:
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def _check_parts(parts: torch.Tensor, name: str = "parts") -> None:
    if not isinstance(parts, torch.Tensor) or parts.dim() != 4:
        raise ValueError(f"{name} must have shape (B, K, H, W), got {_shape(parts)}")


def _check_logits(logits_transformed: torch.Tensor, logits_original: torch.Tensor, warp: Warp) -> None:
    for name, x in (("logits_transformed", logits_transformed), ("logits_original", logits_original)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] < 2:
            raise ValueError(f"{name} must have shape (B, K+1, H, W) with K >= 1, got {_shape(x)}")
    if logits_transformed.shape != logits_original.shape:
        raise ValueError(f"logits_transformed {tuple(logits_transformed.shape)} and logits_original "
                         f"{tuple(logits_original.shape)} must have the same shape")
    if not isinstance(warp, Warp):
        raise ValueError(f"warp must be a partlab.geometry.Warp, got {type(warp).__name__}")


# ---------------------------------------------------------------------------------------------
# Eq. (2): geometric concentration
# ---------------------------------------------------------------------------------------------


@float32
def concentration_loss(parts: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Geometric concentration, SCOPS Eq. (2): the spatial variance of every part.

    ::

        L_con = sum_k sum_{u,v} ||(x_uv, y_uv) - c_k||^2 * R_k(u, v) / z_k,     R_k = parts_k + eps

    with ``z_k = sum_{u,v} R_k(u, v)`` and ``c_k`` the part centre of Eq. (1)
    (:func:`partlab.geometry.part_centers` with the same ``eps``), in normalised coordinates.

    Args:
        parts: ``(B, K, H, W)`` non-negative part maps, e.g. ``probs[:, 1:]``.
        eps: added to every pixel before normalising (1e-3 as in the original: it keeps the
            gradient of a part with almost no mass bounded). With ``eps=0`` a part of zero mass
            contributes 0, and so does a part whose mass underflows below the smallest normal
            float (as in :func:`partlab.geometry.part_centers`): values and gradients stay finite.

    Returns:
        Scalar: **summed over parts, mean over the batch**. (The original divides by B twice;
        partlab averages over the batch once.) A one-hot (delta) part map with ``eps=0`` gives 0.
    """
    _check_parts(parts)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    _, _, h, w = parts.shape
    centers = part_centers(parts, eps=eps)                             # (B, K, 2)
    mass = parts + eps if eps > 0 else parts                           # (B, K, H, W)
    z = mass.sum(dim=(-2, -1))                                         # (B, K)
    z = torch.where(z > torch.finfo(z.dtype).tiny, z, torch.ones_like(z))  # empty (or underflowed) part: 0
    grid = pixel_grid(h, w, device=parts.device, dtype=parts.dtype)    # (H, W, 2)
    dx2 = (grid[0, :, 0] - centers[..., :1]) ** 2                      # (B, K, W): (x_j - c_x)^2
    dy2 = (grid[:, 0, 1] - centers[..., 1:]) ** 2                      # (B, K, H): (y_i - c_y)^2
    variance = (mass.sum(dim=-2) * dx2).sum(-1) + (mass.sum(dim=-1) * dy2).sum(-1)  # (B, K), unnormalised
    return (variance / z).sum(dim=1).mean()


# ---------------------------------------------------------------------------------------------
# Eq. (3): equivariance
# ---------------------------------------------------------------------------------------------


def _kl_term(logits_transformed: torch.Tensor, warped_logits: torch.Tensor,
             mask: Optional[torch.Tensor]) -> torch.Tensor:
    target = warped_logits.detach().softmax(dim=1)                     # (B, K+1, H, W)
    log_pred = logits_transformed.log_softmax(dim=1)
    kl = F.kl_div(log_pred, target, reduction="none").sum(dim=1)       # (B, H, W): KL per pixel
    if mask is None:
        return kl.mean()
    if mask.dim() == 4:
        mask = mask[:, 0]
    if mask.shape != kl.shape:
        raise ValueError(f"mask must have shape (B, H, W) or (B, 1, H, W) = {tuple(kl.shape)}, got {_shape(mask)}")
    mask = mask.to(kl.dtype)
    return (mask * kl).sum() / mask.sum().clamp_min(1e-6)


def _center_term(logits_transformed: torch.Tensor, warped_logits: torch.Tensor, eps: float) -> torch.Tensor:
    centers_transformed = part_centers(logits_transformed.softmax(dim=1)[:, 1:], eps=eps)  # (B, K, 2)
    centers_warped = part_centers(warped_logits.softmax(dim=1)[:, 1:], eps=eps)           # (B, K, 2)
    return F.mse_loss(centers_transformed, centers_warped)


@float32
def equivariance_kl_loss(logits_transformed: torch.Tensor, logits_original: torch.Tensor, warp: Warp,
                         mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Part-map equivariance, SCOPS Eq. (3), first term: ``KL(target || pred)`` per pixel.

    ``target = softmax(warp(logits_original)).detach()``: the *logits* of the original image are
    warped (bilinear, zero padding, so pixels from outside the image get a uniform target), then
    softmaxed, as in the original; ``pred = log_softmax(logits_transformed)``, the prediction for
    the transformed image ``T_s(T_a(I))``.

    KL order: the paper writes ``D_KL(R' || T_s(R))`` (Eq. 3), the transformed image's prediction
    first. The original code, followed here, computes the reverse, ``KL(T_s(R) || R')``
    (``nn.KLDivLoss()(log R', T_s(R))``), with the warped prediction ``T_s(R)`` as a fixed
    (detached) target: the gradient reaches ``R'`` only.

    Args:
        logits_transformed, logits_original: ``(B, K+1, H, W)``, both at the same size (the
            original works on logits upsampled to the input size).
        warp: the spatial transform that made the transformed image (:mod:`partlab.geometry`).
        mask: optional ``(B, H, W)`` or ``(B, 1, H, W)`` pixel weights, e.g.
            :func:`partlab.geometry.valid_mask` to drop pixels from outside the image, or a warped
            foreground mask (contrastive part discovery).

    Returns:
        Scalar: KL **summed over the K+1 channels, mean over the B*H*W pixels** (with a mask:
        ``sum(mask * kl) / sum(mask)``). The original's ``nn.KLDivLoss()`` averages over
        B*(K+1)*H*W elements, i.e. it is this value divided by K+1: its weight 1e3 corresponds to
        ``1e3 / (K+1)`` here. 0 when the transformed prediction equals the warped one.
    """
    _check_logits(logits_transformed, logits_original, warp)
    return _kl_term(logits_transformed, warp_images(logits_original.detach(), warp), mask)


@float32
def equivariance_center_loss(logits_transformed: torch.Tensor, logits_original: torch.Tensor, warp: Warp,
                             eps: float = 1e-3) -> torch.Tensor:
    """Part-centre equivariance, SCOPS Eq. (3), second term.

    MSE between the centres of the transformed image's parts, ``softmax(logits_transformed)[:, 1:]``,
    and the centres of the warped original parts, ``softmax(warp(logits_original))[:, 1:]``; both by
    :func:`partlab.geometry.part_centers` with ``eps`` (1e-3 as in the original). No detach:
    the gradient reaches both predictions. (The paper writes ``T_s(c_k)``; the original, followed
    here, takes the centres of the warped map.)

    Args:
        logits_transformed, logits_original: ``(B, K+1, H, W)``, same shape.
        warp: the spatial transform of the transformed image.

    Returns:
        Scalar: **mean over B*K*2** coordinates (``F.mse_loss``), as in the original; the paper's
        sum over k is K*2 times larger.
    """
    _check_logits(logits_transformed, logits_original, warp)
    return _center_term(logits_transformed, warp_images(logits_original, warp), eps)


@float32
def equivariance_loss(logits_transformed: torch.Tensor, logits_original: torch.Tensor, warp: Warp,
                      mask: Optional[torch.Tensor] = None, eps: float = 1e-3) -> dict[str, torch.Tensor]:
    """Both terms of SCOPS Eq. (3), warping the original logits once.

    Returns ``{"kl": equivariance_kl_loss(...), "center": equivariance_center_loss(...)}`` (the
    reductions, and the KL order, ``KL(T_s(R) || R')`` as in the original code where the paper writes
    ``D_KL(R' || T_s(R))``, are in those functions' docstrings); ``mask`` applies to the KL term only.
    """
    _check_logits(logits_transformed, logits_original, warp)
    warped = warp_images(logits_original, warp)                        # (B, K+1, H, W)
    return {"kl": _kl_term(logits_transformed, warped, mask),
            "center": _center_term(logits_transformed, warped, eps)}


# ---------------------------------------------------------------------------------------------
# Eq. (4) and (5): semantic consistency and the part basis
# ---------------------------------------------------------------------------------------------


@float32
def semantic_consistency_loss(parts: torch.Tensor, features: torch.Tensor, basis: torch.Tensor,
                              saliency: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Semantic consistency, SCOPS Eq. (4), with the saliency constraint (Sec. 3.4)::

        L_sc = mean_{b,c,u,v} ( D(u, v) * relu(V)(c, u, v) - sum_k R(k, u, v) * relu(w_k)(c) )^2

    Every pixel's (saliency-masked) feature vector should be a combination of the K part basis
    vectors, weighted by the part responses.

    Args:
        parts: ``(B, K, H, W)`` part maps ``R``, e.g. ``probs[:, 1:]``.
        features: ``(B, C, H, W)`` pretrained CNN features ``V`` at the parts' size (relu is applied
            inside; features taken after a ReLU layer are unchanged by it), or ``(B, C, h, w)`` at a
            smaller size: then ``V`` is their bilinear upsampling to ``(H, W)`` (``align_corners=False``,
            as the original upsamples its VGG features), and the value is the same as upsampling
            first. Non-negative low-resolution features (after a ReLU, the usual case) take a path that
            never builds the ``(B, C, H, W)`` tensors: the loss is expanded as
            ``||D V||^2 - 2 <R, U(V W^T) D> + <R W W^T, R>`` where ``U`` (bilinear upsampling) is
            linear and keeps features non-negative, so only ``(B, K, H, W)`` maps carry gradients
            (SCOPS quick mode: ~3x faster; the paper recipe: C = 1024 at 256 px is 1.6 GB per
            full-size copy).
        basis: ``(K, C)`` raw part basis ``w``; ``relu(basis)`` is used, keeping it non-negative.
        saliency: ``(B, H, W)`` or ``(B, 1, H, W)`` soft saliency ``D`` in [0, 1]; ``None`` means 1.

    Returns:
        Scalar: **mean over B*C*H*W** (the original's ``nn.MSELoss()``; the paper's Eq. (4) sums).
        0 when the features are exactly ``sum_k R_k relu(w_k)``.
    """
    _check_parts(parts)
    if not isinstance(features, torch.Tensor) or features.dim() != 4:
        raise ValueError(f"features must have shape (B, C, H, W), got {_shape(features)}")
    b, k, h, w = parts.shape
    fh, fw = features.shape[-2:]
    if features.shape[0] != b or fh > h or fw > w or (fh == h) != (fw == w):
        raise ValueError(f"features {tuple(features.shape)} must be (B, C, H, W) with B, H, W of parts "
                         f"{tuple(parts.shape)}, or (B, C, h, w) smaller than (H, W) (upsampled inside)")
    c = features.shape[1]
    if not isinstance(basis, torch.Tensor) or basis.shape != (k, c):
        raise ValueError(f"basis must have shape (K, C) = ({k}, {c}), got {_shape(basis)}")
    if saliency is not None:
        if saliency.dim() == 3:
            saliency = saliency[:, None]
        if saliency.shape != (b, 1, h, w):
            raise ValueError(f"saliency must have shape (B, H, W) or (B, 1, H, W) with (B, H, W) = "
                             f"{(b, h, w)}, got {_shape(saliency)}")
        saliency = saliency.to(features.dtype)
    if (fh, fw) != (h, w):
        if not bool((features >= 0).all()):                             # relu(U(V)) != U(relu(V)): upsample
            features = _upsample(features, (h, w))
        else:
            return _semantic_consistency_low_res(parts, features, basis.relu(), saliency)
    target = features.relu()                                           # (B, C, H, W)
    if saliency is not None:
        target = target * saliency                                     # D o V
    reconstruction = torch.einsum("bkhw,kc->bchw", parts, basis.relu())  # (B, C, H, W)
    return ((target - reconstruction) ** 2).mean()


def _upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _interpolation_matrix(n_in: int, n_out: int, like: torch.Tensor) -> torch.Tensor:
    """``(n_out, n_in)`` matrix of 1-D linear upsampling (``align_corners=False``): bilinear upsampling
    of ``x`` ``(..., h, w)`` is ``A_h @ x @ A_w.T``, with the same weights as ``F.interpolate``."""
    eye = torch.eye(n_in, dtype=like.dtype, device=like.device)[:, None, :]         # n_in signals
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0, :].T


def _semantic_consistency_low_res(parts: torch.Tensor, features: torch.Tensor, basis: torch.Tensor,
                                  saliency: Optional[torch.Tensor]) -> torch.Tensor:
    """Eq. (4) for non-negative ``features`` ``(B, C, h, w)`` upsampled to the parts' ``(H, W)``, expanded
    (``basis`` already rectified)::

        sum (D U(V) - R W)^2 = sum D^2 |U(V)|^2  -  2 sum D R . U(V W^T)  +  sum R^T (W W^T) R

    The first sum has no gradient and is accumulated over channel chunks; the others live on
    ``(B, K, H, W)`` maps. Sums are accumulated in float64 where the device has it (the expansion
    subtracts nearly equal numbers when the fit is good)."""
    b, k, h, w = parts.shape
    c = features.shape[1]
    acc = torch.float32 if parts.device.type == "mps" else torch.float64
    with torch.no_grad():                                               # sum D^2 |U(V)|^2, U(V) = A_h V A_w^T
        rows = _interpolation_matrix(features.shape[-2], h, features)
        cols = _interpolation_matrix(features.shape[-1], w, features)
        squares = torch.zeros(b, 1, h, w, dtype=features.dtype, device=features.device)
        chunk = max(1, (1 << 24) // max(1, b * h * w))                  # ~64 MB of float32 at a time
        for start in range(0, c, chunk):
            squares += (rows @ features[:, start:start + chunk] @ cols.T).pow(2).sum(1, keepdim=True)
        energy = (squares if saliency is None else squares * saliency.pow(2)).sum(dtype=acc)
    projection = _upsample(torch.einsum("bchw,kc->bkhw", features, basis), (h, w))    # U(V W^T)
    if saliency is not None:
        projection = projection * saliency
    cross = (parts * projection).sum(dtype=acc)
    gram = basis @ basis.T                                              # (K, K)
    quadratic = (torch.einsum("kl,blhw->bkhw", gram, parts) * parts).sum(dtype=acc)
    return ((energy - 2 * cross + quadratic) / (b * c * h * w)).to(parts.dtype)


@float32
def orthonormal_loss(basis: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Orthonormal constraint on the part basis, SCOPS Eq. (5)::

        L_on = || W^ W^T - I_K ||_F^2,     W^_k = relu(w_k) / sqrt(||relu(w_k)||^2 + eps)

    Args:
        basis: ``(K, C)`` raw part basis (relu applied inside).
        eps: keeps the normalisation (and its gradient) finite for an all-zero row, which then
            counts as a zero vector: it adds 1 (its diagonal entry) to the loss. ``eps=0`` is
            allowed: the squared norm is then floored at the smallest normal float, so an all-zero
            row still gives 1 and finite gradients (not 0/0 = NaN).

    Returns:
        Scalar: **sum** over the K x K entries (Frobenius norm squared). 0 for orthonormal rows;
        2 for two identical rows (the two off-diagonal entries are 1).
    """
    if not isinstance(basis, torch.Tensor) or basis.dim() != 2:
        raise ValueError(f"basis must have shape (K, C), got {_shape(basis)}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    w = basis.relu()                                                   # (K, C)
    norm2 = ((w * w).sum(dim=1, keepdim=True) + eps).clamp_min(torch.finfo(w.dtype).tiny)  # (K, 1)
    w_hat = w / torch.sqrt(norm2)                                      # rows of unit length
    gram = w_hat @ w_hat.T                                             # (K, K)
    eye = torch.eye(basis.shape[0], device=basis.device, dtype=basis.dtype)
    return ((gram - eye) ** 2).sum()
