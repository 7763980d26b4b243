"""Training-free baselines: DFF (NMF) and K-means on frozen CNN features, and K-means on where a pixel is.

All return part maps in the methods' format, so every metric applies unchanged::

    dict(probs=(N, K+1, H, W), labels=(N, H, W))   # channel / label 0 = background

**DFF** (Collins et al., "Deep Feature Factorization", ECCV 2018; SCOPS Sec. 2). Stack the ReLU
features of the *whole collection* into V = (N*h*w) x C (non-negative) and factorise V ~ W H with
k rows in H; column j of W, reshaped to (N, h, w), is the heatmap of factor j. Lee-Seung
multiplicative updates for the Frobenius loss (Lee & Seung 2001):

    H <- H * (W^T V) / (W^T W H),        W <- W * (V H^T) / (W H H^T)

Background (documented choice):
  - with a foreground mask ``fg``: the features are multiplied by the mask (averaged down to the
    feature resolution) before the factorisation, so background pixels are zero rows of V that the
    K factors need not explain; background = ``fg < 0.5``, each foreground pixel takes the factor
    with the largest normalised heatmap;
  - without ``fg``: k = K + 1 factors; the factor whose heatmaps put the largest share of their mass
    on the image border (outer eighth of each side) is the background, the other K are the parts.

**K-means** (contrastive part discovery appendix, Sec. 2): the features of all foreground pixels
of the collection (``fg >= 0.5``), **L2-normalised per pixel** (so clusters follow the feature
direction, not its magnitude, which varies with contrast), clustered into K groups by k-means with
the best of 5 k-means++ initialisations (scikit-learn). Background = ``fg < 0.5``. Two protocols
(:data:`KMEANS_PROTOCOLS`, chosen by name in :func:`partlab.evaluation.baseline_parts`):

- ``"appendix"``, as the appendix runs it: VGG19 relu5_2 + relu5_4 (1024 channels; the stand-in's
  layers of the same role), features upsampled to 64 x 64 before clustering, 100 k-means steps;
- ``"partlab"`` (the default of the notebooks' tables): relu3_2 x 0.33 + relu5_4 (the features of
  contrastive discovery's L_f), clustered at the features' own resolution, up to 300 steps.

Soft maps: ``probs[:, 0] = 1 - fg`` and ``probs[:, 1:] = fg * softmax(scores / temperature)`` over
the K parts (scores = normalised DFF heatmaps, or cosine similarity to the K-means centroids), so
probabilities sum to one over channels and ``labels`` equals the argmax inside the foreground.

**Position** (:func:`position_parts`): K-means over the collection's foreground pixels on their
position alone, no features: ``"object"`` coordinates (relative to each object's centroid, divided
by its scale) give the parts a method gets for free by cutting every object into the same
*regions*; a co-part method has to beat this floor on the pooled FG-ARI before its parts can be
said to follow the object's anatomy. ``"xy"`` (raw image position) and ``"rgbxy"`` (colour and
position, SLIC-like) are the weaker cousins.

>>> feats = extract_features(get_extractor("standin"), images, layers="kmeans")   # doctest: +SKIP
>>> out = kmeans_parts(feats, fg, num_parts=4)        # out["labels"]: (N, H, W) in 0..4   # doctest: +SKIP
>>> out = position_parts(fg, num_parts=4)             # where on the object: no features   # doctest: +SKIP
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

Size = Union[int, Tuple[int, int]]


def nmf(V: torch.Tensor, k: int, max_iter: int = 200, tol: float = 1e-4, seed: int = 0,
        check_every: int = 10, eps: float = 1e-10) -> Tuple[torch.Tensor, torch.Tensor, dict]:
    """Non-negative matrix factorisation V ~ W H by Lee-Seung multiplicative updates (Frobenius loss).

    Args:
        V: (n, m) non-negative matrix (rows = pixels, columns = feature channels).
        k: number of factors.
        max_iter: at most this many update sweeps (one sweep = H update then W update).
        tol: stop when the improvement of the reconstruction error since the last check, divided by
            the error at initialisation, is below ``tol`` (the scikit-learn / DFF rule).
        seed: seeds the initialisation ``|N(0, 1)| * sqrt(mean(V) / k)`` for W and H (CPU generator,
            so the result does not depend on the device's random stream).
        check_every: the error is computed every ``check_every`` sweeps (10 as in DFF).
        eps: added to the denominators.

    Returns:
        W (n, k), H (k, m) and ``info`` = dict(iterations, converged, errors) where ``errors`` lists
        the relative errors ||V - W H||_F / ||V||_F at initialisation and at every check.
    """
    if V.dim() != 2:
        raise ValueError(f"V must be a (n, m) matrix, got shape {tuple(V.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    V = V.float()
    if bool((V < 0).any()):
        raise ValueError(f"NMF needs a non-negative V; min is {V.min().item():.3g} (use ReLU features)")
    n, m = V.shape
    gen = torch.Generator().manual_seed(int(seed))
    scale = float(torch.sqrt(V.mean() / k))
    W = (torch.randn(n, k, generator=gen).abs() * scale).to(V.device)
    H = (torch.randn(k, m, generator=gen).abs() * scale).to(V.device)
    norm_v2 = float((V.double() ** 2).sum())

    def rel_error(WtV: torch.Tensor) -> float:
        # ||V - WH||^2 = ||V||^2 - 2 <W^T V, H> + <W^T W, H H^T>  (no n x m temporary)
        err2 = norm_v2 - 2 * float((WtV.double() * H.double()).sum()) \
            + float(((W.T @ W).double() * (H @ H.T).double()).sum())
        return max(err2, 0.0) ** 0.5 / max(norm_v2, 1e-30) ** 0.5

    errors = [rel_error(W.T @ V)]
    previous = errors[0]
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        H = H * (W.T @ V) / ((W.T @ W) @ H + eps)                      # (k, m)
        denominator = W @ (H @ H.T) + eps                              # (n, k), before W changes
        W.mul_(V @ H.T).div_(denominator)                              # in place: n can be large
        if it % check_every == 0 or it == max_iter:
            error = rel_error(W.T @ V)
            errors.append(error)
            if it % check_every == 0 and tol > 0 and (previous - error) / max(errors[0], 1e-30) < tol:
                converged = True
                break
            previous = error
    return W, H, {"iterations": it, "converged": converged, "errors": errors}


def _as_size(size: Optional[Size], default: Tuple[int, int]) -> Tuple[int, int]:
    if size is None:
        return tuple(default)
    if isinstance(size, int):
        return (size, size)
    return (int(size[0]), int(size[1]))


def _check_features(features: torch.Tensor) -> None:
    if not torch.is_tensor(features) or features.dim() != 4:
        shape = tuple(features.shape) if torch.is_tensor(features) else type(features).__name__
        raise ValueError(f"features must be a (N, C, h, w) tensor, got {shape}")


def dff(features: torch.Tensor, k: int, size: Optional[Size] = None, max_iter: int = 200, tol: float = 1e-4,
        seed: int = 0, return_info: bool = False):
    """Deep Feature Factorization heatmaps.

    Args:
        features: (N, C, h, w) non-negative features of the whole collection.
        k: number of factors.
        size: output (H, W) (int or pair); None keeps (h, w).

    Returns:
        heatmaps (N, k, H, W): factor loadings W reshaped to maps, bilinearly upsampled, each map
        divided by its own spatial maximum (per image and factor), so values lie in [0, 1].
        With ``return_info=True`` also the ``info`` dict of :func:`nmf`.
    """
    _check_features(features)
    N, C, h, w = features.shape
    V = features.permute(0, 2, 3, 1).reshape(N * h * w, C)       # (N*h*w, C)
    W, _, info = nmf(V, k, max_iter=max_iter, tol=tol, seed=seed)
    maps = W.reshape(N, h, w, k).permute(0, 3, 1, 2)              # (N, k, h, w)
    out_size = _as_size(size, (h, w))
    if out_size != (h, w):
        maps = F.interpolate(maps, size=out_size, mode="bilinear", align_corners=False).clamp_min(0)
    maps = maps / (maps.amax(dim=(2, 3), keepdim=True) + 1e-12)
    return (maps, info) if return_info else maps


def _prepare_fg(fg: Optional[torch.Tensor], n: int) -> Optional[torch.Tensor]:
    """fg (N, H, W) or (N, 1, H, W), binary or soft in [0, 1] -> (N, 1, H, W) float."""
    if fg is None:
        return None
    fg = torch.as_tensor(fg).float()
    if fg.dim() == 3:
        fg = fg[:, None]
    if fg.dim() != 4 or fg.shape[1] != 1 or fg.shape[0] != n:
        raise ValueError(f"fg must be (N, H, W) or (N, 1, H, W) with N={n}, got {tuple(fg.shape)}")
    return fg.clamp(0, 1)


def _assemble(scores: torch.Tensor, fg: torch.Tensor, temperature: float) -> Dict[str, torch.Tensor]:
    """scores (N, K, H, W), fg (N, 1, H, W) -> dict(probs (N, K+1, H, W), labels (N, H, W))."""
    parts = torch.softmax(scores / temperature, dim=1)           # (N, K, H, W)
    probs = torch.cat([1 - fg, fg * parts], dim=1)               # (N, K+1, H, W)
    labels = torch.where(fg[:, 0] >= 0.5, scores.argmax(dim=1) + 1, torch.zeros_like(fg[:, 0], dtype=torch.long))
    return {"probs": probs, "labels": labels.long()}


def dff_parts(features: torch.Tensor, num_parts: int, fg: Optional[torch.Tensor] = None, *,
              size: Optional[Size] = None, max_iter: int = 200, tol: float = 1e-4, seed: int = 0,
              temperature: float = 0.1) -> Dict[str, torch.Tensor]:
    """DFF part maps for a collection.

    Args:
        features: (N, C, h, w) non-negative features of the whole collection (e.g.
            :func:`partlab.features.extract_features` with the extractor's ``"dff"`` layer recipe).
        num_parts: K, the number of foreground parts.
        fg: optional foreground mask (N, H, W) / (N, 1, H, W); see the module docstring for background.
        size: output (H, W); default = the fg size, else the feature size.
        temperature: softness of ``probs`` over the K normalised heatmaps (labels do not depend on it).

    Returns:
        dict(probs=(N, K+1, H, W), labels=(N, H, W)), channel 0 = background; with no fg also
        ``"background_factor"`` (index of the factor taken as background).
    """
    _check_features(features)
    N = features.shape[0]
    fg = _prepare_fg(fg, N)
    out_size = _as_size(size, tuple(fg.shape[-2:] if fg is not None else features.shape[-2:]))
    if fg is not None:
        fg = F.interpolate(fg, size=out_size, mode="bilinear", align_corners=False) if fg.shape[-2:] != out_size else fg
        fg_low = F.adaptive_avg_pool2d(fg, features.shape[-2:]).to(features.device)          # (N, 1, h, w)
        heat = dff(features * fg_low, num_parts, size=out_size, max_iter=max_iter, tol=tol, seed=seed)
        return _assemble(heat, fg, temperature)
    heat = dff(features, num_parts + 1, size=out_size, max_iter=max_iter, tol=tol, seed=seed)
    background = int(border_share(heat).argmax())
    keep = [j for j in range(num_parts + 1) if j != background]
    # soft fg: a pixel is background where the background factor dominates
    scores = torch.cat([heat[:, background:background + 1], heat[:, keep]], dim=1)      # (N, K+1, H, W)
    probs = torch.softmax(scores / temperature, dim=1)
    return {"probs": probs, "labels": probs.argmax(dim=1), "background_factor": background}


def border_share(heatmaps: torch.Tensor, margin: float = 0.125) -> torch.Tensor:
    """Fraction of each factor's total heat lying in the outer ``margin`` of every side -> (k,)."""
    N, k, H, W = heatmaps.shape
    mh, mw = max(1, int(round(H * margin))), max(1, int(round(W * margin)))
    border = torch.zeros(H, W, dtype=torch.bool, device=heatmaps.device)
    border[:mh], border[-mh:], border[:, :mw], border[:, -mw:] = True, True, True, True
    total = heatmaps.sum(dim=(0, 2, 3)) + 1e-12
    return heatmaps[..., border].sum(dim=(0, 2)) / total


# The two K-means protocols: the extractor's layer recipe, the size the features are upsampled to
# before clustering (None: their own resolution) and the number of k-means steps.
KMEANS_PROTOCOLS: Dict[str, Dict[str, object]] = {
    "partlab": {"layers": "kmeans", "fit_size": None, "max_iter": 300,
                "description": "relu3_2 x 0.33 + relu5_4 at the features' resolution, best of 5 inits"},
    "appendix": {"layers": "kmeans_appendix", "fit_size": 64, "max_iter": 100,
                 "description": "relu5_2 + relu5_4 upsampled to 64 x 64, 100 steps, best of 5 inits "
                                "(contrastive appendix)"},
}


def kmeans_parts(features: torch.Tensor, fg: torch.Tensor, num_parts: int, seed: int = 0, *,
                 size: Optional[Size] = None, n_init: int = 5, max_fit_pixels: int = 100_000,
                 temperature: float = 0.1, normalize: bool = True, fit_size: Optional[Size] = None,
                 max_iter: int = 300) -> Dict[str, torch.Tensor]:
    """K-means part maps: cluster the foreground pixels' features of the whole collection.

    Args:
        features: (N, C, h, w) features (any resolution; pixels are fitted at the feature resolution
            where the fg mask, averaged down to it, is >= 0.5, and every pixel of the output size is
            then assigned to its nearest centroid from bilinearly upsampled features).
        fit_size: upsample the features (bilinearly) to this size before clustering (64 in the
            contrastive appendix); ``None`` clusters them at their own resolution.
        max_iter: k-means steps per initialisation (100 in the appendix; scikit-learn's default 300).
        fg: foreground mask (N, H, W) or (N, 1, H, W), binary or soft.
        num_parts: K clusters.
        seed: k-means seed (and the seed of the subsample when there are more than ``max_fit_pixels``).
        size: output (H, W); default = the fg size.
        n_init: k-means++ restarts, the best (lowest inertia) kept.
        normalize: L2-normalise each pixel's feature vector (default, documented above).

    Returns:
        dict(probs=(N, K+1, H, W), labels=(N, H, W)); labels 0 outside fg, 1..K inside.
    """
    from sklearn.cluster import KMeans

    _check_features(features)
    N, C, h, w = features.shape
    fg = _prepare_fg(fg, N)
    if fg is None:
        raise ValueError("kmeans_parts needs a foreground mask fg")
    out_size = _as_size(size, tuple(fg.shape[-2:]))
    feats = features.float().cpu()
    if fit_size is not None:
        h, w = _as_size(fit_size, (h, w))
        if feats.shape[-2:] != (h, w):
            feats = F.interpolate(feats, size=(h, w), mode="bilinear", align_corners=False)
    if normalize:
        feats = F.normalize(feats, dim=1)
    fg_low = F.adaptive_avg_pool2d(fg.cpu(), (h, w)) if fg.shape[-2:] != (h, w) else fg.cpu()
    mask = fg_low[:, 0] >= 0.5                                        # (N, h, w)
    X = feats.permute(0, 2, 3, 1)[mask]                               # (P, C)
    if X.shape[0] < num_parts:
        raise ValueError(f"only {X.shape[0]} foreground feature pixels for {num_parts} clusters")
    if X.shape[0] > max_fit_pixels:
        pick = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(int(seed)))[:max_fit_pixels]
        X = X[pick]
    km = KMeans(n_clusters=num_parts, n_init=n_init, max_iter=int(max_iter),
                random_state=int(seed)).fit(X.numpy().astype(np.float64))
    centers = torch.from_numpy(km.cluster_centers_).float()          # (K, C)
    fg_out = F.interpolate(fg.cpu(), size=out_size, mode="bilinear", align_corners=False) \
        if fg.shape[-2:] != out_size else fg.cpu()
    scores = []
    for start in range(0, N, 16):
        f = feats[start:start + 16]
        if f.shape[-2:] != out_size:
            f = F.interpolate(f, size=out_size, mode="bilinear", align_corners=False)
            if normalize:
                f = F.normalize(f, dim=1)
        # negative squared distance to each centroid, up to a per-pixel constant: 2 <f, c> - |c|^2
        s = 2 * torch.einsum("nchw,kc->nkhw", f, centers) - (centers ** 2).sum(1)[None, :, None, None]
        scores.append(s)
    return _assemble(torch.cat(scores), fg_out, temperature)


# ---------------------------------------------------------------------------------------------
# position baselines: K-means on where a pixel is (and its colour), no features
# ---------------------------------------------------------------------------------------------

POSITION_COORDS = ("object", "xy", "rgbxy")


def position_features(fg: torch.Tensor, coords: str = "object", images: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-pixel coordinates ``(N, C, H, W)`` that the position baselines cluster.

    With ``p = (x, y)`` the pixel centre in normalised coordinates (DESIGN.md: [-1, 1],
    :func:`partlab.geometry.pixel_grid`) and the foreground ``fg >= 0.5``:

    - ``"object"`` (C = 2): ``(p - c_i) / s_i`` with ``c_i`` the mean of image i's foreground pixel
      positions and ``s_i = sqrt(mean_fg ||p - c_i||^2)`` the object's scale: where on the object the
      pixel lies, the same for a translated or scaled copy of the object (not for a rotated or
      re-posed one). ``s_i`` is at least one pixel (``2 / max(H, W)``), so a one-pixel object stays
      finite; an image without foreground gets ``c = 0, s = 1`` (all its pixels are background).
    - ``"xy"`` (C = 2): ``p`` itself: where in the image the pixel lies.
    - ``"rgbxy"`` (C = 5): ``(r, g, b, (x + 1) / 2, (y + 1) / 2)``: colour and image position each in
      [0, 1], weighted equally per channel (a full black-to-white step in one colour channel costs as
      much as crossing the whole image). Needs ``images (N, 3, H, W)`` in [0, 1] at the size of ``fg``.

    Args:
        fg: ``(N, H, W)`` or ``(N, 1, H, W)``, binary or soft.
    """
    from partlab.geometry import pixel_grid

    if coords not in POSITION_COORDS:
        raise ValueError(f"coords={coords!r}; choose one of {POSITION_COORDS}")
    fg = _prepare_fg(fg, len(fg))
    n, _, h, w = fg.shape
    grid = pixel_grid(h, w, device=fg.device).permute(2, 0, 1)[None].expand(n, 2, h, w)  # (N, 2, H, W) normalised (x, y)
    if coords == "xy":
        return grid.clone()
    if coords == "rgbxy":
        if images is None:
            raise ValueError("coords='rgbxy' needs the images (N, 3, H, W) in [0, 1]")
        images = torch.as_tensor(images).float().to(fg.device)
        if images.shape != (n, 3, h, w):
            raise ValueError(f"images must have shape {(n, 3, h, w)} to match fg {tuple(fg.shape)}, "
                             f"got {tuple(images.shape)}")
        return torch.cat([images, (grid + 1) / 2], dim=1)                   # (N, 5, H, W)
    inside = (fg >= 0.5).float()                                            # (N, 1, H, W)
    count = inside.sum(dim=(2, 3), keepdim=True)                            # (N, 1, 1, 1)
    center = (grid * inside).sum(dim=(2, 3), keepdim=True) / count.clamp_min(1)          # (N, 2, 1, 1)
    spread = (((grid - center) ** 2).sum(1, keepdim=True) * inside).sum(dim=(2, 3), keepdim=True)
    scale = (spread / count.clamp_min(1)).sqrt().clamp_min(2.0 / max(h, w))  # (N, 1, 1, 1)
    scale = torch.where(count > 0, scale, torch.ones_like(scale))
    return (grid - center) / scale                                          # (N, 2, H, W)


def position_parts(fg: torch.Tensor, num_parts: int, *, coords: str = "object", images: Optional[torch.Tensor] = None,
                   seed: int = 0, n_init: int = 5, max_iter: int = 300, max_fit_pixels: int = 100_000,
                   temperature: float = 0.1) -> Dict[str, torch.Tensor]:
    """Position baselines: K-means over the whole collection's foreground pixels on where they are.

    The pixels' :func:`position_features` (``coords``: ``"object"``, ``"xy"`` or ``"rgbxy"``) are
    clustered as :func:`kmeans_parts` clusters features (no per-pixel L2 normalisation: the
    coordinates' scale is their meaning): best of ``n_init`` k-means++ runs on the foreground pixels
    (``fg >= 0.5``) of all images together, at most ``max_fit_pixels`` of them (a seeded subsample),
    every pixel then scored by its negative squared distance to the K centroids.

    Args:
        fg: ``(N, H, W)`` or ``(N, 1, H, W)`` foreground, binary or soft; the output has its size.
        num_parts: K >= 1.
        images: ``(N, 3, H, W)`` in [0, 1], for ``coords="rgbxy"`` only.

    Returns:
        dict(probs=(N, K+1, H, W), labels=(N, H, W)) as :func:`kmeans_parts`: ``probs[:, 0] = 1 - fg``,
        labels 0 outside the foreground and 1..K inside. An image without foreground is all background.

    Raises ``ValueError`` for K < 1 or fewer foreground pixels in the collection than K.
    """
    if int(num_parts) < 1:
        raise ValueError(f"num_parts must be >= 1, got {num_parts}")
    feats = position_features(fg, coords, images)                            # (N, C, H, W)
    fg = _prepare_fg(fg, len(feats))
    count = int((fg >= 0.5).sum())
    if count < num_parts:
        raise ValueError(f"only {count} foreground pixels in the collection for {num_parts} parts: the position "
                         f"baselines need at least one foreground pixel per part")
    return kmeans_parts(feats, fg, int(num_parts), seed, n_init=n_init, max_fit_pixels=max_fit_pixels,
                        temperature=temperature, normalize=False, max_iter=max_iter)
