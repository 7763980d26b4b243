"""Unsupervised saliency maps: the soft foreground mask ``D`` of SCOPS' saliency constraint.

SCOPS (Sec. 3.3, "Saliency Constraint") multiplies the semantic features by an unsupervised
saliency map ``D in [0, 1]^{H x W}`` before the semantic consistency loss, so that background
pixels are projected onto the null space of the part basis; the paper uses [54], "Saliency
Optimization from Robust Background Detection" (Zhu, Liang, Wei, Sun, CVPR 2014; "RBD"). This
module implements RBD from that paper's description (no third-party code) and two references:

- ``"rbd"``    :func:`robust_background_saliency`, per image, CPU numpy (SLIC + a ~150-node graph);
  ~10 ms per 64 px image, fine for quick mode and for caching a training set once.
- ``"none"``   all ones: the "w/o saliency" ablation (the semantic consistency loss covers the
  whole image, SCOPS Table 1).
- ``"oracle"`` the true foreground mask of the synthetic world (an upper bound on saliency).

Sections:

- RBD on one image: :func:`robust_background_saliency`
- batched maps on tensors: :func:`saliency_maps`
- a dataset's maps computed once (optionally cached to a ``.pt`` file): :func:`cached_saliency`

>>> import torch
>>> image = torch.full((1, 3, 32, 32), 0.2)
>>> image[:, :, 10:22, 10:22] = 0.9                  # a bright square on a dark background
>>> sal = saliency_maps(image, method="rbd")         # (B, 1, H, W) in [0, 1]
>>> bool(sal[0, 0, 16, 16] > 0.9), bool(sal[0, 0, 0, 0] < 0.1)
(True, True)
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from skimage.color import rgb2lab
from skimage.segmentation import slic

from partlab.utils import atomic_save, progress

SALIENCY_METHODS = ("rbd", "none", "oracle")

# ---------------------------------------------------------------------------------------------
# RBD on one image
# ---------------------------------------------------------------------------------------------


def _default_segments(h: int, w: int) -> int:
    """About one superpixel per 25 pixels, between 16 and 200 (the paper's 200 is for ~300x400
    images; a 64 px image needs smaller superpixels to resolve a bird's legs and beak)."""
    return int(np.clip(h * w // 25, 16, 200))


def _superpixels(rgb: np.ndarray, n_segments: int, compactness: float, sigma: float) -> np.ndarray:
    """SLIC labels ``(H, W)`` of an RGB image, renumbered ``0..N-1`` (SLIC may skip labels after its
    connectivity step, which can also merge a structureless image, e.g. pure noise, into one).

    scikit-image's SLIC stretches the RGB image to [0, 1] and converts it to Lab itself, so
    ``compactness`` means the same for dim and bright images."""
    labels = slic(rgb, n_segments=n_segments, compactness=compactness, sigma=sigma, start_label=0,
                  convert2lab=True, enforce_connectivity=True, channel_axis=-1)
    _, labels = np.unique(labels, return_inverse=True)
    return labels.reshape(rgb.shape[:2])


def _adjacency(labels: np.ndarray, n: int) -> np.ndarray:
    """Boolean ``(N, N)`` adjacency of superpixels that touch (4-neighbourhood of pixels)."""
    pairs = [np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()]),     # horizontal neighbours
             np.stack([labels[:-1, :].ravel(), labels[1:, :].ravel()])]     # vertical neighbours
    a, b = np.concatenate(pairs, axis=1)
    adj = np.zeros((n, n), dtype=bool)
    adj[a, b] = True
    adj[b, a] = True
    np.fill_diagonal(adj, False)
    return adj


def _boundary(labels: np.ndarray, n: int) -> np.ndarray:
    """Boolean ``(N,)``: the superpixel touches the image border (the set ``Bnd`` of the paper)."""
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    is_bnd = np.zeros(n, dtype=bool)
    is_bnd[border] = True
    return is_bnd


def robust_background_saliency(image, *, n_segments: Optional[int] = None, compactness: float = 10.0,
                               slic_sigma: float = 0.0, sigma_clr: float = 10.0,
                               sigma_bndcon: float = 1.0, sigma_spa: float = 0.25, mu: float = 0.1,
                               normalize: bool = True, return_superpixels: bool = False):
    r"""Saliency of one RGB image by "Saliency Optimization from Robust Background Detection" (RBD).

    Zhu, Liang, Wei, Sun, CVPR 2014. Steps and equations, grouped as in the paper's sections.

    *Boundary connectivity: a robust background measure.* A region ``R`` is background when it
    touches the image border a lot for its size: ``BndCon(R) = |R on the border| / sqrt(|R|)``,
    computed softly on superpixels:

    1. **Superpixels.** SLIC on the image in CIE-Lab: superpixels ``p_1..p_N``, each with its mean
       Lab colour ``c_i`` and centroid ``x_i`` (in [0, 1]: row / H, column / W). ``Bnd`` = the
       superpixels touching the image border.
    2. **Graph.** An undirected graph links adjacent superpixels, plus every pair of boundary
       superpixels (so background pieces separated by the object stay connected), with weight
       ``d_app(p, q) = ||c_p - c_q||`` (Euclidean Lab distance).
    3. **Geodesic distance**::

           d_geo(p, q) = min over paths p = p_1, ..., p_n = q of  sum_i d_app(p_i, p_{i+1})

       (scipy ``dijkstra``; ``d_geo(p, p) = 0``).
    4. **Spanning area, length along the boundary, boundary connectivity**, with
       ``S(p, p_i) = exp(-d_geo^2(p, p_i) / (2 sigma_clr^2))``::

           Area(p)    = sum_i S(p, p_i)                        (soft area of p's region)
           Len_bnd(p) = sum_i S(p, p_i) * [p_i in Bnd]         (its soft length along the border)
           BndCon(p)  = Len_bnd(p) / sqrt(Area(p))

    *Background weighted contrast.*

    5. **Background probability**::

           w_bg_i = 1 - exp(-BndCon^2(p_i) / (2 sigma_bndcon^2))

    6. **Contrast weighted by the background probability**, used as the foreground weight::

           w_fg_i = wCtr(p_i) = sum_j d_app(p_i, p_j) * w_spa(p_i, p_j) * w_bg_j,
           w_spa(p_i, p_j) = exp(-||x_i - x_j||^2 / (2 sigma_spa^2))

       divided by its maximum over the image here, so that it lives in [0, 1] like ``w_bg`` (raw
       Lab contrasts run into the tens and would swamp the other two terms).

    *Saliency optimization.*

    7. **Least squares**: the superpixel saliencies ``s`` minimise::

           sum_i w_bg_i s_i^2  +  sum_i w_fg_i (s_i - 1)^2  +  sum_{i<j} w_ij (s_i - s_j)^2,
           w_ij = exp(-d_app^2(p_i, p_j) / (2 sigma_clr^2)) + mu     for graph neighbours i, j

       a least-squares problem whose optimum solves the ``N x N`` linear system
       ``(diag(w_bg) + diag(w_fg) + L) s = w_fg`` with the graph Laplacian ``L = D - W``.
       ``mu`` keeps the smoothness term on in cluttered regions (it erases small noisy regions).
    8. Every pixel takes its superpixel's ``s``; with ``normalize`` the map is min-max scaled to [0, 1].

    Defaults follow the paper (``sigma_clr = 10``, ``sigma_bndcon = 1``, ``sigma_spa = 0.25``,
    ``mu = 0.1``) except the number of superpixels (``n_segments=None``: ``H*W/25`` clipped to
    [16, 200]; the paper's ~200 is for ~300x400 images). ``compactness`` and ``slic_sigma``
    (Gaussian pre-smoothing, pixels) are scikit-image SLIC's.

    Degenerate inputs give a finite map, never NaN: an image without contrast (constant, or a
    single superpixel) has ``w_fg = 0`` everywhere, so ``s = 0`` and the map is all zeros (no
    salient object). SLIC merges a structureless image (e.g. uniform noise) into one superpixel:
    zeros too. Min-max scaling is skipped when the map's range is below 1e-6.

    Args:
        image: ``(H, W, 3)`` numpy array or ``(3, H, W)`` tensor, RGB in [0, 1]; ``H, W >= 2``.
        return_superpixels: also return the ``(H, W)`` int superpixel labels (for plots).

    Returns:
        ``(H, W)`` float32 in [0, 1] (and the labels if asked).

    >>> img = np.zeros((24, 24, 3)); img[8:16, 8:16] = 1.0
    >>> sal = robust_background_saliency(img)
    >>> sal.shape, sal.dtype, round(float(sal[12, 12]), 3), round(float(sal[0, 0]), 3)
    ((24, 24), dtype('float32'), 1.0, 0.0)
    """
    rgb = _rgb_numpy(image)
    h, w = rgb.shape[:2]
    for name, value in (("sigma_clr", sigma_clr), ("sigma_bndcon", sigma_bndcon), ("sigma_spa", sigma_spa)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    if not mu >= 0:
        raise ValueError(f"mu must be >= 0, got {mu!r}")
    n_segments = _default_segments(h, w) if n_segments is None else int(n_segments)
    if n_segments < 1:
        raise ValueError(f"n_segments must be >= 1 (or None for the size-based default), got {n_segments}")

    labels = _superpixels(rgb, n_segments, compactness, slic_sigma)          # (H, W) in 0..N-1
    n = int(labels.max()) + 1
    lab = rgb2lab(rgb).reshape(-1, 3)                                         # (H*W, 3) CIE-Lab
    count = np.bincount(labels.ravel(), minlength=n).astype(np.float64)      # (N,) pixels per superpixel
    colour = np.stack([np.bincount(labels.ravel(), lab[:, c], n) for c in range(3)], 1) / count[:, None]
    rows, cols = np.mgrid[0:h, 0:w]
    centre = np.stack([np.bincount(labels.ravel(), (rows.ravel() + 0.5) / h, n),
                       np.bincount(labels.ravel(), (cols.ravel() + 0.5) / w, n)], 1) / count[:, None]

    d_app = np.linalg.norm(colour[:, None] - colour[None], axis=-1)           # (N, N) Lab distances
    is_bnd = _boundary(labels, n)                                             # (N,)
    graph = _adjacency(labels, n) | (is_bnd[:, None] & is_bnd[None])          # (N, N) + boundary clique
    np.fill_diagonal(graph, False)

    # geodesic distances; a tiny floor keeps equal-colour edges (scipy drops zero-weight entries)
    i, j = np.nonzero(graph)
    weights = coo_matrix((d_app[i, j] + 1e-9, (i, j)), shape=(n, n)).tocsr()
    d_geo = dijkstra(weights, directed=False)                                 # (N, N), finite: connected graph

    similar = np.exp(-d_geo ** 2 / (2 * sigma_clr ** 2))                      # S(p, p_i), (N, N)
    area = similar.sum(1)                                                     # (N,) >= 1
    len_bnd = similar[:, is_bnd].sum(1)                                       # (N,)
    bndcon = len_bnd / np.sqrt(area)
    w_bg = 1.0 - np.exp(-bndcon ** 2 / (2 * sigma_bndcon ** 2))               # (N,)

    d_spa2 = ((centre[:, None] - centre[None]) ** 2).sum(-1)                  # (N, N)
    w_spa = np.exp(-d_spa2 / (2 * sigma_spa ** 2))
    w_ctr = (d_app * w_spa * w_bg[None]).sum(1)                               # (N,) wCtr
    w_fg = w_ctr / w_ctr.max() if w_ctr.max() > 1e-12 else np.zeros(n)

    w_smooth = np.where(graph, np.exp(-d_app ** 2 / (2 * sigma_clr ** 2)) + mu, 0.0)   # (N, N) w_ij
    laplacian = np.diag(w_smooth.sum(1)) - w_smooth
    system = laplacian + np.diag(w_bg + w_fg + 1e-9)                          # symmetric positive definite
    with _one_blas_thread():
        s = np.linalg.solve(system, w_fg)                                     # (N,) superpixel saliency
    s = np.clip(s, 0.0, 1.0)

    sal = s[labels]                                                           # (H, W)
    if normalize and sal.max() - sal.min() > 1e-6:
        sal = (sal - sal.min()) / (sal.max() - sal.min())
    sal = sal.astype(np.float32)
    return (sal, labels) if return_superpixels else sal


_THREADPOOLS = None


def _one_blas_thread():
    """Run a small dense solve on one BLAS thread: a ~150 x 150 system is solved in well under a
    millisecond, while a multi-threaded BLAS on a busy CPU can take tens of milliseconds for it."""
    global _THREADPOOLS
    from threadpoolctl import ThreadpoolController   # a scikit-learn dependency

    if _THREADPOOLS is None:
        _THREADPOOLS = ThreadpoolController()
    return _THREADPOOLS.limit(limits=1, user_api="blas")


def _rgb_numpy(image) -> np.ndarray:
    """An RGB image as a float64 ``(H, W, 3)`` numpy array in [0, 1], checked."""
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must be (3, H, W), got shape {tuple(image.shape)}")
        image = image.detach().cpu().permute(1, 2, 0).numpy()
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an (H, W, 3) array or a (3, H, W) tensor, got shape {image.shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise ValueError(f"image must be at least 2 x 2 pixels, got {image.shape[:2]}")
    if not np.isfinite(image).all():
        raise ValueError("image contains NaN or inf")
    return np.clip(image, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# batched maps on tensors
# ---------------------------------------------------------------------------------------------


def _check_method(method: str) -> None:
    if method not in SALIENCY_METHODS:
        raise ValueError(f"method={method!r} is not a saliency method; choose one of {SALIENCY_METHODS}")


def _check_fg(fg, b: int, h: int, w: int) -> torch.Tensor:
    """``fg`` as a ``(B, 1, H, W)`` tensor: accepts ``(B, 1, H, W)`` or ``(B, H, W)``."""
    if fg is None:
        raise ValueError("method='oracle' needs the true foreground masks: pass fg (B, 1, H, W)")
    fg = torch.as_tensor(fg)
    if fg.ndim == 3:
        fg = fg[:, None]
    if tuple(fg.shape) != (b, 1, h, w):
        raise ValueError(f"fg must be (B, 1, H, W) = {(b, 1, h, w)} (or (B, H, W)) to match images, "
                         f"got shape {tuple(fg.shape)}")
    return fg


def saliency_maps(images: torch.Tensor, method: str = "rbd", fg: Optional[torch.Tensor] = None,
                  **rbd_kwargs: Any) -> torch.Tensor:
    """Saliency maps ``D`` of a batch, for SCOPS' saliency constraint (``D * V`` in its Eq. 4).

    Args:
        images: ``(B, 3, H, W)`` RGB in [0, 1], any device.
        method: ``"rbd"`` :func:`robust_background_saliency` on each image (on the CPU with numpy,
            one image at a time: ~10 ms per 64 px image, fine for quick mode; for long runs
            precompute with :func:`cached_saliency`); ``"none"`` all ones (the "w/o saliency"
            ablation); ``"oracle"`` the true foreground mask ``fg``.
        fg: ``(B, 1, H, W)`` or ``(B, H, W)`` foreground masks, needed by ``"oracle"`` only.
        **rbd_kwargs: passed to :func:`robust_background_saliency` (``"rbd"`` only).

    Returns:
        ``(B, 1, H, W)`` float tensor in [0, 1] on ``images.device`` (``images``' dtype if floating).

    >>> saliency_maps(torch.rand(2, 3, 8, 8), method="none").shape
    torch.Size([2, 1, 8, 8])
    """
    _check_method(method)
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    if rbd_kwargs and method != "rbd":
        raise ValueError(f"keyword arguments {sorted(rbd_kwargs)} apply to method='rbd' only, not {method!r}")
    b, _, h, w = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    if method == "none":
        return torch.ones(b, 1, h, w, dtype=dtype, device=images.device)
    if method == "oracle":
        return _check_fg(fg, b, h, w).to(device=images.device, dtype=dtype)
    cpu = images.detach().to("cpu", torch.float32)
    maps = [robust_background_saliency(cpu[i], **rbd_kwargs) for i in range(b)]   # B x (H, W)
    return torch.from_numpy(np.stack(maps))[:, None].to(device=images.device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# a dataset's maps, computed once
# ---------------------------------------------------------------------------------------------


def cached_saliency(dataset, method: str = "rbd", *, path: "Optional[str | os.PathLike]" = None,
                    progress_bar: Optional[bool] = None, **rbd_kwargs: Any) -> torch.Tensor:
    """The saliency maps of every item of ``dataset``, computed once: ``(N, 1, H, W)`` float32 (CPU).

    Methods train for many steps on a fixed synthetic set in quick mode; RBD costs ~10 ms per 64 px
    image, so the maps are computed once here and indexed by item (``maps[batch["index"]]``).

    Args:
        dataset: a sequence of dicts with ``"image"`` ``(3, H, W)`` (and ``"fg"`` ``(1, H, W)`` for
            ``method="oracle"``), e.g. :class:`partlab.data.synthetic.SyntheticParts`.
        method: as in :func:`saliency_maps`.
        path: optional ``.pt`` file. If it exists and was written for the same method, keyword
            arguments, length and image size, it is loaded; otherwise the maps are computed and
            written there (atomically: :func:`partlab.utils.atomic_save`). The key does not
            identify the images themselves: use one file per dataset.
        progress_bar: show a progress bar (``None`` follows :func:`partlab.utils.progress_enabled`).
        **rbd_kwargs: passed to :func:`robust_background_saliency`.

    >>> items = [{"image": torch.rand(3, 8, 8)} for _ in range(3)]
    >>> cached_saliency(items, "none").shape
    torch.Size([3, 1, 8, 8])
    """
    _check_method(method)
    n = len(dataset)
    if n == 0:
        raise ValueError("dataset is empty: there is no saliency to compute")
    size = tuple(dataset[0]["image"].shape[-2:])
    key: Dict[str, Any] = {"method": method, "kwargs": dict(sorted(rbd_kwargs.items())), "length": n, "size": size}
    if path is not None and os.path.exists(path):
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(stored, dict) and stored.get("key") == key:
            return stored["saliency"]
    maps = torch.empty(n, 1, *size)
    for i in progress(range(n), desc=f"saliency ({method})", enabled=progress_bar):
        item = dataset[i]
        fg = item["fg"][None] if method == "oracle" and "fg" in item else None
        if method == "oracle" and fg is None:
            raise ValueError("method='oracle' needs items with an 'fg' mask (1, H, W); this dataset has none")
        maps[i] = saliency_maps(item["image"][None], method, fg=fg, **rbd_kwargs)[0].float().cpu()
    if path is not None:
        atomic_save({"key": key, "saliency": maps}, path)
    return maps
