"""Segmenting your own pictures with a trained run: reading image files, predicting at the run's size,
writing overlays and label maps (what ``partlab segment`` does); reading and writing the images of
``partlab swap`` and of the video frame reader (:class:`partlab.data.VideoFramePairs`).

Images are read as float arrays ``(H, W, 3)``, RGB in [0, 1], whatever the file holds: 8-bit pixels
are divided by 255, 16-bit pixels (``I;16`` greyscale PNGs) by 65535; grey and palette images become
RGB; transparent pixels are laid over white; a JPEG's EXIF orientation is applied. Files above
:data:`MAX_PIXELS` are refused before they are decoded.

>>> from partlab.methods import load_method                             # doctest: +SKIP
>>> model, meta = load_method("runs/scops_bird")                        # doctest: +SKIP
>>> images = [read_image("bird.png")]                                   # doctest: +SKIP
>>> labels = segment_images(model, images, meta["size"])               # doctest: +SKIP
>>> write_segmentation(images[0], labels[0], Path("seg"), "bird")       # doctest: +SKIP
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

MAX_PIXELS = 50_000_000                          # 50 megapixels: a 600 MB float image, far beyond a model's size
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The picture in ``path`` as float32 ``(H, W, 3)`` RGB in [0, 1].

    Raises ``FileNotFoundError`` (no such file) or ``ValueError`` (a folder, not an image, damaged,
    larger than :data:`MAX_PIXELS`, or pixels that cannot be scaled to [0, 1]) naming the path.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not an image")
    if not path.is_file():
        raise FileNotFoundError(f"no image at {path}")
    too_large = (f"{path} is too large to segment (more than {MAX_PIXELS // 1_000_000} megapixels); "
                 f"resize it first")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ValueError(too_large)
                image.load()
                return _rgb_array(ImageOps.exif_transpose(image), path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ValueError(too_large) from None
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path} is not an image partlab can read (PNG or JPG): {exc}") from None


def _rgb_array(image, path: Path) -> np.ndarray:
    """float32 ``(H, W, 3)`` in [0, 1] from a decoded PIL image of any mode."""
    from PIL import Image

    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        values = np.asarray(image).astype(np.float32)                                   # (H, W)
        scale = 1.0 if image.mode == "F" else 65535.0       # mode "I": a 16-bit PNG in older Pillow versions
        if values.size and not (values.min() >= 0 and values.max() <= scale):
            raise ValueError(f"{path} holds {image.mode} pixels outside [0, {scale:g}], which partlab cannot "
                             f"scale to [0, 1]; save it as an 8- or 16-bit PNG")
        return np.repeat((values / scale)[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    try:
        rgb = image.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"{path} holds {image.mode} pixels partlab cannot convert to RGB ({exc})") from None
    return np.asarray(rgb, dtype=np.float32) / 255.0


def segment_images(model, images: Sequence[np.ndarray], size: int, device: str = "auto") -> list[torch.Tensor]:
    """Label maps ``(H, W)`` (int64, 0 = background) of images ``(H, W, 3)`` in [0, 1] at their own size:
    each is resized (not cropped, bilinear with antialiasing) to ``size`` x ``size``, predicted, and the
    labels scaled back (nearest)."""
    import torch.nn.functional as F

    from partlab.evaluation import predict_dataset

    batch = torch.stack([resize_image(image, size) for image in images])               # (N, 3, size, size)
    labels = predict_dataset(model, batch, device=device)["labels"]                      # (N, size, size)
    return [F.interpolate(lab[None, None].float(), size=image.shape[:2], mode="nearest")[0, 0].long()
            for lab, image in zip(labels, images)]


def resize_image(image: np.ndarray, size: int) -> torch.Tensor:
    """An image ``(H, W, 3)`` in [0, 1] (as :func:`read_image` returns it) as a tensor ``(3, size, size)``:
    resized, not cropped (the aspect ratio is not kept), bilinear with antialiasing, clamped to [0, 1]."""
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]    # (1, 3, H, W)
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized[0].clamp(0, 1)


def write_image(image, path: str | os.PathLike) -> Path:
    """Write one image, ``(3, H, W)`` or ``(H, W, 3)`` in [0, 1] (tensor or array), to ``path`` atomically
    (a temporary file in the same folder, then a rename): 8-bit RGB, PNG or JPEG by the suffix
    (``.png``, ``.jpg``, ``.jpeg``; anything else: ``ValueError``). Returns the path."""
    from PIL import Image

    from partlab import viz

    path = Path(path)
    formats = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
    if path.suffix.lower() not in formats:
        raise ValueError(f"cannot write {path}: name it .png or .jpg")
    pixels = (viz.to_hwc(image) * 255).round().astype(np.uint8)                          # (H, W, 3)
    _save_atomically(Image.fromarray(pixels), path, formats[path.suffix.lower()])
    return path


def _save_atomically(picture, path: Path, format: str) -> None:
    """``picture.save`` to ``path`` atomically (:func:`partlab.utils.atomic_write`): a reader never sees
    half a file and a failure leaves no file behind."""
    from partlab.utils import atomic_write

    atomic_write(path, lambda handle: picture.save(handle, format=format), mode="wb")


def output_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """One output name per input: its file name without suffix, ``-2``, ``-3``, ... appended when an
    earlier input has the same name (``a/bird.png``, ``b/bird.png``, ``a/bird.jpg`` -> ``bird``,
    ``bird-2``, ``bird-3``). Names are compared case-insensitively, as some file systems do."""
    names: list[str] = []
    taken: set[str] = set()
    for path in paths:
        stem = Path(path).stem
        name, n = stem, 2
        while name.casefold() in taken:
            name, n = f"{stem}-{n}", n + 1
        taken.add(name.casefold())
        names.append(name)
    return names


def write_segmentation(image: np.ndarray, labels: torch.Tensor, out: Path, name: str) -> tuple[Path, Path]:
    """``<name>_parts.png`` (overlay) and ``<name>_labels.png`` (pixel value = label, coloured with the
    palette of :mod:`partlab.viz`) in the folder ``out``, each written atomically. ``image`` is
    ``(H, W, 3)`` in [0, 1], ``labels`` ``(H, W)`` with values 0..255."""
    from PIL import Image

    from partlab import viz

    overlay = Image.fromarray((viz.overlay(image, labels) * 255).round().astype(np.uint8))
    label_image = Image.fromarray(labels.numpy().astype(np.uint8))
    label_image.putpalette((viz.PALETTE * 255).round().astype(np.uint8).ravel().tolist())  # mode L -> P
    parts_path, labels_path = out / f"{name}_parts.png", out / f"{name}_labels.png"
    for picture, path in ((overlay, parts_path), (label_image, labels_path)):
        _save_atomically(picture, path, "PNG")
    return parts_path, labels_path
