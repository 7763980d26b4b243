"""Vectorised rasterisation of the synthetic world's primitives (private to ``partlab.data``).

Every primitive is drawn by evaluating a closed-form inside test on the pixel centres of its
bounding box only (no per-pixel Python loops). In the primitive's own frame, with ``u`` along its
axis and ``v`` across it (object units):

- ellipse / capsule / tapered capsule:
  ``d2 = (max(|u| - a, 0) / rx)^2 + (v / (ry * (1 + taper * u / (a + rx))))^2``,
  ``a = 0`` is an ellipse, ``a > 0`` a capsule (stadium), ``taper != 0`` narrows one end;
- convex polygon: the gauge ``g = max_i n_i . (u, v) / c_i`` over its edges (``n_i . p = c_i`` on
  edge i, the origin inside), ``d2 = g^2``.

A pixel is inside iff ``d2 <= 1``; ``d2`` also drives the rim shading (``1 - RIM * d2^2``) and the
``"pupil"`` texture. Labels are hard (no anti-aliasing): a pixel belongs to the front-most primitive
whose test it passes (painter's algorithm, primitives drawn back to front).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

# Texture families: functions t(u, v) in the part's own frame that mix its primary and secondary colour.
TEXTURES = ("plain", "stripes", "bands", "spots", "checker", "gradient", "fade", "pupil")
# soft families give t in [-1, 1] (colour = primary + (t + 1) / 2 * (secondary - primary)),
# hard ones a boolean t (colour = secondary where t, primary elsewhere)
SOFT_TEXTURES = frozenset({"stripes", "bands", "gradient", "fade"})
RIM = 0.35  # shading: a pixel at normalised radius d is darkened by RIM * d^4


class Prim:
    """One posed primitive, ready to be drawn (world frame = normalised image coordinates).

    ``(cx, cy)`` centre; ``m`` = 2x2 world-to-local matrix (rows: u, v, in object units); ``hx, hy``
    half-extents of its axis-aligned bounding box; ``shape`` as described in the module docstring;
    ``base, delta`` colours (3, 1, 1) prepared for the texture family (:func:`paint_colours`);
    ``omega`` the texture's angular frequency in object units; ``code`` the value written into the
    label/instance code map (None: paint only, e.g. clutter).

    Internally the rows of ``m`` are divided by the primitive's half-sizes, so that ``draw`` works
    in normalised coordinates (s, r) = (u / rx, v / ry) (polygons: by their half-extents) and the
    inside test of an ellipse is just ``s^2 + r^2 <= 1``; texture frequencies are rescaled to match.
    """

    __slots__ = ("cx", "cy", "m00", "m01", "m10", "m11", "hx", "hy", "a", "taper_k", "fade_k", "edges",
                 "tex", "omega_u", "omega_v", "ph1", "ph2", "base", "delta", "code")

    def __init__(self, cx: float, cy: float, m: Tuple[float, float, float, float], hx: float, hy: float,
                 shape: tuple, tex: str, omega: float, ph1: float, ph2: float,
                 base: np.ndarray, delta: np.ndarray, code: Optional[int]):
        self.cx, self.cy, self.hx, self.hy = cx, cy, hx, hy
        if shape[0] == "poly":  # ("poly", gauge coefficients, half-extent along u, half-extent along v)
            su, sv = shape[2], shape[3]
            self.edges = tuple((ax * su, ay * sv) for ax, ay in shape[1])
            self.a = self.taper_k = 0.0
            self.fade_k = 1.0
        else:  # ("ellipse", a, rx, ry, taper)
            _, a, su, sv, taper = shape
            self.edges = None
            self.a = a / su                        # straight half-length in units of rx
            self.fade_k = su / (a + su)            # u / (a + rx) = s * fade_k
            self.taper_k = taper * self.fade_k
        m00, m01, m10, m11 = m
        self.m00, self.m01, self.m10, self.m11 = m00 / su, m01 / su, m10 / sv, m11 / sv
        self.tex, self.omega_u, self.omega_v, self.ph1, self.ph2 = tex, omega * su, omega * sv, ph1, ph2
        self.base, self.delta, self.code = base, delta, code


def polygon_gauge(vertices: Sequence[Tuple[float, float]]) -> Tuple[Tuple[float, float], ...]:
    """Gauge coefficients ``n_i / c_i`` of a convex polygon that contains the origin strictly."""
    coefs = []
    n = len(vertices)
    for i in range(n):
        (x0, y0), (x1, y1) = vertices[i], vertices[(i + 1) % n]
        nx, ny = y1 - y0, x0 - x1          # a normal of the edge
        c = nx * x0 + ny * y0
        if abs(c) < 1e-9:
            raise ValueError(f"polygon {vertices} must contain its origin strictly")
        coefs.append((nx / c, ny / c))     # sign of c fixes the orientation: the origin side is < 1
    return tuple(coefs)


def paint_colours(primary: np.ndarray, secondary: np.ndarray, tex: str) -> Tuple[np.ndarray, np.ndarray]:
    """(base, delta), each (3, 1, 1) float32, such that colour = base + delta * t for the family."""
    p = np.asarray(primary, dtype=np.float32).reshape(3, 1, 1)
    s = np.asarray(secondary, dtype=np.float32).reshape(3, 1, 1)
    if tex in SOFT_TEXTURES:
        return (p + s) * 0.5, (s - p) * 0.5
    return p, s - p


def pixel_centres(size: int) -> Tuple[np.ndarray, np.ndarray]:
    """x of every column (size,) and y of every row (size, 1): ``(2j + 1) / size - 1``, float32."""
    c = ((2.0 * np.arange(size) + 1.0) / size - 1.0).astype(np.float32)
    return c, c[:, None].copy()


def draw(p: Prim, image: np.ndarray, code: Optional[np.ndarray], xs: np.ndarray, ys: np.ndarray) -> None:
    """Paint primitive ``p`` into ``image`` (3, S, S) and, if ``p.code`` is not None, into ``code`` (S, S)."""
    size = xs.shape[0]
    half = 0.5 * size
    j0 = max(math.ceil((p.cx - p.hx + 1.0) * half - 0.5), 0)
    j1 = min(math.floor((p.cx + p.hx + 1.0) * half - 0.5), size - 1)
    i0 = max(math.ceil((p.cy - p.hy + 1.0) * half - 0.5), 0)
    i1 = min(math.floor((p.cy + p.hy + 1.0) * half - 0.5), size - 1)
    if j1 < j0 or i1 < i0:
        return
    x = xs[j0:j1 + 1] - p.cx                       # (w,)
    y = ys[i0:i1 + 1] - p.cy                       # (h, 1)
    s = x * p.m00 + y * p.m01                      # (h, w) along the part's axis, in units of rx
    r = x * p.m10 + y * p.m11                      # (h, w) across it, in units of ry
    if p.edges is None:
        if p.a:                                    # capsule: distance beyond the straight segment
            q = np.abs(s)
            q -= p.a
            np.maximum(q, 0.0, out=q)
        else:
            q = s
        w = r
        if p.taper_k:
            w = r / np.maximum(1.0 + p.taper_k * s, 0.05)
        d2 = q * q
        d2 += w * w
    else:
        g = None
        for ax, ay in p.edges:
            e = s * ax
            e += r * ay
            g = e if g is None else np.maximum(g, e, out=g)
        d2 = g * g                                 # g >= 0: the polygon is bounded around its origin
    mask = d2 <= 1.0                               # (h, w) inside test
    tex = p.tex
    if tex == "plain":
        t = None
    elif tex == "stripes":                         # lines parallel to the part's axis
        t = np.sin(r * p.omega_v + p.ph1)
    elif tex == "bands":                           # lines across the axis
        t = np.sin(s * p.omega_u + p.ph1)
    elif tex == "spots":
        t = np.sin(s * p.omega_u + p.ph1) * np.sin(r * p.omega_v + p.ph2) > 0.45
    elif tex == "checker":
        t = np.sin(s * p.omega_u + p.ph1) * np.sin(r * p.omega_v + p.ph2) > 0.0
    elif tex == "gradient":                        # across the axis, primary on the -v side
        t = r
    elif tex == "fade":                            # along the axis, primary at the -u end
        t = s * p.fade_k
    else:  # "pupil": secondary in the centre
        t = d2 < 0.3
    shade = d2 * d2
    shade *= -RIM
    shade += 1.0
    if t is None:
        col = p.base * shade                       # (3, h, w)
    else:
        col = p.delta * t
        col += p.base
        col *= shade
    np.copyto(image[:, i0:i1 + 1, j0:j1 + 1], col, where=mask)
    if p.code is not None and code is not None:
        np.copyto(code[i0:i1 + 1, j0:j1 + 1], p.code, where=mask)
