"""The four categories of the synthetic world as kinematic trees of textured primitives (private).

Authoring units: the object is drawn in its own frame (x right, y down, the image convention); the
renderer centres each category's rest pose and scales it so its larger half-extent is ``FIT`` of the
half-image at scale 1. A node is a joint frame attached to its parent at ``at`` (parent frame), turned
by ``angle`` (degrees, clockwise on screen since y points down) plus an articulation drawn from
``swing``; its primitive sits ``offset`` along the node's own x axis (u), v across it. Children are
attached in the node's frame. ``depth`` orders drawing (larger = in front), which is what makes the
self-occlusion fixed and documented: far-side limbs/wings are behind the body, near-side ones in front.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from ._raster import SOFT_TEXTURES, polygon_gauge

FIT = 0.68  # larger half-extent of the rest pose, in normalised image units, at scale 1


def _rgb(h: str) -> Tuple[float, float, float]:
    return (int(h[1:3], 16) / 255.0, int(h[3:5], 16) / 255.0, int(h[5:7], 16) / 255.0)


@dataclass(frozen=True)
class Paint:
    """How a part type looks: texture family, texture period (object units) and colour candidates.

    ``group``: paints of one group pick the same candidate index per instance (a bird "species",
    a quadruped "coat"), so their colours stay coherent; each candidate is (primary, secondary).
    """

    texture: str
    period: float
    group: str
    colours: Tuple[Tuple[Tuple[float, float, float], Tuple[float, float, float]], ...]


def _paint(texture: str, period: float, group: str, *pairs: str) -> Paint:
    cols = []
    for pair in pairs:
        a, _, b = pair.partition("/")
        cols.append((_rgb(a), _rgb(b or a)))
    return Paint(texture, period, group, tuple(cols))


@dataclass(frozen=True)
class Node:
    """One joint + primitive of a kinematic tree (see module docstring for the frames)."""

    name: str
    part: Optional[str]              # part name (label); None for an invisible grouping joint
    parent: Optional[str] = None
    at: Tuple[float, float] = (0.0, 0.0)
    angle: float = 0.0               # rest angle relative to the parent, degrees
    swing: Tuple[float, float] = (0.0, 0.0)   # joint range added to the rest angle at articulation 1
    shape: Optional[tuple] = None    # ("ellipse", a, rx, ry, taper) or ("poly", vertices)
    offset: float = 0.0              # primitive centre along the node's axis
    depth: float = 0.0
    paint: Optional[str] = None
    tone: float = 1.0                # brightness factor (far-side parts are darker)
    shift: Tuple[float, float] = (0.0, 0.0)   # prismatic joint: max offset (parent frame) at articulation 1
    grow: Tuple[float, float] = (0.0, 0.0)    # range of the relative change of the primitive's width (ry)
    joint: Optional[str] = None      # share the joint state of this node (coupled joints, e.g. both wings)
    twin: Optional[str] = None       # share the size jitter of this node (left/right, near/far copies)


def ell(rx: float, ry: float, *, a: float = 0.0, taper: float = 0.0) -> tuple:
    """Ellipse with half-axes (rx, ry); ``a > 0`` makes it a capsule of straight half-length a."""
    return ("ellipse", a, rx, ry, taper)


def cap(a: float, r: float, *, taper: float = 0.0) -> tuple:
    """Capsule: a segment of half-length a, thickened by radius r (optionally tapered)."""
    return ("ellipse", a, r, r, taper)


def poly(*vertices: Tuple[float, float]) -> tuple:
    """Convex polygon around the primitive centre."""
    return ("poly", tuple(vertices))


# ------------------------------------------------------------------------------------------------ bird
_BIRD_PARTS = ("background", "body", "head", "beak", "wing", "tail", "legs")
_BIRD_NODES = (
    Node("body", "body", angle=-12, swing=(-8, 8), shape=ell(0.40, 0.25), paint="body"),
    Node("head", "head", "body", at=(0.33, -0.15), angle=-15, swing=(-25, 20), shape=ell(0.17, 0.155),
         offset=0.07, depth=1, paint="head"),
    Node("eye", "head", "head", at=(0.12, -0.04), shape=ell(0.032, 0.032), depth=1.3, paint="eye"),
    Node("beak", "beak", "head", at=(0.2, 0.02), angle=10, swing=(-8, 8),
         shape=poly((-0.06, -0.055), (0.13, 0.0), (-0.06, 0.055)), offset=0.07, depth=0.9, paint="beak"),
    Node("near_wing", "wing", "body", at=(0.1, -0.01), angle=175, swing=(-15, 45),
         shape=ell(0.30, 0.11, taper=-0.5), offset=0.22, depth=2, paint="wing"),
    Node("far_wing", "wing", "body", at=(0.15, -0.05), angle=175, swing=(-15, 45),
         shape=ell(0.30, 0.11, taper=-0.5), offset=0.22, depth=-2, paint="wing", tone=0.7,
         joint="near_wing", twin="near_wing"),
    Node("tail", "tail", "body", at=(-0.34, -0.03), angle=172, swing=(-20, 20),
         shape=ell(0.18, 0.07, a=0.03, taper=0.6), offset=0.18, depth=-1, paint="tail"),
    Node("near_leg", "legs", "body", at=(0.06, 0.22), angle=95, swing=(-25, 25), shape=cap(0.1, 0.032),
         offset=0.12, depth=-0.5, paint="legs"),
    Node("near_foot", "legs", "near_leg", at=(0.24, 0.0), angle=-80, shape=cap(0.035, 0.026),
         offset=0.04, depth=-0.4, paint="legs"),
    Node("far_leg", "legs", "body", at=(-0.04, 0.22), angle=95, swing=(-25, 25), shape=cap(0.1, 0.032),
         offset=0.12, depth=-3, paint="legs", tone=0.7, twin="near_leg"),
    Node("far_foot", "legs", "far_leg", at=(0.24, 0.0), angle=-80, shape=cap(0.035, 0.026),
         offset=0.04, depth=-2.9, paint="legs", tone=0.7, twin="near_foot"),
)
_BIRD_PAINTS = {   # candidates: robin-like, blue jay-like, cardinal-like, goldfinch-like
    "body": _paint("gradient", 0.2, "species", "#8a5a35/#e8883a", "#3d6fc4/#e8e8ee", "#c42a22/#ee7050",
                   "#eac52a/#f8f0b0"),
    "head": _paint("spots", 0.09, "species", "#4a4440/#8a8278", "#3560b0/#9ab8f0", "#b8221a/#f07060",
                   "#151515/#505050"),
    "beak": _paint("plain", 0.1, "species", "#e8c030", "#2a2a2a", "#f08a30", "#f0a070"),
    "wing": _paint("stripes", 0.075, "species", "#6b4a30/#2e2016", "#2f5aa8/#101830", "#8a1c16/#3a0a08",
                   "#1a1a1a/#f0f0f0"),
    "tail": _paint("bands", 0.085, "species", "#4a3526/#9a7a60", "#284a90/#e0e0f0", "#901e18/#400a06",
                   "#202020/#c8c8c8"),
    "legs": _paint("plain", 0.1, "species", "#a07860", "#404048", "#8a6050", "#c09080"),
    "eye": _paint("plain", 0.1, "eye", "#0a0a0a"),
}
_BIRD_LANDMARKS = (  # CUB-200-2011-like names, on the visible (near) side
    ("beak", "beak", 0.35, 0.0), ("crown", "head", -0.1, -0.75), ("nape", "head", -0.65, -0.4),
    ("eye", "eye", 0.0, 0.0), ("throat", "head", 0.35, 0.7), ("breast", "body", 0.65, 0.4),
    ("belly", "body", 0.0, 0.72), ("back", "body", -0.3, -0.82), ("wing", "near_wing", 0.75, 0.0),
    ("tail", "tail", 0.75, 0.0), ("leg", "near_leg", 0.4, 0.0),
)

# ------------------------------------------------------------------------------------------- quadruped
_QUAD_PARTS = ("background", "body", "head", "ears", "front_legs", "hind_legs", "tail")


def _quad_legs() -> Tuple[Node, ...]:
    nodes = []
    for side, dx, depth, tone in (("near", 0.0, 0.5, 1.0), ("far", -0.07, -2.0, 0.72)):
        twin = None if side == "near" else "near_"
        for limb, at, angle, swing, r, knee in (("front", 0.27, 90, (-30, 30), 0.055, (0, 55)),
                                                  ("hind", -0.30, 85, (-30, 30), 0.07, (-40, 10))):
            upper, lower = f"{side}_{limb}_upper", f"{side}_{limb}_lower"
            nodes.append(Node(upper, f"{limb}_legs", "body", at=(at + dx, 0.05), angle=angle, swing=swing,
                              shape=cap(0.08, r), offset=0.12, depth=depth, paint="legs", tone=tone,
                              twin=twin and f"near_{limb}_upper"))
            nodes.append(Node(lower, f"{limb}_legs", upper, at=(0.24, 0.0), angle=5, swing=knee,
                              shape=cap(0.08, 0.042, taper=-0.2), offset=0.11, depth=depth + 0.05,
                              paint="legs", tone=tone, twin=twin and f"near_{limb}_lower"))
    return tuple(nodes)


_QUAD_NODES = (
    Node("body", "body", swing=(-6, 6), shape=ell(0.17, 0.16, a=0.27), paint="body"),
    Node("neck", "head", "body", at=(0.34, -0.08), angle=-50, swing=(-25, 25), shape=ell(0.12, 0.085, a=0.04),
         offset=0.12, depth=0.8, paint="head"),
    Node("skull", "head", "neck", at=(0.25, 0.0), angle=58, swing=(-15, 20), shape=ell(0.17, 0.1, taper=-0.35),
         offset=0.08, depth=1, paint="head"),
    Node("eye", "head", "skull", at=(0.07, -0.04), shape=ell(0.025, 0.025), depth=1.3, paint="eye"),
    Node("near_ear", "ears", "skull", at=(-0.04, -0.08), angle=-100, swing=(-20, 20),
         shape=poly((-0.04, -0.045), (0.1, 0.0), (-0.04, 0.045)), offset=0.04, depth=1.2, paint="ears"),
    Node("far_ear", "ears", "skull", at=(-0.09, -0.07), angle=-100, swing=(-20, 20),
         shape=poly((-0.04, -0.045), (0.1, 0.0), (-0.04, 0.045)), offset=0.04, depth=0.5, paint="ears",
         tone=0.72, joint="near_ear", twin="near_ear"),
    *_quad_legs(),
    Node("tail", "tail", "body", at=(-0.42, -0.08), angle=205, swing=(-30, 40),
         shape=ell(0.17, 0.038, taper=-0.3), offset=0.16, depth=-1, paint="tail"),
)
_QUAD_PAINTS = {   # candidates: leopard-like, dalmatian-like, brown-and-white, grey wolf-like
    "body": _paint("spots", 0.16, "coat", "#d8a24a/#3a2612", "#f2f0ea/#1a1a1a", "#8a5a30/#f0e8dc",
                   "#8a8a86/#3a3a38"),
    "head": _paint("gradient", 0.1, "coat", "#c89040/#f0d8a8", "#e8e6e0/#a8a498", "#7a4e2a/#e8dccb",
                   "#6a6a68/#d0d0cc"),
    "ears": _paint("plain", 0.1, "coat", "#6a4a20", "#2a2a2a", "#5a3a20", "#484848"),
    "legs": _paint("fade", 0.1, "coat", "#d8a24a/#5a3a1a", "#f2f0ea/#3a3a3a", "#8a5a30/#2a1a10",
                   "#8a8a86/#3a3a38"),
    "tail": _paint("bands", 0.09, "coat", "#d8a24a/#2a1a0a", "#f2f0ea/#1a1a1a", "#8a5a30/#1a1a1a",
                   "#8a8a86/#e0e0dc"),
    "eye": _paint("plain", 0.1, "eye", "#0a0a0a"),
}
_QUAD_LANDMARKS = (
    ("nose", "skull", 0.85, 0.1), ("eye", "eye", 0.0, 0.0), ("ear_tip", "near_ear", 0.35, 0.0),
    ("withers", "body", 0.55, -0.75), ("rump", "body", -0.6, -0.75), ("belly", "body", 0.0, 0.75),
    ("front_foot", "near_front_lower", 0.7, 0.0), ("hind_foot", "near_hind_lower", 0.7, 0.0),
    ("tail_tip", "tail", 0.75, 0.0),
)

# ---------------------------------------------------------------------------------------------- figure
_FIG_PARTS = ("background", "head", "torso", "upper_arms", "lower_arms", "upper_legs", "lower_legs")


def _fig_limbs() -> Tuple[Node, ...]:
    nodes = []
    for side, sx in (("left", -1.0), ("right", 1.0)):   # image-left / image-right
        twin = None if side == "left" else "left"

        def ang(a: float) -> float:          # the right side mirrors the left one
            return a if sx < 0 else 180.0 - a

        def rng(lo: float, hi: float) -> Tuple[float, float]:
            return (lo, hi) if sx < 0 else (-hi, -lo)

        nodes += [
            Node(f"{side}_upper_arm", "upper_arms", "torso", at=(0.18 * sx, -0.22), angle=ang(110),
                 swing=rng(-30, 70), shape=cap(0.08, 0.05), offset=0.12, depth=2, paint="sleeves",
                 twin=twin and "left_upper_arm"),
            Node(f"{side}_lower_arm", "lower_arms", f"{side}_upper_arm", at=(0.25, 0.0),
                 swing=rng(-60, 40), shape=cap(0.08, 0.042), offset=0.11, depth=2.5, paint="forearms",
                 twin=twin and "left_lower_arm"),
            Node(f"{side}_hand", "lower_arms", f"{side}_lower_arm", at=(0.23, 0.0), shape=ell(0.055, 0.05),
                 depth=2.6, paint="skin", twin=twin and "left_hand"),
            Node(f"{side}_upper_leg", "upper_legs", "torso", at=(0.085 * sx, 0.2), angle=ang(95),
                 swing=rng(-15, 35), shape=cap(0.1, 0.07), offset=0.14, depth=-1, paint="trousers",
                 twin=twin and "left_upper_leg"),
            Node(f"{side}_lower_leg", "lower_legs", f"{side}_upper_leg", at=(0.3, 0.0),
                 swing=rng(-30, 20), shape=cap(0.1, 0.055), offset=0.13, depth=-0.9, paint="socks",
                 twin=twin and "left_lower_leg"),
            Node(f"{side}_foot", "lower_legs", f"{side}_lower_leg", at=(0.28, 0.0), angle=-85 * sx,
                 shape=ell(0.075, 0.042), offset=0.03, depth=-0.8, paint="shoes", twin=twin and "left_foot"),
        ]
    return tuple(nodes)


_FIG_NODES = (
    Node("torso", "torso", swing=(-8, 8), shape=poly((-0.2, -0.27), (0.2, -0.27), (0.15, 0.25), (-0.15, 0.25)),
         paint="shirt"),
    Node("neck", "head", "torso", at=(0.0, -0.25), angle=-90, swing=(-8, 8), shape=ell(0.07, 0.055, a=0.02),
         offset=0.06, depth=-0.5, paint="skin"),
    Node("head", "head", "neck", at=(0.12, 0.0), swing=(-10, 10), shape=ell(0.15, 0.12), offset=0.13, depth=1,
         paint="skin"),
    Node("hair", "head", "head", at=(0.2, 0.0), swing=(-5, 5), shape=ell(0.1, 0.13), depth=1.1, paint="hair"),
    *_fig_limbs(),
)
_SKIN = ("#f2d0b0/#d8a888", "#d8a47c/#b88060", "#a06a44/#7a4a2a", "#6a4430/#4a2c1c")
_FIG_PAINTS = {
    "skin": _paint("plain", 0.1, "skin", *_SKIN),
    "forearms": _paint("fade", 0.1, "skin", *_SKIN),
    "shirt": _paint("stripes", 0.11, "shirt", "#d83a3a/#f0f0f0", "#3a6ad8/#f0e8a0", "#2a9a5a/#103a20",
                    "#e8c020/#3a3a3a", "#8a3ab8/#e8d0f8"),
    "sleeves": _paint("plain", 0.1, "shirt", "#902020", "#203a90", "#186038", "#a08010", "#5a2080"),
    "trousers": _paint("checker", 0.1, "trousers", "#2a3a6a/#4a5a90", "#5a4a3a/#7a6a58", "#2a2a2a/#505050",
                       "#8a7a5a/#5a4a2a"),
    "socks": _paint("bands", 0.08, "socks", "#f0f0f0/#c02020", "#1a1a1a/#d0d0d0", "#e8d040/#3a3a3a",
                    "#40a0a0/#f0f0f0"),
    "shoes": _paint("plain", 0.1, "shoes", "#3a2a20", "#1a1a1a", "#6a2a2a", "#e0e0e0"),
    "hair": _paint("plain", 0.1, "hair", "#2a1a10", "#6a4020", "#d0a850", "#1a1a1a", "#a03a1a"),
}
_FIG_LANDMARKS = (  # left/right = image-left/image-right
    ("head_top", "head", 0.85, 0.0), ("neck", "torso", 0.0, -0.85),
    ("left_shoulder", "left_upper_arm", -0.55, 0.0), ("right_shoulder", "right_upper_arm", -0.55, 0.0),
    ("left_elbow", "left_lower_arm", -0.6, 0.0), ("right_elbow", "right_lower_arm", -0.6, 0.0),
    ("left_wrist", "left_lower_arm", 0.75, 0.0), ("right_wrist", "right_lower_arm", 0.75, 0.0),
    ("left_hip", "left_upper_leg", -0.3, 0.0), ("right_hip", "right_upper_leg", -0.3, 0.0),
    ("left_knee", "left_lower_leg", -0.65, 0.0), ("right_knee", "right_lower_leg", -0.65, 0.0),
    ("left_ankle", "left_lower_leg", 0.7, 0.0), ("right_ankle", "right_lower_leg", 0.7, 0.0),
)

# ------------------------------------------------------------------------------------------------ face
_FACE_PARTS = ("background", "face", "hair", "ears", "eyes", "nose", "mouth", "neck")


def _face_pairs() -> Tuple[Node, ...]:
    nodes = []
    for side, sx in (("left", -1.0), ("right", 1.0)):
        first = side == "left"
        nodes += [
            Node(f"{side}_ear", "ears", "face", at=(0.41 * sx, 0.02), shape=ell(0.07, 0.12), depth=-1,
                 paint="ears", twin=None if first else "left_ear"),
            Node(f"{side}_eye", "eyes", "features", at=(0.17 * sx, -0.08), shape=ell(0.095, 0.055),
                 grow=(-0.5, 0.15), depth=1, paint="eyes", joint=None if first else "left_eye",
                 twin=None if first else "left_eye"),
            Node(f"{side}_brow", "face", "features", at=(0.17 * sx, -0.2), shape=cap(0.065, 0.022),
                 shift=(0.0, 0.035), depth=1.1, paint="brows", joint=None if first else "left_brow",
                 twin=None if first else "left_brow"),
        ]
    return tuple(nodes)


_FACE_NODES = (
    Node("face", "face", swing=(-12, 12), shape=ell(0.42, 0.54), paint="skin"),
    Node("neck", "neck", "face", at=(0.0, 0.42), angle=90, swing=(-8, 8), shape=ell(0.14, 0.19, a=0.04),
         offset=0.18, depth=-3, paint="neck"),
    Node("hair_back", "hair", "face", at=(0.0, -0.12), angle=90, shape=ell(0.55, 0.5), grow=(-0.1, 0.12),
         depth=-2, paint="hair"),
    Node("fringe", "hair", "face", at=(0.0, -0.38), angle=90, swing=(-12, 12), shift=(0.06, 0.0),
         shape=ell(0.16, 0.4), depth=2, paint="hair"),
    Node("features", None, "face", shift=(0.07, 0.035)),
    *_face_pairs(),
    Node("nose", "nose", "features", at=(0.0, -0.04), angle=90,
         shape=poly((-0.11, 0.0), (0.1, -0.065), (0.1, 0.065)), offset=0.1, depth=1.2, paint="nose"),
    Node("mouth", "mouth", "features", at=(0.0, 0.3), swing=(-6, 6), shape=ell(0.15, 0.05), grow=(-0.2, 1.2),
         depth=1.2, paint="lips"),
)
_FACE_PAINTS = {
    "skin": _paint("plain", 0.1, "skin", *_SKIN),
    "neck": _paint("fade", 0.1, "skin", "#d8b898/#a88868", "#c09070/#8a6040", "#8a5a3a/#5a3a20",
                   "#5a3a28/#3a2418"),
    "ears": _paint("fade", 0.1, "skin", "#e0b898/#c89070", "#c89070/#a07050", "#905a38/#6a4024",
                   "#5a3a28/#402818"),
    "nose": _paint("gradient", 0.1, "skin", "#f0c8a8/#c89878", "#d09870/#a87050", "#9a6440/#704020",
                   "#684230/#402418"),
    "hair": _paint("stripes", 0.07, "hair", "#2a1a10/#4a3020", "#6a4020/#8a5a30", "#d0a850/#f0d080",
                   "#1a1a1a/#3a3a3a", "#a03a1a/#c85a2a"),
    "brows": _paint("plain", 0.1, "hair", "#1a1008", "#4a2a10", "#a08040", "#101010", "#802a10"),
    "eyes": _paint("pupil", 0.1, "iris", "#f4f4f0/#3a2a1a", "#f4f4f0/#3a6aa0", "#f4f4f0/#4a7a3a",
                   "#f4f4f0/#1a1a1a"),
    "lips": _paint("gradient", 0.1, "lips", "#c04050/#802030", "#b05a5a/#7a3030", "#d06070/#a03040",
                   "#8a4040/#5a2020"),
}
_FACE_LANDMARKS = (  # MAFL / CelebA order; left/right = image-left/image-right
    ("left_eye", "left_eye", 0.0, 0.0), ("right_eye", "right_eye", 0.0, 0.0), ("nose", "nose", 0.75, 0.0),
    ("left_mouth", "mouth", -0.7, 0.0), ("right_mouth", "mouth", 0.7, 0.0),
)

SPECS = {
    "bird": (_BIRD_PARTS, _BIRD_NODES, _BIRD_PAINTS, _BIRD_LANDMARKS, ()),
    "quadruped": (_QUAD_PARTS, _QUAD_NODES, _QUAD_PAINTS, _QUAD_LANDMARKS, ()),
    "figure": (_FIG_PARTS, _FIG_NODES, _FIG_PAINTS, _FIG_LANDMARKS,
               ((2, 3), (4, 5), (6, 7), (8, 9), (10, 11), (12, 13))),
    "face": (_FACE_PARTS, _FACE_NODES, _FACE_PAINTS, _FACE_LANDMARKS, ((0, 1), (3, 4))),
}


class Template:
    """A category compiled for fast posing: nodes in parent-before-child order with integer links."""

    def __init__(self, name: str):
        parts, nodes, paints, landmarks, flip_pairs = SPECS[name]
        self.name = name
        self.parts = parts
        self.nodes = nodes
        index = {n.name: i for i, n in enumerate(nodes)}
        self.parent = tuple(index[n.parent] if n.parent else -1 for n in nodes)
        assert all(p < i for i, p in enumerate(self.parent)), f"{name}: parents must come first"
        self.label = tuple(parts.index(n.part) if n.part else 0 for n in nodes)
        self.joint = tuple(index[n.joint] if n.joint else i for i, n in enumerate(nodes))
        self.twin = tuple(index[n.twin] if n.twin else i for i, n in enumerate(nodes))
        self.rad = tuple(np.deg2rad(n.angle) for n in nodes)
        self.swing = tuple((np.deg2rad(n.swing[0]), np.deg2rad(n.swing[1])) for n in nodes)
        # shapes: ("ellipse", a, rx, ry, taper) or ("poly", vertices, ext_u, ext_v)
        shapes, gauges = [], []
        for n in nodes:
            if n.shape is None or n.shape[0] == "ellipse":
                shapes.append(n.shape)
                gauges.append(None)
            else:
                verts = n.shape[1]
                shapes.append(("poly", verts, max(abs(x) for x, _ in verts), max(abs(y) for _, y in verts)))
                gauges.append(polygon_gauge(verts))
        self.shapes = tuple(shapes)
        self.gauges = tuple(gauges)
        self.draw_order = tuple(sorted((i for i, n in enumerate(nodes) if n.shape is not None),
                                       key=lambda i: nodes[i].depth))
        self.paint_names = tuple(paints)
        self.paints = paints
        # which paints mix colours with a soft t in [-1, 1] (see _raster.paint_colours), (paints, 1, 1, 1)
        self.soft_paints = np.array([paints[p].texture in SOFT_TEXTURES for p in paints]).reshape(-1, 1, 1, 1)
        self.groups = tuple(sorted({p.group for p in paints.values()}))
        assert all(nodes[index[lm[1]]].shape is not None for lm in landmarks), f"{name}: landmarks need shapes"
        self.landmark_names = tuple(lm[0] for lm in landmarks)
        self.landmarks = tuple((index[lm[1]], lm[2], lm[3]) for lm in landmarks)
        self.landmark_parts = tuple(self.label[index[lm[1]]] for lm in landmarks)
        self.landmark_codes = 16 + np.array(self.landmark_parts, dtype=np.uint8)  # main instance's code values
        perm = list(range(len(landmarks)))
        for i, j in flip_pairs:
            assert self.landmark_parts[i] == self.landmark_parts[j], f"{name}: mirrored landmarks share a part"
            perm[i], perm[j] = j, i
        self.flip_perm = tuple(perm)
        # joints that can move (leaders with a non-empty range), for clips
        self.movable = tuple(i for i, n in enumerate(nodes) if self.joint[i] == i and
                             (n.swing != (0.0, 0.0) or n.shift != (0.0, 0.0) or n.grow != (0.0, 0.0)))
        # filled in by the renderer from the rest pose
        self.centre: Tuple[float, float] = (0.0, 0.0)
        self.fit: float = 1.0

    @property
    def num_parts(self) -> int:
        return len(self.parts) - 1


def palette(template: Template) -> Tuple[Tuple[float, float, float], ...]:
    """Every colour the category's paints can take (primary and secondary), for clutter."""
    cols: Dict[Tuple[float, float, float], None] = {}
    for p in template.paints.values():
        for a, b in p.colours:
            cols[a] = None
            cols[b] = None
    return tuple(cols)
