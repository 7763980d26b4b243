"""A procedural world of articulated, textured objects with exact part labels.

Every notebook and test of partlab runs on it by default, and every co-part segmentation method is
scored on it. Objects are **kinematic trees of textured primitives** (ellipses, capsules, convex
polygons), each attached to its parent at a joint with a range of motion. Part structure is
learnable without labels: within a category a part keeps its shape, its place in the tree and its
texture family, while colours, proportions, texture frequency/phase, pose and background vary.

Categories, part labels (``PART_NAMES[category][k]``, 0 = background) and landmarks::

    bird       1 body  2 head  3 beak  4 wing  5 tail  6 legs                      (side view)
               landmarks: beak, crown, nape, eye, throat, breast, belly, back, wing, tail, leg
    quadruped  1 body  2 head (incl. neck)  3 ears  4 front_legs  5 hind_legs  6 tail   (side view)
               landmarks: nose, eye, ear_tip, withers, rump, belly, front_foot, hind_foot, tail_tip
    figure     1 head (incl. neck, hair)  2 torso  3 upper_arms  4 lower_arms (incl. hands)
               5 upper_legs  6 lower_legs (incl. feet)                             (frontal)
               landmarks: head_top, neck, left/right shoulder, elbow, wrist, hip, knee, ankle
    face       1 face (skin, incl. eyebrows)  2 hair  3 ears  4 eyes  5 nose  6 mouth  7 neck  (frontal)
               landmarks (MAFL/CelebA order): left_eye, right_eye, nose, left_mouth, right_mouth

Left/right (near/far) copies of a part share one label (both eyes are ``eyes``). For the frontal
categories "left"/"right" landmarks are image-left/image-right, as in MAFL: a mirrored sample swaps
them. For the side views, landmarks sit on the near side (eye, wing, leg) and the object faces
right unless flipped. ``LANDMARK_PARTS[category][l]`` is the part label landmark l belongs to.

Appearance: each part type has a texture family (stripes along its axis, bands across it, spots,
checker, gradient, fade, pupil, plain) and a palette of colour candidates; an instance picks a
candidate (coherently within a group, e.g. a bird "species"), jitters it, and draws a texture
frequency and phase; parts are shaded darker toward their rim. Far-side parts are darker.

Self-occlusion follows a fixed depth order: far wing/legs/ear behind the body, near ones in front,
arms in front of the torso, legs behind it, eyes/nose/mouth/fringe in front of the face, ears and
back hair behind it. The label map shows the front-most part.

Scene: a two-colour gradient background, clutter (ellipses, rectangles, stripes) coloured from the
category's own palette and textured like parts, optional distractors (part-like shapes that are not
objects, labelled background), optional other instances (labelled with their parts, drawn behind the
main one), an optional occluder in front of the main object (labelled background), pixel noise.

Difficulty knobs, :class:`SyntheticConfig` (default / ``.easy()`` / ``.hard()``)::

    rotation      25.0        max |in-plane rotation|, degrees          (5 / 45)
    scale         (0.8, 1.1)  object size range, log-uniform            ((0.95, 1.05) / (0.6, 1.2))
    translation   0.15        max |shift| of the object centre, normalised units   (0.05 / 0.3)
    flip          0.5         probability of a horizontal mirror        (0.5 / 0.5)
    articulation  0.8         multiplier of every joint range, 0 = rest pose       (0.3 / 1.0)
    clutter       0.5         background clutter density, 0..1          (0.1 / 1.0)
    occlusion     0.1         probability of an occluder; its size grows with it   (0.0 / 0.5)
    distractors   1           number of non-object shapes               (0 / 3)
    n_instances   1           objects per image, the first is the main one         (1 / 2)
    noise         0.02        std of additive Gaussian pixel noise      (0.0 / 0.05)
    clip_motion   1.0         clips only: multiplier of the global drift between frames (rotation
                              6 deg, scale 5 %, translation 0.06 at 1); 0 = only joints move
    clip_drift    "similarity" clips only: "translation" keeps the drift's translation and drops its
                              rotation and scale change (the same random draws otherwise)
    appearance    "typed"     "typed": each part type draws from its own colour candidates, so
                              colour largely names the part; "varied": each part's colours are drawn
                              independently of its type from every category's candidates (they can
                              swap between parts), primary/secondary swapped at random, then a hue
                              rotation per instance and a brightness factor per part: colour does
                              not name a part, as across CUB's 200 species. Preset ``"varied"``.

The ``"varied"`` appearance reads its random numbers from the end of each instance's block, so a
varied sample is the typed sample with the same shape, pose, articulation and scene, repainted.

Per sample (numpy, from :func:`render`; torch tensors from :class:`SyntheticParts`)::

    image      float32 (3, H, W)  RGB in [0, 1] (CHW, like torch)
    parts      int64   (H, W)     0 = background, 1..K; labels > 0 exactly where fg == 1
    fg         float32 (1, H, W)  in {0, 1}, every instance's parts
    instances  int64   (H, W)     0 = background, 1 = main instance, 2.. = other instances
    landmarks  float32 (L, 2)     (x, y) of the main instance, normalised: column j of a width-W
                                  image sits at x = (2j + 1) / W - 1 (grid_sample, align_corners=False);
                                  may lie outside [-1, 1]
    visible    bool    (L,)       inside the image and the nearest pixel carries the landmark's part
                                  label *of the main instance* (not occluded); so a visible landmark
                                  always lies in its own part's mask
    bbox       float32 (4,)       (x0, y0, x1, y1) normalised pixel-edge box of the main instance's
                                  visible pixels (x0 = 2 j0 / W - 1, x1 = 2 (j1 + 1) / W - 1); a point
                                  at the object's centre if it is entirely hidden
    category   int64   ()         index into CATEGORIES
    index      int64   ()

Scenes (:func:`render_scene`, :class:`SyntheticScenes`): the multi-category mode, for unsupervised
*semantic* segmentation (MaskContrast), where the classes are the object categories. A scene holds
``objects = (lo, hi)`` objects (``lo..hi``, default 1 to 3), each of a random category from
``categories``, each an instance drawn as the world draws them (appearance, articulation, pose from
the config); with two or more, they are shrunk (the back one by 0.8-1.0, the others by 0.7-0.9,
never below scale 0.65) and placed at random, back to front, over one background (clutter,
distractors, occluder and noise as above). Every object keeps at least ~3 % of the image visible
(3.5 % measured at 32 px; its position is redrawn up to 16 times, then the best try is kept: a
fallback that about one crowded 4-object scene in a thousand needs). Per scene (numpy)::

    image       float32 (3, H, W)  RGB in [0, 1]
    semantic    int64   (H, W)     0 = background, 1 + categories.index(c) where an object of category c
                                   is visible (the front-most object wins)
    instances   int64   (H, W)     0 = background, 1..n = the objects in drawing order (n in front)
    saliency    float32 (1, H, W)  1 where any object is visible: semantic > 0 == instances > 0
    parts       int64   (H, W)     part label of the visible object (``PART_NAMES`` of its category)
    categories  int64   (n,)       each object's index into ``categories`` (its semantic class - 1)
    index       int64   ()

Determinism: a sample is a pure function of ``(seed, split, category, index, config)``; its random
numbers come from ``np.random.default_rng([seed, split_code, category_code, index, stream])``, never
from global state. A scene is a pure function of ``(seed, split, index, config, categories, objects)``,
from ``default_rng([seed, split_code, 1000, index, 0])`` (1000 is no category's code). Both are drawn
in normalised coordinates independently of the size, so the same sample at 32 px and at 128 px is the
same scene rendered analytically at two resolutions (only the pixel noise differs). Random numbers
are drawn in fixed-size blocks, so changing a knob changes only what it controls: the same index
with ``articulation=0`` is the same instance in its rest pose.

>>> from partlab.data.synthetic import render, PART_NAMES
>>> s = render("bird", 0, size=32)
>>> s["image"].shape, s["parts"].shape, int(s["parts"].max()) <= len(PART_NAMES["bird"]) - 1
((3, 32, 32), (32, 32), True)
>>> from partlab.data.synthetic import render_scene
>>> s = render_scene(0, size=32, categories=("bird", "face"))
>>> set(s["semantic"].ravel().tolist()) <= {0, 1, 2}, bool(((s["semantic"] > 0) == (s["saliency"][0] > 0)).all())
(True, True)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import utils
from ._world import (MAX_DISTRACTORS, MAX_INSTANCES, MAX_OBJECTS, TEMPLATES, Scene, render_background,
                     render_composite, render_frame, sample_composite, sample_scene, trajectory)

__all__ = ["APPEARANCES", "CLIP_DRIFTS", "WORLDS", "CATEGORIES", "PART_NAMES", "LANDMARK_NAMES", "LANDMARK_PARTS", "SPLITS", "SyntheticConfig",
           "num_parts", "render", "render_clip", "render_scene", "SyntheticParts", "SyntheticClips",
           "SyntheticScenes"]

CATEGORIES: Tuple[str, ...] = tuple(TEMPLATES)      # ("bird", "quadruped", "figure", "face")
SPLITS: Tuple[str, ...] = ("train", "val", "test")
MIN_SIZE, MAX_SIZE = 16, 512
APPEARANCES: Tuple[str, ...] = ("typed", "varied")
CLIP_DRIFTS: Tuple[str, ...] = ("similarity", "translation")

PART_NAMES: Dict[str, Tuple[str, ...]] = {c: t.parts for c, t in TEMPLATES.items()}
LANDMARK_NAMES: Dict[str, Tuple[str, ...]] = {c: t.landmark_names for c, t in TEMPLATES.items()}
LANDMARK_PARTS: Dict[str, Tuple[int, ...]] = {c: t.landmark_parts for c, t in TEMPLATES.items()}


def num_parts(category: str) -> int:
    """K, the number of part classes of ``category`` (labels 1..K; 0 is background)."""
    return TEMPLATES[_check_category(category)].num_parts


# ----------------------------------------------------------------------------------------- the knobs
@dataclass(frozen=True)
class SyntheticConfig:
    """Difficulty knobs of the synthetic world (defaults in the module docstring).

    >>> SyntheticConfig.hard().n_instances
    2
    >>> dataclasses.replace(SyntheticConfig(), clutter=0.0).clutter
    0.0
    """

    rotation: float = 25.0
    scale: Tuple[float, float] = (0.8, 1.1)
    translation: float = 0.15
    flip: float = 0.5
    articulation: float = 0.8
    clutter: float = 0.5
    occlusion: float = 0.1
    distractors: int = 1
    n_instances: int = 1
    noise: float = 0.02
    appearance: str = "typed"
    clip_motion: float = 1.0
    clip_drift: str = "similarity"

    def __post_init__(self) -> None:
        def number(name: str, lo: float, hi: float) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not lo <= float(value) <= hi:
                raise ValueError(f"SyntheticConfig.{name}={value!r} must be a number in [{lo}, {hi}]")
            object.__setattr__(self, name, float(value))

        def count(name: str, lo: int, hi: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
                raise ValueError(f"SyntheticConfig.{name}={value!r} must be an integer in [{lo}, {hi}]")
            object.__setattr__(self, name, int(value))

        number("rotation", 0.0, 180.0)
        number("translation", 0.0, 1.0)
        for name in ("flip", "articulation", "clutter", "occlusion"):
            number(name, 0.0, 1.0)
        number("noise", 0.0, 0.5)
        number("clip_motion", 0.0, 8.0)
        if self.clip_drift not in CLIP_DRIFTS:
            raise ValueError(f"SyntheticConfig.clip_drift={self.clip_drift!r} must be one of {CLIP_DRIFTS}")
        if self.appearance not in APPEARANCES:
            raise ValueError(f"SyntheticConfig.appearance={self.appearance!r} must be one of {APPEARANCES}")
        count("distractors", 0, MAX_DISTRACTORS)
        count("n_instances", 1, MAX_INSTANCES)
        sc = self.scale
        real = (int, float, np.integer, np.floating)
        if not (isinstance(sc, (tuple, list)) and len(sc) == 2
                and all(isinstance(v, real) and not isinstance(v, bool) for v in sc) and 0.2 <= sc[0] <= sc[1] <= 2.0):
            raise ValueError(f"SyntheticConfig.scale={sc!r} must be a pair (lo, hi) with 0.2 <= lo <= hi <= 2")
        object.__setattr__(self, "scale", (float(sc[0]), float(sc[1])))

    @classmethod
    def easy(cls) -> "SyntheticConfig":
        """Near-canonical pose, little clutter, no occluder or distractor, no noise."""
        return cls(rotation=5.0, scale=(0.95, 1.05), translation=0.05, articulation=0.3, clutter=0.1,
                   occlusion=0.0, distractors=0, noise=0.0)

    @classmethod
    def hard(cls) -> "SyntheticConfig":
        """Large poses, full clutter, frequent occluders, distractors and a second instance."""
        return cls(rotation=45.0, scale=(0.6, 1.2), translation=0.3, articulation=1.0, clutter=1.0,
                   occlusion=0.5, distractors=3, n_instances=2, noise=0.05)

    @classmethod
    def varied(cls) -> "SyntheticConfig":
        """The default world with instance-varied colours: colour does not name a part."""
        return cls(appearance="varied")

    @classmethod
    def closeup(cls) -> "SyntheticConfig":
        """The default world with the object drawn 1.6-2x larger: it fills about a third of the frame (the
        default bird about a tenth), as in the papers' data, which keep objects that cover at least 20-30 % of
        the image (SCOPS' CelebA and PASCAL) or crop to their box (CUB)."""
        return cls(scale=(1.6, 2.0))


ConfigLike = Union[SyntheticConfig, str, Dict[str, Any], None]
# the named worlds (``config="varied"``, ``DataSpec.world``)
WORLDS = {"default": SyntheticConfig, "easy": SyntheticConfig.easy, "hard": SyntheticConfig.hard,
          "varied": SyntheticConfig.varied, "closeup": SyntheticConfig.closeup}


def _coerce_config(config: ConfigLike) -> SyntheticConfig:
    if config is None:
        return _DEFAULT
    if isinstance(config, SyntheticConfig):
        return config
    if isinstance(config, str):
        presets = WORLDS
        if config not in presets:
            raise ValueError(f"config={config!r} is not a preset; use one of {tuple(presets)} or a SyntheticConfig")
        return presets[config]()
    if isinstance(config, dict):
        knobs = tuple(f.name for f in dataclasses.fields(SyntheticConfig))
        unknown = sorted(set(config) - set(knobs))
        if unknown:
            raise ValueError(f"config has unknown knobs {unknown}; the knobs are {knobs}")
        return SyntheticConfig(**config)
    raise ValueError(f"config must be a SyntheticConfig, a dict of knobs, 'easy'/'default'/'hard' or None, "
                     f"got {type(config).__name__}")


_DEFAULT = SyntheticConfig()


# ------------------------------------------------------------------------------------ input checks
def _check_category(category: Any) -> str:
    if not isinstance(category, str) or category not in TEMPLATES:
        raise ValueError(f"category={category!r} is not known; choose one of {CATEGORIES}")
    return category


def _check_int(name: str, value: Any, lo: int, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo or \
            (hi is not None and value > hi):
        bound = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}={value!r} must be an integer {bound}")
    return int(value)


def _check_split(split: Any) -> int:
    if split not in SPLITS:
        raise ValueError(f"split={split!r} must be one of {SPLITS}")
    return SPLITS.index(split)


def _prepare(category: Any, index: Any, size: Any, seed: Any, split: Any, config: ConfigLike,
             ) -> Tuple[Scene, int]:
    category = _check_category(category)
    index = _check_int("index", index, 0)
    size = _check_int("size", size, MIN_SIZE, MAX_SIZE)
    seed = _check_int("seed", seed, 0)
    split_code = _check_split(split)
    cfg = _coerce_config(config)
    return sample_scene(category, index, seed, split_code, cfg), size


def render(category: str, index: int, *, size: int = 64, seed: int = 0, split: str = "train",
           config: ConfigLike = None) -> Dict[str, np.ndarray]:
    """Render sample ``index`` of ``category`` at ``size`` x ``size`` pixels (numpy arrays, keys above).

    ``config``: a :class:`SyntheticConfig`, a dict of knobs, a named world (:data:`WORLDS`: ``"default"``,
    ``"easy"``, ``"hard"``, ``"varied"``, ``"closeup"``) or None.
    """
    scene, size = _prepare(category, index, size, seed, split, config)
    states = [inst.state for inst in scene.instances]
    poses = [inst.pose for inst in scene.instances]
    return render_frame(scene, render_background(scene, size), states, poses, scene.noise_offset, size)


def render_clip(category: str, index: int, *, frames: int = 2, size: int = 64, seed: int = 0,
                split: str = "train", config: ConfigLike = None) -> Dict[str, np.ndarray]:
    """A clip of one scene in which the instances move part by part; arrays get a leading T axis.

    Keys as :func:`render`, each with a leading ``T = frames`` axis (``image`` (T, 3, H, W), ``parts``
    (T, H, W), ``landmarks`` (T, L, 2), ``bbox`` (T, 4), ...) except ``category`` and ``index``. The
    background, distractors, occluder and the instances' appearance are shared by all frames; frame 0
    is exactly ``render(category, index, ...)``. Between consecutive frames one to three joints move,
    plus a small global drift; pixel noise is drawn afresh for every frame.
    """
    scene, size = _prepare(category, index, size, seed, split, config)
    frames = _check_int("frames", frames, 1)
    rng = np.random.default_rng([seed, SPLITS.index(split), scene.cat_code, scene.index, 1])
    tracks = [trajectory(inst, frames, rng, drift=scene.cfg.clip_motion, kind=scene.cfg.clip_drift)
              for inst in scene.instances]
    offsets = [scene.noise_offset] + rng.random(frames - 1).tolist()
    background = render_background(scene, size)
    out = [render_frame(scene, background, [tr[0][t] for tr in tracks], [tr[1][t] for tr in tracks], offsets[t], size)
           for t in range(frames)]
    clip = {key: np.stack([o[key] for o in out]) for key in out[0] if key not in ("category", "index")}
    clip["category"], clip["index"] = out[0]["category"], out[0]["index"]
    return clip


def _check_scene_classes(categories: Union[str, Sequence[str]], objects: Any,
                         ) -> Tuple[Tuple[str, ...], Tuple[int, int]]:
    """The categories (distinct: they are the semantic classes) and the (lo, hi) object count of scenes."""
    cats = _check_categories(categories)
    if len(set(cats)) != len(cats):
        raise ValueError(f"categories={categories!r} must be distinct: they are the semantic classes")
    if not (isinstance(objects, (tuple, list)) and len(objects) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in objects)
            and 1 <= objects[0] <= objects[1] <= MAX_OBJECTS):
        raise ValueError(f"objects={objects!r} must be a pair (lo, hi) of integers with "
                         f"1 <= lo <= hi <= {MAX_OBJECTS}")
    return cats, (int(objects[0]), int(objects[1]))


def render_scene(index: int, *, size: int = 64, seed: int = 0, split: str = "train", config: ConfigLike = None,
                 categories: Union[str, Sequence[str]] = CATEGORIES, objects: Tuple[int, int] = (1, 3),
                 ) -> Dict[str, np.ndarray]:
    """Render scene ``index``: ``objects[0]..objects[1]`` objects of categories drawn from ``categories``
    (``"all"``, a name or a list of distinct names) at ``size`` x ``size`` pixels (numpy arrays; keys and
    label convention in the module docstring, "Scenes"). ``config`` as in :func:`render`.
    """
    categories, objects = _check_scene_classes(categories, objects)
    index = _check_int("index", index, 0)
    size = _check_int("size", size, MIN_SIZE, MAX_SIZE)
    seed = _check_int("seed", seed, 0)
    split_code = _check_split(split)
    scene = sample_composite(categories, index, seed, split_code, _coerce_config(config), objects)
    return render_composite(scene, size)


# ----------------------------------------------------------------------------------------- datasets
def _check_categories(category: Union[str, Sequence[str]]) -> Tuple[str, ...]:
    if category == "all":
        return CATEGORIES
    if isinstance(category, str):
        return (_check_category(category),)
    if isinstance(category, (list, tuple)) and category:
        return tuple(_check_category(c) for c in category)
    raise ValueError(f"category={category!r} must be one of {CATEGORIES}, 'all' or a non-empty list of them")


def _to_torch(sample: Dict[str, np.ndarray], pad_landmarks: int) -> Dict[str, torch.Tensor]:
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else torch.tensor(v)
           for k, v in sample.items()}
    n = out["landmarks"].shape[-2]
    if n < pad_landmarks:   # mixed categories: pad to the largest L, padded landmarks are invisible
        lead = out["landmarks"].shape[:-2]
        out["landmarks"] = torch.cat([out["landmarks"], torch.zeros(*lead, pad_landmarks - n, 2)], -2)
        out["visible"] = torch.cat([out["visible"], torch.zeros(*lead, pad_landmarks - n, dtype=torch.bool)], -1)
    return out


def _check_common(dataset, size: Any, length: Any, seed: Any, split: Any, config: ConfigLike) -> None:
    """Check and set the arguments every synthetic dataset shares: size, length, seed, split, config."""
    dataset.size = _check_int("size", size, MIN_SIZE, MAX_SIZE)
    dataset.length = _check_int("length", length, 0)
    dataset.seed = _check_int("seed", seed, 0)
    _check_split(split)
    dataset.split = split
    dataset.config = _coerce_config(config)


class SyntheticParts(Dataset):
    """Torch dataset of rendered samples: ``dataset[i]`` is a dict of tensors (keys and shapes in the
    module docstring; ``image`` (3, H, W) float32 in [0, 1], ``parts`` (H, W) int64, ``fg`` (1, H, W),
    ``landmarks`` (L, 2), ``visible`` (L,), ``bbox`` (4,), ``category`` and ``index`` int64 scalars).

    ``category``: a name, ``"all"`` or a list of names; with several, sample i is of category
    ``categories[i % n]`` and landmarks are padded to the largest L (padded entries invisible).
    ``split`` ("train", "val", "test") selects disjoint random streams.

    >>> ds = SyntheticParts("face", size=32, length=4)
    >>> len(ds), ds[0]["image"].shape, ds.num_parts
    (4, torch.Size([3, 32, 32]), 7)
    """

    def __init__(self, category: Union[str, Sequence[str]] = "bird", size: int = 64, length: int = 1000,
                 seed: int = 0, split: str = "train", config: ConfigLike = None):
        self.categories = _check_categories(category)
        _check_common(self, size, length, seed, split, config)
        self._pad = max(len(LANDMARK_NAMES[c]) for c in self.categories) if len(self.categories) > 1 else 0

    def __len__(self) -> int:
        return self.length

    def _locate(self, index: Any) -> Tuple[str, int]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer, torch.Tensor)):
            raise IndexError(f"index must be an integer, got {type(index).__name__}")
        i = int(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {int(index)} out of range for a dataset of length {self.length}")
        return self.categories[i % len(self.categories)], i

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        category, i = self._locate(index)
        sample = render(category, i, size=self.size, seed=self.seed, split=self.split, config=self.config)
        return _to_torch(sample, self._pad)

    @property
    def num_parts(self) -> int:
        """K of the category (the largest K when categories are mixed)."""
        return max(num_parts(c) for c in self.categories)

    @property
    def part_names(self) -> Union[Tuple[str, ...], Dict[str, Tuple[str, ...]]]:
        """``PART_NAMES[category]`` (a dict category -> names when categories are mixed)."""
        if len(self.categories) == 1:
            return PART_NAMES[self.categories[0]]
        return {c: PART_NAMES[c] for c in self.categories}

    @property
    def landmark_names(self) -> Union[Tuple[str, ...], Dict[str, Tuple[str, ...]]]:
        """``LANDMARK_NAMES[category]`` (a dict category -> names when categories are mixed)."""
        if len(self.categories) == 1:
            return LANDMARK_NAMES[self.categories[0]]
        return {c: LANDMARK_NAMES[c] for c in self.categories}

    def __repr__(self) -> str:
        cats = self.categories[0] if len(self.categories) == 1 else list(self.categories)
        return (f"{type(self).__name__}(category={cats!r}, size={self.size}, length={self.length}, "
                f"seed={self.seed}, split={self.split!r}, config={self.config})")


class SyntheticClips(SyntheticParts):
    """Torch dataset of frame pairs / clips of one instance moving part by part (motion supervision).

    ``dataset[i]`` holds the keys of :class:`SyntheticParts` for frame 1 plus ``"frame2"`` (3, H, W),
    ``"parts2"``, ``"fg2"``, ``"landmarks2"``, ``"visible2"``, ``"bbox2"`` for frame 2; with
    ``frames > 2`` also ``"video"`` (T, 3, H, W), ``"video_parts"`` (T, H, W), ``"video_fg"``
    (T, 1, H, W), ``"video_landmarks"`` (T, L, 2) and ``"video_visible"`` (T, L).
    """

    def __init__(self, category: Union[str, Sequence[str]] = "bird", size: int = 64, length: int = 1000,
                 frames: int = 2, seed: int = 0, split: str = "train", config: ConfigLike = None):
        super().__init__(category, size, length, seed, split, config)
        self.frames = _check_int("frames", frames, 2)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        category, i = self._locate(index)
        clip = _to_torch(render_clip(category, i, frames=self.frames, size=self.size, seed=self.seed,
                                     split=self.split, config=self.config), self._pad)
        out = {key: clip[key][0] for key in ("image", "parts", "fg", "instances", "landmarks", "visible", "bbox")}
        out.update(frame2=clip["image"][1], parts2=clip["parts"][1], fg2=clip["fg"][1],
                   landmarks2=clip["landmarks"][1], visible2=clip["visible"][1], bbox2=clip["bbox"][1],
                   category=clip["category"], index=clip["index"])
        if self.frames > 2:
            out.update(video=clip["image"], video_parts=clip["parts"], video_fg=clip["fg"],
                       video_landmarks=clip["landmarks"], video_visible=clip["visible"])
        return out

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", frames={self.frames})"


class SyntheticScenes(Dataset):
    """Torch dataset of multi-category scenes (:func:`render_scene`), for unsupervised semantic
    segmentation: ``dataset[i]`` holds ``image`` (3, H, W) float32, ``semantic``, ``instances`` and
    ``parts`` (H, W) int64, ``saliency`` (1, H, W) float32 (the supervised saliency mask),
    ``categories`` (objects[1],) int64 padded with -1 so that batches collate, ``num_objects`` and
    ``index`` int64 scalars. Classes: ``class_names[k]`` is semantic label k (0 = background),
    ``num_classes`` counts the object categories only.

    >>> ds = SyntheticScenes(size=32, length=4, categories=("bird", "face"), objects=(2, 2))
    >>> ds[0]["semantic"].shape, int(ds[0]["num_objects"]), ds.num_classes, ds.class_names
    (torch.Size([32, 32]), 2, 2, ('background', 'bird', 'face'))
    """

    def __init__(self, size: int = 64, length: int = 1000, seed: int = 0, split: str = "train",
                 config: ConfigLike = None, categories: Union[str, Sequence[str]] = "all",
                 objects: Tuple[int, int] = (1, 3)):
        self.categories, self.objects = _check_scene_classes(categories, objects)
        _check_common(self, size, length, seed, split, config)

    def __len__(self) -> int:
        return self.length

    @property
    def num_classes(self) -> int:
        """The number of object categories (semantic labels 1..num_classes; 0 is background)."""
        return len(self.categories)

    @property
    def class_names(self) -> Tuple[str, ...]:
        """``("background",) + categories``: the name of each semantic label."""
        return ("background",) + self.categories

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer, torch.Tensor)):
            raise IndexError(f"index must be an integer, got {type(index).__name__}")
        i = utils.dataset_index(index, self.length)
        s = render_scene(i, size=self.size, seed=self.seed, split=self.split, config=self.config,
                         categories=self.categories, objects=self.objects)
        n = len(s["categories"])
        categories = np.full(self.objects[1], -1, dtype=np.int64)           # (objects[1],)
        categories[:n] = s["categories"]
        out = {k: torch.from_numpy(s[k]) for k in ("image", "semantic", "instances", "saliency", "parts")}
        out.update(categories=torch.from_numpy(categories), num_objects=torch.tensor(n, dtype=torch.int64),
                   index=torch.tensor(i, dtype=torch.int64))
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(size={self.size}, length={self.length}, seed={self.seed}, "
                f"split={self.split!r}, config={self.config}, categories={list(self.categories)!r}, "
                f"objects={self.objects})")
