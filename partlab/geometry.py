"""Coordinates and part geometry: the one place that says where a pixel is.

Convention (DESIGN.md, used by every module of partlab): points are normalised ``(x, y)`` in
[-1, 1] with the pixel-centre convention of ``grid_sample(align_corners=False)``. Column ``j`` of a
width-``W`` map sits at ``x = (2j + 1) / W - 1`` and row ``i`` of a height-``H`` map at
``y = (2i + 1) / H - 1``; ``x`` runs along the width (columns), ``y`` along the height (rows).
The image border is at +-1, half a pixel beyond the outermost pixel centres.

Pixel coordinates are ``(x, y) = (column, row)`` with pixel ``j`` centred at ``x = j``.

Sections:

- coordinate helpers: :func:`pixel_grid`, :func:`to_pixels`, :func:`to_normalized`
- part centres: :func:`part_centers` (SCOPS Eq. 1)
- warps (the spatial transforms of the equivariance losses): :class:`Warp`, :func:`identity_warp`,
  :func:`similarity_warp`, :func:`tps_warp`, :func:`random_warp`, :func:`warp_preset`,
  :func:`grid`, :func:`warp_images`, :func:`warp_labels`, :func:`valid_mask`,
  :func:`unwarp_points`, :func:`warp_points`, :func:`warp_jacobian`
- colour jitter (the appearance transforms): :func:`color_jitter`, :func:`jitter_preset`
- views: :func:`random_resized_crop` (crops, flips and MaskContrast's mask-area constraint)

>>> import torch
>>> parts = torch.zeros(1, 1, 4, 4)
>>> parts[0, 0, 1, 2] = 1.0            # a delta at row 1, column 2
>>> part_centers(parts)                 # x = (2*2+1)/4 - 1, y = (2*1+1)/4 - 1
tensor([[[ 0.2500, -0.2500]]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from partlab.precision import float32

Size = Union[int, Sequence[int]]


# ---------------------------------------------------------------------------------------------
# coordinate helpers
# ---------------------------------------------------------------------------------------------


def _size_hw(size: Size) -> tuple[int, int]:
    """``size`` as ``(H, W)``: an int means a square map."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    if len(size) != 2:
        raise ValueError(f"size must be an int or (H, W), got {size!r}")
    return int(size[0]), int(size[1])


def pixel_grid(h: int, w: int, device: Optional[Union[str, torch.device]] = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Normalised ``(x, y)`` of every pixel centre of an ``h x w`` map.

    Returns a tensor of shape ``(H, W, 2)`` with ``grid[i, j] = ((2j+1)/W - 1, (2i+1)/H - 1)``:
    the same points ``grid_sample(align_corners=False)`` reads, so
    ``F.grid_sample(img, pixel_grid(H, W)[None].expand(B, H, W, 2), align_corners=False)``
    returns ``img`` unchanged.

    >>> pixel_grid(1, 2)
    tensor([[[-0.5000,  0.0000],
             [ 0.5000,  0.0000]]])
    """
    if h < 1 or w < 1:
        raise ValueError(f"pixel_grid needs h, w >= 1, got h={h}, w={w}")
    xs = (2 * torch.arange(w, device=device, dtype=dtype) + 1) / w - 1  # (W,)
    ys = (2 * torch.arange(h, device=device, dtype=dtype) + 1) / h - 1  # (H,)
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2)


def _stack_xy(x, y):
    if isinstance(x, torch.Tensor):
        return torch.stack((x, y), dim=-1)
    return np.stack((x, y), axis=-1)


def _check_points(points) -> None:
    if points.shape[-1:] != (2,):
        raise ValueError(f"points must have shape (..., 2) holding (x, y), got {tuple(points.shape)}")


def to_pixels(points, size: Size):
    """Normalised ``(x, y)`` -> pixel ``(x, y) = (column, row)``, pixel ``j`` centred at ``j``.

    ``points`` (..., 2), a tensor or an array (returned as the same kind); ``size`` is ``(H, W)``
    or an int for a square map. ``x_pix = ((x + 1) * W - 1) / 2`` and likewise ``y`` with ``H``.

    >>> to_pixels(torch.tensor([[-1.0, 1.0]]), (2, 4))   # the image corner is half a pixel out
    tensor([[-0.5000,  1.5000]])
    """
    if not isinstance(points, torch.Tensor):
        points = np.asarray(points, dtype=np.float64)
    _check_points(points)
    h, w = _size_hw(size)
    return _stack_xy(((points[..., 0] + 1) * w - 1) / 2, ((points[..., 1] + 1) * h - 1) / 2)


def to_normalized(points, size: Size):
    """Pixel ``(x, y) = (column, row)`` -> normalised ``(x, y)``; the inverse of :func:`to_pixels`.

    ``x = (2 * x_pix + 1) / W - 1`` and likewise ``y`` with ``H``.
    """
    if not isinstance(points, torch.Tensor):
        points = np.asarray(points, dtype=np.float64)
    _check_points(points)
    h, w = _size_hw(size)
    return _stack_xy((2 * points[..., 0] + 1) / w - 1, (2 * points[..., 1] + 1) / h - 1)


# ---------------------------------------------------------------------------------------------
# part centres
# ---------------------------------------------------------------------------------------------


@float32
def part_centers(parts: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Centre of each part map: the spatial expectation of the map normalised to sum 1.

    SCOPS Eq. (1), for both axes::

        c_k = sum_{u,v} [x_uv, y_uv] * R_k(u, v) / z_k,     z_k = sum_{u,v} R_k(u, v),
        R_k = parts_k + eps

    with ``(x_uv, y_uv)`` the normalised pixel centres of :func:`pixel_grid`.

    Args:
        parts: ``(B, K, H, W)``, non-negative (not checked, to keep training steps free of
            device syncs), e.g. ``probs[:, 1:]``.
        eps: added to every pixel before normalising (SCOPS uses 1e-3 in its losses, 0 for the
            landmark evaluation). ``eps > 0`` pulls the centre of a weak part towards (0, 0).

    Returns:
        ``(B, K, 2)`` centres, normalised ``(x, y)``. Differentiable.

    A part with zero total mass (possible only with ``eps=0``) has no centre; it is defined as
    the image centre ``(0, 0)``: its mass ``z_k`` is replaced by 1 in the division, so the
    value is 0/1 and the gradient is finite (d c_k / d R_k(u, v) = (x_uv, y_uv)), never NaN.
    So is a part whose mass underflows below the smallest normal float (``torch.finfo(dtype).tiny``,
    about 1.2e-38 in float32: a softmax logit gap near 90 and more), whose centre and gradient would
    otherwise come from subnormal numbers (NaN gradients). Computed in float32 under autocast
    (:func:`partlab.precision.float32`).
    """
    if not isinstance(parts, torch.Tensor) or parts.dim() != 4:
        shape = tuple(parts.shape) if hasattr(parts, "shape") else type(parts).__name__
        raise ValueError(f"part_centers expects parts of shape (B, K, H, W), got {shape}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    _, _, h, w = parts.shape
    grid = pixel_grid(h, w, device=parts.device, dtype=parts.dtype)  # (H, W, 2)
    mass = parts + eps if eps > 0 else parts                          # (B, K, H, W)
    z = mass.sum(dim=(-2, -1))                                        # (B, K)
    z = torch.where(z > torch.finfo(z.dtype).tiny, z, torch.ones_like(z))  # empty part -> centre (0, 0)
    x = (mass.sum(dim=-2) * grid[0, :, 0]).sum(dim=-1)                # (B, K): column marginal . x
    y = (mass.sum(dim=-1) * grid[:, 0, 1]).sum(dim=-1)                # (B, K): row marginal . y
    return torch.stack((x, y), dim=-1) / z.unsqueeze(-1)              # (B, K, 2)


# ---------------------------------------------------------------------------------------------
# warps
# ---------------------------------------------------------------------------------------------
#
# A warp is a *backward* map T, the one grid_sample needs: output pixel z shows the input image
# at T(z). A point p of the input therefore lands at z = T^-1(p) in the output (warp_points);
# unwarp_points is T itself. Every warp of partlab has the form
#
#     T(z) = A z + t + sum_i w_i phi(||z - c_i||),     phi(r) = r^2 log r   (thin-plate kernel)
#
# in normalised (x, y): an affine part [A | t] plus a thin-plate spline (TPS) with control points
# c_i and kernel weights w_i (2-vectors). The warp acts on normalised coordinates, so on a
# non-square image a rotation turns the normalised square (pixels are stretched by the aspect).

_TPS_MODES = ("points", "weights")
_SCALE_SAMPLINGS = ("inverse", "uniform", "log")


def _tps_kernel(s: torch.Tensor, log_s: torch.Tensor) -> torch.Tensor:
    """phi(r) = r^2 log r written with s = r^2: 0.5 * s * log s (0 at r = 0)."""
    return 0.5 * s * log_s


@dataclass
class Warp:
    """A batch of spatial transforms, one per image, in normalised ``(x, y)`` coordinates.

    ``T(z) = A z + t + sum_i w_i phi(||z - c_i||)`` with ``phi(r) = r^2 log r``: output point ``z``
    reads the input at ``T(z)`` (see :func:`grid`).

    Attributes:
        affine: ``(B, 2, 3)`` the affine part ``[A | t]``.
        centers: ``(B, N, 2)`` TPS control points ``c_i``, or ``None`` for a purely affine warp.
        weights: ``(B, N, 2)`` TPS kernel weights ``w_i``; ``None`` exactly when ``centers`` is.

    Build one with :func:`identity_warp`, :func:`similarity_warp`, :func:`tps_warp` or
    :func:`random_warp`; the tensors may require grad (everything downstream is differentiable).
    """

    affine: torch.Tensor
    centers: Optional[torch.Tensor] = None
    weights: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if not isinstance(self.affine, torch.Tensor) or self.affine.dim() != 3 or self.affine.shape[1:] != (2, 3):
            shape = tuple(self.affine.shape) if hasattr(self.affine, "shape") else type(self.affine).__name__
            raise ValueError(f"Warp.affine must have shape (B, 2, 3), got {shape}")
        if (self.centers is None) != (self.weights is None):
            raise ValueError("Warp.centers and Warp.weights must be given together (or both None)")
        if self.centers is not None:
            b = self.affine.shape[0]
            for name, value in (("centers", self.centers), ("weights", self.weights)):
                if value.dim() != 3 or value.shape[0] != b or value.shape[2] != 2:
                    raise ValueError(f"Warp.{name} must have shape (B={b}, N, 2), got {tuple(value.shape)}")
            if self.centers.shape[1] != self.weights.shape[1]:
                raise ValueError(f"Warp.centers {tuple(self.centers.shape)} and Warp.weights "
                                 f"{tuple(self.weights.shape)} need the same number N of control points")

    @property
    def batch_size(self) -> int:
        return self.affine.shape[0]

    @property
    def device(self) -> torch.device:
        return self.affine.device

    @property
    def dtype(self) -> torch.dtype:
        return self.affine.dtype

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "Warp":
        """The same warp with its tensors on ``device`` and/or in ``dtype``."""
        move = (lambda v: None if v is None else v.to(device=device, dtype=dtype))
        return Warp(move(self.affine), move(self.centers), move(self.weights))


def identity_warp(batch_size: int, device=None, dtype: torch.dtype = torch.float32) -> Warp:
    """The warp ``T(z) = z`` for a batch of ``batch_size`` images."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    affine = torch.eye(2, 3, device=device, dtype=dtype).expand(batch_size, 2, 3).clone()
    return Warp(affine)


def similarity_warp(angle, scale, translation, device=None, dtype: torch.dtype = torch.float32) -> Warp:
    """The warp that rotates, zooms and shifts the *content* of each image about the image centre.

    A point ``p`` of the input lands at ``F(p) = scale * R(angle) p + translation`` in the output
    (``warp_points``), so ``T = F^-1``: ``T(z) = R(-angle) (z - translation) / scale``.

    Args:
        angle: degrees, ``(B,)`` or a number; positive turns ``+x`` towards ``+y``, i.e. clockwise
            on screen (``y`` points down).
        scale: zoom of the content, ``(B,)`` or a number: 2 shows the central half of the input
            twice as large, 0.5 shrinks it into the middle with padding around.
        translation: ``(B, 2)`` or ``(2,)``, the content's shift in normalised units (0.1 = 5 % of the
            width to the right for ``x``).

    Numbers and tensors broadcast to one batch size.

    >>> w = similarity_warp(90.0, 1.0, (0.0, 0.0))
    >>> p = warp_points(torch.tensor([[[0.5, 0.0]]]), w)  # right of centre -> below centre
    >>> torch.allclose(p, torch.tensor([[[0.0, 0.5]]]), atol=1e-6)
    True
    """
    angle = torch.as_tensor(angle, dtype=dtype, device=device).reshape(-1)  # (B,) or (1,)
    scale = torch.as_tensor(scale, dtype=dtype, device=device).reshape(-1)
    translation = torch.as_tensor(translation, dtype=dtype, device=device).reshape(-1, 2)
    try:
        b = torch.broadcast_shapes(angle.shape, scale.shape, translation.shape[:1])[0]
    except RuntimeError:
        raise ValueError(f"angle {tuple(angle.shape)}, scale {tuple(scale.shape)} and translation "
                         f"{tuple(translation.shape)} do not share a batch size") from None
    rad = torch.deg2rad(angle).expand(b)
    cos, sin = torch.cos(rad), torch.sin(rad)
    inv_scale = 1.0 / scale.expand(b)
    # A = R(-angle) / scale, t = -A @ translation
    a = torch.stack((torch.stack((cos, sin), -1), torch.stack((-sin, cos), -1)), -2) * inv_scale[:, None, None]
    t = -(a @ translation.expand(b, 2).unsqueeze(-1))                  # (B, 2, 1)
    return Warp(torch.cat((a, t), dim=-1))                              # (B, 2, 3)


def tps_warp(control_points: torch.Tensor, targets: torch.Tensor) -> Warp:
    """The thin-plate spline with ``T(c_i) = targets_i``: it interpolates the control points exactly
    with the least bending energy (affine part included).

    Args:
        control_points: ``(N, 2)`` or ``(B, N, 2)`` output points ``c_i``, at least 3 not collinear.
        targets: ``(B, N, 2)`` where each ``c_i`` reads the input.

    Solves ``[[K, P], [P^T, 0]] [w; a] = [targets; 0]`` with ``K_ij = phi(||c_i - c_j||)`` and
    ``P = [1, x, y]`` (in float64), for every image.
    """
    if targets.dim() != 3 or targets.shape[-1] != 2:
        raise ValueError(f"targets must have shape (B, N, 2), got {tuple(targets.shape)}")
    b, n, _ = targets.shape
    if control_points.dim() == 2:
        control_points = control_points.unsqueeze(0).expand(b, n, 2)
    if control_points.shape != targets.shape:
        raise ValueError(f"control_points must have shape (N, 2) or (B, N, 2) matching targets "
                         f"{tuple(targets.shape)}, got {tuple(control_points.shape)}")
    c = control_points.to(torch.float64)
    s = ((c[:, :, None] - c[:, None]) ** 2).sum(-1)                     # (B, N, N)
    k = _tps_kernel(s, torch.log(s.clamp_min(1e-20)))
    p = torch.cat((torch.ones_like(c[..., :1]), c), dim=-1)             # (B, N, 3)
    top = torch.cat((k, p), dim=-1)                                     # (B, N, N+3)
    bottom = torch.cat((p.transpose(1, 2), c.new_zeros(b, 3, 3)), dim=-1)
    system = torch.cat((top, bottom), dim=1)                            # (B, N+3, N+3)
    rhs = torch.cat((targets.to(torch.float64), c.new_zeros(b, 3, 2)), dim=1)
    solution = torch.linalg.solve(system, rhs)                          # (B, N+3, 2)
    weights, a = solution[:, :n], solution[:, n:]                       # a rows: coefficients of 1, x, y
    affine = torch.cat((a[:, 1:].transpose(1, 2), a[:, :1].transpose(1, 2)), dim=-1)  # (B, 2, 3)
    dtype = targets.dtype
    return Warp(affine.to(dtype), control_points.to(dtype), weights.to(dtype))


def _random(shape, generator: Optional[torch.Generator], device, dtype: torch.dtype, normal: bool = False):
    """Uniform [0, 1) (or standard normal) numbers drawn on the generator's device, then moved."""
    where = generator.device if generator is not None else torch.device("cpu")
    draw = torch.randn if normal else torch.rand
    return draw(shape, generator=generator, device=where, dtype=torch.float32).to(device=device, dtype=dtype)


def random_warp(batch_size: int, *, rotation: float = 60.0, scale: Sequence[float] = (0.7, 2.0),
                scale_sampling: str = "inverse", translation: float = 0.1, affine_noise: float = 0.0,
                tps_grid: int = 5, tps_noise: float = 0.01, tps_mode: str = "points",
                generator: Optional[torch.Generator] = None, device=None,
                dtype: torch.dtype = torch.float32) -> Warp:
    """Random warps, one per image: a similarity (plus optional affine noise) and a TPS.

    The defaults are SCOPS's (``warp_preset("scops")``). Per image:

    1. content rotation ``U(-rotation, rotation)`` degrees, content zoom in ``scale = (lo, hi)``
       and content shift ``U(-translation, translation)`` per axis (see :func:`similarity_warp`).
       ``scale_sampling``: ``"inverse"`` draws ``1/zoom ~ U(1/hi, 1/lo)`` (SCOPS draws the scale
       of the sampling grid, ``U(1/2.0, 1/0.7)``, so its content zoom is 0.7 to 2.0),
       ``"uniform"`` draws ``zoom ~ U(lo, hi)``, ``"log"`` draws ``log zoom`` uniformly.
    2. ``affine_noise``: ``N(0, affine_noise)`` added to each of the six entries of ``[A | t]``
       (the motion method's random affine ``I + N(0, 0.05)``).
    3. a TPS on a ``tps_grid x tps_grid`` grid of control points spanning [-1, 1]^2
       (``tps_grid=0`` or ``tps_noise=0``: none):

       - ``tps_mode="points"`` (SCOPS): each control point is displaced by ``U(-tps_noise, tps_noise)``
         per axis and the interpolating TPS ``P`` is solved; the warp is ``T = S o P``: the output
         grid is jittered by ``P`` first, then mapped into the input by the affine part ``S``
         (so in the input, content is first similarity-transformed, then jittered by ``P^-1``).
       - ``tps_mode="weights"`` (motion method): the kernel weights ``w_i ~ N(0, tps_noise)`` are
         drawn directly and added to the affine part, ``T(z) = S(z) + sum_i w_i phi(||z - c_i||)``.
         The original draws one weight per control point for both axes and uses the L1 distance
         in the kernel; partlab draws x and y independently and uses the Euclidean distance.

    Args:
        batch_size: number of warps B.
        generator: a ``torch.Generator`` for reproducible draws (drawn on its device); ``None``
            uses torch's global RNG (CPU).
        device, dtype: where the warp's tensors live.

    Returns:
        :class:`Warp` of batch size B.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    lo, hi = (float(v) for v in scale)
    if not 0 < lo <= hi:
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale!r}")
    if scale_sampling not in _SCALE_SAMPLINGS:
        raise ValueError(f"scale_sampling must be one of {_SCALE_SAMPLINGS}, got {scale_sampling!r}")
    if tps_mode not in _TPS_MODES:
        raise ValueError(f"tps_mode must be one of {_TPS_MODES}, got {tps_mode!r}")
    if min(rotation, translation, affine_noise, tps_noise) < 0 or tps_grid < 0:
        raise ValueError("rotation, translation, affine_noise, tps_noise and tps_grid must be >= 0")
    if tps_grid == 1:
        raise ValueError("tps_grid must be 0 (no TPS) or >= 2")

    b = batch_size
    u = _random((4, b), generator, device, dtype)                         # angle, zoom, shift x, shift y
    angle = rotation * (2 * u[0] - 1)
    if scale_sampling == "inverse":
        zoom = 1.0 / (1 / hi + (1 / lo - 1 / hi) * u[1])
    elif scale_sampling == "uniform":
        zoom = lo + (hi - lo) * u[1]
    else:
        zoom = torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * u[1])
    shift = translation * (2 * u[2:] - 1).T                               # (B, 2)
    affine = similarity_warp(angle, zoom, shift, device=device, dtype=dtype).affine
    if affine_noise > 0:
        affine = affine + affine_noise * _random((b, 2, 3), generator, device, dtype, normal=True)
    if tps_grid == 0 or tps_noise == 0:
        return Warp(affine)

    ticks = torch.linspace(-1, 1, tps_grid, device=device, dtype=dtype)
    centers = torch.stack(torch.meshgrid(ticks, ticks, indexing="xy"), -1).reshape(1, -1, 2).expand(b, -1, 2)
    n = centers.shape[1]
    if tps_mode == "weights":
        weights = tps_noise * _random((b, n, 2), generator, device, dtype, normal=True)
        return Warp(affine, centers.clone(), weights)
    jittered = centers + tps_noise * (2 * _random((b, n, 2), generator, device, dtype) - 1)
    targets = unwarp_points(jittered, Warp(affine))                       # S(c_i + delta_i)
    return tps_warp(centers, targets)


_WARP_PRESETS = {
    # SCOPS (config SCOPS_K8_retrain): similarity + 5x5 TPS with U(+-0.01) control-point noise
    "scops": dict(rotation=60.0, scale=(0.7, 2.0), scale_sampling="inverse", translation=0.1,
                  affine_noise=0.0, tps_grid=5, tps_noise=0.01, tps_mode="points"),
    # contrastive part discovery: its code reuses SCOPS's transform with the same settings
    "contrastive": dict(rotation=60.0, scale=(0.7, 2.0), scale_sampling="inverse", translation=0.1,
                        affine_noise=0.0, tps_grid=5, tps_noise=0.01, tps_mode="points"),
    # motion-supervised co-part segmentation: affine I + N(0, .05), TPS 5x5 kernel weights N(0, .005)
    "motion": dict(rotation=0.0, scale=(1.0, 1.0), scale_sampling="uniform", translation=0.0,
                   affine_noise=0.05, tps_grid=5, tps_noise=0.005, tps_mode="weights"),
}


def warp_preset(name: str) -> dict:
    """Keyword arguments of :func:`random_warp` for a method's equivariance transform.

    ``"scops"`` and ``"contrastive"``: rotation +-60 deg, content zoom 0.7 to 2.0 (1/zoom uniform),
    shift +-0.1, 5x5 TPS with U(+-0.01) control-point noise; the originals pad with zeros.
    ``"motion"``: random affine ``I + N(0, 0.05)`` plus 5x5 TPS kernel weights ``N(0, 0.005)``;
    the original pads frames with the border (``padding_mode="border"``).

    >>> warp = random_warp(4, **warp_preset("scops"), generator=torch.Generator().manual_seed(0))
    """
    if name not in _WARP_PRESETS:
        raise ValueError(f"unknown warp preset {name!r}; choose one of {sorted(_WARP_PRESETS)}")
    preset = dict(_WARP_PRESETS[name])
    preset["scale"] = tuple(preset["scale"])
    return preset


def _check_warp_points(points: torch.Tensor, warp: Warp) -> None:
    if not isinstance(warp, Warp):
        raise ValueError(f"warp must be a partlab.geometry.Warp, got {type(warp).__name__}")
    if not isinstance(points, torch.Tensor) or points.dim() != 3 or points.shape[-1] != 2:
        shape = tuple(points.shape) if hasattr(points, "shape") else type(points).__name__
        raise ValueError(f"points must have shape (B, N, 2) holding (x, y), got {shape}")
    if points.shape[0] != warp.batch_size:
        raise ValueError(f"points have batch size {points.shape[0]} but the warp has {warp.batch_size}")


def _tps_terms(z: torch.Tensor, centers: torch.Tensor):
    """Differences ``z - c_i`` ``(B, P, N, 2)``, squared distances ``s`` and ``log s`` ``(B, P, N)``."""
    diff = z[:, :, None, :] - centers[:, None, :, :]
    s = (diff * diff).sum(-1)
    return diff, s, torch.log(s.clamp_min(1e-20))


def _apply(warp: Warp, z: torch.Tensor) -> torch.Tensor:
    out = z @ warp.affine[:, :, :2].transpose(1, 2) + warp.affine[:, None, :, 2]   # (B, P, 2)
    if warp.centers is not None:
        _, s, log_s = _tps_terms(z, warp.centers)
        out = out + _tps_kernel(s, log_s) @ warp.weights                           # (B, P, N) @ (B, N, 2)
    return out


def _jacobian(warp: Warp, z: torch.Tensor) -> torch.Tensor:
    jac = warp.affine[:, None, :, :2].expand(z.shape[0], z.shape[1], 2, 2)       # (B, P, 2, 2)
    if warp.centers is not None:
        diff, _, log_s = _tps_terms(z, warp.centers)
        grad_phi = (log_s + 1).unsqueeze(-1) * diff                                # d phi / dz, (B, P, N, 2)
        jac = jac + torch.einsum("bna,bpnk->bpak", warp.weights, grad_phi)
    return jac


def _solve2(m: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """``m^-1 r`` for stacks of 2x2 matrices ``(..., 2, 2)`` and vectors ``(..., 2)``."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    return torch.stack((d * r[..., 0] - b * r[..., 1], a * r[..., 1] - c * r[..., 0]), -1) / det.unsqueeze(-1)


def unwarp_points(points: torch.Tensor, warp: Warp) -> torch.Tensor:
    """``T(z)``: where points ``z`` of the *output* (warped) image come from in the input.

    ``points`` ``(B, N, 2)`` normalised ``(x, y)``; returns ``(B, N, 2)``. Differentiable in the
    points and in the warp's tensors (the motion method differentiates it for ``J_T``).
    """
    _check_warp_points(points, warp)
    return _apply(warp.to(points.device, points.dtype), points)


def warp_points(points: torch.Tensor, warp: Warp, iterations: int = 10) -> torch.Tensor:
    """``T^-1(p)``: where points ``p`` of the *input* image land in the output (e.g. landmarks).

    Affine warps are inverted exactly. With a TPS, ``T(z) = p`` is solved by Newton's method
    started from the affine inverse (``iterations`` steps, no gradient), then one more Newton step
    is taken with gradient, so ``d z / d p = J_T^-1`` and the gradient w.r.t. the warp is the
    implicit one. For the warps of :func:`warp_preset` the residual ``|T(z) - p|`` is below 1e-5.
    Assumes ``T`` is invertible near the points (true for small TPS noise).

    ``points`` ``(B, N, 2)`` normalised ``(x, y)``; returns ``(B, N, 2)``.
    """
    _check_warp_points(points, warp)
    warp = warp.to(points.device, points.dtype)
    a = warp.affine[:, None, :, :2]                                       # (B, 1, 2, 2)
    z = _solve2(a, points - warp.affine[:, None, :, 2])                   # affine inverse, (B, N, 2)
    if warp.centers is None:
        return z
    with torch.no_grad():
        z = z.detach()
        for _ in range(iterations):
            z = z - _solve2(_jacobian(warp, z), _apply(warp, z) - points)
    return z - _solve2(_jacobian(warp, z), _apply(warp, z) - points)


def warp_jacobian(points: torch.Tensor, warp: Warp) -> torch.Tensor:
    """``J_T(z)`` ``(B, N, 2, 2)``, the Jacobian ``d T / d z`` at output points ``z`` ``(B, N, 2)``
    (analytic; ``J[..., a, b] = d T_a / d z_b``)."""
    _check_warp_points(points, warp)
    return _jacobian(warp.to(points.device, points.dtype), points)


def grid(warp: Warp, size: Size) -> torch.Tensor:
    """The ``grid_sample`` grid ``(B, H, W, 2)`` of a warp: ``grid[b, i, j] = T_b(pixel_grid[i, j])``.

    Use with ``align_corners=False`` (as :func:`warp_images` does). ``size`` is the *output*
    ``(H, W)`` or an int; the input may have any size (coordinates are normalised).
    """
    if not isinstance(warp, Warp):
        raise ValueError(f"warp must be a partlab.geometry.Warp, got {type(warp).__name__}")
    h, w = _size_hw(size)
    z = pixel_grid(h, w, device=warp.device, dtype=warp.dtype).reshape(1, h * w, 2)
    return _apply(warp, z.expand(warp.batch_size, h * w, 2)).reshape(warp.batch_size, h, w, 2)


def _check_maps(x: torch.Tensor, warp: Warp, name: str, shape: str) -> None:
    if not isinstance(warp, Warp):
        raise ValueError(f"warp must be a partlab.geometry.Warp, got {type(warp).__name__}")
    ndim = shape.count(",") + 1
    if not isinstance(x, torch.Tensor) or x.dim() != ndim:
        got = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ValueError(f"{name} must have shape {shape}, got {got}")
    if x.shape[0] != warp.batch_size:
        raise ValueError(f"{name} have batch size {x.shape[0]} but the warp has {warp.batch_size}")


def warp_images(images: torch.Tensor, warp: Warp, mode: str = "bilinear", padding_mode: str = "zeros",
                size: Optional[Size] = None) -> torch.Tensor:
    """Warp float maps ``(B, C, H, W)``: images, soft part maps or logits.

    Output pixel ``z`` takes the input's value at ``T(z)`` (``grid_sample``, ``align_corners=False``);
    outside the input it is 0 with ``padding_mode="zeros"`` (warped logits are 0 there, i.e. a
    uniform softmax), the nearest border value with ``"border"``. ``size``: output ``(H, W)``,
    default the input's. Differentiable w.r.t. the maps and the warp.
    """
    _check_maps(images, warp, "images", "(B, C, H, W)")
    if not images.is_floating_point():
        raise ValueError(f"warp_images needs floating-point maps, got {images.dtype}; use warp_labels for labels")
    g = grid(warp.to(images.device), images.shape[-2:] if size is None else size).to(images.dtype)
    return F.grid_sample(images, g, mode=mode, padding_mode=padding_mode, align_corners=False)


def warp_labels(labels: torch.Tensor, warp: Warp, fill: int = 0, size: Optional[Size] = None) -> torch.Tensor:
    """Warp integer label maps ``(B, H, W)`` with nearest-neighbour sampling; same dtype, same values.

    Output pixels whose ``T(z)`` falls outside the input get ``fill``: 0 (background, the default)
    or e.g. 255 to ignore them in the metrics.
    """
    _check_maps(labels, warp, "labels", "(B, H, W)")
    if labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}; use warp_images for float maps")
    g = grid(warp.to(labels.device), labels.shape[-2:] if size is None else size)   # (B, H', W', 2)
    values = labels[:, None].to(g.dtype)
    sampled = F.grid_sample(values, g, mode="nearest", padding_mode="zeros", align_corners=False)
    inside = F.grid_sample(torch.ones_like(values), g, mode="nearest", padding_mode="zeros", align_corners=False)
    sampled = torch.where(inside > 0.5, sampled, torch.full_like(sampled, fill))
    return sampled[:, 0].round().to(labels.dtype)                                      # (B, H', W')


def valid_mask(warp: Warp, size: Size) -> torch.Tensor:
    """``(B, 1, H, W)``: 1 where output pixels read inside the input, 0 outside, fractional on the
    border (a bilinear, zero-padded warp of ones). A mask for losses on warped maps."""
    h, w = _size_hw(size)
    ones = torch.ones(warp.batch_size, 1, h, w, device=warp.device, dtype=warp.dtype)
    return warp_images(ones, warp)


# ---------------------------------------------------------------------------------------------
# colour jitter
# ---------------------------------------------------------------------------------------------


def color_jitter(images: torch.Tensor, brightness: float = 0.3, contrast: float = 0.3, saturation: float = 0.2,
                 hue: float = 0.2, p: float = 1.0, grayscale_p: float = 0.0,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random colour jitter of a batch, new parameters per image, on the images' device.

    torchvision ``ColorJitter`` semantics: brightness, contrast and saturation factors drawn from
    ``U[max(0, 1 - v), 1 + v]`` (brightness multiplies; contrast blends with the mean grey level;
    saturation blends with the grey image), hue shift from ``U[-hue, hue]`` in fractions of the
    colour circle (``hue <= 0.5``). The four run in the fixed order brightness, contrast,
    saturation, hue (torchvision shuffles the order per call); a zero range skips its operation.
    Then, as ``RandomApply(ColorJitter, p)`` + ``RandomGrayscale(grayscale_p)``: each image is
    jittered with probability ``p`` and turned grey with probability ``grayscale_p``.

    Args:
        images: ``(B, 3, H, W)`` RGB in [0, 1]; the result stays in [0, 1].
        generator: for reproducible draws (drawn on its device); ``None`` uses torch's global RNG.

    Returns:
        ``(B, 3, H, W)``. Differentiable w.r.t. the images.
    """
    import kornia

    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"color_jitter expects images of shape (B, 3, H, W), got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"color_jitter expects floating-point images in [0, 1], got {images.dtype}")
    if min(brightness, contrast, saturation) < 0 or not 0 <= hue <= 0.5:
        raise ValueError("brightness, contrast, saturation must be >= 0 and hue in [0, 0.5], got "
                         f"{brightness}, {contrast}, {saturation}, {hue}")
    if not (0 <= p <= 1 and 0 <= grayscale_p <= 1):
        raise ValueError(f"p and grayscale_p must be probabilities, got {p}, {grayscale_p}")

    b = images.shape[0]
    u = _random((6, b), generator, images.device, images.dtype)           # one draw per image and parameter

    def factor(value: float, draw: torch.Tensor) -> torch.Tensor:
        low = max(0.0, 1.0 - value)
        return low + (1.0 + value - low) * draw                           # (B,)

    x = images
    if brightness > 0:
        x = (x * factor(brightness, u[0]).view(b, 1, 1, 1)).clamp(0, 1)
    if contrast > 0:
        x = kornia.enhance.adjust_contrast_with_mean_subtraction(x, factor(contrast, u[1]))
    if saturation > 0:
        x = kornia.enhance.adjust_saturation_with_gray_subtraction(x, factor(saturation, u[2]))
    if hue > 0:
        x = kornia.enhance.adjust_hue(x, hue * (2 * u[3] - 1) * 2 * math.pi)  # kornia takes radians
    x = torch.where((u[4] < p).view(b, 1, 1, 1), x, images)
    if grayscale_p > 0:
        gray = kornia.color.rgb_to_grayscale(x).expand_as(x)
        x = torch.where((u[5] < grayscale_p).view(b, 1, 1, 1), gray, x)
    return x.clamp(0, 1)


_JITTER_PRESETS = {
    "scops": dict(brightness=0.3, contrast=0.3, saturation=0.2, hue=0.2, p=1.0, grayscale_p=0.0),
    "contrastive": dict(brightness=0.3, contrast=0.3, saturation=0.2, hue=0.2, p=0.8, grayscale_p=0.2),
    "maskcontrast": dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8, grayscale_p=0.2),
}


def jitter_preset(name: str) -> dict:
    """Keyword arguments of :func:`color_jitter` for a method: ``"scops"``, ``"contrastive"`` or
    ``"maskcontrast"`` (REFERENCE_NOTES)."""
    if name not in _JITTER_PRESETS:
        raise ValueError(f"unknown jitter preset {name!r}; choose one of {sorted(_JITTER_PRESETS)}")
    return dict(_JITTER_PRESETS[name])


# ---------------------------------------------------------------------------------------------
# random resized crops (MaskContrast's views)
# ---------------------------------------------------------------------------------------------


def _crop_boxes(b: int, scale, ratio, generator, device) -> torch.Tensor:
    """``(B, 4)`` boxes ``(cx, cy, w, h)`` in normalised units (``w``, ``h``: fractions of the side), drawn
    as torchvision's ``RandomResizedCrop``: area fraction ``U(scale)``, log aspect ``U(log ratio)``, ten
    candidates per image, the first that fits; none fits -> the whole image."""
    tries = 10
    u = _random((3, tries, b), generator, device, torch.float32)
    area = scale[0] + (scale[1] - scale[0]) * u[0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[1]
    w, h = torch.sqrt(area * log_r.exp()), torch.sqrt(area / log_r.exp())
    fits = (w <= 1) & (h <= 1)                                               # (tries, B)
    first = torch.where(fits.any(0), fits.float().argmax(0), torch.zeros(b, dtype=torch.long, device=device))
    w = torch.where(fits.any(0), w.gather(0, first[None])[0], torch.ones(b, device=device))
    h = torch.where(fits.any(0), h.gather(0, first[None])[0], torch.ones(b, device=device))
    c = _random((2, b), generator, device, torch.float32)
    return torch.stack([(1 - w) * (2 * c[0] - 1), (1 - h) * (2 * c[1] - 1), w, h], dim=1)


def random_resized_crop(images: torch.Tensor, masks: Optional[torch.Tensor] = None, *,
                        scale: Sequence[float] = (0.2, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                        flip: float = 0.5, size: Optional[Size] = None,
                        mask_area: Optional[Sequence[float]] = None, tries: int = 10,
                        generator: Optional[torch.Generator] = None) -> dict:
    """``RandomResizedCrop`` + ``RandomHorizontalFlip`` on a batch, one box per image, on the images' device.

    Boxes as torchvision draws them (area fraction in ``scale``, aspect ratio in ``ratio``), resampled to
    ``size`` (default: the input size) bilinearly; ``masks`` ``(B, 1, H, W)`` or ``(B, H, W)`` follow the
    same boxes with nearest sampling. ``mask_area = (lo, hi)`` is MaskContrast's constraint: an image whose
    cropped mask covers ``<= lo`` or ``>= hi`` of the view gets a new box, up to ``tries`` rounds; after
    that it is viewed whole (its mask as it is, even if empty).

    Returns:
        ``{"images": (B, 3, h, w), "masks": (B, 1, h, w) or None, "boxes": (B, 4) (cx, cy, w, h)
        normalised, "flipped": (B,) bool, "redrawn": (B,) int rounds used, "whole": (B,) bool}``.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"random_resized_crop expects images (B, C, H, W), got "
                         f"{tuple(images.shape) if hasattr(images, 'shape') else type(images).__name__}")
    b, _, height, width = images.shape
    if masks is not None:
        masks = masks[:, None] if masks.dim() == 3 else masks
        if masks.shape != (b, 1, height, width):
            raise ValueError(f"masks must be (B, 1, H, W) = {(b, 1, height, width)} or (B, H, W), got "
                             f"{tuple(masks.shape)}")
    lo, hi = (float(v) for v in scale)
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {scale!r}")
    if not 0 < float(ratio[0]) <= float(ratio[1]):
        raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {ratio!r}")
    if mask_area is not None and (masks is None or not 0 <= mask_area[0] < mask_area[1] <= 1):
        raise ValueError(f"mask_area=(lo, hi) needs masks and 0 <= lo < hi <= 1, got {mask_area!r}")
    out_h, out_w = (height, width) if size is None else _size_hw(size)
    device = images.device
    boxes = _crop_boxes(b, (lo, hi), ratio, generator, device)
    flipped = _random((b,), generator, device, torch.float32) < flip
    redrawn = torch.zeros(b, dtype=torch.long, device=device)
    whole = torch.zeros(b, dtype=torch.bool, device=device)

    def sample(x: torch.Tensor, mode: str) -> torch.Tensor:
        theta = torch.zeros(b, 2, 3, device=device, dtype=torch.float32)
        theta[:, 0, 0] = torch.where(flipped, -boxes[:, 2], boxes[:, 2])
        theta[:, 1, 1] = boxes[:, 3]
        theta[:, :, 2] = boxes[:, :2]
        grid = F.affine_grid(theta, [b, x.shape[1], out_h, out_w], align_corners=False)
        return F.grid_sample(x.float(), grid, mode=mode, padding_mode="border", align_corners=False)

    view_masks = None
    if masks is not None:
        view_masks = sample(masks, "nearest")
        if mask_area is not None:
            for round_ in range(1, tries + 1):
                area = view_masks.mean((1, 2, 3))
                bad = (area <= mask_area[0]) | (area >= mask_area[1])
                if not bool(bad.any()):
                    break
                fresh = _crop_boxes(b, (lo, hi), ratio, generator, device)
                if round_ == tries:                                       # give up: the whole image
                    fresh = torch.tensor([0.0, 0.0, 1.0, 1.0], device=device).expand(b, 4)
                    whole = whole | bad
                boxes = torch.where(bad[:, None], fresh, boxes)
                redrawn = redrawn + bad.long()
                view_masks = sample(masks, "nearest")
    return {"images": sample(images, "bilinear").to(images.dtype), "masks": view_masks, "boxes": boxes,
            "flipped": flipped, "redrawn": redrawn, "whole": whole}
