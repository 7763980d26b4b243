"""Scene generation and drawing of the synthetic world (private; the public face is ``synthetic``).

A sample is made in two steps. ``sample_scene`` draws everything that does not depend on the
resolution (instances: colours, proportions, joint states, global pose; background gradient,
clutter, distractors, occluder; noise offset) from one ``np.random.Generator``, in fixed-size blocks
of uniforms so that a knob only changes what it controls. ``render_frame`` then poses the instances
(forward kinematics, ``_pose``) and rasterises every primitive at the requested size. Composite
scenes (several objects of mixed categories, ``sample_composite`` / ``render_composite``) are made of
the same pieces: instances, background and drawing.
"""

from __future__ import annotations

import functools
import math
import types
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._raster import TEXTURES, Prim, draw, paint_colours, pixel_centres, polygon_gauge
from ._shapes import FIT, SPECS, Template, palette

if TYPE_CHECKING:
    from .synthetic import SyntheticConfig

MAX_INSTANCES, MAX_DISTRACTORS = 8, 8
TEMPLATES: Dict[str, Template] = {name: Template(name) for name in SPECS}

# ------------------------------------------------------------------------------------ random draws
_INSTANCE_DRAWS = 256          # uniforms reserved per instance (appearance, proportions, joints, pose)
_VARIED_OFFSET = 224           # the "varied" appearance reads its draws from here (the others use < 160)
_BLOB_DRAWS, _MAX_BLOBS = 16, 16
_SCENE_DRAWS = 16 + _MAX_BLOBS * _BLOB_DRAWS + 16 + MAX_DISTRACTORS * 16 + 4
_BACKGROUND_COLOURS = tuple(np.array(c, dtype=np.float32).reshape(3, 1, 1) for c in (
    (0.42, 0.54, 0.29), (0.54, 0.66, 0.38), (0.66, 0.78, 0.91), (0.48, 0.6, 0.72), (0.85, 0.78, 0.63),
    (0.6, 0.6, 0.6), (0.42, 0.42, 0.42), (0.54, 0.44, 0.31), (0.72, 0.66, 0.53), (0.3, 0.36, 0.3)))
_CLUTTER_TEXTURES = tuple(t for t in TEXTURES if t != "pupil")
_TWO_PI = 2.0 * math.pi


class _Draws:
    """A cursor over a block of uniforms in [0, 1) (Python floats: scalar use is fast)."""

    __slots__ = ("values", "pos")

    def __init__(self, values: Sequence[float]):
        self.values, self.pos = values, 0

    def __call__(self) -> float:
        v = self.values[self.pos]
        self.pos += 1
        return v

    def sym(self) -> float:
        """Uniform in [-1, 1)."""
        return 2.0 * self() - 1.0

    def pick(self, n: int) -> int:
        return min(int(self() * n), n - 1)


# ---------------------------------------------------------------------------------------- instances
class _Instance:
    """One object's appearance, proportions, rest joint state and global pose (size-independent)."""

    __slots__ = ("tpl", "paints", "sizes", "state", "pose", "code", "_tones")

    def colours(self, paint: str, tone: float) -> Tuple[np.ndarray, np.ndarray]:
        """(base, delta) of ``paint`` darkened by ``tone`` (cached: clips pose an instance many times)."""
        key = (paint, tone)
        if key not in self._tones:
            base, delta = self.paints[paint][:2]
            self._tones[key] = (base * np.float32(tone), delta * np.float32(tone))
        return self._tones[key]


def _sample_instance(tpl: Template, d: _Draws, cfg: "SyntheticConfig", code: int, extra: bool) -> _Instance:
    """Draw one instance from its block of uniforms, always in the same order: colour candidate per
    paint group; per paint a colour jitter, texture frequency and phases; per node its size jitter
    (su along the axis, sv across) and joint state (angle, shift x, shift y, grow, each in [-1, 1]);
    the global pose. ``code`` = 16 * instance id, the base of its values in the code map."""
    inst = _Instance()
    inst.tpl, inst.code, inst._tones = tpl, code, {}
    group_u = {g: d() for g in tpl.groups}
    primaries, secondaries, waves = [], [], []
    for name in tpl.paint_names:
        paint = tpl.paints[name]
        (pr, pg, pb), (sr, sg, sb) = paint.colours[min(int(group_u[paint.group] * len(paint.colours)),
                                                       len(paint.colours) - 1)]
        jr, jg, jb = 0.14 * (d() - 0.5), 0.14 * (d() - 0.5), 0.14 * (d() - 0.5)
        primaries.append((pr + jr, pg + jg, pb + jb))
        secondaries.append((sr + jr, sg + jg, sb + jb))
        waves.append((_TWO_PI / paint.period * (0.8 + 0.45 * d()), _TWO_PI * d(), _TWO_PI * d()))
    if getattr(cfg, "appearance", "typed") == "varied":
        primaries, secondaries = _varied_colours(tpl, _Draws(d.values[_VARIED_OFFSET:]))
    p = np.clip(np.array(primaries, dtype=np.float32), 0.0, 1.0)[:, :, None, None]     # (paints, 3, 1, 1)
    s = np.clip(np.array(secondaries, dtype=np.float32), 0.0, 1.0)[:, :, None, None]
    soft = tpl.soft_paints                                                               # (paints, 1, 1, 1)
    base = np.where(soft, (p + s) * 0.5, p)          # colour = base + delta * t, as in paint_colours
    delta = np.where(soft, (s - p) * 0.5, s - p)
    inst.paints = {name: (base[j], delta[j], tpl.paints[name].texture) + waves[j]
                   for j, name in enumerate(tpl.paint_names)}
    n = len(tpl.nodes)
    inst.sizes = [(1.0 + 0.16 * (d() - 0.5), 1.0 + 0.2 * (d() - 0.5)) for _ in range(n)]
    inst.state = [(d.sym(), d.sym(), d.sym(), d.sym()) for _ in range(n)]
    lo, hi = cfg.scale
    scale = lo * (hi / lo) ** d()
    theta = math.radians(cfg.rotation) * d.sym()
    flip = d() < cfg.flip
    tx, ty = d.sym(), d.sym()
    if extra:   # other instances: smaller, anywhere in the frame
        scale *= 0.55 + 0.3 * d()
        tx, ty = 0.75 * tx, 0.75 * ty
    else:
        tx, ty = cfg.translation * tx, cfg.translation * ty
    inst.pose = (scale, theta, flip, tx, ty)
    return inst


def _hue_rotation(angle: float) -> np.ndarray:
    """The 3 x 3 matrix rotating RGB colours by ``angle`` about the grey axis (a hue rotation)."""
    c, s = math.cos(angle), math.sin(angle)
    k = (1.0 - c) / 3.0
    r = math.sqrt(1.0 / 3.0) * s
    return np.array([[c + k, k - r, k + r], [k + r, c + k, k - r], [k - r, k + r, c + k]])


@functools.lru_cache(maxsize=None)
def _colour_pool() -> Tuple[Tuple[Tuple[float, float, float], Tuple[float, float, float]], ...]:
    """Every (primary, secondary) colour candidate of every category's paints, the eye dots excepted."""
    pool = []
    for tpl in TEMPLATES.values():
        for name in tpl.paint_names:
            paint = tpl.paints[name]
            if paint.group != "eye":
                pool.extend(paint.colours)
    return tuple(pool)


def _varied_colours(tpl: Template, d: _Draws) -> Tuple[list, list]:
    """Primary and secondary colour per paint for the "varied" appearance: one hue rotation for the
    instance; per paint a candidate drawn from :func:`_colour_pool` (independently of the part type),
    a coin that swaps its two colours and a brightness factor in [0.65, 1.25]. Eye dots keep theirs."""
    pool, rotation = _colour_pool(), _hue_rotation(_TWO_PI * d())
    primaries, secondaries = [], []
    for name in tpl.paint_names:
        paint = tpl.paints[name]
        pick, swap, bright = d.pick(len(pool)), d() < 0.5, 0.65 + 0.6 * d()
        if paint.group == "eye":
            primaries.append(paint.colours[0][0])
            secondaries.append(paint.colours[0][1])
            continue
        a, b = (np.asarray(c) for c in pool[pick])
        a, b = (b, a) if swap else (a, b)
        primaries.append(tuple(rotation @ a * bright))
        secondaries.append(tuple(rotation @ b * bright))
    return primaries, secondaries


def _pose(inst: _Instance, state: Sequence[Tuple[float, float, float, float]],
          pose: Tuple[float, float, bool, float, float], art: float,
          ) -> Tuple[List[Prim], List[Tuple[float, float]]]:
    """Forward kinematics: the instance's primitives (back to front) and its landmarks, world frame.

    A node's angle is ``rest + art * (lo + (hi - lo) * (s + 1) / 2)`` for joint state s in [-1, 1];
    its joint sits at its parent's frame origin + R(parent angle) (at * parent size + art * shift * s).
    Object coordinates p map to the world as ``T + k R(theta) F (p - centre)``, k = scale * fit.
    """
    tpl = inst.tpl
    nodes, parent, joint, twin, shapes = tpl.nodes, tpl.parent, tpl.joint, tpl.twin, tpl.shapes
    scale, theta, flip, tx, ty = pose
    k = scale * tpl.fit
    ct, st = math.cos(theta) * k, math.sin(theta) * k
    # A = k R(theta) F: object frame -> world (F mirrors x when flipped)
    a00, a01, a10, a11 = (-ct, -st, -st, ct) if flip else (ct, -st, st, ct)
    ox0, oy0 = tpl.centre
    n = len(nodes)
    jx, jy, ang = [0.0] * n, [0.0] * n, [0.0] * n
    geo: List[Optional[tuple]] = [None] * n
    for i in range(n):
        node = nodes[i]
        s = state[joint[i]]
        su, sv = inst.sizes[twin[i]]
        lo, hi = tpl.swing[i]
        a = tpl.rad[i] + art * (lo + (hi - lo) * 0.5 * (s[0] + 1.0))
        p = parent[i]
        if p < 0:
            x, y, phi = 0.0, 0.0, a
        else:
            psu, psv = inst.sizes[twin[p]]
            ax = node.at[0] * psu + art * node.shift[0] * s[1]
            ay = node.at[1] * psv + art * node.shift[1] * s[2]
            c, sn = math.cos(ang[p]), math.sin(ang[p])
            x, y, phi = jx[p] + c * ax - sn * ay, jy[p] + sn * ax + c * ay, ang[p] + a
        jx[i], jy[i], ang[i] = x, y, phi
        shape = shapes[i]
        if shape is None:
            continue
        glo, ghi = node.grow
        g = 1.0 + art * (glo + (ghi - glo) * 0.5 * (s[3] + 1.0))
        c, sn = math.cos(phi), math.sin(phi)
        px, py = x + c * node.offset * su - ox0, y + sn * node.offset * su - oy0
        cx, cy = tx + a00 * px + a01 * py, ty + a10 * px + a11 * py
        m = (a00 * c + a01 * sn, -a00 * sn + a01 * c, a10 * c + a11 * sn, -a10 * sn + a11 * c)  # local -> world
        if shape[0] == "poly":
            sg = sv * g
            geo[i] = (cx, cy, m, shape[2] * su, shape[3] * sg,
                      ("poly", tuple((ex / su, ey / sg) for ex, ey in tpl.gauges[i]), shape[2] * su, shape[3] * sg))
        else:
            _, sa, srx, sry, taper = shape
            ry = sry * sv * g
            geo[i] = (cx, cy, m, (sa + srx) * su, ry, ("ellipse", sa * su, srx * su, ry, taper))
    prims = []
    inv_k2 = 1.0 / (k * k)
    for i in tpl.draw_order:
        cx, cy, m, ext_u, ext_v, shape = geo[i]
        node = nodes[i]
        m00, m01, m10, m11 = m
        bv = ext_v * (1.0 + abs(shape[4])) if shape[0] == "ellipse" else ext_v
        hx, hy = abs(m00) * ext_u + abs(m01) * bv, abs(m10) * ext_u + abs(m11) * bv
        base, delta = inst.colours(node.paint, node.tone)
        _, _, tex, omega, ph1, ph2 = inst.paints[node.paint]
        minv = (m00 * inv_k2, m10 * inv_k2, m01 * inv_k2, m11 * inv_k2)   # similarity: M^-1 = M^T / k^2
        prims.append(Prim(cx, cy, minv, hx, hy, shape, tex, omega, ph1, ph2, base, delta,
                          inst.code + tpl.label[i]))
    landmarks = []
    for i, fu, fv in tpl.landmarks:
        cx, cy, (m00, m01, m10, m11), ext_u, ext_v, _ = geo[i]
        lu, lv = fu * ext_u, fv * ext_v
        landmarks.append((cx + m00 * lu + m01 * lv, cy + m10 * lu + m11 * lv))
    if flip:
        landmarks = [landmarks[j] for j in tpl.flip_perm]
    return prims, landmarks


def _prepare_template(tpl: Template) -> None:
    """Centre and fit of the rest pose, so that every category fills the frame alike."""
    placement = types.SimpleNamespace(scale=(1.0, 1.0), rotation=0.0, flip=0.0, translation=0.0)
    rest = _sample_instance(tpl, _Draws([0.5] * _INSTANCE_DRAWS), placement, 0, False)
    prims, _ = _pose(rest, rest.state, (1.0, 0.0, False, 0.0, 0.0), 0.0)
    x0 = min(p.cx - p.hx for p in prims)
    x1 = max(p.cx + p.hx for p in prims)
    y0 = min(p.cy - p.hy for p in prims)
    y1 = max(p.cy + p.hy for p in prims)
    tpl.centre = (0.5 * (x0 + x1), 0.5 * (y0 + y1))
    tpl.fit = FIT / max(0.5 * (x1 - x0), 0.5 * (y1 - y0))


for _tpl in TEMPLATES.values():
    _prepare_template(_tpl)


# ------------------------------------------------------------------------------------------- scenes
class Scene:
    """Everything about one sample that does not depend on the resolution."""

    __slots__ = ("tpl", "cat_code", "index", "cfg", "gradient", "background", "occluder", "instances",
                 "noise_offset")


def _colour(d: _Draws, colours: Sequence[np.ndarray]) -> np.ndarray:
    return colours[d.pick(len(colours))]


@functools.lru_cache(maxsize=None)
def _clutter_colours(category: str, i: int, j: int, tex: str) -> Tuple[np.ndarray, np.ndarray]:
    """(base, delta) mixing clutter colours i and j (object palette, then background colours) for a texture."""
    colours = _palette_arrays(category) + _BACKGROUND_COLOURS
    base, delta = paint_colours(colours[i], colours[j], tex)
    base.setflags(write=False)      # shared between samples
    delta.setflags(write=False)
    return base, delta


def _clutter_paint(d: _Draws, category: str) -> Tuple[str, float, float, float, np.ndarray, np.ndarray]:
    """A random texture, its frequency and phases, and two colours from the category's palette or the
    background colours (what clutter and occluders are painted with)."""
    tex = _CLUTTER_TEXTURES[d.pick(len(_CLUTTER_TEXTURES))]
    omega, ph1, ph2 = _TWO_PI / (0.06 + 0.12 * d()), _TWO_PI * d(), _TWO_PI * d()
    n = len(_palette_arrays(category)) + len(_BACKGROUND_COLOURS)
    return (tex, omega, ph1, ph2) + _clutter_colours(category, d.pick(n), d.pick(n), tex)


def _flat_prim(cx: float, cy: float, angle: float, shape: tuple, tex: str, omega: float, ph1: float,
               ph2: float, base: np.ndarray, delta: np.ndarray, code: Optional[int]) -> Prim:
    """A primitive placed directly in the world frame (clutter, distractors, occluder); colours as
    prepared by ``paint_colours``."""
    c, s = math.cos(angle), math.sin(angle)
    if shape[0] == "poly":
        ext_u, ext_v = shape[2], shape[3]
    else:
        ext_u, ext_v = shape[1] + shape[2], shape[3] * (1.0 + abs(shape[4]))
    hx, hy = abs(c) * ext_u + abs(s) * ext_v, abs(s) * ext_u + abs(c) * ext_v
    return Prim(cx, cy, (c, s, -s, c), hx, hy, shape, tex, omega, ph1, ph2, base, delta, code)


def _rect(hu: float, hv: float) -> tuple:
    return ("poly", polygon_gauge(((-hu, -hv), (hu, -hv), (hu, hv), (-hu, hv))), hu, hv)


def _random_shape(d: _Draws, size: float) -> tuple:
    kind, aspect, taper = d(), 0.3 + 0.7 * d(), 0.8 * d.sym()
    if kind < 0.4:
        return ("ellipse", 0.0, size, size * aspect, 0.0)
    if kind < 0.7:
        return _rect(size, size * aspect)
    return ("ellipse", 0.6 * size, 0.4 * size, 0.4 * size * aspect, taper)


def sample_scene(category: str, index: int, seed: int, split_code: int, cfg: "SyntheticConfig") -> Scene:
    """Everything about sample ``index`` that does not depend on the resolution."""
    tpl = TEMPLATES[category]
    cat_code = tuple(TEMPLATES).index(category)
    rng = np.random.default_rng([seed, split_code, cat_code, index, 0])
    scene = Scene()
    scene.tpl, scene.cat_code, scene.index, scene.cfg = tpl, cat_code, index, cfg
    main = _sample_instance(tpl, _Draws(rng.random(_INSTANCE_DRAWS).tolist()), cfg, 16, False)
    _sample_background(scene, _Draws(rng.random(_SCENE_DRAWS).tolist()), main)
    instances = [main]
    if cfg.n_instances > 1:
        extra = rng.random(_INSTANCE_DRAWS * (cfg.n_instances - 1)).tolist()
        for j in range(1, cfg.n_instances):
            block = _Draws(extra[(j - 1) * _INSTANCE_DRAWS:j * _INSTANCE_DRAWS])
            instances.append(_sample_instance(tpl, block, cfg, 16 * (j + 1), True))
    scene.instances = instances
    return scene


def _sample_background(scene: "Scene | Composite", d: _Draws, main: _Instance) -> None:
    """The background gradient, clutter, distractors, occluder and noise offset of ``scene`` from its
    block of ``_SCENE_DRAWS`` uniforms; clutter and distractors take the colours of ``main``'s category
    and paints, the occluder (if any) covers ``main``."""
    cfg, tpl = scene.cfg, main.tpl
    category = tpl.name
    objects = _palette_arrays(category)
    # background gradient: a muted colour, pulled toward an object colour as clutter grows
    bg, obj = _colour(d, _BACKGROUND_COLOURS), _colour(d, objects)
    c0 = bg + (obj - bg) * np.float32(0.6 * cfg.clutter * d())
    c1 = np.clip(c0 * np.float32(0.7 + 0.45 * d()) + np.float32(0.06) * np.float32(d.sym()), 0.0, 1.0)
    direction = _TWO_PI * d()
    scene.gradient = (c0, c1, math.cos(direction), math.sin(direction))
    prims = []
    for b in range(int(round(cfg.clutter * _MAX_BLOBS))):
        d.pos = 16 + b * _BLOB_DRAWS
        kind, cx, cy, size, angle = d(), 1.1 * d.sym(), 1.1 * d.sym(), 0.06 + 0.3 * d(), math.pi * d()
        if kind < 0.45:
            shape = ("ellipse", 0.0, size, size * (0.3 + 0.7 * d()), 0.0)
        elif kind < 0.75:
            shape = _rect(size, size * (0.3 + 0.7 * d()))
        else:   # a stripe across the frame
            shape = ("ellipse", 1.5, 0.015 + 0.05 * d(), 0.015 + 0.05 * d(), 0.0)
        prims.append(_flat_prim(cx, cy, angle, shape, *_clutter_paint(d, category), None))
    # distractors: part-like shapes with the category's own paints, labelled background
    base = 16 + _MAX_BLOBS * _BLOB_DRAWS + 16
    for j in range(cfg.distractors):
        d.pos = base + 16 * j
        cx, cy, angle = 0.85 * d.sym(), 0.85 * d.sym(), _TWO_PI * d()
        shape = _random_shape(d, 0.07 + 0.12 * d())
        base_c, delta, tex, omega, ph1, ph2 = main.paints[tpl.paint_names[d.pick(len(tpl.paint_names))]]
        prims.append(_flat_prim(cx, cy, angle, shape, tex, omega, ph1, ph2, base_c, delta, None))
    scene.background = prims
    # occluder: in front of the main object, labelled background
    d.pos = 16 + _MAX_BLOBS * _BLOB_DRAWS
    scene.occluder = None
    present, kind, ox, oy, size_u, angle = d(), d(), d.sym(), d.sym(), d(), math.pi * d()
    if present < cfg.occlusion:
        scale = main.pose[0]
        size = (0.12 + 0.28 * cfg.occlusion) * (0.7 + 0.6 * size_u) * scale
        aspect = 0.35 + 0.65 * d()
        shape = _rect(size, size * aspect) if kind < 0.5 else ("ellipse", 0.0, size, size * aspect, 0.0)
        scene.occluder = _flat_prim(main.pose[3] + 0.45 * scale * ox, main.pose[4] + 0.45 * scale * oy, angle,
                                    shape, *_clutter_paint(d, category), 0)
    d.pos = _SCENE_DRAWS - 4
    scene.noise_offset = d()


@functools.lru_cache(maxsize=None)
def _palette_arrays(category: str) -> Tuple[np.ndarray, ...]:
    return tuple(np.array(c, dtype=np.float32).reshape(3, 1, 1) for c in palette(TEMPLATES[category]))


@functools.lru_cache(maxsize=16)
def _grid(size: int) -> Tuple[np.ndarray, np.ndarray]:
    return pixel_centres(size)


@functools.lru_cache(maxsize=8)
def _noise_bank(size: int) -> np.ndarray:
    """A fixed bank of N(0, 1) float32 values; each frame reads 3 S^2 of them at a random offset."""
    return np.random.default_rng(20240601).standard_normal(4 * size * size, dtype=np.float32)


# ------------------------------------------------------------------------------------------ drawing
def _add_noise(image: np.ndarray, noise: float, offset: float, size: int) -> None:
    """Add pixel noise of std ``noise`` (read from the bank at ``offset``) to ``image`` and clip to [0, 1]."""
    if noise > 0.0:
        bank = _noise_bank(size)
        start = int(offset * size * size)
        image += bank[start:start + 3 * size * size].reshape(3, size, size) * np.float32(noise)
    np.clip(image, 0.0, 1.0, out=image)


def render_background(scene: "Scene | Composite", size: int) -> np.ndarray:
    """The gradient, clutter and distractors (3, S, S): shared by every frame of a clip."""
    xs, ys = _grid(size)
    c0, c1, gx, gy = scene.gradient
    g = xs * np.float32(0.5 * gx) + ys * np.float32(0.5 * gy)     # (S, S)
    g += 0.5                                                        # c0 -> c1 along (gx, gy)
    image = (c1 - c0) * g
    image += c0                                                     # (3, S, S)
    for p in scene.background:
        draw(p, image, None, xs, ys)
    return image


def render_frame(scene: Scene, background: np.ndarray, states: Sequence, poses: Sequence, noise_offset: float,
                 size: int) -> Dict[str, np.ndarray]:
    """Draw the instances (main last, in front), the occluder and the noise over a background."""
    xs, ys = _grid(size)
    image = background.copy()
    code = np.zeros((size, size), dtype=np.uint8)   # 16 * instance + part label
    art = scene.cfg.articulation
    landmarks = None
    for j in range(len(scene.instances) - 1, -1, -1):
        prims, lms = _pose(scene.instances[j], states[j], poses[j], art)
        for p in prims:
            draw(p, image, code, xs, ys)
        if j == 0:
            landmarks = lms
    if scene.occluder is not None:
        draw(scene.occluder, image, code, xs, ys)
    _add_noise(image, scene.cfg.noise, noise_offset, size)
    parts = (code & 15).astype(np.int64)
    instances = (code >> 4).astype(np.int64)
    lm = np.array(landmarks, dtype=np.float32)                          # (L, 2)
    pix = np.floor((lm + 1.0) * (0.5 * size)).astype(np.int64)          # nearest pixel (column, row)
    inside = ((pix >= 0) & (pix < size)).all(1)
    np.clip(pix, 0, size - 1, out=pix)
    visible = inside & (code[pix[:, 1], pix[:, 0]] == scene.tpl.landmark_codes)
    main = instances == 1
    rows, cols = np.flatnonzero(main.any(1)), np.flatnonzero(main.any(0))
    if rows.size:
        bbox = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float32) * np.float32(2.0 / size)
        bbox -= 1.0
    else:
        bbox = np.array([poses[0][3], poses[0][4]] * 2, dtype=np.float32)
    return {"image": image, "parts": parts, "fg": (code > 0)[None].astype(np.float32), "instances": instances,
            "landmarks": lm, "visible": visible, "bbox": bbox,
            "category": np.int64(scene.cat_code), "index": np.int64(scene.index)}


# -------------------------------------------------------------------------------------------- clips
_SEGMENT = 4   # frames per motion segment in a clip


def _smoothstep(t: float) -> float:
    return t * t * (3.0 - 2.0 * t)


def trajectory(inst: _Instance, frames: int, rng: np.random.Generator, drift: float = 1.0,
               kind: str = "similarity") -> Tuple[List, List]:
    """Joint states and global poses of one instance over ``frames`` frames.

    The clip is cut into segments of ``_SEGMENT`` frames; in each, one to three joints (coupled joints
    move together) travel smoothly (smoothstep) to a new random state while the others hold; the
    global pose drifts linearly by a small rotation, scale change and translation over the clip
    (at most 6 degrees, 5 % and 0.06 normalised units, times ``drift``). ``kind="translation"`` keeps
    the translation only (the same draws, rotation and scale change set to none).
    """
    tpl = inst.tpl
    keys = list(range(0, frames - 1, _SEGMENT)) + [frames - 1]
    current = [list(s) for s in inst.state]
    states = [[tuple(s) for s in current]]
    u = rng.random(8 + (len(keys) - 1) * (26 + len(tpl.movable))).tolist()
    d = _Draws(u)
    scale, theta, flip, tx, ty = inst.pose
    m = float(drift)
    drift = (1.0 + 0.05 * m * d.sym(), math.radians(6.0) * m * d.sym(), 0.06 * m * d.sym(), 0.06 * m * d.sym())
    if kind == "translation":
        drift = (1.0, 0.0, drift[2], drift[3])
    for a, b in zip(keys[:-1], keys[1:]):
        n_movers = 1 + (d() < 0.4) + (d() < 0.15)
        order = sorted(tpl.movable, key=lambda _: d())[:n_movers]
        start = {i: tuple(current[i]) for i in order}
        target = {}
        for i in order:
            new = []
            for v in current[i]:
                step = (0.6 + 0.7 * d()) * (1.0 if d() < 0.5 else -1.0)
                w = v + step
                w = 2.0 - w if w > 1.0 else (-2.0 - w if w < -1.0 else w)
                new.append(w)
            target[i] = tuple(new)
        for t in range(a + 1, b + 1):
            f = _smoothstep((t - a) / (b - a))
            for i in order:
                current[i] = [s + (e - s) * f for s, e in zip(start[i], target[i])]
            states.append([tuple(s) for s in current])
    poses = []
    for t in range(frames):
        f = t / (frames - 1) if frames > 1 else 0.0
        poses.append((scale * drift[0] ** f, theta + drift[1] * f, flip, tx + drift[2] * f, ty + drift[3] * f))
    return states, poses


# --------------------------------------------------------------------------------- composite scenes
MAX_OBJECTS = 4
MIN_VISIBLE = 0.035            # fraction of the image each object keeps visible, measured at _CHECK_SIZE
_CHECK_SIZE = 32               # visibility is measured at one size, so the scene does not depend on the output size
_COMPOSITE_CODE = 1000         # the category slot of a composite's rng key: never a category code
_PLACEMENT_TRIES = 16
_SLOT_DRAWS = 2 + 2 * _PLACEMENT_TRIES          # per object: category, shrink, a position per try
_COMPOSITE_DRAWS = 1 + MAX_OBJECTS * _SLOT_DRAWS
_SHRINK_BACK, _SHRINK = (0.8, 1.0), (0.7, 0.9)  # size factor of the back object / of the others (2+ objects)
_MIN_SCALE = 0.65              # no object smaller than this (at scale 1 an object covers ~10 % of the image)


class Composite:
    """A scene of several objects of mixed categories (size-independent): ``instances`` and their
    posed ``prims`` back to front, ``classes`` the index of each object's category in the list the
    scene was drawn from; the background as in :class:`Scene`."""

    __slots__ = ("index", "cfg", "gradient", "background", "occluder", "instances", "prims", "classes",
                 "noise_offset")


def _coverage(prims: Sequence[Prim]) -> np.ndarray:
    """Where ``prims`` cover a ``_CHECK_SIZE`` image, (S, S) bool."""
    xs, ys = _grid(_CHECK_SIZE)
    image = np.empty((3, _CHECK_SIZE, _CHECK_SIZE), dtype=np.float32)
    code = np.full((_CHECK_SIZE, _CHECK_SIZE), 255, dtype=np.uint8)
    for p in prims:
        draw(p, image, code, xs, ys)
    return code != 255


def _least_visible(masks: Sequence[np.ndarray], cover: Optional[np.ndarray] = None) -> float:
    """The smallest visible fraction of the image among objects ``masks`` (back to front) under ``cover``."""
    cover = np.zeros_like(masks[0]) if cover is None else cover.copy()
    least = 1.0
    for mask in reversed(masks):
        least = min(least, np.count_nonzero(mask & ~cover) / mask.size)
        cover |= mask
    return least


def sample_composite(categories: Sequence[str], index: int, seed: int, split_code: int, cfg: "SyntheticConfig",
                     objects: Tuple[int, int]) -> Composite:
    """Everything about composite scene ``index`` that does not depend on the resolution.

    From ``default_rng([seed, split_code, _COMPOSITE_CODE, index, 0])``: a block of placement draws
    (the number of objects; per object slot its category, size factor and a position per try), one
    block of ``_INSTANCE_DRAWS`` per slot (``MAX_OBJECTS`` always, so ``objects`` only changes how many
    are used) and the background's block. Objects are placed back to front; an object's position is
    redrawn (at most ``_PLACEMENT_TRIES`` times, then the best try is kept) until it and every object
    behind it keep ``MIN_VISIBLE`` of the image; an occluder that would break this is left out.
    """
    rng = np.random.default_rng([seed, split_code, _COMPOSITE_CODE, index, 0])
    d = _Draws(rng.random(_COMPOSITE_DRAWS).tolist())
    blocks = rng.random(MAX_OBJECTS * _INSTANCE_DRAWS).tolist()
    lo, hi = objects
    n = lo + d.pick(hi - lo + 1)
    scene = Composite()
    scene.index, scene.cfg = index, cfg
    scene.instances, scene.prims, scene.classes = [], [], []
    masks: List[np.ndarray] = []
    for k in range(n):
        d.pos = 1 + k * _SLOT_DRAWS
        c = d.pick(len(categories))
        block = _Draws(blocks[k * _INSTANCE_DRAWS:(k + 1) * _INSTANCE_DRAWS])
        inst = _sample_instance(TEMPLATES[categories[c]], block, cfg, 16 * (k + 1), False)
        scale, theta, flip, _, _ = inst.pose
        shrink_lo, shrink_hi = _SHRINK_BACK if k == 0 else _SHRINK
        u = d()
        if n > 1:
            scale *= shrink_lo + (shrink_hi - shrink_lo) * u
        scale = max(scale, _MIN_SCALE)
        reach = max(1.0 - 0.5 * FIT * scale, 0.0)          # keeps most of the object in the frame
        if n == 1:
            reach = min(reach, cfg.translation)              # a lone object is placed as in the world
        best = None
        for _ in range(_PLACEMENT_TRIES):
            pose = (scale, theta, flip, reach * d.sym(), reach * d.sym())
            prims, _ = _pose(inst, inst.state, pose, cfg.articulation)
            mask = _coverage(prims)
            least = _least_visible(masks + [mask])
            if best is None or least > best[0]:
                best = (least, pose, prims, mask)
            if least >= MIN_VISIBLE:
                break
        _, inst.pose, prims, mask = best
        scene.instances.append(inst)
        scene.prims.append(prims)
        scene.classes.append(c)
        masks.append(mask)
    _sample_background(scene, _Draws(rng.random(_SCENE_DRAWS).tolist()), scene.instances[-1])
    if scene.occluder is not None and _least_visible(masks, _coverage([scene.occluder])) < MIN_VISIBLE:
        scene.occluder = None
    return scene


def render_composite(scene: Composite, size: int) -> Dict[str, np.ndarray]:
    """Draw a composite scene: its background, the objects back to front, the occluder and the noise."""
    xs, ys = _grid(size)
    image = render_background(scene, size)
    code = np.zeros((size, size), dtype=np.uint8)      # 16 * object id + part label
    for prims in scene.prims:
        for p in prims:
            draw(p, image, code, xs, ys)
    if scene.occluder is not None:
        draw(scene.occluder, image, code, xs, ys)
    _add_noise(image, scene.cfg.noise, scene.noise_offset, size)
    instances = (code >> 4).astype(np.int64)
    classes = np.array(scene.classes, dtype=np.int64)
    semantic = np.concatenate([[0], classes + 1])[instances]     # object id -> 1 + its category index
    return {"image": image, "semantic": semantic, "instances": instances,
            "saliency": (code > 0)[None].astype(np.float32), "parts": (code & 15).astype(np.int64),
            "categories": classes, "index": np.int64(scene.index)}
