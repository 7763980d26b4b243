"""Tests of the synthetic world's multi-category scenes (``render_scene``, ``SyntheticScenes``).

They pin what a reader can check by hand: the semantic map is the category of the visible object
(0 elsewhere) and agrees with the saliency and instance maps, every object stays visible, the same
arguments give the same scene at any size, and adding scenes left ``render`` / ``render_clip`` as
they were.
"""

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from partlab import data
from partlab.data.synthetic import (CATEGORIES, PART_NAMES, SyntheticConfig, SyntheticScenes, render, render_clip,
                                    render_scene)

KEYS = {"image", "semantic", "instances", "saliency", "parts", "categories", "index"}
MIN_VISIBLE = 0.03


def check_scene(s, categories, objects, size):
    """The invariants every scene must satisfy."""
    semantic, instances, saliency = s["semantic"], s["instances"], s["saliency"][0]
    parts, cats = s["parts"], s["categories"]
    n = len(cats)
    assert objects[0] <= n <= objects[1]
    assert np.all((cats >= 0) & (cats < len(categories)))
    assert set(np.unique(semantic)) <= {0} | set((cats + 1).tolist())
    assert np.array_equal(saliency > 0, semantic > 0) and np.array_equal(semantic > 0, instances > 0)
    assert instances.max() <= n
    for k in range(n):
        visible = instances == k + 1
        assert visible.mean() >= MIN_VISIBLE, f"object {k + 1} of {n} covers {visible.mean():.3f} of a {size} px image"
        assert np.all(semantic[visible] == cats[k] + 1), "semantic label = 1 + the object's category index"
        labels = parts[visible]
        assert labels.min() >= 1 and labels.max() <= len(PART_NAMES[categories[cats[k]]]) - 1
    assert np.all(parts[semantic == 0] == 0)


def test_scene_keys_shapes_dtypes():
    s = render_scene(0, size=48)
    assert set(s) == KEYS
    assert s["image"].shape == (3, 48, 48) and s["image"].dtype == np.float32
    assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
    for key in ("semantic", "instances", "parts"):
        assert s[key].shape == (48, 48) and s[key].dtype == np.int64, key
    assert s["saliency"].shape == (1, 48, 48) and s["saliency"].dtype == np.float32
    assert set(np.unique(s["saliency"])) <= {0.0, 1.0}
    assert s["categories"].ndim == 1 and s["categories"].dtype == np.int64
    assert s["index"] == 0 and s["index"].dtype == np.int64


def test_deterministic_and_index_seed_split_change_the_scene():
    a, b = render_scene(5, size=32), render_scene(5, size=32)
    for key in KEYS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    for other in (render_scene(6, size=32), render_scene(5, size=32, seed=1), render_scene(5, size=32, split="val")):
        assert not np.array_equal(a["image"], other["image"])
    # its own random stream: a lone object of one category is not the single-object sample
    lone = render_scene(3, size=32, categories="bird", objects=(1, 1))
    assert not np.array_equal(lone["image"], render("bird", 3, size=32)["image"])


def test_same_scene_at_two_sizes():
    for i in range(12):
        small, big = render_scene(i, size=32), render_scene(i, size=64)
        np.testing.assert_array_equal(small["categories"], big["categories"])
        agree = (small["semantic"] == big["semantic"][::2, ::2]).mean()
        assert agree > 0.93, (i, agree)
        assert set(np.unique(small["instances"])) == set(np.unique(big["instances"]))


@pytest.mark.parametrize("config", [None, "hard", "varied"])
def test_label_invariants_over_many_scenes(config):
    for i in range(40):
        size = (32, 64)[i % 2]
        check_scene(render_scene(i, size=size, config=config), CATEGORIES, (1, 3), size)


def test_object_count_and_categories_follow_the_arguments():
    counts = set()
    for i in range(30):
        s = render_scene(i, size=32, objects=(2, 4))
        check_scene(s, CATEGORIES, (2, 4), 32)
        counts.add(len(s["categories"]))
    assert counts == {2, 3, 4}
    for i in range(10):
        s = render_scene(i, size=32, objects=(3, 3), categories=("face",))
        assert s["categories"].tolist() == [0, 0, 0] and set(np.unique(s["semantic"])) <= {0, 1}
        check_scene(s, ("face",), (3, 3), 32)
    seen = set()
    for i in range(20):   # semantic classes follow the order of ``categories``: 1 = quadruped, 2 = bird
        s = render_scene(i, size=32, categories=["quadruped", "bird"])
        check_scene(s, ("quadruped", "bird"), (1, 3), 32)
        seen |= set(np.unique(s["semantic"]).tolist())
    assert seen == {0, 1, 2}
    # the classes come from ``categories``, the objects from the scene's own draws
    all_cats = render_scene(7, size=32, categories="all")
    np.testing.assert_array_equal(all_cats["image"], render_scene(7, size=32, categories=CATEGORIES)["image"])


def test_a_crowded_hard_scene_keeps_every_object_visible():
    cfg = dataclasses.replace(SyntheticConfig.hard(), occlusion=1.0)
    for i in range(15):
        check_scene(render_scene(i, size=64, config=cfg, objects=(4, 4)), CATEGORIES, (4, 4), 64)


def test_dataset_tensors_and_collation():
    ds = SyntheticScenes(size=32, length=8, categories=("bird", "figure", "face"), objects=(1, 3))
    assert len(ds) == 8 and ds.num_classes == 3
    assert ds.class_names == ("background", "bird", "figure", "face")
    assert repr(ds).startswith("SyntheticScenes(size=32, length=8, seed=0, split='train'")
    x = ds[2]
    assert x["image"].shape == (3, 32, 32) and x["image"].dtype == torch.float32
    for key in ("semantic", "instances", "parts"):
        assert x[key].shape == (32, 32) and x[key].dtype == torch.int64, key
    assert x["saliency"].shape == (1, 32, 32) and x["saliency"].dtype == torch.float32
    n = int(x["num_objects"])
    assert x["categories"].shape == (3,) and x["categories"].dtype == torch.int64
    assert torch.all(x["categories"][n:] == -1) and torch.all(x["categories"][:n] >= 0)
    s = render_scene(2, size=32, categories=("bird", "figure", "face"))
    assert torch.equal(x["semantic"], torch.from_numpy(s["semantic"]))
    assert x["categories"][:n].tolist() == s["categories"].tolist()
    assert torch.equal(ds[-1]["image"], ds[7]["image"])
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["semantic"].shape == (4, 32, 32)
    assert batch["saliency"].shape == (4, 1, 32, 32) and batch["categories"].shape == (4, 3)
    assert batch["num_objects"].shape == (4,) and batch["index"].tolist() == [0, 1, 2, 3]
    assert torch.equal(batch["saliency"][:, 0] > 0, batch["semantic"] > 0)
    assert data.SyntheticScenes is SyntheticScenes and data.render_scene is render_scene


def test_bad_arguments_raise_clear_errors():
    for kwargs, match in [({"categories": ("bird", "dragon")}, "dragon"), ({"categories": ()}, r"category=\(\)"),
                          ({"categories": ("bird", "bird")}, "distinct"), ({"objects": (0, 3)}, r"objects=\(0, 3\)"),
                          ({"objects": (3, 2)}, r"objects=\(3, 2\)"), ({"objects": (1, 5)}, r"objects=\(1, 5\)"),
                          ({"objects": 2}, "objects=2"), ({"objects": (1.0, 2)}, "objects="),
                          ({"size": 8}, "size=8"), ({"split": "dev"}, "dev"), ({"seed": -1}, "seed=-1"),
                          ({"config": "extreme"}, "extreme")]:
        with pytest.raises(ValueError, match=match):
            render_scene(0, **kwargs)
        with pytest.raises(ValueError, match=match):
            SyntheticScenes(**kwargs)
    with pytest.raises(ValueError, match="index=-1"):
        render_scene(-1)
    with pytest.raises(IndexError, match="out of range"):
        SyntheticScenes(size=32, length=3)[3]


# Fingerprints of render / render_clip computed before scenes were added: the label maps' bytes exactly,
# the image's channel means and std, the landmarks' and bbox's absolute sums (floats to 1e-5, so that
# a libm or SIMD difference across machines does not fail them; any change of the world does).
UNCHANGED = [
    (("bird", 0, 64, None), "53778f41c71171cf", [0.399713, 0.469308, 0.291378, 0.139933, 6.268586, 1.875]),
    (("quadruped", 7, 40, "hard"), "943f432b07969029", [0.534343, 0.518274, 0.448075, 0.189618, 5.192104, 2.15]),
    (("figure", 3, 40, "varied"), "73e08010ecf7088e", [0.469531, 0.468645, 0.296852, 0.144217, 6.409918, 1.95]),
    (("face", 11, 40, {"n_instances": 3, "occlusion": 0.5, "distractors": 2}), "743a77169aecadcf",
     [0.464782, 0.386549, 0.349284, 0.211164, 1.610403, 1.75]),
]
UNCHANGED_CLIPS = [
    (("bird", 5, 3, 32, "hard"), "003e18f1310405ce", [0.565487, 0.461728, 0.411283, 0.202111, 14.493868, 4.5625]),
    (("face", 2, 2, 32, None), "6de083e05e84fcd4", [0.665819, 0.564337, 0.462518, 0.201864, 2.392972, 4.375]),
]


def _fingerprint(s):
    labels = hashlib.sha256(b"".join(np.ascontiguousarray(s[k]).tobytes()
                                     for k in ("parts", "instances", "fg", "visible", "category", "index")))
    image = s["image"].astype(np.float64).reshape(-1, 3, *s["image"].shape[-2:])     # (T, 3, H, W)
    stats = (*image.mean((0, 2, 3)), image.std(), np.abs(s["landmarks"]).sum(), np.abs(s["bbox"]).sum())
    return labels.hexdigest()[:16], [float(v) for v in stats]


def test_render_and_clips_are_unchanged():
    for (category, index, size, config), labels, stats in UNCHANGED:
        got_labels, got_stats = _fingerprint(render(category, index, size=size, config=config))
        assert got_labels == labels, (category, index)
        np.testing.assert_allclose(got_stats, stats, atol=1e-5, err_msg=f"{category} {index}")
    for (category, index, frames, size, config), labels, stats in UNCHANGED_CLIPS:
        got_labels, got_stats = _fingerprint(render_clip(category, index, frames=frames, size=size, config=config))
        assert got_labels == labels, (category, index)
        np.testing.assert_allclose(got_stats, stats, atol=1e-5, err_msg=f"{category} {index}")
