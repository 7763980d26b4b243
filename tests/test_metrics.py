"""Evaluation metrics: hand-worked examples, agreement with scikit-learn and brute force, bad input."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from partlab.geometry import pixel_grid
from partlab.metrics import (
    coseg_iou,
    foreground_iou,
    hungarian_miou,
    keypoint_nmi_ari,
    keypoint_regression_error,
    labels_at_points,
    landmark_regression_error,
    linear_probe_miou,
    nmi_ari,
    parts_only,
    pixel_nmi_ari,
    regress_landmarks,
)

# --- landmark regression ----------------------------------------------------------------------


def _identity_train(n=20, k=3, seed=0):
    """Training set where the landmarks are the centres themselves: the fit learns the identity."""
    centres = np.random.default_rng(seed).uniform(-5, 5, size=(n, k, 2))
    return centres, centres.copy()


def test_perfect_affine_relation_gives_zero_error():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(8, 10))                 # 4 centres (8 coords) -> 5 landmarks (10 coords)
    b = rng.normal(size=10)
    centres = rng.uniform(-1, 1, size=(60, 4, 2))
    landmarks = (centres.reshape(60, 8) @ a + b).reshape(60, 5, 2)
    err = landmark_regression_error(centres[:40], landmarks[:40], centres[40:], landmarks[40:])
    assert err == pytest.approx(0.0, abs=1e-9)
    assert isinstance(err, float)
    # torch input works the same
    t = torch.from_numpy
    assert landmark_regression_error(t(centres[:40]), t(landmarks[:40]), t(centres[40:]), t(landmarks[40:])) \
        == pytest.approx(0.0, abs=1e-6)


def test_hand_worked_normalisation():
    centres, landmarks = _identity_train()
    test_centres = np.array([[[0.0, 0.0], [4.0, 0.0], [2.0, 2.0]]])  # regressed landmarks = these
    truth = np.array([[[0.0, 0.0], [4.0, 0.0], [2.0, 5.0]]])         # landmark 2 is 3 units off
    assert np.allclose(regress_landmarks(centres, landmarks, test_centres), test_centres)
    # IOD = |(0,0)-(4,0)| = 4; errors (0, 0, 3) -> mean 1 -> 1/4
    assert landmark_regression_error(centres, landmarks, test_centres, truth) == pytest.approx(0.25)
    # only landmark 2 visible: 3/4; only the eyes visible: 0
    assert landmark_regression_error(centres, landmarks, test_centres, truth,
                                     visible_test=[[False, False, True]]) == pytest.approx(0.75)
    assert landmark_regression_error(centres, landmarks, test_centres, truth,
                                     visible_test=[[True, True, False]]) == pytest.approx(0.0, abs=1e-9)
    # bbox 4 wide, 6 high (training boxes the unit square, so the identity is still learnt): in box
    # coordinates the error (0, 3) becomes (0, 3/6) -> mean over 3 landmarks = 0.5/3
    unit = np.tile([0.0, 0.0, 1.0, 1.0], (len(centres), 1))
    assert landmark_regression_error(centres, landmarks, test_centres, truth, normalize="bbox",
                                     bbox_train=unit, bbox_test=[[0, 0, 4, 6]]) == pytest.approx(0.5 / 3)
    assert landmark_regression_error(centres, landmarks, test_centres, truth, normalize="none") \
        == pytest.approx(1.0)
    # other eye indices: IOD = |(4,0)-(2,5)| = sqrt(29)
    assert landmark_regression_error(centres, landmarks, test_centres, truth, eye_indices=(1, 2)) \
        == pytest.approx(1.0 / np.sqrt(29))


def test_bbox_protocol_fits_in_box_relative_coordinates():
    # every image has its own box; inside it the landmarks are a fixed linear map of the centres
    # (relative to the box), as when birds of every size stand anywhere in the picture. Only a fit in
    # box-relative coordinates, as the original CUB evaluation does, recovers that map exactly.
    rng = np.random.default_rng(4)
    n = 60
    a = rng.normal(size=(6, 4))                                           # 3 centres -> 2 landmarks
    rel_centres = rng.uniform(0, 1, size=(n, 3, 2))
    rel_landmarks = (rel_centres.reshape(n, 6) @ a).reshape(n, 2, 2)
    corner = rng.uniform(-50, 50, size=(n, 1, 2))
    size = rng.uniform(5, 40, size=(n, 1, 2))
    centres, landmarks = corner + size * rel_centres, corner + size * rel_landmarks
    boxes = np.concatenate((corner[:, 0], corner[:, 0] + size[:, 0]), axis=1)  # (N, 4)
    split = dict(pred_train=centres[:40], gt_train=landmarks[:40], pred_test=centres[40:], gt_test=landmarks[40:])
    err = landmark_regression_error(**split, normalize="bbox", bbox_train=boxes[:40], bbox_test=boxes[40:])
    assert err == pytest.approx(0.0, abs=1e-9)
    # a fit in image coordinates, then divided by the box size, cannot express it
    absolute = regress_landmarks(centres[:40], landmarks[:40], centres[40:])
    assert (np.linalg.norm((absolute - landmarks[40:]) / size[40:], axis=-1).mean()) > 0.05
    vis = np.ones((n, 2), bool)
    assert keypoint_regression_error(centres[:40], landmarks[:40], vis[:40], centres[40:], landmarks[40:], vis[40:],
                                     bbox_train=boxes[:40], bbox_test=boxes[40:]) == pytest.approx(0.0, abs=1e-9)


def test_error_is_scale_invariant():
    rng = np.random.default_rng(1)
    centres = rng.uniform(-1, 1, size=(50, 4, 2))
    landmarks = rng.uniform(-1, 1, size=(50, 5, 2)) + centres[:, :1]  # loosely related, error > 0
    args = (centres[:35], landmarks[:35], centres[35:], landmarks[35:])
    err = landmark_regression_error(*args)
    assert err > 0.05
    assert landmark_regression_error(*(2 * a for a in args)) == pytest.approx(err)


def test_regression_bad_inputs():
    centres, landmarks = _identity_train(n=20, k=3)
    with pytest.raises(ValueError, match="at least as many images"):  # 5 images < 2K = 6 inputs
        landmark_regression_error(centres[:5], landmarks[:5], centres, landmarks)
    with pytest.raises(ValueError, match=r"pred_train has shape \(20, 3, 2\) but gt_train has shape \(19, 3, 2\)"):
        landmark_regression_error(centres, landmarks[:19], centres, landmarks)
    with pytest.raises(ValueError, match="number of parts"):
        landmark_regression_error(centres, landmarks, centres[:, :2], landmarks)
    with pytest.raises(ValueError, match="gt_test has shape"):
        landmark_regression_error(centres, landmarks, centres, landmarks[:, :2])
    with pytest.raises(ValueError, match="last dimension 2"):
        landmark_regression_error(centres[..., :1], landmarks, centres, landmarks)
    bad = centres.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="pred_test contains NaN"):
        landmark_regression_error(centres, landmarks, bad, landmarks)
    same_eyes = landmarks.copy()
    same_eyes[:, 1] = same_eyes[:, 0]
    with pytest.raises(ValueError, match="inter-ocular distance is 0"):
        landmark_regression_error(centres, landmarks, centres, same_eyes)
    with pytest.raises(ValueError, match="eye_indices"):
        landmark_regression_error(centres, landmarks, centres, landmarks, eye_indices=(0, 7))
    with pytest.raises(ValueError, match="needs bbox_train"):
        landmark_regression_error(centres, landmarks, centres, landmarks, normalize="bbox")
    unit = np.tile([0.0, 0.0, 1.0, 1.0], (len(centres), 1))
    with pytest.raises(ValueError, match="needs bbox_test"):
        landmark_regression_error(centres, landmarks, centres, landmarks, normalize="bbox", bbox_train=unit)
    with pytest.raises(ValueError, match="bbox_test has non-positive width"):
        landmark_regression_error(centres, landmarks, centres[:1], landmarks[:1], normalize="bbox",
                                  bbox_train=unit, bbox_test=[[0, 0, 0, 1]])
    with pytest.raises(ValueError, match="normalize="):
        landmark_regression_error(centres, landmarks, centres, landmarks, normalize="diag")
    with pytest.raises(ValueError, match="visible_test has shape"):
        landmark_regression_error(centres, landmarks, centres, landmarks, visible_test=np.ones((20, 2)))
    with pytest.raises(ValueError, match="no landmark visible"):
        landmark_regression_error(centres, landmarks, centres, landmarks, visible_test=np.zeros((20, 3)))


def test_keypoint_regression_ignores_invisible_training_keypoints():
    rng = np.random.default_rng(2)
    centres, landmarks = _identity_train(n=40, k=3, seed=2)
    vis_train = rng.random((40, 3)) > 0.3
    corrupted = landmarks.copy()
    corrupted[~vis_train] = 1e3  # what datasets store for missing keypoints: junk
    test_centres, _ = _identity_train(n=5, k=3, seed=3)
    vis_test = np.ones((5, 3), bool)
    bbox = np.tile([-5.0, -5.0, 5.0, 5.0], (5, 1))
    err = keypoint_regression_error(centres, corrupted, vis_train, test_centres, test_centres, vis_test,
                                    bbox_train=np.tile([-5.0, -5.0, 5.0, 5.0], (40, 1)), bbox_test=bbox)
    assert err == pytest.approx(0.0, abs=1e-9)
    # the joint SCOPS fit on all landmarks is misled by the junk
    assert landmark_regression_error(centres, corrupted, test_centres, test_centres, normalize="none") > 1.0
    # ... and given the same visibility it becomes the per-keypoint fit
    assert landmark_regression_error(centres, corrupted, test_centres, test_centres, normalize="none",
                                     visible_train=vis_train) == pytest.approx(0.0, abs=1e-9)


def test_keypoint_regression_pools_visible_keypoints():
    centres, landmarks = _identity_train(n=20, k=2)
    vis_train = np.ones((20, 2), bool)
    test_centres = np.zeros((2, 2, 2))
    truth = np.array([[[1.0, 0.0], [0.0, 0.0]],    # image 0: errors 1, 0 (keypoint 1 invisible)
                      [[2.0, 0.0], [0.0, 4.0]]])   # image 1: errors 2, 4
    vis_test = np.array([[True, False], [True, True]])
    # pooled over the 3 visible keypoints: (1 + 2 + 4) / 3; per-image means would give (1 + 3) / 2
    err = keypoint_regression_error(centres, landmarks, vis_train, test_centres, truth, vis_test, normalize="none")
    assert err == pytest.approx(7 / 3)
    assert landmark_regression_error(centres, landmarks, test_centres, truth, normalize="none",
                                     visible_test=vis_test) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="landmark 1 is visible in too few"):
        keypoint_regression_error(centres, landmarks, np.tile([True, False], (20, 1)), test_centres, truth,
                                  vis_test, normalize="none")
    with pytest.raises(ValueError, match="no keypoint visible"):
        keypoint_regression_error(centres, landmarks, vis_train, test_centres, truth, np.zeros((2, 2)),
                                  normalize="none")
    with pytest.raises(ValueError, match="normalize="):
        keypoint_regression_error(centres, landmarks, vis_train, test_centres, truth, vis_test, normalize="iod")


# --- NMI / ARI --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed,n_true,n_pred", [(0, 3, 3), (1, 5, 2), (2, 4, 9), (3, 15, 5)])
def test_nmi_ari_agree_with_sklearn(seed, n_true, n_pred):
    rng = np.random.default_rng(seed)
    true = rng.integers(0, n_true, 500)
    pred = np.where(rng.random(500) < 0.5, true % n_pred, rng.integers(0, n_pred, 500))  # partly related
    out = nmi_ari(pred, true)
    assert out["nmi"] == pytest.approx(normalized_mutual_info_score(true, pred, average_method="arithmetic"))
    assert out["ari"] == pytest.approx(adjusted_rand_score(true, pred))


def test_nmi_ari_perfect_and_degenerate():
    true = np.array([0, 0, 1, 1, 2, 2])
    assert nmi_ari(np.array([5, 5, 3, 3, 9, 9]), true) == pytest.approx({"nmi": 1.0, "ari": 1.0})  # relabelled
    assert nmi_ari(np.zeros(6, int), np.zeros(6, int)) == {"nmi": 1.0, "ari": 1.0}  # as scikit-learn
    constant = nmi_ari(np.zeros(6, int), true)
    assert constant["nmi"] == 0.0 and constant["ari"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="no samples"):
        nmi_ari(np.array([], int), np.array([], int))
    with pytest.raises(ValueError, match=r"pred has shape \(5,\) but true has shape \(6,\)"):
        nmi_ari(true[:5], true)
    with pytest.raises(ValueError, match="contains NaN"):
        nmi_ari(np.array([0.0, np.nan]), np.array([0, 1]))


def test_labels_at_points_nearest_pixel_and_clamp():
    labels = np.arange(16).reshape(1, 4, 4)                 # label = 4 * row + col
    grid = pixel_grid(4, 4).numpy()
    points = np.stack([grid[1, 2],                          # centre of (row 1, col 2) -> 6
                       grid[1, 2] + [0.2, -0.2],            # 0.4 px off: still 6
                       [5.0, -3.0],                         # far outside: clamped to (row 0, col 3) -> 3
                       [-1.0, 1.0]])[None]                  # image corner -> (row 3, col 0) = 12
    assert labels_at_points(labels, points).tolist() == [[6, 6, 3, 12]]
    with pytest.raises(ValueError, match="one set of points per map"):
        labels_at_points(labels, np.zeros((2, 1, 2)))


def _keypoint_world(n=4, h=12, w=12):
    """Part l+1 fills column block l of every image; keypoint l sits inside it (4 keypoints, 4 parts)."""
    labels = np.repeat(np.arange(1, 5), 3)[None, None, :].repeat(h, 1).repeat(n, 0)  # (N, H, W)
    grid = pixel_grid(h, w).numpy()
    rng = np.random.default_rng(0)
    points = np.stack([[grid[rng.integers(h), 3 * l + rng.integers(3)] for l in range(4)] for _ in range(n)])
    return labels, points


def test_keypoint_nmi_ari_perfect_and_variants():
    labels, points = _keypoint_world()
    visible = np.ones(points.shape[:2], bool)
    assert keypoint_nmi_ari(labels, points, visible) == pytest.approx({"nmi": 1.0, "ari": 1.0})
    # probs whose background channel wins everywhere: FG takes the argmax over the parts only
    probs = np.eye(5)[labels].transpose(0, 3, 1, 2) * 0.5   # (N, 5, H, W), parts at 0.5
    probs[:, 0] = 0.9
    assert keypoint_nmi_ari(probs, points, visible, variant="fg") == pytest.approx({"nmi": 1.0, "ari": 1.0})
    # full without a mask: the model's background wins -> every keypoint is labelled 0 -> NMI 0
    assert keypoint_nmi_ari(probs, points, visible, variant="full")["nmi"] == 0.0
    # full with a mask that removes part 4's block: keypoint 3 becomes background, others unchanged
    fg = labels != 4
    full = keypoint_nmi_ari(probs, points, visible, fg=fg, variant="full")
    assert full == pytest.approx(nmi_ari(np.array([1, 2, 3, 0] * 4), np.array([0, 1, 2, 3] * 4)))
    # invisible keypoints are not scored: hiding keypoint 3 everywhere restores a perfect score
    visible[:, 3] = False
    assert keypoint_nmi_ari(probs, points, visible, fg=fg, variant="full") == pytest.approx({"nmi": 1.0, "ari": 1.0})
    with pytest.raises(ValueError, match="no keypoint visible"):
        keypoint_nmi_ari(labels, points, np.zeros_like(visible))
    with pytest.raises(ValueError, match="variant="):
        keypoint_nmi_ari(labels, points, visible, variant="bg")


def test_fg_nmi_ari_from_label_maps_never_count_the_background_as_a_cluster():
    labels, _ = _keypoint_world()
    rng = np.random.default_rng(1)
    rows = rng.integers(1, 11, size=(4, 4))                       # keypoint l at column 3l + 1, the
    cols = np.tile(3 * np.arange(4) + 1, (4, 1))                  # middle of its part's column block
    points = np.stack((cols, rows), -1).astype(float)
    points = (2 * points + 1) / 12 - 1                            # pixel -> normalised (x, y)
    visible = np.ones((4, 4), bool)
    holed = labels.copy()
    holed[np.arange(4)[:, None], rows, cols] = 0                  # predict()["labels"]: background there
    # each hole is surrounded by its own part: as the argmax over the parts only, FG scores stay perfect
    assert keypoint_nmi_ari(holed, points, visible, variant="fg") == pytest.approx({"nmi": 1.0, "ari": 1.0})
    assert pixel_nmi_ari(holed, labels, variant="fg") == pytest.approx({"nmi": 1.0, "ari": 1.0})
    assert parts_only(np.array([[[0, 0, 3], [2, 0, 0]]])).tolist() == [[[2, 3, 3], [2, 2, 3]]]
    assert parts_only(np.zeros((1, 2, 2), int)).tolist() == [[[0, 0], [0, 0]]]   # no part: left as is


def test_pixel_nmi_ari_fg_and_full():
    gt = np.array([[[0, 1, 1], [0, 2, 2]]])
    probs = np.zeros((1, 3, 2, 3))
    probs[0, 0] = 0.6                                      # background channel always highest
    probs[0, 1] = np.array([[0, 0.3, 0.3], [0.3, 0, 0]])   # parts: swapped names (2 <-> 1) still perfect
    probs[0, 2] = np.array([[0.3, 0, 0], [0, 0.3, 0.3]])
    assert pixel_nmi_ari(probs, gt, variant="fg") == pytest.approx({"nmi": 1.0, "ari": 1.0})
    # full: background from the true mask, so every pixel agrees
    assert pixel_nmi_ari(probs, gt, variant="full") == pytest.approx({"nmi": 1.0, "ari": 1.0})
    # labels input; a predicted mask that misses pixel (0, 2) makes it background in the full variant
    labels = np.array([[[0, 2, 2], [0, 1, 1]]])
    fg = np.array([[[0, 1, 0], [0, 1, 1]]])
    expected = nmi_ari(np.array([0, 2, 0, 0, 1, 1]), gt.ravel())
    assert pixel_nmi_ari(labels, gt, variant="full", fg=fg) == pytest.approx(expected)
    with pytest.raises(ValueError, match="no foreground pixel"):
        pixel_nmi_ari(labels, np.zeros_like(gt), variant="fg")
    with pytest.raises(ValueError, match="pred_labels has shape"):
        pixel_nmi_ari(labels[:, :, :2], gt)
    nan_probs = probs.copy()
    nan_probs[0, 1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="contains NaN"):
        pixel_nmi_ari(nan_probs, gt)


# --- foreground IoU ---------------------------------------------------------------------------


def test_foreground_iou_hand_example():
    pred = np.array([[[0, 1], [2, 0]],      # image 0: predicted fg {(0,1), (1,0)}
                     [[1, 1], [1, 1]]])     # image 1: all fg
    fg = np.array([[[0, 1], [1, 1]],        # image 0: inter 2, union 3
                   [[1, 1], [0, 0]]])       # image 1: inter 2, union 4
    assert foreground_iou(pred, fg) == pytest.approx(4 / 7)                 # pooled
    assert foreground_iou(pred, fg, reduction="mean") == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert coseg_iou(pred != 0, fg) == pytest.approx((2 / 3 + 1 / 2) / 2)
    # probs: foreground where a part channel beats background; (N, 1, H, W) masks accepted
    probs = np.stack([1 - (pred != 0), (pred != 0) * 1.0], axis=1)
    assert foreground_iou(torch.from_numpy(probs), fg[:, None]) == pytest.approx(4 / 7)
    # an image with no foreground anywhere is skipped by the per-image mean
    pred3 = np.concatenate([pred, np.zeros((1, 2, 2), int)])
    fg3 = np.concatenate([fg, np.zeros((1, 2, 2), int)])
    assert foreground_iou(pred3, fg3, reduction="mean") == pytest.approx((2 / 3 + 1 / 2) / 2)
    with pytest.raises(ValueError, match="neither the prediction nor the truth"):
        coseg_iou(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)))
    with pytest.raises(ValueError, match="must match"):
        foreground_iou(pred, fg[:, :1])
    with pytest.raises(ValueError, match="reduction="):
        foreground_iou(pred, fg, reduction="sum")


# --- Hungarian mIoU ---------------------------------------------------------------------------


def test_hungarian_hand_example():
    gt = np.array([[[0, 0, 1], [1, 1, 2]]])
    pred = np.array([[[0, 0, 0], [1, 1, 2]]])
    # class 0: inter 2 / union 3; class 1: 2/3; class 2: 1/1 -> mIoU (2/3 + 2/3 + 1) / 3 = 7/9; acc 5/6
    out = hungarian_miou(pred, gt, 3)
    assert out["miou"] == pytest.approx(7 / 9)
    assert out["acc"] == pytest.approx(5 / 6)
    assert out["iou"] == pytest.approx([2 / 3, 2 / 3, 1.0])
    assert out["match"] == {0: 0, 1: 1, 2: 2}
    # the same prediction under other cluster names scores the same
    renamed = np.array([2, 0, 1])[pred]
    again = hungarian_miou(renamed, gt, 3)
    assert again["miou"] == pytest.approx(7 / 9) and again["match"] == {2: 0, 0: 1, 1: 2}


def test_hungarian_perfect_permuted_and_overclustered():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, size=(3, 8, 8))
    perm = np.array([3, 1, 0, 2])
    out = hungarian_miou(perm[gt], gt, 4)
    assert out["miou"] == pytest.approx(1.0) and out["acc"] == pytest.approx(1.0)
    assert out["nmi"] == pytest.approx(1.0) and out["ari"] == pytest.approx(1.0)
    # split class 1 into clusters 1 and 4 (overclustering)
    over = gt.copy()
    over[(gt == 1) & (rng.random(gt.shape) < 0.5)] = 4
    assert hungarian_miou(over, gt, 4, many_to_one=True)["miou"] == pytest.approx(1.0)
    one_to_one = hungarian_miou(over, gt, 4)
    assert one_to_one["miou"] < 1.0 and 4 not in one_to_one["match"]  # the extra cluster counts as wrong


def test_hungarian_overclustering_hand_example():
    gt = np.array([[[0, 0, 1], [1, 2, 2]]])
    pred = np.array([[[0, 0, 1], [3, 2, 2]]])  # class 1 split over clusters 1 and 3
    # one-to-one: cluster 3 unmatched, class 1 IoU = 1/2 -> mIoU (1 + 1/2 + 1) / 3 = 5/6
    assert hungarian_miou(pred, gt, 3)["miou"] == pytest.approx(5 / 6)
    out = hungarian_miou(pred, gt, 3, many_to_one=True)
    assert out["miou"] == pytest.approx(1.0) and out["match"] == {0: 0, 1: 1, 2: 2, 3: 1}


@pytest.mark.parametrize("seed", range(4))
def test_hungarian_agrees_with_brute_force(seed):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 3, size=(2, 10, 10))
    pred = np.where(rng.random(gt.shape) < 0.6, (gt + seed) % 3, rng.integers(0, 3, gt.shape))
    out = hungarian_miou(pred, gt, 3)
    best_acc, best_mious = -1, []
    for perm in itertools.permutations(range(3)):
        mapped = np.array(perm)[pred]
        acc = (mapped == gt).mean()
        ious = [((mapped == k) & (gt == k)).sum() / ((mapped == k) | (gt == k)).sum() for k in range(3)]
        if acc > best_acc + 1e-12:
            best_acc, best_mious = acc, [np.mean(ious)]
        elif abs(acc - best_acc) <= 1e-12:
            best_mious.append(np.mean(ious))
    assert out["acc"] == pytest.approx(best_acc)
    assert any(out["miou"] == pytest.approx(m) for m in best_mious)
    assert out["nmi"] == pytest.approx(normalized_mutual_info_score(gt.ravel(), pred.ravel()))
    assert out["ari"] == pytest.approx(adjusted_rand_score(gt.ravel(), pred.ravel()))


def test_hungarian_absent_classes_and_ignore_index():
    gt = np.array([[[0, 0, 1], [1, 255, 255]]])
    pred = np.array([[[0, 0, 1], [1, 0, 1]]])   # ignored pixels hold wrong predictions: no effect
    out = hungarian_miou(pred, gt, 4)
    assert out["miou"] == pytest.approx(1.0)     # classes 2 and 3 neither present nor predicted
    assert np.isnan(out["iou"][2]) and np.isnan(out["iou"][3])
    # a class present but never predicted has IoU 0
    gt2 = np.array([[[0, 0, 1], [1, 2, 2]]])
    pred2 = np.array([[[0, 0, 1], [1, 1, 1]]])
    out2 = hungarian_miou(pred2, gt2, 3)
    assert out2["iou"][2] == 0.0 and out2["miou"] == pytest.approx((1 + 2 / 4 + 0) / 3)


def test_hungarian_bad_inputs():
    gt = np.zeros((1, 2, 3), int)
    with pytest.raises(ValueError, match=r"pred has shape \(1, 2, 2\) but gt has shape \(1, 2, 3\)"):
        hungarian_miou(np.zeros((1, 2, 2), int), gt, 2)
    with pytest.raises(ValueError, match="contains NaN"):
        hungarian_miou(np.full((1, 2, 3), np.nan), gt, 2)
    with pytest.raises(ValueError, match="outside"):
        hungarian_miou(np.zeros((1, 2, 3), int), gt + 5, 2)
    with pytest.raises(ValueError, match="every pixel is ignore_index"):
        hungarian_miou(np.zeros((1, 2, 3), int), gt + 255, 2)
    with pytest.raises(ValueError, match="num_clusters"):
        hungarian_miou(np.full((1, 2, 3), 3), gt, 2, num_clusters=2)
    with pytest.raises(ValueError, match="non-integer"):
        hungarian_miou(np.full((1, 2, 3), 0.5), gt, 2)


# --- linear probe -----------------------------------------------------------------------------


def test_linear_probe_separable_features_and_determinism():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(10, 6, 6))
    feats = np.eye(3)[labels].transpose(0, 3, 1, 2) + 0.1 * rng.normal(size=(10, 3, 6, 6))  # (N, C, h, w)
    feats = np.concatenate([feats, rng.normal(size=(10, 2, 6, 6))], axis=1)                 # 2 noise channels
    labels[0, 0, 0] = 255                                                                    # ignored pixel
    out = linear_probe_miou(feats[:6], labels[:6], feats[6:], labels[6:], 3, steps=60)
    assert out["miou"] == pytest.approx(1.0) and out["acc"] == pytest.approx(1.0)
    again = linear_probe_miou(feats[:6], labels[:6], feats[6:], labels[6:], 3, steps=60)
    assert again == out
    with pytest.raises(ValueError, match="channel counts must match"):
        linear_probe_miou(feats[:6], labels[:6], feats[6:, :3], labels[6:], 3, steps=1)
    with pytest.raises(ValueError, match="one label map per feature map"):
        linear_probe_miou(feats[:6], labels[:5], feats[6:], labels[6:], 3, steps=1)
    with pytest.raises(ValueError, match="outside"):
        linear_probe_miou(feats[:6], labels[:6] + 3, feats[6:], labels[6:], 3, steps=1)
