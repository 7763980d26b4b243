"""The PASCAL VOC 2012 + saliency reader (partlab.data.VOCSaliency) on a fixture folder built here: three
random-colour JPEGs (two 40x30 landscape, one 30x50 portrait), palette label PNGs holding one object block
with a void (255) border and a few single labelled pixels to follow through the resize, and saliency
PNGs covering the block (grey for two ids, 1-bit for one)."""

import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from partlab.data import VOC_CLASS_NAMES, VOCSaliency
from partlab.methods.maskcontrast import MaskContrast

IDS = ("2007_000001", "2007_000002", "2008_000003")
SIZES = {"2007_000001": (40, 30), "2007_000002": (30, 50), "2008_000003": (40, 30)}   # (width, height)
DOG, BIRD, CAR, PERSON = 12, 3, 7, 15


def _palette():
    """The VOC colour map (label k's colour from the bits of k), as PIL's flat palette list."""
    colours = []
    for k in range(256):
        r = g = b = 0
        for bit in range(8):
            r |= ((k >> 0) & 1) << (7 - bit)
            g |= ((k >> 1) & 1) << (7 - bit)
            b |= ((k >> 2) & 1) << (7 - bit)
            k >>= 3
        colours += [r, g, b]
    return colours


def _labels(name, w, h):
    """The (H, W) uint8 label map of ``name``: a CAR block (rows 10:20, cols 20:30 of a landscape image,
    rows 20:30, cols 10:20 of a portrait one) inside a void border, and marker pixels."""
    labels = np.zeros((h, w), dtype=np.uint8)
    rows, cols = (slice(10, 20), slice(20, 30)) if w > h else (slice(20, 30), slice(10, 20))
    labels[rows.start - 1:rows.stop + 1, cols.start - 1:cols.stop + 1] = 255
    labels[rows, cols] = CAR
    if w > h:
        labels[3, 33] = DOG                      # inside the centre crop of a 30 px short side: at (3, 28)
        labels[0, 3] = PERSON                    # cropped away (the crop keeps columns 5..34)
        labels[4:6, 24:26] = BIRD                # at 15 px: row 2, column 12 - 2 = 10
    else:
        labels[38, 10] = DOG                     # crop keeps rows 10..39: at (28, 10)
    return labels, rows, cols


def _write_id(root, name, size=(40, 30)):
    """The JPEG, label map and saliency mask of ``name``, ``size = (width, height)``."""
    w, h = size
    rng = np.random.default_rng(sum(map(ord, name)))
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
    labels, rows, cols = _labels(name, w, h)
    picture = Image.frombytes("P", (w, h), labels.tobytes())
    picture.putpalette(_palette())
    picture.save(root / "SegmentationClass" / f"{name}.png")
    mask = np.zeros((h, w), dtype=np.uint8)
    mask[rows, cols] = 255
    saliency = Image.frombytes("L", (w, h), mask.tobytes())
    (saliency.convert("1") if name == IDS[1] else saliency).save(root / "saliency" / f"{name}.png")


@pytest.fixture
def root(tmp_path):
    """VOC 2012 layout with three ids; train: the first two, val: all three."""
    for folder in ("JPEGImages", "SegmentationClass", "saliency", "ImageSets/Segmentation"):
        (tmp_path / folder).mkdir(parents=True)
    for name in IDS:
        _write_id(tmp_path, name, SIZES[name])
    splits = tmp_path / "ImageSets" / "Segmentation"
    (splits / "train.txt").write_text(f"{IDS[0]}\n{IDS[1]}\n")
    (splits / "val.txt").write_text("\n".join(IDS) + "\n\n")          # a trailing blank line is skipped
    return tmp_path


def test_items_keys_shapes_dtypes_and_values(root):
    voc = VOCSaliency(root, split="val", size=24)
    assert len(voc) == 3 and voc.ids == list(IDS) and voc.split == "val" and voc.root == root
    assert voc.num_classes == 20 and voc.class_names == VOC_CLASS_NAMES and len(voc.class_names) == 21
    assert voc.class_names[CAR] == "car" and voc.class_names[-1] == "tvmonitor"
    for i in range(3):
        item = voc[i]
        assert set(item) == {"image", "saliency", "semantic", "index", "name"}
        assert item["image"].shape == (3, 24, 24) and item["image"].dtype == torch.float32
        assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
        assert float(item["image"].std()) > 0.1                                       # random colours, not flat
        assert item["saliency"].shape == (1, 24, 24) and item["saliency"].dtype == torch.float32
        assert set(item["saliency"].unique().tolist()) == {0.0, 1.0}
        assert item["semantic"].shape == (24, 24) and item["semantic"].dtype == torch.int64
        assert {0, CAR, 255} <= set(item["semantic"].unique().tolist()) <= {0, BIRD, CAR, DOG, PERSON, 255}
        assert bool((item["saliency"][0][item["semantic"] == CAR] == 1).all())    # the mask covers the block
        assert item["index"].dtype == torch.int64 and item["index"].shape == () and int(item["index"]) == i
        assert item["name"] == IDS[i]
    assert voc[-1]["name"] == IDS[2]
    with pytest.raises(IndexError, match="out of range"):
        voc[3]


def test_short_side_resize_then_centre_crop_moves_known_pixels(root):
    voc = VOCSaliency(root, split="val", size=30)                  # 40x30 kept, columns 5..34 cropped
    landscape, portrait = voc[0], voc[1]
    assert int(landscape["semantic"][3, 28]) == DOG
    assert PERSON not in landscape["semantic"].unique().tolist()   # pixel (0, 3) lies left of the crop
    assert int(landscape["semantic"][15, 20]) == CAR and int(landscape["semantic"][9, 14]) == 255  # block, border
    assert float(landscape["saliency"][0, 15, 20]) == 1 and float(landscape["saliency"][0, 9, 14]) == 0
    assert int(portrait["semantic"][28, 10]) == DOG                # 30x50: rows 10..39 kept
    assert int(portrait["semantic"][10, 10]) == CAR and float(portrait["saliency"][0, 10, 10]) == 1  # 1-bit mask
    half = VOCSaliency(root, split="val", size=15)                 # 40x30 -> 20x15, crop columns 2..16
    assert int(half[0]["semantic"][2, 10]) == BIRD                 # nearest keeps the 2x2 block's label


def test_square_resize_keeps_the_whole_image(root):
    voc = VOCSaliency(root, split="val", size=20, resize="square")     # 40x30 -> 20x20: nothing cropped
    item = voc[0]
    assert item["image"].shape == (3, 20, 20) and item["semantic"].shape == (20, 20)
    assert PERSON in item["semantic"].unique().tolist()               # pixel (0, 3) survives, at (0, 1)
    assert int(item["semantic"][0, 1]) == PERSON
    assert set(item["semantic"].unique().tolist()) <= {0, BIRD, CAR, DOG, PERSON, 255}
    with pytest.raises(ValueError, match="resize"):
        VOCSaliency(root, resize="crop")
    with pytest.raises(ValueError, match="size"):
        VOCSaliency(root, size=0)


def test_labels_false_reads_a_split_without_label_maps(root):
    (root / "ImageSets" / "Segmentation" / "trainaug.txt").write_text(f"{IDS[0]}\nnew_id\n")
    _write_id(root, "new_id")
    (root / "SegmentationClass" / "new_id.png").unlink()                   # an image without a label map
    with pytest.raises(FileNotFoundError, match=r"SegmentationClass lacks 1 of the 2 label maps \(new_id.png\).*labels=False"):
        VOCSaliency(root, split="trainaug")
    voc = VOCSaliency(root, split="trainaug", size=16, labels=False)
    item = voc[1]
    assert set(item) == {"image", "saliency", "index", "name"} and item["name"] == "new_id"
    assert "labels=False" in repr(voc)
    for path in (root / "SegmentationClass").iterdir():
        path.unlink()
    (root / "SegmentationClass").rmdir()
    with pytest.raises(FileNotFoundError, match="no SegmentationClass/ folder.*labels=False"):
        VOCSaliency(root, split="val")
    assert len(VOCSaliency(root, split="val", labels=False)) == 3


def test_dataloader_collates_and_maskcontrast_trains_on_a_batch(root):
    voc = VOCSaliency(root, split="val", size=32)
    batch = next(iter(DataLoader(voc, batch_size=2, shuffle=False)))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["saliency"].shape == (2, 1, 32, 32)
    assert batch["semantic"].shape == (2, 32, 32) and batch["semantic"].dtype == torch.int64
    assert batch["index"].tolist() == [0, 1] and batch["name"] == [IDS[0], IDS[1]]
    torch.manual_seed(0)
    model = MaskContrast(voc.num_classes, base_channels=8, depth=2, queue_size=8)
    out = model.losses(batch)                                          # the method runs unchanged on VOC items
    assert torch.isfinite(out["loss"])


def test_missing_root_split_and_files_are_named(root, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nowhere")) + ".*JPEGImages"):
        VOCSaliency(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"test\.txt.*split files there are: train, val"):
        VOCSaliency(root, split="test")
    (root / "saliency" / f"{IDS[1]}.png").unlink()
    with pytest.raises(FileNotFoundError, match=rf"saliency lacks 1 of the 3 saliency masks \({IDS[1]}\.png\)"):
        VOCSaliency(root, split="val")
    with pytest.raises(FileNotFoundError, match="no masks/ folder.*saliency_dir"):
        VOCSaliency(root, split="train", saliency_dir="masks")
    for name in IDS:
        (root / "JPEGImages" / f"{name}.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"JPEGImages lacks 3 of the 3 images \(2007_000001.jpg, 2007_000002.jpg"
                                                r", 2008_000003.jpg\)"):
        VOCSaliency(root, split="val")


def test_many_missing_files_show_the_first_few_and_the_count(root):
    names = [f"extra_{k}" for k in range(7)]
    (root / "ImageSets" / "Segmentation" / "big.txt").write_text("\n".join(IDS + tuple(names)))
    with pytest.raises(FileNotFoundError, match=r"lacks 7 of the 10 images \(extra_0.jpg, extra_1.jpg, extra_2.jpg, \.\.\.\)"):
        VOCSaliency(root, split="big")


def test_empty_or_malformed_split_file(root):
    splits = root / "ImageSets" / "Segmentation"
    (splits / "empty.txt").write_text("\n  \n")
    with pytest.raises(ValueError, match=re.escape(str(splits / "empty.txt")) + " holds no ids"):
        VOCSaliency(root, split="empty")
    (splits / "classes.txt").write_text(f"{IDS[0]} 1\n")                # the Main/ classification format
    with pytest.raises(ValueError, match="line 1 of the split file .*classes.txt.*one id per line"):
        VOCSaliency(root, split="classes")


def test_corrupt_image_is_named_when_read(root):
    path = root / "JPEGImages" / f"{IDS[1]}.jpg"
    path.write_bytes(b"not a jpeg at all" * 10)
    voc = VOCSaliency(root, split="train", size=16)                   # folder-level checks pass
    assert voc[0]["name"] == IDS[0]
    with pytest.raises(ValueError, match=re.escape(str(path)) + " is not an image PIL can read"):
        voc[1]


def test_size_mismatch_names_both_files(root):
    saliency = root / "saliency" / f"{IDS[0]}.png"
    Image.new("L", (20, 15)).save(saliency)
    voc = VOCSaliency(root, split="train", size=16)
    with pytest.raises(ValueError, match=re.escape(str(saliency)) + r" is 20x15 but its image "
                                         + re.escape(str(root / "JPEGImages" / f"{IDS[0]}.jpg")) + " is 40x30"):
        voc[0]
    label = root / "SegmentationClass" / f"{IDS[1]}.png"
    Image.new("P", (31, 50)).save(label)
    with pytest.raises(ValueError, match=re.escape(str(label)) + " is 31x50 .*30x50"):
        voc[1]


def test_label_maps_must_be_class_indices(root):
    label = root / "SegmentationClass" / f"{IDS[0]}.png"
    Image.new("RGB", SIZES[IDS[0]], (128, 128, 128)).save(label)       # a colour rendering, not indices
    voc = VOCSaliency(root, split="train", size=16)
    with pytest.raises(ValueError, match=re.escape(str(label)) + " is a RGB image, not a map of class indices"):
        voc[0]
    Image.new("L", SIZES[IDS[0]], 30).save(label)
    with pytest.raises(ValueError, match=r"holds labels \[30\] outside 0..20 and 255"):
        voc[0]


def test_repr(root):
    voc = VOCSaliency(root, split="val", size=24)
    assert repr(voc) == (f"VOCSaliency({str(root)!r}, split='val', size=24, saliency_dir='saliency', labels=True, "
                         f"resize='short', images=3)")
