"""Evaluation protocols of the papers, with every choice written down.

Inputs may be numpy arrays or torch tensors (moved to the CPU); outputs are plain Python floats,
lists and dicts, so they go straight into a metrics JSON. Scores are fractions (NMI 0.46, not
46.0): the papers' x100 is for display.

Sections:

- landmark regression: :func:`landmark_regression_error` (SCOPS), :func:`keypoint_regression_error`
  (per-keypoint, with visibility), :func:`regress_landmarks` (the fitted predictions, for plots)
- clustering agreement: :func:`nmi_ari`, :func:`labels_at_points`, :func:`keypoint_nmi_ari`,
  :func:`pixel_nmi_ari` (contrastive part discovery, appendix Sec. 2; pooled over the set, which
  scores *co*-parts, or per image, which scores segments only)
- foreground: :func:`foreground_iou`, :func:`coseg_iou` (SCOPS PASCAL, motion co-part)
- semantic segmentation: :func:`hungarian_miou` (MaskContrast: K-means + Hungarian, overclustering),
  :func:`linear_probe_miou` (1x1 conv on frozen features)

Coordinates follow DESIGN.md: normalised ``(x, y)`` in [-1, 1], pixel centres as in
``grid_sample(align_corners=False)``. Label maps are ``(N, H, W)`` integers, 0 = background.

Bad input raises ``ValueError`` with the shapes or values involved; no metric returns a NaN
score silently (per-class IoU lists mark absent classes with NaN, documented there).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from partlab.geometry import to_pixels

# ---------------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------------


def _numpy(x, name: str) -> np.ndarray:
    """Array view of a tensor (detached, on the CPU) or of anything numpy accepts."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} could not be read as an array: {exc}") from exc


def _floats(x, name: str, ndim: Optional[int] = None, last: Optional[int] = None) -> np.ndarray:
    """Finite float64 array, optionally of a given rank and last dimension."""
    a = _numpy(x, name).astype(np.float64)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if last is not None and a.shape[-1] != last:
        raise ValueError(f"{name} must have last dimension {last}, got shape {a.shape}")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN values")
    if np.isinf(a).any():
        raise ValueError(f"{name} contains infinite values")
    return a


def _probs(a: np.ndarray) -> np.ndarray:
    """Probability maps checked for NaN without a float64 copy (they can be large)."""
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"probs (N, K+1, H, W) must be floating point, got dtype {a.dtype}")
    if np.isnan(a).any():
        raise ValueError("pred (probs) contains NaN values")
    return a


def _labels(x, name: str) -> np.ndarray:
    """Integer label array; float input must hold whole numbers and no NaN."""
    a = _numpy(x, name)
    if a.dtype == bool:
        return a.astype(np.int64)
    if np.issubdtype(a.dtype, np.floating):
        if np.isnan(a).any():
            raise ValueError(f"{name} contains NaN values; labels must be integers")
        if not np.all(a == np.round(a)):
            raise ValueError(f"{name} holds non-integer values; pass integer labels "
                             "(or probs of shape (N, K+1, H, W) where accepted)")
    elif not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels, got dtype {a.dtype}")
    return a.astype(np.int64)


def _mask(x, name: str) -> np.ndarray:
    """Boolean mask ``(N, H, W)``; ``(N, 1, H, W)`` is squeezed, soft masks are thresholded at 0.5."""
    a = _numpy(x, name)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W) or (N, 1, H, W), got {a.shape}")
    if a.dtype == bool:
        return a
    a = a.astype(np.float64)
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN values")
    return a > 0.5


def _same_shape(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}; they must match")


def _choice(value, allowed: Sequence[str], name: str) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {tuple(allowed)}")


# ---------------------------------------------------------------------------------------------
# landmark regression
# ---------------------------------------------------------------------------------------------


def _fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """SCOPS regression: standardise inputs and targets, least squares without intercept, undo."""
    from sklearn.linear_model import LinearRegression   # here, not at the top: importing partlab stays fast
    from sklearn.preprocessing import StandardScaler

    x_scaler = StandardScaler().fit(x_train)
    y_scaler = StandardScaler().fit(y_train)
    reg = LinearRegression(fit_intercept=False).fit(x_scaler.transform(x_train), y_scaler.transform(y_train))
    return y_scaler.inverse_transform(reg.predict(x_scaler.transform(x_test)))


def _check_regression_inputs(pred_train, gt_train, pred_test, gt_test):
    pred_train = _floats(pred_train, "pred_train", ndim=3, last=2)  # (N, K, 2)
    gt_train = _floats(gt_train, "gt_train", ndim=3, last=2)        # (N, L, 2)
    pred_test = _floats(pred_test, "pred_test", ndim=3, last=2)
    if pred_train.shape[0] != gt_train.shape[0]:
        raise ValueError(f"pred_train has shape {pred_train.shape} but gt_train has shape {gt_train.shape}: "
                         "they must hold the same number of images")
    if pred_test.shape[1:] != pred_train.shape[1:]:
        raise ValueError(f"pred_test has shape {pred_test.shape} but pred_train has shape {pred_train.shape}: "
                         "the number of parts must match")
    if gt_test is not None:
        gt_test = _floats(gt_test, "gt_test", ndim=3, last=2)
        if gt_test.shape[0] != pred_test.shape[0] or gt_test.shape[1:] != gt_train.shape[1:]:
            raise ValueError(f"gt_test has shape {gt_test.shape}, expected ({pred_test.shape[0]}, "
                             f"{gt_train.shape[1]}, 2) from pred_test {pred_test.shape} and gt_train {gt_train.shape}")
    return pred_train, gt_train, pred_test, gt_test


def _visibility(vis, n: int, num_landmarks: int, name: str) -> np.ndarray:
    v = _numpy(vis, name)
    if v.shape != (n, num_landmarks):
        raise ValueError(f"{name} has shape {v.shape}, expected ({n}, {num_landmarks}) (images, landmarks)")
    return v.astype(bool) if v.dtype == bool else _floats(v, name) > 0.5


def _too_few(n: int, num_features: int, what: str) -> ValueError:
    return ValueError(f"{what}: {n} training images for a regression from {num_features} inputs "
                      f"(K parts x 2 coordinates); the fit needs at least as many images as inputs")


def regress_landmarks(pred_train, gt_train, pred_test, *, visible_train=None) -> np.ndarray:
    """Fit the linear map from part centres to landmarks on the training set; apply it to the test set.

    Args:
        pred_train: ``(N_train, K, 2)`` part centres (e.g. :func:`partlab.geometry.part_centers`).
        gt_train: ``(N_train, L, 2)`` ground-truth landmarks, same units as the centres.
        pred_test: ``(N_test, K, 2)`` part centres.
        visible_train: optional ``(N_train, L)`` bool. ``None`` fits every landmark on every training
            image (SCOPS, faces). Given, landmark ``l`` gets its own regression (scalers included) fitted
            only on the images where it is visible (the per-keypoint protocol of
            :func:`keypoint_regression_error`).

    Returns:
        ``(N_test, L, 2)`` regressed landmarks (numpy float64).

    The regression is the SCOPS one: ``StandardScaler`` on the flattened ``(N, 2K)`` inputs and on the
    flattened ``(N, 2L)`` targets, ``LinearRegression(fit_intercept=False)`` between the standardised
    values, predictions mapped back with the target scaler's inverse. Least squares decomposes over
    target columns, so without ``visible_train`` this one joint fit equals L separate fits.

    Raises ``ValueError`` when a fit would have fewer training images than the ``2K`` inputs.
    """
    pred_train, gt_train, pred_test, _ = _check_regression_inputs(pred_train, gt_train, pred_test, None)
    n_train, k, _ = pred_train.shape
    n_test, num_landmarks = pred_test.shape[0], gt_train.shape[1]
    x_train = pred_train.reshape(n_train, 2 * k)  # (N, 2K)
    x_test = pred_test.reshape(n_test, 2 * k)
    if visible_train is None:
        if n_train < 2 * k:
            raise _too_few(n_train, 2 * k, "landmark regression")
        y = _fit_predict(x_train, gt_train.reshape(n_train, 2 * num_landmarks), x_test)  # (N_test, 2L)
        return y.reshape(n_test, num_landmarks, 2)
    vis = _visibility(visible_train, n_train, num_landmarks, "visible_train")
    out = np.empty((n_test, num_landmarks, 2))
    for l in range(num_landmarks):
        rows = vis[:, l]
        if rows.sum() < 2 * k:
            raise _too_few(int(rows.sum()), 2 * k, f"landmark {l} is visible in too few training images")
        out[:, l] = _fit_predict(x_train[rows], gt_train[rows, l], x_test)  # (N_test, 2)
    return out


def _regression_errors(pred, gt, normalize: str, eye_indices) -> np.ndarray:
    """``(N, L)`` L2 errors between regressed and true landmarks, normalised per image (``"iod"``)."""
    diff = pred - gt  # (N, L, 2)
    if normalize == "iod":
        e0, e1 = (int(i) for i in eye_indices)
        if not (0 <= e0 < gt.shape[1] and 0 <= e1 < gt.shape[1]) or e0 == e1:
            raise ValueError(f"eye_indices={tuple(eye_indices)} must be two different landmark indices "
                             f"in [0, {gt.shape[1]})")
        iod = np.linalg.norm(gt[:, e0] - gt[:, e1], axis=-1)  # (N,)
        if np.any(iod <= 0):
            raise ValueError(f"inter-ocular distance is 0 for test images {np.flatnonzero(iod <= 0).tolist()}: "
                             "the two eye landmarks coincide, so the error cannot be normalised")
        return np.linalg.norm(diff, axis=-1) / iod[:, None]
    return np.linalg.norm(diff, axis=-1)  # "none", or "bbox" on points already in box-relative coordinates


def _box_relative(points: np.ndarray, bbox, name: str) -> np.ndarray:
    """``(N, P, 2)`` points in box-relative coordinates: ``(p - (x0, y0)) / (width, height)`` per image."""
    if bbox is None:
        raise ValueError(f"normalize='bbox' needs {name} of shape (N, 4) = (x0, y0, x1, y1) for the train and the "
                         f"test images (bbox_train, bbox_test): centres and landmarks are regressed in "
                         f"box-relative coordinates, as the original CUB evaluation does")
    box = _floats(bbox, name, ndim=2, last=4)
    if box.shape[0] != points.shape[0]:
        raise ValueError(f"{name} has shape {box.shape} but there are {points.shape[0]} images: one box per image")
    wh = box[:, 2:] - box[:, :2]  # (N, 2)
    if np.any(wh <= 0):
        raise ValueError(f"{name} has non-positive width or height for images "
                         f"{np.flatnonzero((wh <= 0).any(axis=1)).tolist()}")
    return (points - box[:, None, :2]) / wh[:, None, :]


def _in_boxes(pred_train, gt_train, pred_test, gt_test, bbox_train, bbox_test):
    """Centres and landmarks of both splits in box-relative coordinates (the CUB protocol)."""
    return (_box_relative(pred_train, bbox_train, "bbox_train"), _box_relative(gt_train, bbox_train, "bbox_train"),
            _box_relative(pred_test, bbox_test, "bbox_test"), _box_relative(gt_test, bbox_test, "bbox_test"))


def landmark_regression_error(pred_train, gt_train, pred_test, gt_test, *, normalize: str = "iod",
                              eye_indices: Sequence[int] = (0, 1), visible_train=None, visible_test=None,
                              bbox_train=None, bbox_test=None) -> float:
    """SCOPS landmark evaluation: regress landmarks from part centres, report the normalised error.

    Protocol (SCOPS Sec. 4.1, as in its face evaluation code): part centres ``(N, K, 2)`` are mapped to
    landmarks ``(N, L, 2)`` by :func:`regress_landmarks` fitted on the training images; on each test
    image the error is the mean over landmarks of the L2 distance between regressed and true landmark,
    divided by the image's normaliser; the result is the mean over test images. A fraction: SCOPS
    reports 15.01% on unaligned CelebA as ``0.1501``.

    Args:
        pred_train, gt_train, pred_test, gt_test: centres and landmarks in one coordinate system
            (normalised or pixels; the normalised error does not depend on the units).
        normalize: ``"iod"`` divides by the inter-ocular distance ``||gt[e0] - gt[e1]||`` with
            ``(e0, e1) = eye_indices`` (faces); ``"bbox"`` (CUB, "normalised by the width and height of
            the bounding box"): centres and landmarks of both splits are expressed in box-relative
            coordinates, ``(p - (x0, y0)) / (width, height)`` of each image's box, the regression is
            fitted and the error measured there, as the original does; ``"none"`` keeps units.
        visible_train: optional ``(N_train, L)`` bool; see :func:`regress_landmarks` (``None``: fit on
            all landmarks, as SCOPS does for faces).
        visible_test: optional ``(N_test, L)`` bool; each image averages only its visible landmarks,
            and images with no visible landmark are left out of the mean.
        bbox_train, bbox_test: ``(N_train, 4)`` and ``(N_test, 4)`` boxes ``(x0, y0, x1, y1)`` in the
            landmarks' units, for ``"bbox"``.
    """
    _choice(normalize, ("iod", "bbox", "none"), "normalize")
    pred_train, gt_train, pred_test, gt_test = _check_regression_inputs(pred_train, gt_train, pred_test, gt_test)
    if normalize == "bbox":
        pred_train, gt_train, pred_test, gt_test = _in_boxes(pred_train, gt_train, pred_test, gt_test,
                                                             bbox_train, bbox_test)
    pred = regress_landmarks(pred_train, gt_train, pred_test, visible_train=visible_train)
    errors = _regression_errors(pred, gt_test, normalize, eye_indices)  # (N, L)
    if visible_test is None:
        return float(errors.mean(axis=1).mean())
    vis = _visibility(visible_test, *gt_test.shape[:2], "visible_test")
    count = vis.sum(axis=1)
    if not count.any():
        raise ValueError("visible_test marks no landmark visible: there is nothing to score")
    per_image = (errors * vis).sum(axis=1)[count > 0] / count[count > 0]
    return float(per_image.mean())


def keypoint_regression_error(pred_train, gt_train, vis_train, pred_test, gt_test, vis_test, *,
                              bbox_train=None, bbox_test=None, normalize: str = "bbox") -> float:
    """Per-keypoint regression error with visibility (contrastive part discovery on CUB).

    Protocol: one linear regressor per keypoint (the SCOPS regression of :func:`regress_landmarks`),
    each fitted only on the training images where that keypoint is visible; the error of every
    visible test keypoint is its L2 distance to the truth (``"bbox"``: centres and keypoints of both splits
    in box-relative coordinates, x by the box width and y by its height, for the fit and the error, as
    the original does; ``"none"``: the given units), and the result is the mean over all visible test
    keypoints pooled over the test set (not a mean of per-image means: an image counts as many times
    as it has visible keypoints). A fraction.

    Shapes: centres ``(N, K, 2)``, keypoints ``(N, L, 2)``, visibility ``(N, L)`` bool,
    ``bbox_train`` / ``bbox_test`` ``(N, 4)`` = ``(x0, y0, x1, y1)``.
    """
    _choice(normalize, ("bbox", "none"), "normalize")
    pred_train, gt_train, pred_test, gt_test = _check_regression_inputs(pred_train, gt_train, pred_test, gt_test)
    if normalize == "bbox":
        pred_train, gt_train, pred_test, gt_test = _in_boxes(pred_train, gt_train, pred_test, gt_test,
                                                             bbox_train, bbox_test)
    pred = regress_landmarks(pred_train, gt_train, pred_test, visible_train=vis_train)
    errors = _regression_errors(pred, gt_test, "none", (0, 1))  # (N, L)
    vis = _visibility(vis_test, *gt_test.shape[:2], "vis_test")
    if not vis.any():
        raise ValueError("vis_test marks no keypoint visible: there is nothing to score")
    return float(errors[vis].mean())


# ---------------------------------------------------------------------------------------------
# clustering agreement: NMI and ARI
# ---------------------------------------------------------------------------------------------


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Counts of each (value of a, value of b) pair; rows and columns of absent values are dropped."""
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    na, nb = int(ia.max()) + 1, int(ib.max()) + 1
    return np.bincount(ia.ravel() * nb + ib.ravel(), minlength=na * nb).reshape(na, nb)


def _nmi_ari_from_contingency(table: np.ndarray) -> dict:
    """NMI (arithmetic normaliser) and ARI from a contingency table, matching scikit-learn's
    ``normalized_mutual_info_score`` and ``adjusted_rand_score`` including their special cases."""
    table = np.asarray(table, dtype=np.int64)
    table = table[table.sum(axis=1) > 0][:, table.sum(axis=0) > 0]
    n = int(table.sum())
    rows, cols = table.sum(axis=1), table.sum(axis=0)
    # NMI: both labelings a single cluster is a perfect match; no mutual information scores 0.
    if table.shape[0] == table.shape[1] == 1:
        nmi = 1.0
    else:
        i, j = np.nonzero(table)
        nij = table[i, j].astype(np.float64)
        mi = max(float(np.sum(nij / n * (np.log(nij) + np.log(n) - np.log(rows[i]) - np.log(cols[j])))), 0.0)
        h_rows = -float(np.sum(rows / n * np.log(rows / n)))
        h_cols = -float(np.sum(cols / n * np.log(cols / n)))
        nmi = 0.0 if mi == 0.0 else mi / ((h_rows + h_cols) / 2)
    # ARI from the pair confusion matrix (Python ints: the products overflow int64 on big sets).
    sum_sq = int(np.sum(table.astype(np.int64) ** 2))
    tp = sum_sq - n
    fp = int(table.dot(cols).sum()) - sum_sq
    fn = int(table.T.dot(rows).sum()) - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        ari = 1.0
    else:
        ari = 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))
    return {"nmi": float(nmi), "ari": float(ari)}


def nmi_ari(pred, true) -> dict:
    """Normalised mutual information and adjusted Rand index between two labelings.

    ``pred`` and ``true`` are label arrays of the same shape (flattened: every element is one sample).
    NMI uses the arithmetic mean of the entropies (scikit-learn's default,
    ``normalized_mutual_info_score(average_method="arithmetic")``), ARI is ``adjusted_rand_score``;
    both computed here from the contingency table so that millions of pixels stay cheap.

    Returns ``{"nmi": float, "ari": float}`` as fractions (NMI in [0, 1], ARI in [-0.5, 1]).
    Empty input raises ``ValueError``.
    """
    p, t = _labels(pred, "pred"), _labels(true, "true")
    _same_shape(p, t, "pred", "true")
    if p.size == 0:
        raise ValueError("nmi_ari got no samples to compare")
    return _nmi_ari_from_contingency(_contingency(t, p))


def labels_at_points(labels, points) -> np.ndarray:
    """Label of the pixel nearest to each point.

    Args:
        labels: ``(N, H, W)`` integer label maps.
        points: ``(N, L, 2)`` normalised ``(x, y)``.

    Returns:
        ``(N, L)`` int64 labels. The nearest pixel of pixel coordinate ``u`` is ``floor(u + 0.5)``
        (ties go to the higher index). Points outside the image are clamped to the nearest border
        pixel; mask them out with the landmarks' visibility where that matters.
    """
    lab = _labels(labels, "labels")
    pts = _floats(points, "points", ndim=3, last=2)
    if lab.ndim != 3:
        raise ValueError(f"labels must have shape (N, H, W), got {lab.shape}")
    if pts.shape[0] != lab.shape[0]:
        raise ValueError(f"points has shape {pts.shape} but labels has shape {lab.shape}: one set of points per map")
    n, h, w = lab.shape
    pix = to_pixels(pts, (h, w))  # (N, L, 2) pixel (x, y)
    cols = np.clip(np.floor(pix[..., 0] + 0.5), 0, w - 1).astype(np.int64)
    rows = np.clip(np.floor(pix[..., 1] + 0.5), 0, h - 1).astype(np.int64)
    return lab[np.arange(n)[:, None], rows, cols]


def parts_only(labels) -> np.ndarray:
    """Label maps ``(N, H, W)`` with every background pixel (label 0) given the label of the nearest part
    pixel of its image (Euclidean distance, ``scipy.ndimage.distance_transform_edt``): the label-map
    analogue of the argmax over the parts only, which FG-NMI/ARI score. An image without any part pixel
    is returned unchanged (all 0: its keypoints can only form one cluster of their own)."""
    from scipy import ndimage

    lab = _labels(labels, "labels")
    if lab.ndim != 3:
        raise ValueError(f"labels must have shape (N, H, W), got {lab.shape}")
    out = lab.copy()
    for i, image in enumerate(lab):
        background = image == 0
        if background.any() and not background.all():
            _, (rows, cols) = ndimage.distance_transform_edt(background, return_indices=True)
            out[i] = image[rows, cols]
    return out


def _predicted_labels(pred, variant: str, fg: Optional[np.ndarray]) -> np.ndarray:
    """``(N, H, W)`` predicted labels for the FG or full variant.

    ``pred`` is either labels ``(N, H, W)`` or probs ``(N, K+1, H, W)`` (channel 0 = background).
    FG: probs -> argmax over the parts only (``argmax(probs[:, 1:]) + 1``); labels -> background pixels
    (label 0, e.g. from ``predict()["labels"]``) take the nearest part's label (:func:`parts_only`), so
    the background is never counted as a cluster.
    Full: with ``fg``, probs -> parts as for FG, labels as given, and label 0 wherever ``fg`` is 0;
    without ``fg``, probs -> argmax over all K+1 channels (the model's own background), labels as given.
    """
    a = _numpy(pred, "pred_labels")
    if a.ndim == 4:
        probs = _probs(a)
        if probs.shape[1] < 2:
            raise ValueError(f"probs must have K+1 >= 2 channels (background + parts), got shape {probs.shape}")
        if variant == "full" and fg is None:
            return probs.argmax(axis=1)
        labels = probs[:, 1:].argmax(axis=1) + 1
    elif a.ndim == 3:
        labels = _labels(a, "pred_labels")
        if variant == "fg":
            labels = parts_only(labels)
    else:
        raise ValueError(f"pred_labels must be labels (N, H, W) or probs (N, K+1, H, W), got shape {a.shape}")
    if variant == "full" and fg is not None:
        if fg.shape != labels.shape:
            raise ValueError(f"fg has shape {fg.shape} but the predictions are {labels.shape}; they must match")
        labels = np.where(fg, labels, 0)
    return labels


def keypoint_nmi_ari(pred_labels, landmarks, visible, fg=None, variant: str = "fg") -> dict:
    """NMI/ARI between predicted parts and keypoint identities (contrastive part discovery, CUB).

    Every visible keypoint of every image is one sample; its true label is its keypoint index
    ``l``, its predicted label the part at the nearest pixel (:func:`labels_at_points`). Pooled over
    the whole set, then :func:`nmi_ari`.

    Args:
        pred_labels: labels ``(N, H, W)`` or probs ``(N, K+1, H, W)``.
        landmarks: ``(N, L, 2)`` normalised ``(x, y)``.
        visible: ``(N, L)`` bool; invisible keypoints are not scored.
        fg: optional foreground mask ``(N, H, W)`` or ``(N, 1, H, W)`` (true or predicted), used by
            the ``"full"`` variant only.
        variant: ``"fg"`` (FG-NMI/ARI: argmax over the parts only, so no keypoint falls on
            background; meant for images cropped to the object) or ``"full"`` (background label 0
            wherever ``fg`` is 0; without ``fg`` the model's own background channel decides).

    Returns ``{"nmi", "ari"}`` fractions. No visible keypoint at all raises ``ValueError``.
    """
    _choice(variant, ("fg", "full"), "variant")
    fg_mask = None if fg is None else _mask(fg, "fg")
    labels = _predicted_labels(pred_labels, variant, fg_mask)  # (N, H, W)
    pts = _floats(landmarks, "landmarks", ndim=3, last=2)
    if pts.shape[0] != labels.shape[0]:
        raise ValueError(f"landmarks has shape {pts.shape} but pred_labels has {labels.shape[0]} images")
    vis = _visibility(visible, *pts.shape[:2], "visible")
    if not vis.any():
        raise ValueError("visible marks no keypoint visible: there is nothing to score")
    predicted = labels_at_points(labels, pts)                  # (N, L)
    identity = np.broadcast_to(np.arange(pts.shape[1]), vis.shape)  # (N, L)
    return nmi_ari(predicted[vis], identity[vis])


def pixel_nmi_ari(pred_labels, gt_labels, variant: str = "fg", fg=None, *, reduction: str = "dataset") -> dict:
    """NMI/ARI between predicted parts and ground-truth part labels on pixels (DeepFashion, PASCAL-Part).

    Args:
        pred_labels: labels ``(N, H, W)`` or probs ``(N, K+1, H, W)``.
        gt_labels: ``(N, H, W)`` ground-truth labels, 0 = background.
        variant: ``"fg"``: only foreground pixels are scored, predictions are the argmax over the
            parts only. ``"full"``: every pixel is scored, and the prediction is background (0)
            wherever the foreground mask is 0 ("background label 0 from the mask").
        fg: foreground mask ``(N, H, W)`` or ``(N, 1, H, W)``; default ``gt_labels != 0``. Pass a
            predicted mask to score with predicted foreground.
        reduction: ``"dataset"`` (default; what the papers report): the scored pixels of all images
            are pooled into one contingency table before :func:`nmi_ari`, so predicted part k must be
            the same true part in every image: a *co*-part score. ``"mean"``: :func:`nmi_ari` within
            each image on the same pixels and predictions, averaged over the images scored (each image
            weighs 1): a segmentation score, blind to part k being the head in one image and the tail in
            the next. The same words as :func:`foreground_iou`'s ``reduction``.

    ``"dataset"``: images without foreground simply add no pixels to the FG variant; no foreground
    pixel in the whole set raises ``ValueError``.

    ``"mean"``: an image with fewer than 2 scored pixels (FG: foreground pixels) is skipped; if every
    image is skipped, ``ValueError``. An image whose scored truth holds one part only gets what
    :func:`nmi_ari` (scikit-learn) gives: NMI = ARI = 1 if the prediction also puts all those pixels
    in one part, else NMI = ARI = 0.
    """
    _choice(variant, ("fg", "full"), "variant")
    _choice(reduction, ("dataset", "mean"), "reduction")
    gt = _labels(gt_labels, "gt_labels")
    if gt.ndim != 3:
        raise ValueError(f"gt_labels must have shape (N, H, W), got {gt.shape}")
    fg_mask = gt != 0 if fg is None else _mask(fg, "fg")
    _same_shape(fg_mask, gt, "fg", "gt_labels")
    labels = _predicted_labels(pred_labels, variant, fg_mask)
    _same_shape(labels, gt, "pred_labels", "gt_labels")
    scored = fg_mask if variant == "fg" else np.ones(gt.shape, dtype=bool)  # (N, H, W)
    if variant == "fg" and not fg_mask.any():
        raise ValueError("no foreground pixel in the whole set: FG-NMI/ARI is undefined")
    if reduction == "dataset":
        return nmi_ari(labels[scored], gt[scored])
    per_image = [nmi_ari(labels[i][scored[i]], gt[i][scored[i]]) for i in range(len(gt)) if scored[i].sum() >= 2]
    if not per_image:
        raise ValueError(f"no image has 2 or more {'foreground ' if variant == 'fg' else ''}pixels: "
                         f"per-image NMI/ARI is undefined")
    return {key: float(np.mean([s[key] for s in per_image])) for key in ("nmi", "ari")}


# ---------------------------------------------------------------------------------------------
# foreground IoU
# ---------------------------------------------------------------------------------------------


def _iou_of_masks(pred: np.ndarray, gt: np.ndarray, reduction: str) -> float:
    _choice(reduction, ("dataset", "mean"), "reduction")
    _same_shape(pred, gt, "predicted foreground", "true foreground")
    inter = (pred & gt).sum(axis=(1, 2))  # (N,)
    union = (pred | gt).sum(axis=(1, 2))  # (N,)
    if not union.any():
        raise ValueError("neither the prediction nor the truth has any foreground: IoU is undefined")
    if reduction == "dataset":
        return float(inter.sum() / union.sum())
    keep = union > 0
    return float(np.mean(inter[keep] / union[keep]))


def foreground_iou(pred_labels, fg, *, reduction: str = "dataset") -> float:
    """IoU between the union of the predicted parts and the true foreground.

    Args:
        pred_labels: labels ``(N, H, W)`` (foreground = label != 0) or probs ``(N, K+1, H, W)``
            (foreground = argmax over all channels != 0, i.e. ``O = sum_k Y_k`` wins over background).
        fg: true foreground ``(N, H, W)`` or ``(N, 1, H, W)``.
        reduction: ``"dataset"``: sum of intersections over sum of unions of the whole set (large
            objects weigh more); ``"mean"``: per-image IoU averaged over images.

    Images where neither prediction nor truth has foreground have no IoU: they are skipped by
    ``"mean"`` (and add nothing to ``"dataset"``); if that holds for every image, ``ValueError``.
    """
    truth = _mask(fg, "fg")
    a = _numpy(pred_labels, "pred_labels")
    if a.ndim == 4:
        predicted = _probs(a).argmax(axis=1) != 0
    elif a.ndim == 3:
        predicted = _labels(a, "pred_labels") != 0
    else:
        raise ValueError(f"pred_labels must be labels (N, H, W) or probs (N, K+1, H, W), got shape {a.shape}")
    return _iou_of_masks(predicted, truth, reduction)


def coseg_iou(pred_fg, gt_fg) -> float:
    """Co-segmentation IoU (SCOPS Table 4, PASCAL VOC): foreground IoU per image, averaged over images.

    ``pred_fg`` is the aggregated part segmentation (union of the K parts) and ``gt_fg`` the true
    object mask, both ``(N, H, W)`` or ``(N, 1, H, W)`` masks (bool, {0, 1}, or soft thresholded at 0.5).
    The SCOPS paper reports "foreground object segmentation IoU" without naming the reduction; the
    per-image mean is the usual co-segmentation Jaccard and is what this returns (for the pooled
    version use :func:`foreground_iou` with ``reduction="dataset"``). Images with an empty union are
    skipped, as in :func:`foreground_iou`.
    """
    return _iou_of_masks(_mask(pred_fg, "pred_fg"), _mask(gt_fg, "gt_fg"), "mean")


# ---------------------------------------------------------------------------------------------
# semantic segmentation: Hungarian mIoU and linear probe
# ---------------------------------------------------------------------------------------------


def _confusion(pred: np.ndarray, gt: np.ndarray, num_rows: int, num_classes: int) -> np.ndarray:
    """``(num_rows, num_classes)`` counts of (predicted cluster, true class) over the given pixels."""
    return np.bincount(pred * num_classes + gt, minlength=num_rows * num_classes).reshape(num_rows, num_classes)


def _scores(conf: np.ndarray, mapping: np.ndarray) -> dict:
    """mIoU, accuracy and per-class IoU once every cluster ``c`` is mapped to class ``mapping[c]``
    (-1: unmatched, its pixels count as wrong for their true class)."""
    num_classes = conf.shape[1]
    hit = np.zeros(num_classes)        # true positives per class
    predicted = np.zeros(num_classes)  # pixels predicted as each class
    for c, k in enumerate(mapping):
        if k >= 0:
            hit[k] += conf[c, k]
            predicted[k] += conf[c].sum()
    union = predicted + conf.sum(axis=0) - hit
    iou = np.full(num_classes, np.nan)
    present = union > 0
    iou[present] = hit[present] / union[present]
    return {"miou": float(iou[present].mean()), "acc": float(hit.sum() / conf.sum()),
            "iou": [float(v) for v in iou]}


def hungarian_miou(pred, gt, num_classes: int, *, ignore_index: Optional[int] = 255,
                   many_to_one: bool = False, num_clusters: Optional[int] = None) -> dict:
    """mIoU of an unsupervised segmentation after matching its clusters to the classes (MaskContrast).

    Args:
        pred: ``(N, H, W)`` cluster ids in ``[0, num_clusters)``.
        gt: ``(N, H, W)`` class ids in ``[0, num_classes)``, or ``ignore_index`` (excluded everywhere).
        num_classes: number of ground-truth classes (background included if it is a class).
        many_to_one: ``False``: one-to-one Hungarian matching (``scipy linear_sum_assignment``) that
            maximises the total intersection, i.e. the number of correctly labelled pixels, as the
            IIC/MaskContrast evaluation does; with more clusters than classes the unmatched clusters
            count as wrong. ``True`` (overclustering): each cluster goes to the class with which its
            pixel set has the highest IoU; several clusters may share a class.
        num_clusters: default ``max(pred.max() + 1, num_classes)``.

    The confusion matrix is accumulated over the whole set (all images' pixels), then matched once.

    Returns a dict:
        ``miou``: mean IoU over the classes present in the truth or in the matched prediction;
        ``acc``: pixel accuracy; ``iou``: per-class list, ``NaN`` for a class neither present nor
        predicted (excluded from ``miou``; a class present but never predicted has IoU 0);
        ``match``: ``{cluster: class}`` (clusters without pixels are left out under ``many_to_one``);
        ``nmi``, ``ari``: :func:`nmi_ari` of clusters vs classes on the same pixels;
        ``num_clusters``.
    """
    p, g = _labels(pred, "pred"), _labels(gt, "gt")
    _same_shape(p, g, "pred", "gt")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    valid = np.ones(g.shape, dtype=bool) if ignore_index is None else g != ignore_index
    p, g = p[valid], g[valid]
    if g.size == 0:
        raise ValueError("every pixel is ignore_index: there is nothing to score")
    if g.min() < 0 or g.max() >= num_classes:
        bad = np.unique(g[(g < 0) | (g >= num_classes)])[:10].tolist()
        raise ValueError(f"gt holds labels {bad} outside [0, {num_classes}) that are not ignore_index={ignore_index}")
    if p.min() < 0:
        raise ValueError(f"pred holds negative cluster ids, e.g. {int(p.min())}")
    if num_clusters is None:
        num_clusters = max(int(p.max()) + 1, num_classes)
    elif p.max() >= num_clusters:
        raise ValueError(f"pred holds cluster id {int(p.max())} but num_clusters={num_clusters}")
    conf = _confusion(p, g, num_clusters, num_classes)  # (clusters, classes)
    mapping = np.full(num_clusters, -1)
    if many_to_one:
        union = conf.sum(axis=1, keepdims=True) + conf.sum(axis=0, keepdims=True) - conf
        iou = np.divide(conf, union, out=np.zeros(conf.shape), where=union > 0)
        used = conf.sum(axis=1) > 0
        mapping[used] = iou[used].argmax(axis=1)
    else:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(conf, maximize=True)
        mapping[rows] = cols
    out = _scores(conf, mapping)
    out["match"] = {int(c): int(k) for c, k in enumerate(mapping) if k >= 0}
    out.update(_nmi_ari_from_contingency(conf))
    out["num_clusters"] = int(num_clusters)
    return out


def linear_probe_miou(train_features, train_labels, test_features, test_labels, num_classes: int, *,
                      steps: int = 300, lr: float = 0.05, batch_size: int = 8,
                      ignore_index: Optional[int] = 255, device="cpu", seed: int = 0) -> dict:
    """Linear probe: a 1x1 conv trained on frozen features to predict the true classes; plain mIoU.

    Protocol (MaskContrast's linear evaluation, small): features ``(N, C, h, w)`` are standardised
    per channel with the training set's mean and std (an affine map a 1x1 conv could absorb, so this
    only conditions the optimisation), a zero-initialised ``Conv2d(C, num_classes, 1)`` is trained
    with Adam for ``steps`` steps on random mini-batches of ``batch_size`` images, logits upsampled
    bilinearly (``align_corners=False``) to the label size ``(H, W)``, cross-entropy averaged over
    the non-ignored pixels of the batch. The test prediction is the argmax of the upsampled logits;
    the score is the mIoU with the identity matching (the classes are supervised, no Hungarian).

    Deterministic for a given ``seed`` on the CPU (batch order comes from a seeded generator).

    Returns ``{"miou", "acc", "iou", "loss"}``: as :func:`hungarian_miou`, plus the last training loss.
    """
    from partlab.utils import device as resolve_device

    dev = resolve_device(device)
    xs = {}
    for name, feats in (("train_features", train_features), ("test_features", test_features)):
        xs[name] = torch.from_numpy(_floats(feats, name, ndim=4)).float()
    ys = {}
    for name, labels in (("train_labels", train_labels), ("test_labels", test_labels)):
        ys[name] = _labels(labels, name)
        if ys[name].ndim != 3:
            raise ValueError(f"{name} must have shape (N, H, W), got {ys[name].shape}")
    for split in ("train", "test"):
        f, y = xs[f"{split}_features"], ys[f"{split}_labels"]
        if f.shape[0] != y.shape[0]:
            raise ValueError(f"{split}_features has shape {tuple(f.shape)} but {split}_labels has shape "
                             f"{y.shape}: one label map per feature map")
        valid = y != ignore_index if ignore_index is not None else np.ones(y.shape, bool)
        if valid.any() and (y[valid].min() < 0 or y[valid].max() >= num_classes):
            raise ValueError(f"{split}_labels hold values outside [0, {num_classes}) other than ignore_index")
    if xs["train_features"].shape[1] != xs["test_features"].shape[1]:
        raise ValueError(f"train_features has shape {tuple(xs['train_features'].shape)} but test_features "
                         f"{tuple(xs['test_features'].shape)}: the channel counts must match")

    train_x, test_x = xs["train_features"], xs["test_features"]
    mean = train_x.mean(dim=(0, 2, 3), keepdim=True)                  # (1, C, 1, 1)
    std = train_x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    ignore = -100 if ignore_index is None else ignore_index
    train_y = torch.from_numpy(ys["train_labels"])                     # (N, H, W)
    size = tuple(train_y.shape[-2:])

    probe = torch.nn.Conv2d(train_x.shape[1], num_classes, kernel_size=1).to(dev)
    torch.nn.init.zeros_(probe.weight)
    torch.nn.init.zeros_(probe.bias)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    loss_value = float("nan")
    for _ in range(steps):
        idx = torch.randint(train_x.shape[0], (min(batch_size, train_x.shape[0]),), generator=generator)
        x, y = train_x[idx].to(dev), train_y[idx].to(dev)
        logits = F.interpolate(probe(x), size=size, mode="bilinear", align_corners=False)  # (b, classes, H, W)
        count = (y != ignore).sum().clamp_min(1)
        loss = F.cross_entropy(logits, y, ignore_index=ignore, reduction="sum") / count
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())

    test_y = ys["test_labels"]
    predictions = []
    with torch.no_grad():
        for start in range(0, test_x.shape[0], batch_size):
            x = test_x[start:start + batch_size].to(dev)
            logits = F.interpolate(probe(x), size=test_y.shape[-2:], mode="bilinear", align_corners=False)
            predictions.append(logits.argmax(dim=1).cpu().numpy())
    pred = np.concatenate(predictions)                                 # (N, H, W)
    valid = test_y != ignore_index if ignore_index is not None else np.ones(test_y.shape, bool)
    if not valid.any():
        raise ValueError("every test pixel is ignore_index: there is nothing to score")
    conf = _confusion(pred[valid], test_y[valid], num_classes, num_classes)
    out = _scores(conf, np.arange(num_classes))
    out["loss"] = loss_value
    return out
