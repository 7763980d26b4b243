"""PASCAL VOC 2012 with saliency masks, read from a local folder: the real data of MaskContrast
(:class:`partlab.methods.MaskContrast`), with the item keys of :class:`partlab.data.SyntheticScenes`
(``image``, ``saliency``, ``semantic``, ``index``), so the method and its evaluation run unchanged on it.

Layout (that of the VOC 2012 release, plus one folder of saliency masks)::

    ROOT/JPEGImages/<id>.jpg                 the images
    ROOT/SegmentationClass/<id>.png          palette PNG of class indices: 0 background, 1..20 the classes,
                                             255 void (object borders, unscored); val/test scoring
    ROOT/saliency/<id>.png                   grey or binary PNG, object where > 127: the output of a supervised
                                             or unsupervised saliency estimator, e.g. the masks of the
                                             MaskContrast release (``saliency_dir`` names another folder)
    ROOT/ImageSets/Segmentation/<split>.txt  one id per line (train, val, trainaug, ...)

>>> voc = VOCSaliency("data/VOCdevkit/VOC2012", split="val", size=224)     # doctest: +SKIP
>>> item = voc[0]                                                          # doctest: +SKIP
>>> item["image"].shape, item["saliency"].shape, item["semantic"].shape, item["name"]   # doctest: +SKIP
(torch.Size([3, 224, 224]), torch.Size([1, 224, 224]), torch.Size([224, 224]), '2007_000033')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from partlab import utils

__all__ = ["VOC_CLASS_NAMES", "VOCSaliency"]

VOC_CLASS_NAMES: Tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
VOID = 255                                        # the label of object borders and unscored pixels
RESIZES = ("short", "square")
_SPLITS = Path("ImageSets") / "Segmentation"
_LAYOUT = ("expected the PASCAL VOC 2012 layout: ROOT/JPEGImages/<id>.jpg, ROOT/SegmentationClass/<id>.png, "
           "ROOT/{saliency}/<id>.png and ROOT/ImageSets/Segmentation/<split>.txt")
_SHOWN = 3                                        # missing files named in an error, before "..."


def _file_names(folder: Path) -> set:
    with os.scandir(folder) as entries:
        return {entry.name for entry in entries}


def _open(path: Path):
    """The decoded PIL image in ``path``; ``ValueError`` naming it when PIL cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            picture.load()
            return picture
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is gone (it was there when the dataset was built)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ValueError(f"{path} is not an image PIL can read ({exc}); replace it with an intact copy") from None


class VOCSaliency(Dataset):
    """PASCAL VOC 2012 images with their saliency masks (and class labels), from a local folder.

    Layout::

        ROOT/JPEGImages/<id>.jpg                 the images (RGB; grey or CMYK JPEGs are converted)
        ROOT/SegmentationClass/<id>.png          palette (mode P) or grey (mode L) PNG of class indices,
                                                 read as indices, never as colours: 0 background, 1..20
                                                 the classes (``class_names``), 255 void
        ROOT/<saliency_dir>/<id>.png             grey or binary PNG (any mode, read as grey), object > 127
        ROOT/ImageSets/Segmentation/<split>.txt  one id per line; blank lines are skipped

    Resizing (``size`` pixels a side): ``resize="short"`` scales the short side to ``size`` (the long
    side to ``int(size * long / short)``) and crops the centre ``size x size`` (offset
    ``(side - size) // 2``); ``resize="square"`` scales to ``size x size`` (the aspect ratio is not kept).
    The image is resampled bilinearly (antialiased), the saliency mask and the labels with nearest
    neighbour, so labels stay indices (255 kept) and the mask is binarised after resizing. Pixels are
    taken as stored (an EXIF orientation is ignored, as the VOC labels are aligned to the stored pixels).

    Items::

        image     float32 (3, size, size)   RGB in [0, 1]
        saliency  float32 (1, size, size)   in {0, 1}: 1 where the mask is > 127
        semantic  int64   (size, size)      0 background, 1..20 classes, 255 void; only when ``labels``
        index     int64   ()                the item index
        name      str                       the id

    Errors, each naming the path and how to fix it. When the dataset is built: a missing ``root``, a
    missing split file (listing the split files there are) or ``SegmentationClass``/saliency folder
    (``FileNotFoundError``); an id without its JPEG, label or saliency file (``FileNotFoundError``
    giving the first few and the count of each); an empty split file, or a line that is not one id
    (``ValueError``). When an item is read: a file PIL cannot decode, a label or saliency map whose size
    differs from its image's, a label map of colours or of values other than 0..20 and 255 (``ValueError``).

    Args:
        root: the VOC 2012 folder (holding ``JPEGImages/``).
        split: the split file ``ImageSets/Segmentation/<split>.txt`` to read.
        size: output side in pixels.
        saliency_dir: the folder of ``root`` holding the saliency masks.
        labels: read ``SegmentationClass`` into ``semantic``; ``False`` for a split without labels
            (e.g. ``trainaug`` without the SBD labels).
        resize: ``"short"`` (short side, then centre crop) or ``"square"``.

    Attributes:
        ids: the ids of the split, in file order; ``root``, ``split`` as given.
        num_classes: 20, the object classes (labels 1..20; 0 is background).
        class_names: the name of each label 0..20.
    """

    num_classes = len(VOC_CLASS_NAMES) - 1
    class_names = VOC_CLASS_NAMES

    def __init__(self, root: Union[str, os.PathLike], split: str = "train", size: int = 224,
                 saliency_dir: str = "saliency", labels: bool = True, resize: str = "short") -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"VOCSaliency: size must be a positive integer, got {size!r}")
        if resize not in RESIZES:
            raise ValueError(f"VOCSaliency: resize must be one of {RESIZES}, got {resize!r}")
        if not isinstance(saliency_dir, str) or not saliency_dir:
            raise ValueError(f"VOCSaliency: saliency_dir must be a folder name, got {saliency_dir!r}")
        self.root, self.split, self.size = Path(root), str(split), size
        self.saliency_dir, self.labels, self.resize = saliency_dir, bool(labels), resize
        layout = _LAYOUT.format(saliency=saliency_dir)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no VOC dataset at {self.root} ({'a file' if self.root.exists() else 'missing'}); "
                                    f"{layout}")
        self.ids = self._read_split()
        self._check_files(layout)

    def _read_split(self) -> List[str]:
        folder = self.root / _SPLITS
        path = folder / f"{self.split}.txt"
        if not path.is_file():
            splits = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
            there = (f"the split files there are: {', '.join(splits)}; pass one of those as split, or write"
                     if splits else f"{folder} holds no split files; write" if folder.is_dir()
                     else f"{folder} is missing; write")
            raise FileNotFoundError(f"no split file {path} for split {self.split!r}; {there} the file "
                                    f"(one id per line)")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read the split file {path} ({exc}); it should be text, one id per line") from None
        ids = []
        for number, line in enumerate(lines, 1):
            name = line.strip()
            if name and len(name.split()) > 1:
                raise ValueError(f"line {number} of the split file {path} is {name!r}, not one id: a "
                                 f"Segmentation split file holds one id per line (e.g. 2007_000032)")
            if name:
                ids.append(name)
        if not ids:
            raise ValueError(f"the split file {path} holds no ids; write one id per line")
        return ids

    def _paths(self, name: str) -> Dict[str, Path]:
        paths = {"image": self.root / "JPEGImages" / f"{name}.jpg",
                 "saliency": self.root / self.saliency_dir / f"{name}.png"}
        if self.labels:
            paths["semantic"] = self.root / "SegmentationClass" / f"{name}.png"
        return paths

    def _check_files(self, layout: str) -> None:
        """Every id has its JPEG, saliency mask and (with ``labels``) label map, or one error naming the
        missing ones."""
        folders = {"image": (self.root / "JPEGImages", ".jpg", "images"),
                   "saliency": (self.root / self.saliency_dir, ".png", "saliency masks")}
        if self.labels:
            folders["semantic"] = (self.root / "SegmentationClass", ".png", "label maps")
        problems, fix = [], "; add them, or write a split file without those ids"
        for key, (folder, suffix, what) in folders.items():
            if not folder.is_dir():
                how = {"image": layout,
                       "saliency": "put the saliency masks there, or pass saliency_dir= the folder that holds them",
                       "semantic": "pass labels=False for a split without labels (e.g. trainaug)"}[key]
                raise FileNotFoundError(f"{self.root} has no {folder.name}/ folder of {what}; {how}")
            present = _file_names(folder)
            missing = [f"{name}{suffix}" for name in self.ids if f"{name}{suffix}" not in present]
            if missing:
                shown = ", ".join(missing[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
                problems.append(f"{folder} lacks {len(missing)} of the {len(self.ids)} {what} ({shown})")
                if key == "semantic":
                    fix += " (or pass labels=False for a split without labels, e.g. trainaug)"
        if problems:
            raise FileNotFoundError(f"split {self.split!r} of {self.root}: " + "; ".join(problems) + fix)

    def __len__(self) -> int:
        return len(self.ids)

    def _geometry(self, width: int, height: int) -> Tuple[Tuple[int, int], Tuple[int, int, int, int]]:
        """The resized ``(width, height)`` and the crop box ``(left, top, right, bottom)`` in it."""
        s = self.size
        if self.resize == "square":
            return (s, s), (0, 0, s, s)
        if width <= height:
            resized = (s, int(s * height / width))
        else:
            resized = (int(s * width / height), s)
        left, top = (resized[0] - s) // 2, (resized[1] - s) // 2
        return resized, (left, top, left + s, top + s)

    def __getitem__(self, index: int) -> Dict[str, object]:
        from PIL import Image

        if isinstance(index, bool) or not isinstance(index, (int, np.integer, torch.Tensor)):
            raise IndexError(f"index must be an integer, got {type(index).__name__}")
        i = utils.dataset_index(index, len(self))
        paths = self._paths(self.ids[i])
        pictures = {key: _open(path) for key, path in paths.items()}
        image = pictures["image"]
        for key in ("saliency", "semantic"):
            if key in pictures and pictures[key].size != image.size:
                w, h = pictures[key].size
                raise ValueError(f"{paths[key]} is {w}x{h} but its image {paths['image']} is "
                                 f"{image.width}x{image.height}; a {key} map must match its image pixel for pixel")
        resized, box = self._geometry(*image.size)
        nearest = Image.Resampling.NEAREST
        rgb = image.convert("RGB").resize(resized, Image.Resampling.BILINEAR).crop(box)
        mask = pictures["saliency"].convert("L").resize(resized, nearest).crop(box)
        out = {"image": torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous(),
               "saliency": torch.from_numpy((np.asarray(mask) > 127).astype(np.float32))[None]}     # (1, size, size)
        if self.labels:
            labels = pictures["semantic"]
            self._check_labels(labels, paths["semantic"])
            out["semantic"] = torch.from_numpy(np.asarray(labels.resize(resized, nearest).crop(box), dtype=np.int64))
        out.update(index=torch.tensor(i, dtype=torch.int64), name=self.ids[i])
        return out

    def _check_labels(self, picture, path: Path) -> None:
        """A label map is an image of class indices (mode P or L) holding only 0..20 and 255."""
        if picture.mode not in ("P", "L"):
            raise ValueError(f"{path} is a {picture.mode} image, not a map of class indices: save it as a palette "
                             f"(mode P) or grey (mode L) PNG whose values are 0..{self.num_classes} and {VOID}, "
                             f"as VOC's SegmentationClass")
        values = np.asarray(picture)                                                       # (H, W) uint8 indices
        bad = np.unique(values[(values > self.num_classes) & (values != VOID)])
        if bad.size:
            raise ValueError(f"{path} holds labels {bad[:5].tolist()} outside 0..{self.num_classes} and {VOID} (void); "
                             f"a VOC label map holds only those")

    def __repr__(self) -> str:
        return (f"VOCSaliency({str(self.root)!r}, split={self.split!r}, size={self.size}, "
                f"saliency_dir={self.saliency_dir!r}, labels={self.labels}, resize={self.resize!r}, "
                f"images={len(self.ids)})")
