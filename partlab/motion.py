"""Motion-supervised co-part segmentation (Siarohin et al., ICPR 2020): the motion model.

Two frames of one video, a *source* ``X_S`` and a *target* ``X_T``, are segmented independently
into ``K + 1`` soft maps ``Y`` (channel 0 background) and, for every part ``k``, an anchor ``p_k``
and a 2x2 matrix ``A_k``. The target is rebuilt by warping the source with a flow that moves each
part affinely and leaves the background still:

====================================  =========  ==========================================================
function                              paper      what it computes
====================================  =========  ==========================================================
:func:`part_flow`                     Eq. 2-3    backward flow ``F(z) = sum_k Y_T,k(z) T_k(z)``, with
                                                 ``T_k(z) = A_S,k A_T,k^-1 (z - p_T,k) + p_S,k`` for the
                                                 parts and ``T_0(z) = z`` for the (static) background
:func:`background_visibility`         Eq. 4      ``V = 1 - Y_T,0 * sum_{k>=1} Y_S,k``: background seen in the
                                                 target but hidden by the object in the source
:func:`warp_with_flow`                Eq. 5      ``W(xi, F)``: target pixel ``z`` reads the source at ``F(z)``
:func:`regularized_inverse`           -          the damped inverse of 2x2 matrices used for ``A_T,k^-1``
:class:`MotionSegmenter`              Sec. 3.1   the segmentation module: ``Y``, anchors ``p_k``, ``A_k``
:class:`MotionGenerator`              Sec. 3.3   the reconstruction module ``G``: encoder, Eq. 5 on its
                                                 features, residual bottleneck, decoder
:func:`antialias_downscale`           -          Gaussian blur + resize (segmenter input, loss pyramid)
:func:`part_swap`                     Sec. 4.3   chosen parts of a target frame replaced by a source's
                                                 (encoder features blended under the parts' masks)
====================================  =========  ==========================================================

The losses that train these modules (perceptual Eq. 6, equivariance of anchors and affines) are in
:mod:`partlab.losses.motion`; the method that wires them is :class:`partlab.methods.MotionCoPart`.

Coordinates are partlab's normalised ``(x, y)`` (:mod:`partlab.geometry`): pixel centres as in
``grid_sample(align_corners=False)``, column ``j`` of a width-``W`` map at ``x = (2j + 1) / W - 1``.
Anchors, flows and the affine matrices all act on these ``(x, y)`` column vectors, so a flow is a
``grid_sample`` grid and :func:`warp_with_flow` is one ``grid_sample`` call.

>>> import torch
>>> seg = torch.zeros(1, 2, 4, 4); seg[:, 0] = 1.0             # all background
>>> shift, affine = torch.zeros(1, 1, 2), torch.eye(2).expand(1, 1, 2, 2)
>>> flow = part_flow(seg, shift, shift, affine, affine)          # the identity grid
>>> torch.allclose(flow[0], pixel_grid(4, 4))
True
"""

from __future__ import annotations

import operator
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from partlab.data.labels import one_hot_parts
from partlab.geometry import part_centers, pixel_grid
from partlab.models.unet import UNet
from partlab.models.unet import _norm as group_norm
from partlab.precision import float32

__all__ = ["MotionGenerator", "MotionSegmenter", "antialias_downscale", "background_visibility", "check_swap_model",
           "check_swap_parts", "part_flow", "part_swap", "regularized_inverse", "soft_flow_costs", "swap_mask",
           "warp_with_flow"]

INVERSE_EPS = 1e-6   # damping of regularized_inverse: relative error ~1e-6 on well-conditioned matrices
ANCHORS = ("keypoints", "segments")    # MotionSegmenter: anchors from keypoint heatmaps (the paper) or the segments
SEGMENT_ANCHOR_EPS = 1e-6              # added to each segment before it is normalised into a heatmap
IDENTITY_START_SEG_SCALE = 0.01        # identity_start with "segments" anchors: the segmentation head's initial scale
SEGMENTER_NETWORKS = ("unet", "standin_unet")   # MotionSegmenter's hourglass: from scratch, or the stand-in's encoder


def _shape(x) -> object:
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def _check_seg(seg: torch.Tensor, name: str) -> None:
    if not isinstance(seg, torch.Tensor) or seg.dim() != 4 or seg.shape[1] < 2:
        raise ValueError(f"{name} must have shape (B, K+1, H, W) with K >= 1, got {_shape(seg)}")


# ---------------------------------------------------------------------------------------------
# Eq. 2-3: the part flow
# ---------------------------------------------------------------------------------------------


@float32
def regularized_inverse(matrices: torch.Tensor, eps: float = INVERSE_EPS) -> torch.Tensor:
    """Damped (Tikhonov) inverse of 2x2 matrices ``(..., 2, 2)``: ``(A^T A + eps I)^-1 A^T``.

    For a 2x2 matrix this is, in closed form (no cancellation, no ``torch.linalg`` call)::

        A_eps^-1 = (det(A) adj(A) + eps A^T) / (det(A)^2 + eps ||A||_F^2 + eps^2)

    It equals ``A^-1 / (1 + eps)`` for ``A = I`` and ``A^-1`` up to a relative ``eps / s_min^2``
    (``s_min`` the smaller singular value) for any invertible ``A``. It is always finite: each
    singular value ``s`` is inverted to ``s / (s^2 + eps)``, at most ``1 / (2 sqrt(eps))`` (500 for
    the default 1e-6), and the zero matrix maps to zero. ``eps = 0`` is the exact inverse (inf/NaN
    for singular matrices). Computed in float32 under autocast. Differentiable.

    >>> regularized_inverse(torch.tensor([[2.0, 0.0], [0.0, 4.0]]), eps=0.0)
    tensor([[0.5000, 0.0000],
            [0.0000, 0.2500]])
    """
    if not isinstance(matrices, torch.Tensor) or matrices.dim() < 2 or matrices.shape[-2:] != (2, 2):
        raise ValueError(f"regularized_inverse expects matrices of shape (..., 2, 2), got {_shape(matrices)}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    a, b = matrices[..., 0, 0], matrices[..., 0, 1]
    c, d = matrices[..., 1, 0], matrices[..., 1, 1]
    det = a * d - b * c                                                     # (...)
    adjugate = torch.stack((torch.stack((d, -b), -1), torch.stack((-c, a), -1)), -2)   # (..., 2, 2)
    numerator = det[..., None, None] * adjugate + eps * matrices.transpose(-1, -2)
    denominator = det * det + eps * (matrices * matrices).sum((-2, -1)) + eps * eps
    return numerator / denominator[..., None, None]


def _check_flow_inputs(seg_target, shift_source, shift_target, affine_source, affine_target) -> None:
    _check_seg(seg_target, "seg_target")
    b, k = seg_target.shape[0], seg_target.shape[1] - 1
    for name, x, shape in (("shift_source", shift_source, (b, k, 2)), ("shift_target", shift_target, (b, k, 2)),
                           ("affine_source", affine_source, (b, k, 2, 2)),
                           ("affine_target", affine_target, (b, k, 2, 2))):
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape:
            want = "(B, K, 2)" if len(shape) == 3 else "(B, K, 2, 2)"
            raise ValueError(f"{name} must have shape {want} = {shape} to match seg_target "
                             f"{tuple(seg_target.shape)}, got {_shape(x)}")


@float32
def part_flow(seg_target: torch.Tensor, shift_source: torch.Tensor, shift_target: torch.Tensor,
              affine_source: torch.Tensor, affine_target: torch.Tensor, eps: float = INVERSE_EPS) -> torch.Tensor:
    """Backward optical flow from the target frame to the source frame, Eq. (2)-(3).

    ::

        F(z) = Y_T,0(z) z + sum_{k=1..K} Y_T,k(z) T_k(z),
        T_k(z) = A_S,k A_T,k^-1 (z - p_T,k) + p_S,k                         (Eq. 2)

    Target pixel ``z`` shows what the source shows at ``F(z)``: part ``k`` of the target is the
    source's part ``k`` moved by the affine map that takes the source anchor ``p_S,k`` to the target
    anchor ``p_T,k``; the background (channel 0) does not move. The segmentation weights the
    per-part flows as given (Eq. 3); for probabilities (channels summing to 1) the flow is a convex
    combination of the ``T_k(z)`` and ``z``.

    Args:
        seg_target: ``(B, K+1, H, W)`` target segmentation ``Y_T`` (channel 0 background).
        shift_source, shift_target: ``(B, K, 2)`` anchors ``p_S,k``, ``p_T,k``, normalised ``(x, y)``.
        affine_source, affine_target: ``(B, K, 2, 2)`` matrices ``A_S,k``, ``A_T,k`` acting on
            ``(x, y)`` column vectors.
        eps: damping of the inverse ``A_T,k^-1`` (:func:`regularized_inverse`): a singular or
            near-singular ``A_T,k`` gives a finite flow (all-zero ``A_T,k``: ``T_k(z) = p_S,k``),
            never NaN; well-conditioned matrices are inverted to a relative 1e-6.

    Returns:
        ``(B, H, W, 2)`` flow in normalised ``(x, y)``: a ``grid_sample(align_corners=False)`` grid
        (:func:`warp_with_flow`). Differentiable w.r.t. every input. Computed in float32 under autocast.
    """
    _check_flow_inputs(seg_target, shift_source, shift_target, affine_source, affine_target)
    _, _, h, w = seg_target.shape
    z = pixel_grid(h, w, device=seg_target.device, dtype=seg_target.dtype)      # (H, W, 2)
    motion = affine_source @ regularized_inverse(affine_target, eps)            # A_S A_T^-1, (B, K, 2, 2)
    offset = z - shift_target[:, :, None, None, :]                              # z - p_T, (B, K, H, W, 2)
    part_flows = torch.einsum("bkij,bkhwj->bkhwi", motion, offset) + shift_source[:, :, None, None, :]
    weights = seg_target.unsqueeze(-1)                                          # (B, K+1, H, W, 1)
    return weights[:, 0] * z + (weights[:, 1:] * part_flows).sum(1)            # (B, H, W, 2)


# ---------------------------------------------------------------------------------------------
# Eq. 4: background visibility
# ---------------------------------------------------------------------------------------------


@float32
def background_visibility(seg_source: torch.Tensor, seg_target: torch.Tensor,
                          stop_gradient: bool = True) -> torch.Tensor:
    """Background visibility mask, Eq. (4): 0 where the target shows background that the object
    hides in the source (the warped source has nothing to show there), 1 elsewhere.

    ::

        V = 1 - Y_T,0 * O_S,      O_S = sum_{k>=1} Y_S,k,      Y_T,0 = 1 - sum_{k>=1} Y_T,k

    The target background is taken as ``1 - sum`` of the target's part channels and, with
    ``stop_gradient`` (the paper's *Full* model), detached: no gradient reaches ``seg_target``
    through ``V``, so the target segmentation cannot leak the target frame to the generator; the
    source parts still get ``dV / dY_S,k = -Y_T,0``. ``stop_gradient=False`` is the *V-back-prop*
    ablation (Table 1b): then the target's part channels also get ``dV / dY_T,k = O_S``.

    Args:
        seg_source, seg_target: ``(B, K+1, H, W)`` segmentations ``Y_S``, ``Y_T`` (channel 0 background).

    Returns:
        ``(B, 1, H, W)``, in [0, 1] for probabilities. Computed in float32 under autocast.
    """
    _check_seg(seg_source, "seg_source")
    _check_seg(seg_target, "seg_target")
    if seg_source.shape != seg_target.shape:
        raise ValueError(f"seg_source {tuple(seg_source.shape)} and seg_target {tuple(seg_target.shape)} "
                         "must have the same shape")
    target_background = 1 - seg_target[:, 1:].sum(1, keepdim=True)            # Y_T,0, (B, 1, H, W)
    if stop_gradient:
        target_background = target_background.detach()
    source_object = seg_source[:, 1:].sum(1, keepdim=True)                     # O_S, (B, 1, H, W)
    return 1 - target_background * source_object


# ---------------------------------------------------------------------------------------------
# Eq. 5: warping with a flow
# ---------------------------------------------------------------------------------------------


def warp_with_flow(maps: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear",
                   padding_mode: str = "zeros") -> torch.Tensor:
    """Back-warp float maps ``(B, C, H, W)`` (images, features) with a flow ``(B, H', W', 2)``.

    Output pixel ``z`` takes the maps' value at ``flow[z]`` (normalised ``(x, y)``, ``grid_sample``
    with ``align_corners=False``); the output has the flow's size ``(H', W')``, the maps may have any
    size. Outside the maps it is 0 (``padding_mode="zeros"``, as the original's deformation layer)
    or the nearest border value (``"border"``). The flow is cast to the maps' dtype (half-precision
    features under autocast). Differentiable w.r.t. the maps and the flow.

    Returns:
        ``(B, C, H', W')``.
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() != 4 or not maps.is_floating_point():
        raise ValueError(f"maps must be a float tensor of shape (B, C, H, W), got {_shape(maps)}")
    if not isinstance(flow, torch.Tensor) or flow.dim() != 4 or flow.shape[-1] != 2:
        raise ValueError(f"flow must have shape (B, H, W, 2) holding (x, y), got {_shape(flow)}")
    if flow.shape[0] != maps.shape[0]:
        raise ValueError(f"flow has batch size {flow.shape[0]} but the maps have {maps.shape[0]}")
    return F.grid_sample(maps, flow.to(maps.dtype), mode=mode, padding_mode=padding_mode, align_corners=False)


# ---------------------------------------------------------------------------------------------
# Sec. 3.1: the segmentation module
# ---------------------------------------------------------------------------------------------


def _gaussian_taps(scale: float) -> torch.Tensor:
    """1-D Gaussian (sum 1) that anti-aliases a ``scale`` x downsampling: ``sigma = (1/scale - 1) / 2``
    (scikit-image's ``rescale`` rule), truncated at 4 sigma."""
    sigma = (1 / scale - 1) / 2
    radius = max(1, round(4 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    return taps / taps.sum()


def antialias_downscale(images: torch.Tensor, scale: float) -> torch.Tensor:
    """Anti-aliased resize of ``(B, C, H, W)`` float maps by ``scale`` in (0, 1] (the identity for 1).

    A separable Gaussian blur (``sigma = (1/scale - 1) / 2``, truncated at 4 sigma, replicate padding)
    then a bilinear resize (``align_corners=False``) to ``round(H * scale) x round(W * scale)``, so a
    pixel of the small map sits at the same normalised ``(x, y)`` as the region it summarises. Used by
    :class:`MotionSegmenter` on its input and by the image pyramid of the perceptual loss
    (:func:`partlab.losses.perceptual_loss`). Constants stay constant. Differentiable.
    """
    if not 0 < scale <= 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    if scale == 1:
        return images
    h, w = images.shape[-2:]
    c = images.shape[1]
    taps = _gaussian_taps(scale).to(images.device, images.dtype)
    radius = taps.numel() // 2
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, taps.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)     # along the width
    x = F.conv2d(x, taps.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)     # along the height
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class MotionSegmenter(nn.Module):
    """The segmentation module of the motion-supervised method: one frame -> parts and their motion.

    The image is anti-aliased (Gaussian, ``sigma = (1/scale - 1) / 2``, replicate padding) and
    resized by ``scale`` (the original: 256 px frames at ``scale=0.25``, a 64x64 network; quick mode:
    64 px frames at ``scale=1`` or ``0.5``). A U-Net hourglass (:class:`partlab.models.UNet`, its 1x1
    head replaced by the three 7x7 heads below) maps it to features, from which:

    - ``K + 1`` segmentation logits, softmax over channels -> ``Y``, resized (bilinear) back to the
      image size;
    - ``K`` keypoint logits, softmax over space of ``logits / temperature`` -> heatmaps ``H_k``; the
      anchor ``p_k = sum_z H_k(z) z`` is their expectation in normalised ``(x, y)``;
    - ``4K`` affine channels ``a_k(z)`` (row-major 2x2 per part), their conv initialised to weight 0
      and bias ``[1, 0, 0, 1]``; ``A_k = sum_z H_k(z) a_k(z)``, so every ``A_k = I`` at initialisation.

    The three outputs are post-processed in float32 (the network may run under autocast).

    Args:
        num_parts: ``K``, the number of foreground parts.
        scale: input resize factor in (0, 1]; 1 feeds the image as it is.
        base_channels, depth: of the U-Net (the scaled input must be at least ``2**depth`` pixels).
        temperature: of the keypoint softmax (0.1 in the original).
        head_kernel: kernel size of the three heads (7 in the original; odd).
        in_channels: 3 for RGB in [0, 1].
        identity_start: the keypoint head initialised to 0 (partlab's option; the original starts from
            pretrained keypoints): every heatmap is uniform, every anchor at the frame's centre in every frame,
            so that with ``A_k = I`` the part flow starts as the identity. A random head puts the anchors of
            two frames of one clip up to half a frame apart (README, motion section). With ``anchors="segments"``
            the segmentation head's initial weights are scaled by 0.01 (bias 0) instead: the segments start
            near-uniform, so every anchor starts near the centre too, and the small random weights still tell
            the parts apart.
        anchors: ``"keypoints"`` (the paper's: ``p_k`` and the weights of ``A_k`` from the keypoint heatmaps) or
            ``"segments"`` (partlab's option): the heatmap of part ``k`` is its own segment ``Y_k`` at the
            network's size, normalised over space (``(Y_k + 1e-6) / sum(Y_k + 1e-6)``), so ``p_k`` is the
            segment's centre of mass and ``A_k`` the segment-weighted mean of ``a_k(z)``. The anchors then
            follow the parts from the first step (no keypoint head; an empty part anchors at the centre).
        network: the hourglass: ``"unet"`` (:class:`partlab.models.UNet` from scratch, ``base_channels`` and
            ``depth``) or ``"standin_unet"`` (:class:`partlab.models.StandinUNet`: the stand-in's blocks 1-3 as
            the encoder, quick mode's pretrained start; ``base_channels`` and ``depth`` do not apply).
        pretrained, standin: with ``"standin_unet"``, load the encoder from the stand-in file (``standin``: a
            version name or a path; default the current stand-in) or start it at random (``pretrained=False``).

    >>> net = MotionSegmenter(4, scale=0.5, base_channels=8)
    >>> out = net(torch.rand(2, 3, 32, 32))
    >>> out["seg"].shape, out["shift"].shape, out["affine"].shape, out["heatmap"].shape
    (torch.Size([2, 5, 32, 32]), torch.Size([2, 4, 2]), torch.Size([2, 4, 2, 2]), torch.Size([2, 4, 16, 16]))
    """

    def __init__(self, num_parts: int, scale: float = 0.25, base_channels: int = 16, depth: int = 3,
                 temperature: float = 0.1, head_kernel: int = 7, in_channels: int = 3,
                 identity_start: bool = False, anchors: str = "keypoints", network: str = "unet",
                 pretrained: bool = True, standin: "str | None" = None) -> None:
        super().__init__()
        if anchors not in ANCHORS:
            raise ValueError(f"anchors={anchors!r}; choose one of {ANCHORS}")
        if network not in SEGMENTER_NETWORKS:
            raise ValueError(f"network={network!r}; the motion segmenter's hourglass is one of {SEGMENTER_NETWORKS}")
        if network == "standin_unet" and in_channels != 3:
            raise ValueError(f"network='standin_unet' reads RGB images (in_channels=3), got in_channels={in_channels}")
        if num_parts < 1:
            raise ValueError(f"MotionSegmenter needs num_parts >= 1, got {num_parts}")
        if not 0 < scale <= 1:
            raise ValueError(f"scale must be in (0, 1], got {scale}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if head_kernel < 1 or head_kernel % 2 == 0:
            raise ValueError(f"head_kernel must be a positive odd number, got {head_kernel}")
        self.num_parts, self.scale, self.temperature = num_parts, float(scale), float(temperature)
        self.anchors = anchors
        if network == "standin_unet":
            from partlab.models.standin_unet import StandinUNet

            self.hourglass = StandinUNet(1, pretrained=pretrained, standin=standin)
            self.weights_used = self.hourglass.weights_used     # the start, as DeepLab's (run records print it)
        else:
            self.hourglass = UNet(1, base_channels=base_channels, depth=depth, in_channels=in_channels)
        self.hourglass.head = nn.Identity()             # the U-Net returns its last decoder features
        features, pad = self.hourglass.feature_channels, head_kernel // 2
        self.seg_head = nn.Conv2d(features, num_parts + 1, head_kernel, padding=pad)
        # "segments" anchors need no keypoint head (no unused parameters under DDP)
        self.keypoint_head = (nn.Conv2d(features, num_parts, head_kernel, padding=pad) if anchors == "keypoints"
                              else None)
        self.affine_head = nn.Conv2d(features, 4 * num_parts, head_kernel, padding=pad)
        nn.init.zeros_(self.affine_head.weight)
        with torch.no_grad():
            self.affine_head.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0]).repeat(num_parts))
        if identity_start and self.keypoint_head is not None:
            nn.init.zeros_(self.keypoint_head.weight)
            nn.init.zeros_(self.keypoint_head.bias)
        elif identity_start:                            # "segments": near-uniform segments, anchors at the centre
            with torch.no_grad():
                self.seg_head.weight.mul_(IDENTITY_START_SEG_SCALE)
                self.seg_head.bias.zero_()

    @property
    def separate_encoder(self) -> bool:
        """Whether the hourglass has an encoder that comes from elsewhere (``network="standin_unet"``, loaded
        or, with ``pretrained=False``, its random counterpart): the method then trains it at the base learning
        rate and everything new at 10x, as for DeepLab."""
        return hasattr(self.hourglass, "backbone_parameters")

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The hourglass's encoder (``network="standin_unet"``; empty for the scratch U-Net)."""
        return list(self.hourglass.backbone_parameters()) if self.separate_encoder else []

    def head_parameters(self) -> list[nn.Parameter]:
        """Every trainable parameter outside :meth:`backbone_parameters`: decoder and heads."""
        backbone = {id(p) for p in self.backbone_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in backbone]

    def downscale(self, images: torch.Tensor) -> torch.Tensor:
        """Anti-aliased resize of ``(B, C, H, W)`` by ``scale`` (:func:`antialias_downscale`; the identity
        for ``scale=1``). A pixel of the small image sits at the same normalised ``(x, y)`` as the region
        it summarises, so anchors need no correction."""
        return antialias_downscale(images, self.scale)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Parts and motion of one frame.

        Args:
            images: ``(B, C, H, W)`` float, RGB in [0, 1].

        Returns:
            dict with ``"seg"`` ``(B, K+1, H, W)`` probabilities at the image size (channel 0
            background), ``"shift"`` ``(B, K, 2)`` anchors ``p_k`` in normalised ``(x, y)``,
            ``"affine"`` ``(B, K, 2, 2)`` matrices ``A_k``, ``"heatmap"`` ``(B, K, h, w)`` the keypoint
            heatmaps at the network's size ``h x w`` (each sums to 1 over space).
        """
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"MotionSegmenter expects float images of shape (B, C, H, W), got {_shape(images)}")
        features = self.hourglass(self.downscale(images))                        # (B, F, h, w)
        b, k = images.shape[0], self.num_parts
        h, w = features.shape[-2:]
        seg_small = self.seg_head(features).float().softmax(1)                  # (B, K+1, h, w)
        seg = seg_small
        if seg.shape[-2:] != images.shape[-2:]:
            seg = F.interpolate(seg, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if self.keypoint_head is None:                                          # anchors="segments"
            mass = seg_small[:, 1:] + SEGMENT_ANCHOR_EPS
            heatmap = mass / mass.sum((-2, -1), keepdim=True)
        else:
            keypoint_logits = self.keypoint_head(features).float() / self.temperature
            heatmap = keypoint_logits.flatten(2).softmax(-1).view(b, k, h, w)     # softmax over space
        shift = part_centers(heatmap)                                           # (B, K, 2)
        local_affine = self.affine_head(features).float().view(b, k, 4, h, w)  # a_k(z), (B, K, 4, h, w)
        affine = (local_affine * heatmap[:, :, None]).sum((-2, -1)).view(b, k, 2, 2)
        return {"seg": seg, "shift": shift, "affine": affine, "heatmap": heatmap}


def soft_flow_costs(source: torch.Tensor, target: torch.Tensor, parts_source: torch.Tensor,
                    parts_target: torch.Tensor, num_parts: int, extractor, layers=None,
                    scales: "Sequence[float] | None" = None, confidence: float = 0.9) -> dict:
    """What a soft segmentation costs the reconstruction, per scale of the perceptual pyramid (a diagnostic).

    The source is warped by the part flow (Eq. 2-3, ``A = I``, anchors at the true part centroids of each
    frame) of the true target parts, once one-hot (``"hard"``) and once soft (``"soft"``: ``confidence`` on
    the true channel, the rest spread evenly over the other K channels), and scored against the target with
    :func:`partlab.losses.perceptual_loss` at each scale on its own, next to the source itself (``"copy"``,
    the identity flow). With soft segments every pixel's flow mixes in the other parts' motions, so the
    background drifts by a fraction of a pixel; at full resolution that costs more than the parts' motion
    gains (README, motion section).

    Args:
        source, target: ``(B, 3, H, W)`` frames in [0, 1].
        parts_source, parts_target: ``(B, H, W)`` integer part labels (0 background, 1..K).
        num_parts: K.
        extractor, layers: of the perceptual loss (``layers`` default: the extractor's perceptual ones).
        scales: the pyramid factors, each scored alone (default the loss's own, 1, 1/2, 1/4, 1/8).
        confidence: the soft segmentation's value on the true channel, in (1 / (K + 1), 1].

    Returns:
        ``{scale: {"copy": float, "hard": float, "soft": float}}``.
    """
    from partlab.losses.motion import PERCEPTUAL_SCALES, perceptual_loss   # that module imports this one

    scales = PERCEPTUAL_SCALES if scales is None else scales
    k = int(num_parts)
    if not 1 / (k + 1) < confidence <= 1:
        raise ValueError(f"confidence must be in (1/(K+1), 1] = ({1 / (k + 1):.3f}, 1], got {confidence}")
    hard = [one_hot_parts(p.long(), k) for p in (parts_source, parts_target)]   # (B, K+1, H, W), checked
    soft = [confidence * h + (1 - confidence) / k * (1 - h) for h in hard]
    anchors = [part_centers(h[:, 1:] + SEGMENT_ANCHOR_EPS) for h in hard]     # (B, K, 2) true centroids
    eye = torch.eye(2, device=source.device).expand(source.shape[0], k, 2, 2)
    frames = {"copy": source}
    for name, seg in (("hard", hard[1]), ("soft", soft[1])):
        frames[name] = warp_with_flow(source, part_flow(seg, anchors[0], anchors[1], eye, eye))
    with torch.no_grad():
        return {float(scale): {name: float(perceptual_loss(frame, target, extractor, layers, (scale,)))
                               for name, frame in frames.items()} for scale in scales}


# ---------------------------------------------------------------------------------------------
# Sec. 3.3 and Eq. 5: the reconstruction module
# ---------------------------------------------------------------------------------------------


def _conv_norm_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    """``kernel x kernel`` conv (no bias, same size) - GroupNorm - ReLU."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
                         group_norm(out_channels), nn.ReLU(inplace=True))


class _ResidualBlock(nn.Module):
    """``x + conv(relu(norm(conv(relu(norm(x))))))``, 3x3 convs, same channels and size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(group_norm(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                  group_norm(channels), nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class MotionGenerator(nn.Module):
    """The reconstruction module ``G``: encode the source frame, deform its features, decode an image.

    Johnson et al.'s image-transformation network, as in the paper (Sec. 3.3 and Appendix A)::

        encode   7x7 conv (C) - 2 down blocks (3x3 conv, 2x2 average pool: 2C, 4C)     -> xi, 1/4 size
        deform   xi' = V * W(xi, F)                                                      (Eq. 5)
        decode   residual blocks (4C) - 2 up blocks (x2 nearest, 3x3 conv: 2C, C) - 7x7 conv - sigmoid

    ``C = base_channels`` (64 in the paper; smaller in quick mode); every conv is followed by
    GroupNorm and ReLU (GroupNorm as in partlab's U-Net, where the original has BatchNorm: a batch of
    one behaves as in training). The flow ``F`` and the visibility ``V`` are given at the features'
    resolution (:class:`partlab.methods.MotionCoPart` computes them there from the segmentation).

    With ``condition_channels > 0`` (the paper's *Naive* ablation) the bottleneck instead receives
    maps concatenated to the source features (the target segmentation), fused back to ``4C``
    channels by a 1x1 conv (:meth:`condition`); nothing is warped.

    With ``image_skip`` (partlab's quick recipe, not the paper's network) the decoder predicts a residual
    on top of a *base* image, the source frame itself warped by the flow at full resolution,
    ``W(X_S, F)`` (V stays on the features)::

        decode   ... - 7x7 conv (initialised to 0) -> r;   prediction = clamp(base + r, 0, 1)

    so that a fresh generator already reproduces the warped source and the flow gets a pixel-level
    gradient from the first step. Without it, a small generator trained for minutes reconstructs the
    target worse than a plain copy of the source would (README, motion section), and the
    reconstruction error drowns the motion signal the segmentation learns from.

    Args:
        base_channels: ``C``.
        num_residual: residual blocks in the bottleneck (6 in the paper).
        num_down: down (and up) blocks, 2 in the paper: the flow acts on features at ``1 / 2**num_down`` of
            the frame's size (64 x 64 for its 256 px frames). Fewer keep small motions visible to the warp.
        condition_channels: channels of the maps :meth:`condition` concatenates (0: none).
        in_channels, out_channels: 3 (RGB in [0, 1]).
        image_skip: decode a residual on a base image (above); :meth:`decode` then needs ``base``.

    >>> g = MotionGenerator(base_channels=8, num_residual=1)
    >>> xi = g.encode(torch.rand(2, 3, 32, 32)); xi.shape
    torch.Size([2, 32, 8, 8])
    >>> g.decode(xi, size=(32, 32)).shape
    torch.Size([2, 3, 32, 32])
    """

    def __init__(self, base_channels: int = 64, num_residual: int = 6, condition_channels: int = 0,
                 in_channels: int = 3, out_channels: int = 3, num_down: int = 2, image_skip: bool = False) -> None:
        super().__init__()
        if base_channels < 1 or num_residual < 0 or condition_channels < 0 or num_down < 0:
            raise ValueError(f"MotionGenerator needs base_channels >= 1, num_residual >= 0, condition_channels >= 0 "
                             f"and num_down >= 0, got {base_channels}, {num_residual}, {condition_channels}, {num_down}")
        self.num_down = int(num_down)
        widths = [base_channels * 2**i for i in range(self.num_down + 1)]           # C, 2C, 4C
        self.first = _conv_norm_relu(in_channels, widths[0], 7)
        self.down = nn.ModuleList([nn.Sequential(_conv_norm_relu(widths[i], widths[i + 1], 3), nn.AvgPool2d(2))
                                   for i in range(self.num_down)])
        self.fuse = nn.Conv2d(widths[-1] + condition_channels, widths[-1], 1) if condition_channels else None
        self.bottleneck = nn.Sequential(*[_ResidualBlock(widths[-1]) for _ in range(num_residual)])
        self.up = nn.ModuleList([_conv_norm_relu(widths[i + 1], widths[i], 3) for i in reversed(range(self.num_down))])
        self.final = nn.Conv2d(widths[0], out_channels, 7, padding=3)
        self.feature_channels = widths[-1]
        self.image_skip = bool(image_skip)
        if self.image_skip:                                 # a fresh generator returns its base image
            nn.init.zeros_(self.final.weight)
            nn.init.zeros_(self.final.bias)

    def encode(self, source: torch.Tensor) -> torch.Tensor:
        """Source features ``xi`` ``(B, 4C, H/4, W/4)`` (each side at least 4 pixels)."""
        h, w = source.shape[-2:]
        if min(h, w) < 2**self.num_down:
            raise ValueError(f"MotionGenerator needs images of at least {2**self.num_down}x{2**self.num_down} "
                             f"pixels, got {h}x{w}")
        x = self.first(source)                                                    # (B, C, H, W)
        for block in self.down:
            x = block(x)                                                          # halves the size
        return x

    @staticmethod
    def deform(features: torch.Tensor, flow: torch.Tensor, visibility: "torch.Tensor | None" = None) -> torch.Tensor:
        """Eq. (5): ``xi' = V * W(xi, F)``, the features back-warped by ``flow`` ``(B, h, w, 2)``
        (:func:`warp_with_flow`, zero outside) times ``visibility`` ``(B, 1, h, w)`` (``None``: V = 1).
        The output has the flow's size."""
        warped = warp_with_flow(features, flow)                                  # (B, 4C, h, w)
        if visibility is None:
            return warped
        if visibility.shape != (warped.shape[0], 1, *warped.shape[-2:]):
            raise ValueError(f"visibility must have shape (B, 1, h, w) = {(warped.shape[0], 1, *warped.shape[-2:])} "
                             f"to match the flow, got {tuple(visibility.shape)}")
        return warped * visibility.to(warped.dtype)

    def condition(self, features: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        """The *Naive* bottleneck: ``fuse([xi, maps])``, ``maps`` ``(B, condition_channels, h', w')``
        area-resized to the features' size."""
        if self.fuse is None:
            raise ValueError("this MotionGenerator was built with condition_channels=0: nothing to concatenate")
        expected = self.fuse.in_channels - features.shape[1]
        if maps.dim() != 4 or maps.shape[:2] != (features.shape[0], expected):
            raise ValueError(f"maps must have shape (B, {expected}, h, w) with B = {features.shape[0]}, "
                             f"got {tuple(maps.shape)}")
        if maps.shape[-2:] != features.shape[-2:]:
            maps = F.interpolate(maps, size=features.shape[-2:], mode="area")
        return self.fuse(torch.cat((features, maps.to(features.dtype)), dim=1))

    def decode(self, features: torch.Tensor, size: "tuple[int, int] | None" = None,
               base: "torch.Tensor | None" = None) -> torch.Tensor:
        """Image ``(B, 3, H, W)`` in [0, 1] from bottleneck features ``(B, 4C, h, w)``: ``H, W = 4h, 4w``
        or ``size`` (a final bilinear resize when the two differ, e.g. for sides not divisible by 4).
        With ``image_skip``: ``clamp(base + r, 0, 1)`` for the base image ``base`` ``(B, 3, H, W)``."""
        x = self.bottleneck(features)
        for block in self.up:
            x = block(F.interpolate(x, scale_factor=2.0, mode="nearest"))        # doubles the size
        x = self.final(x)                                                          # (B, 3, 4h, 4w)
        if self.image_skip:
            if base is None:
                raise ValueError("this MotionGenerator was built with image_skip=True: decode needs the base "
                                 "image (B, 3, H, W), e.g. the source frame warped by the flow")
            if tuple(x.shape[-2:]) != tuple(base.shape[-2:]):
                x = F.interpolate(x, size=tuple(base.shape[-2:]), mode="bilinear", align_corners=False)
            return (base.to(x.dtype) + x).clamp(0.0, 1.0)
        x = torch.sigmoid(x)
        if size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
        return x

    def forward(self, source: torch.Tensor, flow: "torch.Tensor | None" = None,
                visibility: "torch.Tensor | None" = None, condition: "torch.Tensor | None" = None) -> torch.Tensor:
        """Reconstruction ``(B, 3, H, W)`` of the target from the source frame ``(B, 3, H, W)``: with
        ``flow`` (and ``visibility``) at the features' resolution, Eq. (5); with ``condition``, the
        *Naive* bottleneck; with neither, a plain auto-encoder of the source. With ``image_skip`` the base
        image is :meth:`image_base` (the flow and V resized to the frame)."""
        features = self.encode(source)
        if condition is not None:
            features = self.condition(features, condition)
        if flow is not None:
            features = self.deform(features, flow, visibility)
        base = self.image_base(source, flow) if self.image_skip else None
        return self.decode(features, size=tuple(source.shape[-2:]), base=base)

    @staticmethod
    def image_base(source: torch.Tensor, flow: "torch.Tensor | None" = None) -> torch.Tensor:
        """The ``image_skip`` base: the source frame warped by ``flow``, ``W(X_S, F)`` ``(B, 3, H, W)``, the flow
        ``(B, h, w, 2)`` bilinearly resized to the frame's ``H x W`` when given at another size; the source
        itself when ``flow`` is None."""
        if flow is None:
            return source
        size = tuple(source.shape[-2:])
        if tuple(flow.shape[1:3]) != size:
            flow = F.interpolate(flow.permute(0, 3, 1, 2), size=size, mode="bilinear",
                                 align_corners=False).permute(0, 2, 3, 1)
        return warp_with_flow(source, flow)


# ---------------------------------------------------------------------------------------------
# Sec. 4.3: part swap
# ---------------------------------------------------------------------------------------------


def check_swap_model(model) -> None:
    """``ValueError`` unless ``model`` can swap parts: a :class:`partlab.methods.MotionCoPart` (anything with
    ``segment(images)``, ``feature_flow``, ``autocast``, a :class:`MotionGenerator` ``generator`` and
    ``num_parts``) with a motion model
    (``motion`` ``"affine"`` or ``"shift"``; the *Naive* ablation has no flow to align the source's parts)."""
    if not (callable(getattr(model, "segment", None)) and callable(getattr(model, "feature_flow", None))
            and isinstance(getattr(model, "generator", None), MotionGenerator)
            and isinstance(getattr(model, "num_parts", None), int)):
        raise ValueError(f"part swap needs a motion-supervised model (partlab.methods.MotionCoPart, a run of "
                         f"`partlab train motion`), got a {type(model).__name__}")
    if getattr(model, "motion", "affine") == "naive":
        raise ValueError("part swap needs the flow of a motion model, but this model was built with motion='naive' "
                         "(the Naive ablation: the segmentation is concatenated, nothing is warped); use a model "
                         "with motion='affine' (the full model) or 'shift'")


def _check_swap_images(source, target) -> tuple[torch.Tensor, torch.Tensor]:
    for name, x in (("source", source), ("target", target)):
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"part_swap: {name} must be float images of shape (B, 3, H, W), RGB in [0, 1], got "
                             f"{_shape(x)}{'' if not isinstance(x, torch.Tensor) else f' {x.dtype}'}")
    if source.shape[-2:] != target.shape[-2:]:
        raise ValueError(f"part_swap: source {tuple(source.shape[-2:])} and target {tuple(target.shape[-2:])} "
                         f"images must have the same size (H, W); resize them first (the CLI resizes both to the "
                         f"run's size)")
    if source.shape[0] not in (1, target.shape[0]):
        raise ValueError(f"part_swap: source has {source.shape[0]} images and target {target.shape[0]}: give one "
                         f"source per target, or a single source for every target")
    return source.expand(target.shape[0], -1, -1, -1), target


def check_swap_parts(parts, num_parts: int) -> list[int]:
    """``parts`` as a list of distinct ints in 1..K (``num_parts``); ``ValueError`` naming the offending value."""
    if isinstance(parts, (str, bytes)) or not hasattr(parts, "__iter__"):
        raise ValueError(f"parts must be a list of part indices in 1..{num_parts}, got {parts!r}")
    chosen: list[int] = []
    for part in parts:
        try:
            if isinstance(part, bool):
                raise TypeError
            index = operator.index(part)
        except TypeError:
            raise ValueError(f"parts must be integers in 1..{num_parts}, got {part!r}") from None
        if not 1 <= index <= num_parts:
            raise ValueError(f"part {index} is out of range: the model has K = {num_parts} parts, numbered "
                             f"1..{num_parts} (0 is the background, which is not swapped)")
        if index in chosen:
            raise ValueError(f"part {index} is given twice in parts; give each part once")
        chosen.append(index)
    return chosen


def swap_mask(seg: torch.Tensor, parts: Sequence[int], soft: bool = True) -> torch.Tensor:
    """The blend weights ``B`` ``(B, 1, h, w)`` of :func:`part_swap` from a segmentation ``(B, K+1, h, w)``.

    ``soft``: ``B = sum_{k in parts} Y_k`` (the probabilities, in [0, 1]; the paper's continuous masks,
    "a smoother transition between regions"); else ``B = sum_{k in parts} [argmax_j Y_j = k]``, 1 exactly
    where a chosen part wins the argmax over all ``K + 1`` channels (background included), 0 elsewhere.
    ``parts`` are channel indices 1..K (checked by :func:`part_swap`); no parts give ``B = 0``.
    """
    index = torch.as_tensor(list(parts), dtype=torch.long, device=seg.device)
    if soft:
        chosen = seg.index_select(1, index)                                   # (B, len(parts), h, w)
    else:
        hard = F.one_hot(seg.argmax(1), seg.shape[1]).permute(0, 3, 1, 2)     # (B, K+1, h, w) in {0, 1}
        chosen = hard.index_select(1, index).to(seg.dtype)
    return chosen.sum(1, keepdim=True)


@torch.no_grad()
def part_swap(model, source: torch.Tensor, target: torch.Tensor, parts: Sequence[int], *, soft: bool = True,
              return_mask: bool = False):
    """Replace the chosen parts of the target frame by those of the source image (Sec. 4.3, "video editing").

    Both frames are segmented (``model.segment``); the part flow from the target to the source (Eq. 2-3,
    :func:`part_flow`) is computed from the target's segmentation at the generator's feature size
    ``h x w = H/4 x W/4`` (area-resized, as in training); the source's encoder features are warped by it,
    so that each source part lies where the same part lies in the target, and blended with the target's
    own encoder features under the chosen parts' target mask ``B`` (:func:`swap_mask`)::

        out = decode( enc(X_T) * (1 - B) + W(enc(X_S), F) * B )

    the blend of REFERENCE_NOTES.md (the original's part swap); a generator with ``image_skip`` decodes on the
    same blend of the frames themselves at their size, ``X_T (1 - B) + W(X_S, F) B``. The visibility mask
    (Eq. 4) is not applied: it only dims target *background* pixels, where ``B`` is ~0. With no parts (``B = 0``) the result is
    the generator's plain auto-encoding of the target, ``model.generator(target)`` =
    ``decode(enc(X_T))`` (not the motion reconstruction of training, which rebuilds the target from the
    source); with ``B = 1`` everywhere and the identity flow it is ``model.generator(source)``.

    Args:
        model: a trained :class:`partlab.methods.MotionCoPart` with ``motion`` ``"affine"`` or ``"shift"``
            (:func:`check_swap_model`); used as it is (its train/eval mode is not changed), on its device,
            under its autocast, without gradients.
        source: ``(B, 3, H, W)`` or ``(1, 3, H, W)`` (one source for every target), RGB in [0, 1]: the
            image whose parts are pasted.
        target: ``(B, 3, H, W)``, RGB in [0, 1]: the frame that is edited (same ``H, W``).
        parts: part indices to swap, 1..K (``predict()["labels"]`` values; 0 is the background); may be empty.
        soft: the soft mask (probabilities) or, with ``False``, the hard one-hot mask of the argmax.
        return_mask: also return ``B``.

    Returns:
        the swapped images ``(B, 3, H, W)`` float32 in [0, 1] on the model's device; with ``return_mask``,
        ``(images, mask)`` with the mask ``B`` ``(B, 1, h, w)`` as used, at the features' size ``H/4 x W/4``.

    Raises:
        ValueError: not a motion model, images of the wrong shape or of different sizes, part indices
            outside 1..K, not integers or repeated.
    """
    check_swap_model(model)
    source, target = _check_swap_images(source, target)
    chosen = check_swap_parts(parts, model.num_parts)
    generator: MotionGenerator = model.generator
    parameter = next(model.parameters(), None)
    if parameter is not None:
        source, target = source.to(parameter.device), target.to(parameter.device)
    b, dev = target.shape[0], target.device
    frames = torch.cat((target, source))                                           # (2B, 3, H, W)
    motion = model.segment(frames)
    with model.autocast(dev):
        features = generator.encode(frames)                                        # (2B, 4C, h, w)
    target_features, source_features = features[:b], features[b:]
    size = tuple(features.shape[-2:])
    seg_target = F.interpolate(motion["seg"][:b].float(), size=size, mode="area")   # (B, K+1, h, w)
    target_motion = {key: value[:b] for key, value in motion.items()}
    source_motion = {key: value[b:] for key, value in motion.items()}
    flow = model.feature_flow(seg_target, source_motion, target_motion)            # (B, h, w, 2)
    warped = warp_with_flow(source_features, flow)                                  # W(enc(X_S), F)
    mask = swap_mask(seg_target, chosen, soft)                                      # (B, 1, h, w)
    blend = mask.to(features.dtype)
    blended = target_features * (1 - blend) + warped * blend
    base = None
    if generator.image_skip:                 # the same blend on the frames themselves, at their size
        full = tuple(target.shape[-2:])
        seg_full = F.interpolate(motion["seg"][:b].float(), size=full, mode="bilinear", align_corners=False)
        mask_full = swap_mask(seg_full, chosen, soft).to(target.dtype)
        flow_full = model.feature_flow(seg_full, source_motion, target_motion)
        base = target * (1 - mask_full) + generator.image_base(source, flow_full) * mask_full
    with model.autocast(dev):
        images = generator.decode(blended, size=tuple(target.shape[-2:]), base=base).float()
    return (images, mask) if return_mask else images
