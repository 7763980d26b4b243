"""Co-parts, not segments: pooled vs per-image FG-ARI, the position baselines, and the part grid."""

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from partlab import evaluation, viz
from partlab.baselines import position_features, position_parts
from partlab.metrics import pixel_nmi_ari

# --- pooled (co-part) vs per-image (segment) FG-NMI/ARI -----------------------------------------


def _blocks(n=3, h=4, w=9):
    """Truth ``(n, h, w)``: one background row on top, then parts 1, 2, 3 in column blocks of 3 pixels."""
    gt = np.repeat(np.repeat(np.arange(1, 4), 3)[None, None], n, 0).repeat(h, 1)    # (n, h, w)
    gt[:, 0] = 0
    return gt


def _ari_of_table(table):
    """Adjusted Rand index from a contingency table, written out with pair counts (Hubert & Arabie)."""
    pairs = lambda x: math.comb(int(x), 2)                                          # noqa: E731
    index = sum(pairs(x) for x in np.ravel(table))
    rows, cols = sum(pairs(x) for x in table.sum(1)), sum(pairs(x) for x in table.sum(0))
    expected = rows * cols / pairs(table.sum())
    return (index - expected) / ((rows + cols) / 2 - expected)


def test_part_names_that_change_per_image_are_perfect_segments_but_no_coparts():
    gt = _blocks()
    # the same segmentation in every image, but part k is a different true part in each image
    perms = [np.array([0, 1, 2, 3]), np.array([0, 2, 3, 1]), np.array([0, 3, 1, 2])]
    pred = np.stack([perm[g] for perm, g in zip(perms, gt)])
    per_image = pixel_nmi_ari(pred, gt, variant="fg", reduction="mean")
    pooled = pixel_nmi_ari(pred, gt, variant="fg")                                   # "dataset" is the default
    assert per_image["ari"] == 1.0 and per_image["nmi"] == pytest.approx(1.0)
    # pooled: each true part falls into each predicted label on 9 pixels (one image each): a flat 3 x 3
    # table, no information at all, and an ARI just below 0
    flat = np.full((3, 3), 9)
    assert pooled["ari"] == pytest.approx(_ari_of_table(flat)) and pooled["ari"] < 0.0
    assert pooled["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert pixel_nmi_ari(pred, gt, reduction="dataset") == pooled
    # the truth itself: both reductions are perfect
    assert pixel_nmi_ari(gt, gt, reduction="mean") == pytest.approx({"nmi": 1.0, "ari": 1.0})
    assert pixel_nmi_ari(gt, gt, reduction="dataset") == pytest.approx({"nmi": 1.0, "ari": 1.0})


def test_per_image_scores_skip_tiny_images_and_score_one_part_images_as_nmi_ari_does():
    gt = _blocks(n=4)
    gt[2] = 0
    gt[2, 1, 1] = 2                                      # one foreground pixel: skipped
    gt[3, 1:] = 1                                        # one true part only
    pred = gt.copy()
    pred[3, 1:, :4] = 2                                  # ... split in two by the prediction
    scores = pixel_nmi_ari(pred, gt, reduction="mean")
    # images 0 and 1 perfect, image 2 skipped, image 3 (one true part, two predicted) NMI = ARI = 0
    assert scores == pytest.approx({"nmi": 2 / 3, "ari": 2 / 3})
    pred[3] = gt[3]                                      # one true part, one predicted part: 1, as scikit-learn
    assert pixel_nmi_ari(pred, gt, reduction="mean") == pytest.approx({"nmi": 1.0, "ari": 1.0})
    with pytest.raises(ValueError, match="no image has 2 or more foreground pixels"):
        pixel_nmi_ari(gt[2:3], gt[2:3], reduction="mean")
    with pytest.raises(ValueError, match="reduction='image'"):
        pixel_nmi_ari(gt, gt, reduction="image")


def test_score_parts_reports_pooled_and_per_image_fg_scores_side_by_side():
    gt = torch.from_numpy(_blocks())
    perms = [torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 3, 1]), torch.tensor([0, 3, 1, 2])]
    labels = torch.stack([perm[g] for perm, g in zip(perms, gt)])
    truth = {"parts": gt, "fg": (gt > 0)[:, None].float(), "landmarks": torch.zeros(3, 1, 2),
             "visible": torch.ones(3, 1, dtype=torch.bool)}
    scores = evaluation.score_parts({"labels": labels}, truth)
    assert scores["fg_ari_image"] == 1.0 and scores["fg_nmi_image"] == pytest.approx(1.0)
    assert scores["fg_ari"] < 0.0 and scores["fg_nmi"] == pytest.approx(0.0, abs=1e-12)
    metrics = evaluation.BENCHMARK_METRICS
    assert metrics.index("fg_ari_image") == metrics.index("fg_nmi") + 1
    assert metrics.index("fg_nmi_image") == metrics.index("fg_ari_image") + 1
    assert evaluation.HIGHER_IS_BETTER["fg_ari_image"] and evaluation.HIGHER_IS_BETTER["fg_nmi_image"]
    table = evaluation.format_table({"swapped": scores}).splitlines()
    assert "fg_ari_image ↑" in table[0] and len(table[0]) < 140          # all 10 columns, still one line


# --- position baselines ------------------------------------------------------------------------


def _bars(n=8, size=48, seed=0):
    """Objects: 3:1 bars of three parts (thirds along x), at random places and scales -> (fg, gt)."""
    rng = np.random.default_rng(seed)
    gt = np.zeros((n, size, size), dtype=np.int64)
    for i in range(n):
        third = int(rng.choice([3, 4, 5, 6]))                      # part width: the bar is 3 x third by third
        y, x = rng.integers(0, size - third + 1), rng.integers(0, size - 3 * third + 1)
        for k in range(3):
            gt[i, y:y + third, x + k * third: x + (k + 1) * third] = k + 1
    gt = torch.from_numpy(gt)
    return (gt > 0).float()[:, None], gt


def test_object_coordinates_find_parts_in_fixed_places_on_the_object_and_image_coordinates_do_not():
    fg, gt = _bars()
    feats = position_features(fg, "object")                       # (N, 2, H, W)
    inside = fg[:, 0] > 0.5
    for i in range(len(fg)):                                      # every object: centroid 0, unit RMS radius
        points = feats[i].permute(1, 2, 0)[inside[i]]            # (P, 2)
        assert torch.allclose(points.mean(0), torch.zeros(2), atol=1e-5)
        assert float((points ** 2).sum(1).mean()) == pytest.approx(1.0, rel=1e-4)
    obj = position_parts(fg, 3, coords="object")
    xy = position_parts(fg, 3, coords="xy")
    obj_ari = pixel_nmi_ari(obj["probs"], gt)["ari"]
    xy_ari = pixel_nmi_ari(xy["probs"], gt)["ari"]
    assert obj_ari > 0.8 and xy_ari < obj_ari - 0.3
    assert obj["probs"].shape == (8, 4, 48, 48) and torch.equal(obj["labels"] > 0, fg[:, 0] > 0.5)
    assert torch.allclose(obj["probs"].sum(1), torch.ones(8, 48, 48))
    images = torch.rand(8, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    rgbxy = position_parts(fg, 3, coords="rgbxy", images=images)
    assert rgbxy["labels"].max() == 3 and torch.equal(rgbxy["labels"] > 0, fg[:, 0] > 0.5)
    assert position_features(fg, "rgbxy", images)[:, 3:].min() >= 0 and position_features(fg, "rgbxy", images).max() <= 1


def test_position_baselines_on_degenerate_input():
    fg, gt = _bars(n=3)
    fg[1] = 0                                                     # no object
    fg[2] = 0
    fg[2, 0, 5, 7] = 1                                            # a one-pixel object
    for coords in ("object", "xy"):
        out = position_parts(fg, 3, coords=coords)
        assert torch.isfinite(out["probs"]).all()
        assert (out["labels"][1] == 0).all() and torch.equal(out["probs"][1, 0], torch.ones(48, 48))
        assert out["labels"][2, 5, 7] > 0 and (out["labels"][2] > 0).sum() == 1
    one = position_parts(fg, 1)                                    # K = 1: the foreground is the part
    assert torch.equal(one["labels"], (fg[:, 0] > 0.5).long()) and one["probs"].shape == (3, 2, 48, 48)
    tiny = torch.zeros(2, 8, 8)
    tiny[0, 1, 1] = tiny[1, 4, 4] = 1
    with pytest.raises(ValueError, match="only 2 foreground pixels in the collection for 3 parts"):
        position_parts(tiny, 3)
    with pytest.raises(ValueError, match="num_parts must be >= 1"):
        position_parts(fg, 0)
    with pytest.raises(ValueError, match="needs the images"):
        position_parts(fg, 3, coords="rgbxy")
    with pytest.raises(ValueError, match="coords='polar'"):
        position_parts(fg, 3, coords="polar")


def test_score_baseline_runs_the_position_baselines_without_a_feature_extractor(monkeypatch):
    import partlab.features

    def refuse(*args, **kwargs):
        raise AssertionError("a position baseline built a feature extractor")

    monkeypatch.setattr(partlab.features, "get_extractor", refuse)
    train, test = evaluation.benchmark_splits("bird", size=32, n_train=16, n_test=8)
    scores, pred = evaluation.score_baseline("position", train, test, category="bird")
    assert {"fg_ari", "fg_ari_image", "fg_nmi_image", "landmark_error"} <= set(scores)
    assert all(math.isfinite(v) for v in scores.values())
    assert pred["probs"].shape == (8, 7, 32, 32) and scores["fg_iou"] == pytest.approx(1.0)
    results, _ = evaluation.score_baselines(train, test, names=["xy", "rgbxy"], category="bird")
    assert list(results) == ["xy (true)", "rgbxy (true)"]
    assert set(evaluation.POSITION_BASELINES) <= set(evaluation.ALL_BASELINES)
    assert evaluation.BASELINES == ("kmeans", "dff")                  # the benchmark's default rows
    with pytest.raises(ValueError, match="unknown baseline 'polar'"):
        evaluation.baseline_parts("polar", test["image"], test["fg"], 3)


# --- the part grid -------------------------------------------------------------------------------


def test_part_grid_draws_each_part_in_one_colour_everywhere_with_a_legend():
    fg, gt = _bars(n=5, size=24)
    images = torch.rand(5, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    fig = viz.part_grid(images, gt, n=4, ncols=3, title="position (object)")
    shown = [ax for ax in fig.axes if ax.get_images()]
    assert len(shown) == 4                                            # n of the 5 images, on a 2 x 3 grid
    for i, ax in enumerate(shown):                                    # part k: PALETTE[k] in every cell
        assert np.allclose(ax.get_images()[0].get_array(), viz.overlay(images[i], gt[i], 0.6))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["part 1", "part 2", "part 3"]
    assert fig._suptitle.get_text() == "position (object)"
    plt.close(fig)
    fig = viz.part_grid(images, gt, fg=torch.zeros(5, 1, 24, 24), names=[])   # nothing inside fg: no parts
    assert not fig.legends and len([ax for ax in fig.axes if ax.get_images()]) == 5
    plt.close(fig)
    with pytest.raises(ValueError, match="one name per part"):
        viz.part_grid(images, gt, names=["head"])
    with pytest.raises(ValueError, match="same N"):
        viz.part_grid(images, gt[:2])
