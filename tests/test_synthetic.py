"""Tests of partlab.data.synthetic: the procedural world with exact part labels.

They pin what a reader can check by hand: labels are exactly the foreground, a visible landmark sits
on its own part, the same (seed, index) gives the same bytes in another process, a 32 px sample is the
128 px sample at a lower resolution, and clips share their background while parts move.
"""

import dataclasses
import doctest
import hashlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from partlab.data import synthetic
from partlab.data.synthetic import (CATEGORIES, LANDMARK_NAMES, LANDMARK_PARTS, PART_NAMES, SyntheticClips,
                                    SyntheticConfig, SyntheticParts, num_parts, render, render_clip)

KEYS = {"image", "parts", "fg", "instances", "landmarks", "visible", "bbox", "category", "index"}


def check_invariants(s, category, size):
    """The invariants every sample (and every clip frame) must satisfy."""
    parts, fg, lm, vis, bbox = s["parts"], s["fg"][0], s["landmarks"], s["visible"], s["bbox"]
    k = num_parts(category)
    assert np.array_equal(parts > 0, fg == 1), "labels > 0 exactly where fg == 1"
    assert parts.min() >= 0 and parts.max() <= k
    # a visible landmark lies inside the image and its nearest pixel carries its own part label
    col = np.floor((lm[:, 0] + 1) * size / 2).astype(int)
    row = np.floor((lm[:, 1] + 1) * size / 2).astype(int)
    assert np.all(np.abs(lm[vis]) <= 1.0)
    own = np.asarray(LANDMARK_PARTS[category])
    assert np.all(parts[row[vis], col[vis]] == own[vis])
    assert np.all(s["instances"][row[vis], col[vis]] == 1), "visible landmarks sit on the main instance"
    # bbox (pixel edges) contains every pixel centre of the main instance
    rows, cols = np.nonzero(s["instances"] == 1)
    if rows.size:
        x, y = (2 * cols + 1) / size - 1, (2 * rows + 1) / size - 1
        assert bbox[0] <= x.min() and x.max() <= bbox[2] and bbox[1] <= y.min() and y.max() <= bbox[3]
    assert bbox[0] <= bbox[2] and bbox[1] <= bbox[3]


def test_constants_are_consistent():
    assert set(CATEGORIES) >= {"bird", "quadruped", "figure", "face"}
    for c in CATEGORIES:
        names = PART_NAMES[c]
        assert names[0] == "background" and len(set(names)) == len(names)
        assert 4 <= num_parts(c) == len(names) - 1 <= 8
        assert len(LANDMARK_NAMES[c]) == len(LANDMARK_PARTS[c]) > 0
        assert all(1 <= p <= num_parts(c) for p in LANDMARK_PARTS[c])
    assert LANDMARK_NAMES["face"] == ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
    assert PART_NAMES["face"][LANDMARK_PARTS["face"][0]] == "eyes"
    assert "beak" in LANDMARK_NAMES["bird"] and "tail" in PART_NAMES["bird"]


@pytest.mark.parametrize("category", CATEGORIES)
@pytest.mark.parametrize("size", [16, 32, 64])
def test_render_keys_shapes_dtypes(category, size):
    s = render(category, 3, size=size)
    L = len(LANDMARK_NAMES[category])
    assert set(s) == KEYS
    assert s["image"].shape == (3, size, size) and s["image"].dtype == np.float32
    assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert s["parts"].shape == (size, size) and s["parts"].dtype == np.int64
    assert s["fg"].shape == (1, size, size) and s["fg"].dtype == np.float32
    assert set(np.unique(s["fg"])) <= {0.0, 1.0}
    assert s["instances"].shape == (size, size) and s["instances"].dtype == np.int64
    assert s["landmarks"].shape == (L, 2) and s["landmarks"].dtype == np.float32
    assert s["visible"].shape == (L,) and s["visible"].dtype == bool
    assert s["bbox"].shape == (4,) and s["bbox"].dtype == np.float32
    assert s["category"] == CATEGORIES.index(category) and s["index"] == 3
    check_invariants(s, category, size)


def test_render_128_and_dataset_tensors_collate():
    s = render("figure", 0, size=128, config="hard")
    check_invariants(s, "figure", 128)
    for category in CATEGORIES:
        ds = SyntheticParts(category, size=32, length=8)
        item = ds[0]
        L = len(LANDMARK_NAMES[category])
        assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 32, 32)
        assert item["parts"].dtype == torch.int64 and item["parts"].shape == (32, 32)
        assert item["fg"].dtype == torch.float32 and item["fg"].shape == (1, 32, 32)
        assert item["landmarks"].dtype == torch.float32 and item["landmarks"].shape == (L, 2)
        assert item["visible"].dtype == torch.bool and item["visible"].shape == (L,)
        assert item["bbox"].dtype == torch.float32 and item["bbox"].shape == (4,)
        assert item["category"].dtype == torch.int64 and item["category"].shape == ()
        assert item["index"].dtype == torch.int64 and int(item["index"]) == 0
        assert ds.num_parts == num_parts(category) and ds.part_names == PART_NAMES[category]
        assert ds.landmark_names == LANDMARK_NAMES[category]
        batch = next(iter(DataLoader(ds, batch_size=4)))
        assert batch["image"].shape == (4, 3, 32, 32) and batch["parts"].shape == (4, 32, 32)
    mixed = SyntheticParts("all", size=32, length=8)
    batch = next(iter(DataLoader(mixed, batch_size=8)))
    assert batch["category"].tolist() == [i % len(CATEGORIES) for i in range(8)]
    L = max(len(v) for v in LANDMARK_NAMES.values())
    assert batch["landmarks"].shape == (8, L, 2)
    face = CATEGORIES.index("face")
    assert not batch["visible"][face, len(LANDMARK_NAMES["face"]):].any(), "padded landmarks are invisible"
    assert SyntheticParts(["bird", "face"], size=32, length=4)[1]["category"] == face
    assert len(SyntheticParts("bird", length=5)) == 5 and SyntheticParts("bird", length=5)[-1]["index"] == 4


def _digest(category, index, seed, split, size):
    s = render(category, index, size=size, seed=seed, split=split)
    h = hashlib.sha256()
    for key in ("image", "parts", "landmarks", "visible", "bbox"):
        h.update(s[key].tobytes())
    return h.hexdigest()


CASES = [("bird", 0, 0, "train", 32), ("quadruped", 7, 1, "test", 48), ("figure", 123, 5, "val", 64),
         ("face", 99999, 2, "train", 40)]


def test_deterministic_within_and_across_processes():
    here = [_digest(*case) for case in CASES]
    assert here == [_digest(*case) for case in CASES]
    code = ("import sys; sys.path.insert(0, {!r}); from test_synthetic import _digest, CASES; "
            "print(' '.join(_digest(*c) for c in CASES))").format(str(__import__('pathlib').Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__('os').environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.split() == here


def test_index_seed_split_change_the_sample():
    base = render("bird", 4, size=32)["image"]
    for other in (render("bird", 5, size=32), render("bird", 4, size=32, seed=1),
                  render("bird", 4, size=32, split="test"), render("bird", 4, size=32, split="val")):
        assert not np.array_equal(base, other["image"])


@pytest.mark.parametrize("category", CATEGORIES)
def test_invariants_over_many_samples(category):
    configs = [SyntheticConfig(), SyntheticConfig.hard(), dataclasses.replace(SyntheticConfig(), n_instances=2)]
    for c, cfg in enumerate(configs):
        for i in range(100):
            size = (32, 48, 64)[i % 3]
            s = render(category, i, size=size, config=cfg, seed=c)
            check_invariants(s, category, size)
            if cfg.n_instances == 2 and i < 20:
                assert set(np.unique(s["instances"])) <= {0, 1, 2}


def test_second_instance_gets_part_labels():
    cfg = dataclasses.replace(SyntheticConfig(), n_instances=3, occlusion=0.0)
    seen = set()
    for i in range(10):
        s = render("quadruped", i, size=64, config=cfg)
        for j in (2, 3):
            labels = s["parts"][s["instances"] == j]
            if labels.size:
                assert labels.min() >= 1
                seen.add(j)
    assert seen == {2, 3}


@pytest.mark.parametrize("category", CATEGORIES)
def test_same_scene_at_every_resolution(category):
    for i in range(6):
        small = render(category, i, size=32)["fg"][0] > 0
        big = render(category, i, size=128)["fg"][0].reshape(32, 4, 32, 4).mean((1, 3)) > 0.5
        iou = (small & big).sum() / max((small | big).sum(), 1)
        assert iou > 0.8, (i, iou)
        lm32, lm128 = render(category, i, size=32)["landmarks"], render(category, i, size=128)["landmarks"]
        np.testing.assert_allclose(lm32, lm128, atol=1e-5)


def test_knobs_change_only_what_they_control():
    a = render("bird", 11, size=48)
    b = render("bird", 11, size=48, config=dataclasses.replace(SyntheticConfig(), clutter=0.0, noise=0.0))
    assert np.array_equal(a["parts"], b["parts"]) and not np.array_equal(a["image"], b["image"])
    rest = render("figure", 2, size=48, config=SyntheticConfig(articulation=0.0, rotation=0.0, flip=0.0,
                                                               translation=0.0, scale=(1.0, 1.0)))
    rest2 = render("figure", 3, size=48, config=SyntheticConfig(articulation=0.0, rotation=0.0, flip=0.0,
                                                                translation=0.0, scale=(1.0, 1.0)))
    iou = ((rest["fg"] > 0) & (rest2["fg"] > 0)).sum() / ((rest["fg"] > 0) | (rest2["fg"] > 0)).sum()
    assert iou > 0.75, "two instances in the rest pose differ only by proportions (and the occluder)"


def test_flip_mirrors_side_view_and_swaps_frontal_landmarks():
    no, yes = SyntheticConfig(flip=0.0, occlusion=0.0), SyntheticConfig(flip=1.0, occlusion=0.0)
    a, b = render("bird", 1, size=64, config=no), render("bird", 1, size=64, config=yes)
    head_x = [np.nonzero(s["parts"] == PART_NAMES["bird"].index("head"))[1].mean() for s in (a, b)]
    body_x = [np.nonzero(s["parts"] == PART_NAMES["bird"].index("body"))[1].mean() for s in (a, b)]
    assert head_x[0] > body_x[0] and head_x[1] < body_x[1]
    for i in range(10):
        f = render("face", i, size=64, config=yes)["landmarks"]
        assert f[0, 0] < f[1, 0] and f[3, 0] < f[4, 0], "left = image-left after a flip too"


def test_clips_share_background_and_move_parts():
    quiet = dataclasses.replace(SyntheticConfig(), noise=0.0)
    for category in CATEGORIES:
        for i in range(5):
            clip = render_clip(category, i, frames=2, size=48, config=quiet)
            assert clip["image"].shape == (2, 3, 48, 48) and clip["parts"].shape == (2, 48, 48)
            assert clip["landmarks"].shape == (2, len(LANDMARK_NAMES[category]), 2)
            bg = (clip["fg"][0, 0] == 0) & (clip["fg"][1, 0] == 0)
            assert np.array_equal(clip["image"][0][:, bg], clip["image"][1][:, bg])
            assert not np.array_equal(clip["parts"][0], clip["parts"][1])
            for t in range(2):
                check_invariants({k: v[t] for k, v in clip.items() if k not in ("category", "index")},
                                 category, 48)
    noisy = render_clip("bird", 0, frames=2, size=48)
    bg = (noisy["fg"][0, 0] == 0) & (noisy["fg"][1, 0] == 0)
    assert np.abs(noisy["image"][0][:, bg] - noisy["image"][1][:, bg]).mean() < 0.05
    first = render("face", 3, size=40)
    clip = render_clip("face", 3, frames=3, size=40)
    assert np.array_equal(clip["image"][0], first["image"]) and np.array_equal(clip["parts"][0], first["parts"])


def test_clip_datasets():
    pairs = SyntheticClips("figure", size=32, length=4, frames=2)
    item = pairs[1]
    for key in ("image", "frame2"):
        assert item[key].shape == (3, 32, 32) and item[key].dtype == torch.float32
    assert item["parts2"].shape == (32, 32) and item["fg2"].shape == (1, 32, 32)
    assert item["landmarks2"].shape == item["landmarks"].shape and item["visible2"].dtype == torch.bool
    assert "video" not in item
    batch = next(iter(DataLoader(pairs, batch_size=2)))
    assert batch["frame2"].shape == (2, 3, 32, 32)
    videos = SyntheticClips("face", size=32, length=2, frames=5)
    item = videos[0]
    assert item["video"].shape == (5, 3, 32, 32) and item["video_parts"].shape == (5, 32, 32)
    assert item["video_fg"].shape == (5, 1, 32, 32) and item["video_visible"].shape == (5, 5)
    assert item["video_landmarks"].shape == (5, 5, 2)
    assert torch.equal(item["video"][1], item["frame2"]) and torch.equal(item["video"][0], item["image"])
    # consecutive frames change little, the whole clip changes more
    v = item["video"]
    step = (v[1:] - v[:-1]).abs().mean()
    assert step < 0.1


@pytest.mark.parametrize("category", CATEGORIES)
def test_parts_are_learnable(category):
    """Each part appears in most samples, and in a canonical pose every part has its own mean
    (colour, position relative to the object's box): what a label-free method can latch on to."""
    k = num_parts(category)
    present = np.zeros(k + 1)
    for i in range(60):
        s = render(category, i, size=64)
        present[np.unique(s["parts"])] += 1
    assert np.all(present[1:] / 60 > 0.5), present
    cfg = SyntheticConfig(flip=0.0, rotation=0.0, occlusion=0.0)
    feats = np.zeros((k + 1, 6))
    count = np.zeros(k + 1)
    for i in range(40):
        s = render(category, i, size=64, config=cfg)
        x0, y0, x1, y1 = s["bbox"]
        rows, cols = np.nonzero(s["parts"] > 0)
        labels = s["parts"][rows, cols]
        x, y = (2 * cols + 1) / 64 - 1, (2 * rows + 1) / 64 - 1
        u, v = (x - x0) / (x1 - x0), (y - y0) / (y1 - y0)
        pos = np.stack([u, np.abs(u - 0.5), v], 1)          # |u - 0.5|: left/right copies share a label
        f = np.concatenate([s["image"][:, rows, cols].T, pos], 1)
        np.add.at(feats, labels, f)
        np.add.at(count, labels, 1)
    mean = feats[1:] / count[1:, None]
    dist = np.sqrt(((mean[:, None] - mean[None]) ** 2).sum(-1)) + np.eye(k)
    assert dist.min() > 0.1, dist.round(3)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="category.*bird"):
        render("dragon", 0)
    with pytest.raises(ValueError, match="category"):
        SyntheticParts("dragon")
    with pytest.raises(ValueError, match="category"):
        SyntheticParts(["bird", "dragon"])
    with pytest.raises(ValueError, match="category"):
        num_parts("dragon")
    for size in (15, 513, 32.0):
        with pytest.raises(ValueError, match="size"):
            render("bird", 0, size=size)
    with pytest.raises(ValueError, match="size"):
        SyntheticParts("bird", size=8)
    with pytest.raises(ValueError, match="length"):
        SyntheticParts("bird", length=-1)
    with pytest.raises(ValueError, match="index"):
        render("bird", -1)
    with pytest.raises(ValueError, match="seed"):
        render("bird", 0, seed=-3)
    with pytest.raises(ValueError, match="split.*train"):
        render("bird", 0, split="holdout")
    with pytest.raises(ValueError, match="frames"):
        render_clip("bird", 0, frames=0)
    with pytest.raises(ValueError, match="frames"):
        SyntheticClips("bird", frames=1)
    with pytest.raises(ValueError, match="n_instances"):
        SyntheticConfig(n_instances=0)
    with pytest.raises(ValueError, match="distractors"):
        SyntheticConfig(distractors=-1)
    for knob, value in (("clutter", 1.5), ("articulation", -0.1), ("flip", 2), ("rotation", 400),
                        ("noise", 1.0), ("occlusion", "a lot"), ("scale", (1.2, 0.8))):
        with pytest.raises(ValueError, match=knob):
            SyntheticConfig(**{knob: value})
    with pytest.raises(ValueError, match="config.*knobs"):
        render("bird", 0, config={"blur": 1.0})
    with pytest.raises(ValueError, match="config"):
        render("bird", 0, config="impossible")
    ds = SyntheticParts("bird", size=16, length=3)
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(IndexError):
        ds[-4]


def test_config_presets_and_coercion():
    assert SyntheticConfig() == SyntheticConfig(**{f.name: getattr(SyntheticConfig(), f.name)
                                                    for f in dataclasses.fields(SyntheticConfig)})
    easy, hard = SyntheticConfig.easy(), SyntheticConfig.hard()
    assert easy.clutter < SyntheticConfig().clutter < hard.clutter and hard.n_instances > 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        easy.clutter = 1.0
    a = render("face", 0, size=32, config={"clutter": 0.0})
    b = render("face", 0, size=32, config=dataclasses.replace(SyntheticConfig(), clutter=0.0))
    assert np.array_equal(a["image"], b["image"])
    assert np.array_equal(render("face", 0, size=32, config="hard")["image"],
                          render("face", 0, size=32, config=SyntheticConfig.hard())["image"])


def test_docstring_examples():
    assert doctest.testmod(synthetic, raise_on_error=False).failed == 0


def test_one_hot_parts_is_a_perfect_prediction():
    from partlab.data import one_hot_parts

    labels = torch.tensor([[[0, 2], [1, 1]]])
    probs = one_hot_parts(labels, 3)
    assert probs.shape == (1, 4, 2, 2) and torch.equal(probs.argmax(1), labels)
    assert torch.equal(probs.sum(1), torch.ones(1, 2, 2))
    with pytest.raises(ValueError, match="outside 0..1"):
        one_hot_parts(labels, 1)
    with pytest.raises(ValueError, match="integer"):
        one_hot_parts(labels.float(), 3)


def test_clip_motion_scales_the_global_drift_only():
    """clip_motion 1 is the world's clips as they were; larger moves the object further between frames,
    0 leaves only the joints; frame 0 never depends on it; out of range is refused."""
    def displacement(motion):
        moved = []
        for i in range(12):
            clip = render_clip("bird", i, frames=2, size=64, config={"clip_motion": motion})
            v = clip["visible"][0] & clip["visible"][1]
            moved.append(np.linalg.norm(clip["landmarks"][1][v] - clip["landmarks"][0][v], axis=-1).mean())
        return float(np.mean(moved))

    base = render_clip("bird", 2, frames=2, size=48)
    same = render_clip("bird", 2, frames=2, size=48, config={"clip_motion": 1.0})
    more = render_clip("bird", 2, frames=2, size=48, config={"clip_motion": 4.0})
    assert np.array_equal(base["image"], same["image"])
    assert np.array_equal(base["image"][0], more["image"][0]) and not np.array_equal(base["image"][1], more["image"][1])
    assert displacement(0.0) < displacement(1.0) < displacement(4.0)
    with pytest.raises(ValueError, match="clip_motion"):
        SyntheticConfig(clip_motion=-1)


def test_translation_drift_moves_the_still_object_rigidly_by_one_shift():
    """clip_drift="translation": with the joints still (articulation 0) every landmark moves by the same vector;
    the world's similarity drift turns and scales the object too; frame 0 does not depend on it."""
    def spread(kind):
        out = []
        for i in range(6):
            clip = render_clip("bird", i, frames=2, size=64,
                               config={"clip_motion": 4.0, "articulation": 0.0, "clip_drift": kind})
            v = clip["visible"][0] & clip["visible"][1]
            moves = clip["landmarks"][1][v] - clip["landmarks"][0][v]
            out.append((float(np.abs(moves - moves.mean(0)).max()), float(np.linalg.norm(moves.mean(0)))))
        return np.array(out)

    rigid, similar = spread("translation"), spread("similarity")
    assert rigid[:, 0].max() < 1e-4 and rigid[:, 1].min() > 0.005     # one shift, and a real one
    assert similar[:, 0].max() > 0.01                                  # rotation and scale: landmarks differ
    a = render_clip("bird", 3, frames=2, size=48, config={"clip_drift": "translation"})
    b = render_clip("bird", 3, frames=2, size=48)
    assert np.array_equal(a["image"][0], b["image"][0]) and not np.array_equal(a["image"][1], b["image"][1])
    with pytest.raises(ValueError, match="clip_drift"):
        SyntheticConfig(clip_drift="affine")


def test_recipe_clip_motion_reaches_the_clips():
    from partlab.recipes import DataSpec

    spec = DataSpec(clip_motion=3)
    assert spec.clip_motion == 3.0 and spec.world_config().clip_motion == 3.0
    assert DataSpec(world="varied").world_config().appearance == "varied"
    assert DataSpec(clip_drift="translation").world_config().clip_drift == "translation"
    assert DataSpec().world_config().clip_drift == "similarity"
    with pytest.raises(ValueError, match="clip_motion"):
        DataSpec(clip_motion=20)
    with pytest.raises(ValueError, match="data.clip_drift"):
        DataSpec(clip_drift="rotation")
    from partlab.methods.registry import get_recipe

    assert "translation drift" in get_recipe("motion", "quick").override({"data.clip_drift": "translation"}).describe()


def test_recipe_noise_reaches_the_training_data_and_is_described():
    from partlab.data import SyntheticParts
    from partlab.methods.registry import get_recipe
    from partlab.recipes import DataSpec

    assert DataSpec().world_config().noise == 0.02 and DataSpec(noise=0).world_config().noise == 0.0
    assert DataSpec(world="easy", noise=0.1).world_config().noise == 0.1
    with pytest.raises(ValueError, match="data.noise must be null"):
        DataSpec(noise=0.9)
    recipe = get_recipe("scops", "quick").override({"data.noise": 0.0, "data.n_train": 2, "data.clip_motion": 2})
    assert "clip motion x2, pixel noise 0" in recipe.describe()
    clean = SyntheticParts("bird", size=32, length=2, seed=0, split="train", config=recipe.data.world_config())
    noisy = SyntheticParts("bird", size=32, length=2, seed=0, split="train")
    same = SyntheticParts("bird", size=32, length=2, seed=0, split="train", config=DataSpec().world_config())
    assert torch.equal(same[1]["image"], noisy[1]["image"])          # the default spec is the world as named
    assert not torch.equal(clean[1]["image"], noisy[1]["image"])
