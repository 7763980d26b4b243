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

>>> import torch
>>> parts = torch.zeros(1, 1, 4, 4)
>>> parts[0, 0, 1, 2] = 1.0            # a delta at row 1, column 2
>>> part_centers(parts)                 # x = (2*2+1)/4 - 1, y = (2*1+1)/4 - 1
tensor([[[ 0.2500, -0.2500]]])
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch

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
    z = torch.where(z > 0, z, torch.ones_like(z))                     # empty part -> centre (0, 0)
    x = (mass.sum(dim=-2) * grid[0, :, 0]).sum(dim=-1)                # (B, K): column marginal . x
    y = (mass.sum(dim=-1) * grid[:, 0, 1]).sum(dim=-1)                # (B, K): row marginal . y
    return torch.stack((x, y), dim=-1) / z.unsqueeze(-1)              # (B, K, 2)
