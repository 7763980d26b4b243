"""Losses of motion-supervised co-part segmentation (Siarohin et al., ICPR 2020).

The generator rebuilds the target frame ``X_T`` from the source frame and the part motion
(:mod:`partlab.motion`); the segmentation module is trained end to end through that reconstruction,
and its anchors and affines are tied to the image by an equivariance constraint:

====================================  =========  ============================================================
function                              paper      what it compares
====================================  =========  ============================================================
:func:`perceptual_loss`               Eq. 6      L1 between frozen CNN features of the reconstruction and of
                                                 the target, at several scales (the reconstruction loss)
:func:`equivariance_shift_loss`       L_eq       anchors of a randomly transformed target, mapped back by
                                                 the transform ``T``, land on the target's anchors
:func:`equivariance_affine_loss`      L_eq       their affines, composed with the Jacobian of ``T``, equal
                                                 the target's: ``A_T^-1 J_T A_T' = I``
:func:`transform_jacobian`            -          ``J_T`` at given points, by autograd through ``T``
====================================  =========  ============================================================

Weights of the original (REFERENCE_NOTES.md): 10 per perceptual layer (VGG19 relu1_1 .. relu5_1, or
the extractor's ``layers_for("perceptual")``), 10 for each equivariance term. Reductions (stated in
each docstring) are the original's: means of absolute differences.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import nn

from partlab import utils
from partlab.geometry import Warp, unwarp_points
from partlab.motion import INVERSE_EPS, antialias_downscale, regularized_inverse
from partlab.precision import float32

__all__ = ["PERCEPTUAL_SCALES", "equivariance_affine_loss", "equivariance_shift_loss", "perceptual_loss",
           "transform_jacobian"]

PERCEPTUAL_SCALES = (1.0, 0.5, 0.25, 0.125)      # the image pyramid of Eq. 6 (256 to 32 px in the paper)


def _shape(x) -> object:
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def _layers_at(extractor, layers: Mapping[str, float], h: int, w: int) -> list:
    """The layers whose feature map has at least one pixel for an ``h x w`` input (``strides`` of the
    extractor; VGG19's relu5_1 needs 16 px)."""
    strides = getattr(extractor, "strides", {})
    return [name for name in layers if min(h, w) >= strides.get(name, 1)]


# ---------------------------------------------------------------------------------------------
# Eq. 6: multi-scale perceptual loss
# ---------------------------------------------------------------------------------------------


@float32
def perceptual_loss(prediction: torch.Tensor, target: torch.Tensor, extractor,
                    layers: Optional[Mapping[str, float]] = None,
                    scales: Sequence[float] = PERCEPTUAL_SCALES) -> torch.Tensor:
    """The reconstruction loss, Eq. (6), computed on an image pyramid::

        L_rec = sum_s sum_l w_l * mean |Phi_l(D_s(X^_T)) - Phi_l(D_s(X_T))|

    ``Phi_l`` are the frozen ``extractor``'s layers (``layers`` ``{name: w_l}``, default
    ``extractor.layers_for("perceptual")``: VGG19 relu1_1 .. relu5_1 at weight 10 each, or the
    stand-in's layers of the same names), ``D_s`` the anti-aliased downscaling by ``s``
    (:func:`partlab.motion.antialias_downscale`; ``scales`` 1, 1/2, 1/4, 1/8 as in the paper).
    Reduction: mean over ``B * C_l * h_l * w_l`` for each layer and scale, weighted sum over layers and
    scales. A layer whose stride exceeds the downscaled image (VGG19's relu5_1 on an 8 px image) is
    left out at that scale.

    Gradients reach ``prediction`` through the extractor (its parameters are frozen and get none);
    the target's features are computed without gradient. Computed in float32 under any autocast, the
    extractor's forward pass included: the loss is a difference of nearly equal features, which
    cancels in half precision (partlab's rule: every loss term in float32).

    Args:
        prediction: ``(B, 3, H, W)`` reconstruction ``X^_T`` in [0, 1].
        target: ``(B, 3, H, W)`` target frame ``X_T``.
        extractor: a :class:`partlab.features.FeatureExtractor` (or any callable
            ``extractor(images, layers=[...]) -> {name: (B, C, h, w)}``).
        layers: ``{layer: weight}``; default the extractor's perceptual recipe.
        scales: pyramid factors in (0, 1].

    Returns:
        scalar float32 tensor; 0 for identical images.
    """
    if not isinstance(prediction, torch.Tensor) or prediction.dim() != 4 or prediction.shape[1] != 3:
        raise ValueError(f"prediction must have shape (B, 3, H, W), got {_shape(prediction)}")
    if not isinstance(target, torch.Tensor) or target.shape != prediction.shape:
        raise ValueError(f"target must have the prediction's shape {tuple(prediction.shape)}, got {_shape(target)}")
    layers = dict(extractor.layers_for("perceptual") if layers is None else layers)
    if not layers or not scales or any(not 0 < s <= 1 for s in scales):
        raise ValueError(f"perceptual_loss needs layers and scales in (0, 1], got layers {list(layers)}, "
                         f"scales {list(scales)}")
    where = utils.module_device(extractor, prediction.device) if isinstance(extractor, nn.Module) else prediction.device
    total = prediction.new_zeros((), dtype=torch.float32)
    used = 0
    for scale in scales:
        x = antialias_downscale(prediction, scale)                                # (B, 3, sH, sW)
        y = antialias_downscale(target.detach(), scale)
        names = _layers_at(extractor, layers, *x.shape[-2:])
        if not names:
            continue
        features_x = extractor(x.to(where), layers=names)
        with torch.no_grad():
            features_y = extractor(y.to(where), layers=names)
        for name in names:
            difference = features_x[name].float() - features_y[name].float()      # (B, C_l, h_l, w_l)
            total = total + layers[name] * difference.abs().mean().to(total.device)
            used += 1
    if not used:
        raise ValueError(f"images of {tuple(prediction.shape[-2:])} px are too small for every perceptual layer "
                         f"{list(layers)} at scales {list(scales)}")
    return total


# ---------------------------------------------------------------------------------------------
# equivariance of anchors and affines
# ---------------------------------------------------------------------------------------------


@float32
def transform_jacobian(points: torch.Tensor, warp: Warp) -> torch.Tensor:
    """``J_T(z)`` ``(B, N, 2, 2)``: the Jacobian ``J[..., a, b] = d T_a / d z_b`` of the warp ``T``
    (:func:`partlab.geometry.unwarp_points`: an affine map plus a thin-plate spline) at the points
    ``z`` ``(B, N, 2)`` (normalised ``(x, y)``), by automatic differentiation, as the original does
    (in float32 under any autocast).

    Each output point depends on its own input point only, so ``d (sum_n T_a(z_n)) / d z`` gives row
    ``a`` of every Jacobian at once. The graph is kept (``create_graph``): ``J_T`` is differentiable
    w.r.t. the points (the TPS' second derivatives) and the warp. Works under ``torch.no_grad()`` too.
    :func:`partlab.geometry.warp_jacobian` is the closed form, for checking.
    """
    with torch.enable_grad():
        z = points if points.requires_grad else points.detach().requires_grad_(True)
        moved = unwarp_points(z, warp)                                                 # T(z), (B, N, 2)
        rows = [torch.autograd.grad(moved[..., a].sum(), z, create_graph=True)[0] for a in range(2)]
    return torch.stack(rows, dim=-2)                                                   # (B, N, 2, 2)


@float32
def equivariance_shift_loss(shift: torch.Tensor, shift_transformed: torch.Tensor, warp: Warp) -> torch.Tensor:
    """Anchor equivariance: ``mean |p_T - T(p_T')|``.

    ``X_T'`` is the target frame warped by ``T`` (output pixel ``z`` shows ``X_T`` at ``T(z)``), so an
    anchor ``p_T'`` found in it sits at ``T(p_T')`` in ``X_T``.

    Args:
        shift: ``(B, K, 2)`` anchors of the target frame.
        shift_transformed: ``(B, K, 2)`` anchors of the transformed target.
        warp: the transform ``T`` (:class:`partlab.geometry.Warp`, batch ``B``).

    Returns:
        scalar, mean over ``B * K * 2`` coordinates (the original's L1 mean; weight 10).
    """
    if shift.shape != shift_transformed.shape or shift.dim() != 3 or shift.shape[-1] != 2:
        raise ValueError(f"shift and shift_transformed must both have shape (B, K, 2), got {_shape(shift)} and "
                         f"{_shape(shift_transformed)}")
    return (shift - unwarp_points(shift_transformed, warp)).abs().mean()


@float32
def equivariance_affine_loss(affine: torch.Tensor, shift_transformed: torch.Tensor,
                             affine_transformed: torch.Tensor, warp: Warp, eps: float = INVERSE_EPS) -> torch.Tensor:
    """Affine equivariance: ``mean |I - A_T^-1 J_T(p_T') A_T'|``.

    Near an anchor, the transformed frame's local frame ``A_T'`` mapped through the transform's
    Jacobian at its anchor must be the target's ``A_T``. ``A_T^-1`` is the damped inverse
    (:func:`partlab.motion.regularized_inverse`, ``eps``), finite for singular matrices.

    Args:
        affine: ``(B, K, 2, 2)`` matrices of the target frame.
        shift_transformed, affine_transformed: ``(B, K, 2)`` anchors and ``(B, K, 2, 2)`` matrices of
            the transformed target.
        warp: the transform ``T``; ``J_T`` by autograd (:func:`transform_jacobian`).

    Returns:
        scalar, mean over ``B * K * 4`` entries (the original's L1 mean; weight 10).
    """
    if affine.shape != affine_transformed.shape or affine.dim() != 4 or affine.shape[-2:] != (2, 2):
        raise ValueError(f"affine and affine_transformed must both have shape (B, K, 2, 2), got {_shape(affine)} "
                         f"and {_shape(affine_transformed)}")
    if shift_transformed.shape != affine.shape[:-1]:
        raise ValueError(f"shift_transformed must have shape (B, K, 2) = {tuple(affine.shape[:-1])}, "
                         f"got {_shape(shift_transformed)}")
    jacobian = transform_jacobian(shift_transformed, warp)                       # J_T(p_T'), (B, K, 2, 2)
    composed = regularized_inverse(affine, eps) @ jacobian @ affine_transformed    # (B, K, 2, 2)
    eye = torch.eye(2, device=affine.device, dtype=composed.dtype)
    return (eye - composed).abs().mean()
