"""Pictures people would rather look at than read: part overlays, part-map grids, flows, ablation bars.

Every function draws with one fixed palette, so part 3 has the same colour in every notebook:
``PALETTE[0]`` is the background (dark grey), ``PALETTE[k]`` the colour of part k.
Functions take torch tensors or numpy arrays (images ``(3, H, W)`` or ``(H, W, 3)`` in [0, 1],
labels ``(H, W)`` integers) and return matplotlib figures; nothing calls ``plt.show()``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np

# Fixed colours: 0 = background, then 20 well-separated part colours (tab20-like, reordered so the first
# eight are the most distinct; SCOPS uses K=8).
PALETTE = np.array(
    [
        [0.12, 0.12, 0.12],
        [0.90, 0.10, 0.15], [0.10, 0.45, 0.85], [0.20, 0.75, 0.20], [1.00, 0.60, 0.00],
        [0.60, 0.25, 0.75], [0.00, 0.80, 0.80], [1.00, 0.90, 0.10], [0.95, 0.40, 0.70],
        [0.55, 0.35, 0.15], [0.60, 0.80, 0.30], [0.45, 0.45, 1.00], [0.90, 0.75, 0.55],
        [0.00, 0.50, 0.45], [0.75, 0.00, 0.35], [0.50, 0.50, 0.50], [0.85, 0.85, 0.85],
        [0.35, 0.60, 0.00], [0.00, 0.30, 0.60], [1.00, 0.75, 0.80], [0.40, 0.20, 0.40],
    ],
    dtype=np.float32,
)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def to_hwc(image) -> np.ndarray:
    """An image as an ``(H, W, 3)`` float array in [0, 1] (accepts ``(3, H, W)`` or ``(H, W, 3)``)."""
    image = _numpy(image).astype(np.float32)
    if image.ndim != 3:
        raise ValueError(f"expected one image of shape (3, H, W) or (H, W, 3), got shape {image.shape}")
    if image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    return np.clip(image, 0.0, 1.0)


def colorize(labels) -> np.ndarray:
    """Label map ``(H, W)`` with values 0..K (K <= 20) -> colours ``(H, W, 3)`` from :data:`PALETTE`."""
    labels = _numpy(labels).astype(np.int64)
    if labels.ndim != 2:
        raise ValueError(f"expected a label map of shape (H, W), got shape {labels.shape}")
    if labels.min(initial=0) < 0 or labels.max(initial=0) >= len(PALETTE):
        raise ValueError(f"labels must lie in 0..{len(PALETTE) - 1} to be coloured, got {labels.min()}..{labels.max()}")
    return PALETTE[labels]


def label_images(labels) -> "torch.Tensor":
    """Label maps ``(N, H, W)`` -> colour images ``(N, 3, H, W)`` float32 in [0, 1] (:func:`colorize` of each),
    e.g. a row of :func:`image_rows`."""
    import torch

    labels = _numpy(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected label maps of shape (N, H, W), got shape {labels.shape}")
    return torch.from_numpy(np.stack([colorize(l) for l in labels]).astype(np.float32)).permute(0, 3, 1, 2).contiguous()


def overlay(image, labels, alpha: float = 0.5) -> np.ndarray:
    """Blend part colours over an image: background pixels keep the image, part pixels mix ``alpha`` colour."""
    image = to_hwc(image)
    labels = _numpy(labels).astype(np.int64)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {image.shape[:2]} must have the same height and width")
    colours = colorize(labels)
    mix = np.where((labels > 0)[..., None], (1 - alpha) * image + alpha * colours, image)
    return np.clip(mix, 0.0, 1.0)


def _grid(n: int, ncols: int, cell: float = 1.6, extra_rows: int = 0):
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols)) + extra_rows
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, cell * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    return fig, axes


def draw_landmarks(ax, landmarks, size: Sequence[int], visible=None, colour: str = "white", marker: str = "o",
                   edge: str = "black", s: float = 18.0) -> None:
    """Draw normalised ``(L, 2)`` landmarks on an axis showing an image of ``size = (H, W)``.

    Visible landmarks are filled; invisible ones (occluded or outside) are drawn as hollow markers.
    """
    landmarks = _numpy(landmarks).astype(np.float32)
    h, w = size
    px = ((landmarks[:, 0] + 1) * w - 1) / 2
    py = ((landmarks[:, 1] + 1) * h - 1) / 2
    vis = np.ones(len(landmarks), bool) if visible is None else _numpy(visible).astype(bool)
    ax.scatter(px[vis], py[vis], c=colour, edgecolors=edge, s=s, marker=marker, linewidths=0.8, zorder=3)
    if (~vis).any():
        ax.scatter(px[~vis], py[~vis], facecolors="none", edgecolors=colour, s=s, marker=marker, linewidths=0.8,
                   zorder=3)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)


def show_parts(images, labels=None, *, landmarks=None, visible=None, titles: Optional[Sequence[str]] = None,
               ncols: int = 8, alpha: float = 0.5, side_by_side: bool = False, cell: float = 1.6):
    """A grid of images with part overlays and landmarks.

    Args:
        images: ``(N, 3, H, W)`` in [0, 1].
        labels: optional ``(N, H, W)`` part labels (0 = background) drawn as an overlay.
        landmarks: optional ``(N, L, 2)`` normalised (x, y); ``visible (N, L)`` marks occluded ones hollow.
        side_by_side: draw each image plain, then with its overlay, in two rows.
    Returns:
        the matplotlib figure.
    """
    images = _numpy(images)
    n = len(images)
    if n == 0:
        raise ValueError("show_parts needs at least one image")
    rows_per = 2 if (side_by_side and labels is not None) else 1
    ncols = max(1, min(ncols, n))
    fig, axes = _grid(int(np.ceil(n / ncols)) * rows_per * ncols, ncols, cell)     # rows_per rows per image row
    for i in range(n):
        row, col = divmod(i, ncols)
        img = to_hwc(images[i])
        cells = []
        if rows_per == 2:
            cells.append((axes[row * 2, col], img))
            cells.append((axes[row * 2 + 1, col], overlay(img, labels[i], alpha)))
        else:
            shown = overlay(img, labels[i], alpha) if labels is not None else img
            cells.append((axes[row, col], shown))
        for ax, shown in cells:
            ax.imshow(shown, interpolation="nearest")
            if landmarks is not None:
                draw_landmarks(ax, landmarks[i], img.shape[:2], None if visible is None else visible[i])
        if titles is not None:
            cells[0][0].set_title(str(titles[i]), fontsize=8)
    fig.tight_layout()
    return fig


def part_grid(images, labels, *, fg=None, n: int = 16, ncols: int = 8, title: str = "",
              names: Optional[Sequence[str]] = None, alpha: float = 0.6, cell: float = 1.6):
    """Co-parts at a glance: many instances, part k in one fixed colour in every cell, with a legend.

    A co-part segmentation is right when part k is the same part of every object: in this grid,
    when part 2 (blue) is the head in every bird. Colours are the labels' own numbers
    (:data:`PALETTE`, as :func:`colorize`), never matched to the truth, so a method whose parts are
    consistent *within* images but swap *between* them shows a head that changes colour.

    Args:
        images: ``(N, 3, H, W)`` in [0, 1]; the first ``n`` are shown, ``ncols`` per row.
        labels: ``(N, H, W)`` part labels, 0 = background (drawn as the plain image), 1..K <= 20.
        fg: optional ``(N, H, W)`` or ``(N, 1, H, W)`` mask; labels outside it (< 0.5) are not drawn
            (e.g. to look at a method's parts inside the true object only).
        title: the figure's title.
        names: the K part names for the legend (``names[k - 1]`` for part k); default ``"part k"``.
            K is the largest label in ``labels`` (all N, not only the cells shown).
        alpha: weight of the part colour over the image.
    Returns:
        the matplotlib figure (one image axis per instance shown, the legend below the grid).
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    images, labels = _numpy(images), _numpy(labels).astype(np.int64)
    if images.ndim != 4 or labels.ndim != 3 or len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"expected images (N, 3, H, W) and labels (N, H, W) with the same N >= 1, got "
                         f"{images.shape} and {labels.shape}")
    if fg is not None:
        mask = _numpy(fg)
        mask = mask.reshape(len(labels), *mask.shape[-2:]) if mask.ndim == 4 else mask
        if mask.shape != labels.shape:
            raise ValueError(f"fg must cover labels {labels.shape} ((N, H, W) or (N, 1, H, W)), got {_numpy(fg).shape}")
        labels = np.where(mask >= 0.5, labels, 0)
    k = int(labels.max(initial=0))
    if names is not None and len(names) != k:
        raise ValueError(f"names has {len(names)} entries but the labels hold parts 1..{k}: give one name per part")
    n = max(1, min(int(n), len(images)))
    ncols = max(1, min(ncols, n))
    nrows = int(np.ceil(n / ncols))
    below, above = (0.35 if k else 0.0), (0.3 if title else 0.0)        # inches for the legend and the title
    height = cell * nrows + below + above
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell * ncols, height), squeeze=False)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=below / height + 0.01, top=1 - above / height - 0.01,
                        wspace=0.04, hspace=0.04)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i in range(n):
        axes[i // ncols, i % ncols].imshow(overlay(images[i], labels[i], alpha), interpolation="nearest")
    if k:
        handles = [Patch(color=PALETTE[part], label=names[part - 1] if names is not None else f"part {part}")
                   for part in range(1, k + 1)]
        fig.legend(handles=handles, loc="lower center", ncol=min(k, 8), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.05 / height, va="top")
    return fig


def show_part_maps(probs, *, image=None, names: Optional[Sequence[str]] = None, cell: float = 1.6):
    """One image's soft part maps ``(K+1, H, W)`` as heatmaps, channel by channel (channel 0 = background)."""
    import matplotlib.pyplot as plt

    probs = _numpy(probs)
    if probs.ndim != 3:
        raise ValueError(f"expected part maps of shape (K+1, H, W), got {probs.shape}")
    n = probs.shape[0] + (image is not None)
    fig, axes = plt.subplots(1, n, figsize=(cell * n, cell * 1.15), squeeze=False)
    offset = 0
    if image is not None:
        axes[0, 0].imshow(to_hwc(image))
        axes[0, 0].set_title("image", fontsize=8)
        offset = 1
    for k in range(probs.shape[0]):
        ax = axes[0, k + offset]
        ax.imshow(probs[k], cmap="viridis", vmin=0.0, vmax=max(float(probs[k].max()), 1e-6))
        ax.set_title(names[k] if names is not None else ("background" if k == 0 else f"part {k}"), fontsize=8,
                     color="black" if k == 0 else PALETTE[k % len(PALETTE)])
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def soft_colorize(probs) -> np.ndarray:
    """Soft part maps ``(K+1, H, W)`` -> colours ``(H, W, 3)``: each pixel mixes the :data:`PALETTE`
    colours of its channels, weighted by their probabilities (channel 0 = background, dark grey).

    A one-hot map gives :func:`colorize` of its argmax; a uniform map gives the mean colour.
    """
    probs = _numpy(probs).astype(np.float32)
    if probs.ndim != 3 or not 1 <= probs.shape[0] <= len(PALETTE):
        raise ValueError(f"expected part maps of shape (K+1, H, W) with K+1 <= {len(PALETTE)}, got {probs.shape}")
    return np.clip(np.einsum("khw,kc->hwc", probs, PALETTE[: probs.shape[0]]), 0.0, 1.0)


def draw_centers(ax, centers, size: Sequence[int], s: float = 60.0, marker: str = "X") -> None:
    """Draw part centres ``(K, 2)`` (normalised ``(x, y)``, part k+1 in row k) in their part colours
    on an axis showing an image of ``size = (H, W)``."""
    centers = _numpy(centers).astype(np.float32)
    if centers.ndim != 2 or centers.shape[1] != 2:
        raise ValueError(f"expected centres of shape (K, 2), got {centers.shape}")
    h, w = size
    colours = PALETTE[1 + np.arange(len(centers)) % (len(PALETTE) - 1)]
    ax.scatter(((centers[:, 0] + 1) * w - 1) / 2, ((centers[:, 1] + 1) * h - 1) / 2, c=colours, s=s,
               marker=marker, edgecolors="white", linewidths=1.0, zorder=3)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)


def show_soft_parts(probs, *, images=None, centers=None, titles: Optional[Sequence[str]] = None, ncols: int = 8,
                    alpha: float = 0.7, cell: float = 1.6):
    """A grid of soft part maps, optionally over images and with the part centres marked.

    Args:
        probs: ``(N, K+1, H, W)`` part maps (softmax over channels, channel 0 background).
        images: optional ``(N, 3, H, W)`` in [0, 1]; part colours are blended over them with weight
            ``alpha * (1 - background probability)``. Without images, :func:`soft_colorize`.
        centers: optional ``(N, K, 2)`` normalised part centres, drawn with :func:`draw_centers`.
        titles: one per map.
    Returns:
        the matplotlib figure.
    """
    probs = _numpy(probs).astype(np.float32)
    if probs.ndim != 4 or len(probs) == 0:
        raise ValueError(f"expected part maps of shape (N, K+1, H, W) with N >= 1, got {probs.shape}")
    n, _, h, w = probs.shape
    for name, value, shape in (("images", images, (n, 3, h, w)), ("centers", centers, (n, probs.shape[1] - 1, 2))):
        if value is not None and tuple(_numpy(value).shape) != shape:
            raise ValueError(f"{name} must have shape {shape} to match probs {probs.shape}, got {tuple(value.shape)}")
    ncols = max(1, min(ncols, n))
    fig, axes = _grid(n, ncols, cell)
    for i in range(n):
        ax = axes[i // ncols, i % ncols]
        shown = soft_colorize(probs[i])
        if images is not None:
            weight = alpha * (1.0 - probs[i, 0])[..., None]                # (H, W, 1)
            colours = soft_colorize(np.concatenate([np.zeros_like(probs[i, :1]), probs[i, 1:]]))
            shown = (1 - weight) * to_hwc(images[i]) + alpha * colours
        ax.imshow(np.clip(shown, 0.0, 1.0), interpolation="nearest")
        if centers is not None:
            draw_centers(ax, centers[i], (h, w), s=max(12.0, 30.0 * cell / 1.6))
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    fig.tight_layout()
    return fig


def compare_segmentations(images, rows: Mapping[str, "torch.Tensor"], *, n: int = 6, alpha: float = 0.75,
                          cell: float = 1.5):
    """One row of part overlays per method on the same images (SCOPS Figure 5 style).

    Args:
        images: ``(N, 3, H, W)`` in [0, 1]; the first ``n`` are shown.
        rows: ``{name: labels (N, H, W)}``, e.g. ``{"truth": test["parts"], "full": ..., "w/o L_sc": ...}``;
            colours are each row's own label numbers (unsupervised parts are not matched to the truth).
    """
    if not rows:
        raise ValueError("rows is empty: give {name: labels (N, H, W)}")
    n = min(int(n), len(images))
    fig, axes = _grid(n * len(rows), n, cell)
    for r, (name, labels) in enumerate(rows.items()):
        for i in range(n):
            axes[r, i].imshow(overlay(images[i], labels[i], alpha), interpolation="nearest")
        axes[r, 0].set_title(name, loc="left", fontsize=8)
    fig.tight_layout()
    return fig


def image_rows(rows: Mapping[str, "torch.Tensor"], *, n: int = 6, cell: float = 1.6):
    """One titled row per entry, the first ``n`` items side by side (what a loss reads, image by image).

    Args:
        rows: ``{title: stack}`` with RGB images ``(N, 3, H, W)`` or one-channel maps ``(N, 1, H, W)`` /
            ``(N, H, W)``, all in [0, 1] (maps are drawn in grey, 0 black, 1 white).
    """
    if not rows:
        raise ValueError("rows is empty: give {title: (N, 3, H, W) images or (N, H, W) maps}")
    n = min(int(n), *(len(stack) for stack in rows.values()))
    fig, axes = _grid(n * len(rows), n, cell)
    for r, (title, stack) in enumerate(rows.items()):
        for i in range(n):
            item = stack[i]
            if item.dim() == 3 and item.shape[0] == 3:
                axes[r, i].imshow(to_hwc(item))
            else:
                axes[r, i].imshow(item.reshape(item.shape[-2:]).detach().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(title, loc="left", fontsize=9)
    fig.tight_layout()
    return fig


def _flow_array(flow) -> np.ndarray:
    """A flow as a float array ``(N, h, w, 2)`` (accepts one ``(h, w, 2)``)."""
    flow = _numpy(flow).astype(np.float32)
    if flow.ndim == 3:
        flow = flow[None]
    if flow.ndim != 4 or flow.shape[-1] != 2:
        raise ValueError(f"expected a flow of shape (h, w, 2) or (N, h, w, 2) holding normalised (x, y), "
                         f"got shape {flow.shape}")
    return flow


def flow_displacement(flow) -> np.ndarray:
    """``d(z) = F(z) - z`` of a flow ``(h, w, 2)`` or ``(N, h, w, 2)`` (same shape, normalised units).

    A flow is partlab's backward flow (:func:`partlab.motion.part_flow`): a ``grid_sample`` grid
    holding, at every pixel ``z``, the normalised ``(x, y)`` it reads in the source; the identity
    grid (:func:`partlab.geometry.pixel_grid`) has ``d = 0``.
    """
    from partlab.geometry import pixel_grid

    array = _flow_array(flow)
    grid = pixel_grid(*array.shape[1:3]).numpy()                                 # (h, w, 2)
    displacement = array - grid
    return displacement if _numpy(flow).ndim == 4 else displacement[0]


def flow_to_rgb(flow, max_displacement: Optional[float] = None) -> np.ndarray:
    """A flow ``(h, w, 2)`` or ``(N, h, w, 2)`` as colours ``(..., h, w, 3)`` of its displacement
    ``d(z) = F(z) - z`` (:func:`flow_displacement`): hue = direction, saturation = length, white = still.

    Directions as drawn with ``imshow`` (y down): right red, down yellow-green, left cyan, up violet
    (hue = ``atan2(dy, dx) / 2 pi``). The length is divided by ``max_displacement`` (normalised
    units; one pixel of a width-``W`` map is ``2 / W``) and clipped to 1; default: the largest length
    over all the flows given, so a stack of flows shares one scale. Still flows stay white, and so do
    displacements below 1e-5 (rounding, e.g. the 1e-6 damping of :func:`partlab.motion.regularized_inverse`).
    """
    from matplotlib.colors import hsv_to_rgb

    displacement = flow_displacement(flow)
    length = np.linalg.norm(displacement, axis=-1)
    top = float(length.max(initial=0.0)) if max_displacement is None else float(max_displacement)
    if top < 0:
        raise ValueError(f"max_displacement must be >= 0, got {max_displacement}")
    hue = (np.arctan2(displacement[..., 1], displacement[..., 0]) / (2 * np.pi)) % 1.0
    saturation = np.clip(length / top, 0.0, 1.0) if top > 0 else np.zeros_like(length)
    saturation[length < 1e-5] = 0.0
    return hsv_to_rgb(np.stack([hue, saturation, np.ones_like(hue)], axis=-1)).astype(np.float32)


def draw_flow(ax, flow, size: Sequence[int], *, step: Optional[int] = None, mask=None, scale: float = 1.0,
              colour: str = "white", min_length: float = 0.05) -> None:
    """Draw a flow ``(h, w, 2)`` as arrows on an axis showing an image of ``size = (H, W)``.

    Every ``step``-th flow pixel ``z`` (default: about 12 arrows per side) gets an arrow from ``z`` to
    the point it reads, ``F(z)``: for a backward flow, where the target pixel's content comes from in
    the source. Arrows are drawn to scale in the image's pixels, times ``scale`` (to make small motions
    visible), in ``colour`` with a thin outline of the opposite shade; ``mask`` ``(h, w)``: arrows only
    where it is >= 0.5; arrows shorter than ``min_length`` image pixels (after ``scale``) are left out.
    The flow may have any size: positions are normalised ``(x, y)``, converted to the image's pixels.
    """
    array = _flow_array(flow)[0]
    h, w = array.shape[:2]
    big_h, big_w = size
    step = max(1, round(max(h, w) / 12)) if step is None else int(step)
    displacement = flow_displacement(array)
    keep = np.zeros((h, w), bool)
    keep[step // 2::step, step // 2::step] = True
    if mask is not None:
        mask = _numpy(mask).astype(np.float32)
        if mask.size != h * w:
            raise ValueError(f"mask must have the flow's size {(h, w)}, got {mask.shape}")
        keep &= mask.reshape(h, w) >= 0.5
    rows, cols = np.nonzero(keep)
    x = (2 * cols + 1) / w * big_w / 2 - 0.5                   # pixel centre of the flow -> the image's pixels
    y = (2 * rows + 1) / h * big_h / 2 - 0.5
    u = displacement[rows, cols, 0] * big_w / 2 * scale
    v = displacement[rows, cols, 1] * big_h / 2 * scale
    moving = np.hypot(u, v) >= min_length
    if moving.any():
        from matplotlib.colors import to_rgb

        outline = "black" if np.mean(to_rgb(colour)) > 0.5 else "white"
        ax.quiver(x[moving], y[moving], u[moving], v[moving], angles="xy", scale_units="xy", scale=1, color=colour,
                  edgecolor=outline, linewidth=0.4, width=0.012, headwidth=3.5, headlength=4, headaxislength=3.5,
                  zorder=3)
    ax.set_xlim(-0.5, big_w - 0.5)
    ax.set_ylim(big_h - 0.5, -0.5)


def show_flow(flows, *, images=None, masks=None, titles: Optional[Sequence[str]] = None, step: Optional[int] = None,
              scale: float = 1.0, max_displacement: Optional[float] = None, key: bool = True,
              colour: Optional[str] = None, ncols: int = 8, cell: float = 2.0):
    """A grid of flows ``(N, h, w, 2)`` (partlab's backward flows, e.g. :func:`partlab.motion.part_flow`).

    Each panel shows the flow's colours (:func:`flow_to_rgb`, one scale for all panels) or, with
    ``images`` ``(N, 3, H, W)``, the image; over it, arrows from each pixel to where it reads
    (:func:`draw_flow`, ``step``, ``scale``), only where ``masks`` ``(N, h, w)`` or ``(N, 1, h, w)`` is
    >= 0.5 when given, in ``colour`` (default white over images, black over flow colours). ``key``: a
    last panel with the colour wheel, its rim at ``max_displacement`` (normalised units; default the
    largest displacement drawn), titled in pixels of what is shown (the images, else the flows).
    """
    array = _flow_array(flows)
    n, h, w = array.shape[:3]
    for name, value, lead in (("images", images, (n, 3)), ("masks", masks, (n,))):
        if value is not None and tuple(_numpy(value).shape[:len(lead)]) != lead:
            raise ValueError(f"{name} must start with {lead} to match {n} flows, got {tuple(_numpy(value).shape)}")
    top = max_displacement
    if top is None:
        top = float(np.linalg.norm(flow_displacement(array), axis=-1).max())
    colours = flow_to_rgb(array, top)
    fig, axes = _grid(n + key, ncols, cell)
    for i in range(n):
        ax = axes.ravel()[i]
        shown = colours[i] if images is None else to_hwc(images[i])
        ax.imshow(shown, interpolation="nearest")
        if images is None:                                                     # a frame around the white (still) parts
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
        size = shown.shape[:2]
        draw_flow(ax, array[i], size, step=step, scale=scale, mask=None if masks is None else _numpy(masks)[i],
                  colour=colour or ("black" if images is None else "white"))
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=8)
    if key:
        from partlab.geometry import pixel_grid

        z = pixel_grid(65, 65).numpy()
        wheel = flow_to_rgb(z + z, 1.0)                                       # displacement = position
        wheel[np.linalg.norm(z, axis=-1) > 1] = 1.0
        ax = axes.ravel()[n]
        ax.imshow(wheel, interpolation="bilinear")
        shown_w = w if images is None else to_hwc(images[0]).shape[1]
        ax.set_title(f"key: rim = {top * shown_w / 2:.2g} px" + (f", arrows x{scale:g}" if scale != 1 else ""),
                     fontsize=8)
    fig.tight_layout()
    return fig


def show_images(panels: Mapping[str, "torch.Tensor"], *, ncols: int = 4, cell: float = 2.0,
                vmax: Optional[float] = 1.0):
    """Titled panels in a grid: RGB images ``(3, H, W)`` or ``(H, W, 3)`` in [0, 1] (e.g. :func:`flow_to_rgb`)
    or one-channel maps ``(H, W)`` / ``(1, H, W)`` (drawn in grey from 0 to ``vmax``; ``None``: each map to
    its own maximum, said in the title). For the pieces of one computation side by side (source, warp,
    mask, result); panels may have different sizes."""
    if not panels:
        raise ValueError("panels is empty: give {title: (3, H, W) image or (H, W) map}")
    fig, axes = _grid(len(panels), ncols, cell)
    for ax, (title, item) in zip(axes.ravel(), panels.items()):
        item = _numpy(item).astype(np.float32)
        if item.ndim == 3 and 3 in (item.shape[0], item.shape[-1]):
            ax.imshow(to_hwc(item), interpolation="nearest")
        else:
            item = item.reshape(item.shape[-2:])
            top = float(item.max(initial=0.0)) if vmax is None else vmax
            ax.imshow(item, cmap="gray", vmin=0, vmax=top if top > 0 else 1.0, interpolation="nearest")
            title = f"{title} (white = {top:.2g})" if vmax is None else title
        ax.set_title(str(title), fontsize=8)
    fig.tight_layout()
    return fig


def show_similarity(similarities: Mapping[str, "torch.Tensor"], *, ax_size: float = 3.4):
    """Heatmaps of ``(K, K)`` part-to-part similarities (e.g. :func:`partlab.losses.cross_image_similarity`),
    one per entry, on one colour scale, parts numbered 1..K."""
    import matplotlib.pyplot as plt

    if not similarities:
        raise ValueError("similarities is empty: give {title: (K, K) tensor}")
    low = min(float(m.min()) for m in similarities.values())
    high = max(float(m.max()) for m in similarities.values())
    fig, axes = plt.subplots(1, len(similarities), figsize=(ax_size * len(similarities) + 0.6, ax_size * 0.9),
                             squeeze=False)
    for ax, (title, matrix) in zip(axes[0], similarities.items()):
        k = matrix.shape[0]
        shown = ax.imshow(matrix.detach().cpu().numpy(), cmap="viridis", vmin=low, vmax=high)
        ax.set_xticks(range(k), range(1, k + 1)); ax.set_yticks(range(k), range(1, k + 1))
        ax.set_xlabel("part j (other image)"); ax.set_ylabel("part i"); ax.set_title(title, fontsize=9)
    fig.colorbar(shown, ax=list(axes[0]))
    return fig


def draw_loss_curves(ax, history: Sequence[Mapping[str, float]], terms: Sequence[str], *,
                     labels: Optional[Mapping[str, str]] = None, log_scale: bool = False, **line_kwargs):
    """Draw each loss term of ``history`` (the records of :func:`partlab.train.fit`) against its
    ``"step"`` onto the matplotlib axes ``ax``: the total ``"loss"`` thick, the other terms thin.

    A missing value is NaN (a gap in its line). ``labels``: legend names by term (default: the term).
    ``log_scale``: logarithmic y axis (symlog when some value is <= 0). ``line_kwargs`` go to
    ``ax.plot`` (e.g. ``marker="o"``). The legend is left to the caller. Returns ``ax``.
    """
    steps = [record["step"] for record in history]
    values = []
    for term in terms:
        series = [record.get(term, math.nan) for record in history]
        values += [v for v in series if math.isfinite(v)]
        ax.plot(steps, series, label=(labels or {}).get(term, term), lw=2.5 if term == "loss" else 1.2, **line_kwargs)
    if log_scale:
        ax.set_yscale("log" if values and min(values) > 0 else "symlog")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    return ax


def part_legend(ax, names: Sequence[str], loc: str = "upper right") -> None:
    """A legend mapping palette colours to part names (``names[0]`` is the background)."""
    from matplotlib.patches import Patch

    handles = [Patch(color=PALETTE[k % len(PALETTE)], label=name) for k, name in enumerate(names)]
    ax.legend(handles=handles, loc=loc, fontsize=7, frameon=True)


def benchmark_figure(bench, metrics: Optional[Sequence[str]] = None, *, title: str = "", ax=None):
    """The benchmark's bar chart: one group per metric, one bar per row (the methods, the baselines, the
    oracle), arrows saying which way is better, and the headline method's bars outlined.

    ``bench``: a :class:`partlab.evaluation.Benchmark` or its ``results`` mapping; ``metrics`` default to
    the benchmark's ``figure_metrics`` (:data:`partlab.evaluation.FIGURE_METRICS` for part benchmarks).
    """
    from partlab.evaluation import FIGURE_METRICS, HIGHER_IS_BETTER

    results = getattr(bench, "results", bench)
    metrics = list(getattr(bench, "figure_metrics", FIGURE_METRICS) if metrics is None else metrics)
    fig = bar_chart(results, metrics, higher_is_better=HIGHER_IS_BETTER, title=title, ax=ax)
    headline = getattr(bench, "method", None)
    if headline is not None:
        axis = ax if ax is not None else fig.axes[0]
        index = list(results).index(headline)
        for patch in axis.containers[index]:
            patch.set_edgecolor("black")
            patch.set_linewidth(1.2)
    return fig


def bar_chart(results: Mapping[str, Mapping[str, float]], metrics: Sequence[str], *, title: str = "",
              higher_is_better: Optional[Mapping[str, bool]] = None, ax=None):
    """Grouped bars: one group per metric, one bar per row of ``results`` (e.g. ablation variants).

    ``results = {"full": {"fg_ari": 0.4, ...}, "w/o L_sc": {...}}``. Arrows in the labels say which way is better.
    """
    import matplotlib.pyplot as plt

    names = list(results)
    if not names:
        raise ValueError("bar_chart needs at least one row of results")
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(metrics) * max(1, len(names)) / 2.5, 3.2))
    else:
        fig = ax.figure
    width = 0.8 / len(names)
    x = np.arange(len(metrics))
    for i, name in enumerate(names):
        values = [float(results[name].get(m, np.nan)) for m in metrics]
        ax.bar(x + (i - (len(names) - 1) / 2) * width, values, width, label=name, color=PALETTE[1 + i % 20])
    labels = []
    for m in metrics:
        arrow = "" if higher_is_better is None or m not in higher_is_better else (" ↑" if higher_is_better[m] else " ↓")
        labels.append(m + arrow)
    ax.set_xticks(x, labels)
    ax.legend(fontsize=7, ncol=min(len(names), 4))
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def feature_pca(features, mask=None, rectify: bool = True) -> "torch.Tensor":
    """Features ``(N, C, h, w)`` as colours ``(N, 3, h, w)`` in [0, 1]: their three main directions.

    The principal components are those of the whole collection (one colour code for every image),
    over the pixels where ``mask`` ``(N, 1, h, w)`` or ``(N, h, w)`` is >= 0.5 (all pixels when
    ``None``); each component is scaled to [0, 1] over those pixels, and pixels outside the mask are
    black. Features are rectified first (``relu``), as the losses see them, unless ``rectify=False``
    (signed embeddings, e.g. MaskContrast's).
    """
    import torch

    features = torch.as_tensor(features).float()
    if features.dim() != 4:
        raise ValueError(f"features must have shape (N, C, h, w), got {tuple(features.shape)}")
    x = (features.relu() if rectify else features).permute(0, 2, 3, 1)         # (N, h, w, C)
    if mask is None:
        inside = torch.ones(x.shape[:3], dtype=torch.bool)
    else:
        mask = torch.as_tensor(mask).float()
        inside = (mask[:, 0] if mask.dim() == 4 else mask) >= 0.5              # (N, h, w)
        if inside.shape != x.shape[:3]:
            raise ValueError(f"mask must cover the features' (N, h, w) = {tuple(x.shape[:3])}, got {tuple(mask.shape)}")
    picked = x[inside]                                                         # (P, C)
    if picked.shape[0] < 2:
        return torch.zeros(x.shape[0], 3, *x.shape[1:3])
    mean = picked.mean(0)
    q = min(3, picked.shape[1])
    directions = torch.linalg.eigh(torch.cov((picked - mean).T).reshape(picked.shape[1], -1))[1][:, -q:]
    pcs = (x - mean) @ directions.flip(1)                                      # (N, h, w, q), strongest first
    lo, hi = pcs[inside].amin(0), pcs[inside].amax(0)
    pcs = ((pcs - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1) * inside[..., None]
    if q < 3:
        pcs = torch.cat([pcs, torch.zeros(*pcs.shape[:3], 3 - q)], dim=-1)
    return pcs.permute(0, 3, 1, 2)


def confusion(pred_labels, true_labels, *, pred_names: Optional[Sequence[str]] = None,
              true_names: Optional[Sequence[str]] = None, ax=None, title: str = ""):
    """Row-normalised co-occurrence of true parts (rows) and predicted parts (columns) over all pixels.

    A co-part segmentation need not use the true label numbers: a good one has one bright cell per
    row (each true part falls into one predicted part), in any column order. Pixels with a true
    label of 0 (background) are left out; row k shows where the pixels of true part k went.
    """
    import matplotlib.pyplot as plt

    pred = _numpy(pred_labels).astype(np.int64).ravel()
    true = _numpy(true_labels).astype(np.int64).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"pred_labels and true_labels must have the same shape, got {pred.size} vs {true.size} pixels")
    keep = true > 0
    rows, cols = int(true.max(initial=0)) + 1, int(pred.max(initial=0)) + 1
    table = np.zeros((rows, cols))
    np.add.at(table, (true[keep], pred[keep]), 1)
    table = table[1:] / np.maximum(table[1:].sum(1, keepdims=True), 1)        # (K_true, K_pred)
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.2 + 0.45 * cols, 1.0 + 0.4 * rows))
    image = ax.imshow(table, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(cols), pred_names if pred_names is not None else [str(c) for c in range(cols)],
                  rotation=45 if pred_names is not None else 0)
    ax.set_yticks(range(rows - 1), true_names[1:] if true_names is not None else [str(r) for r in range(1, rows)])
    ax.set_xlabel("predicted part")
    ax.set_ylabel("true part")
    if title:
        ax.set_title(title)
    ax.figure.colorbar(image, ax=ax, fraction=0.046)
    return ax


def save_figure(fig, path: "str | Path", dpi: int = 110) -> Path:
    """Save a figure as PNG (creating folders) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path
