"""Real videos as frame pairs for the motion-supervised method: a folder of videos, one item a pair of
frames of one video (what :class:`partlab.methods.MotionCoPart` trains on).

The layout is that of the preprocessed Tai-Chi-HD and VoxCeleb releases: one folder per split, and in it
one entry per video, either a sub-folder of frames or a video file::

    root/
      train/
        <video>/0000000.png  0000001.png ...     a folder of frames (PNG or JPG), in name order
        <video>.mp4                              or a video file (.mp4 .avi .mov .mkv .webm)
      test/
        ...

>>> pairs = VideoFramePairs("data/taichi", size=64)          # doctest: +SKIP
>>> item = pairs[0]                                           # doctest: +SKIP
>>> item["image"].shape, item["frame2"].shape, item["video_name"]  # doctest: +SKIP
(torch.Size([3, 64, 64]), torch.Size([3, 64, 64]), 'aaa-xyz#000123#000456')
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from partlab import utils

__all__ = ["FRAME_EXTENSIONS", "VIDEO_EXTENSIONS", "VideoFramePairs"]

FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
_LAYOUT = ("expected the layout of the preprocessed Tai-Chi-HD / VoxCeleb releases: ROOT/{split}/<video>/<frame>.png "
           "(one folder of PNG/JPG frames per video) or ROOT/{split}/<video>.mp4")
_NO_DECODER = ("reading the video file {path} needs a video decoder, and none is installed here "
               "(PyAV is missing; torchvision.io.read_video, which needs it too, is gone from torchvision >= 0.22): "
               "install PyAV (`pip install av`), or turn each video into a folder of frames, e.g. "
               "`mkdir {folder} && ffmpeg -i {path} {folder}/%07d.png`")


def _natural_key(name: str) -> list:
    """Sort key that orders ``frame2.png`` before ``frame10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _visible(entries) -> list:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: _natural_key(e.name))


def _pyav(path: Path):
    """The ``av`` module (PyAV), or ``RuntimeError`` naming ``path`` and saying how to read it without."""
    try:
        import av
    except ImportError:
        raise RuntimeError(_NO_DECODER.format(path=path, folder=path.with_suffix(""))) from None
    return av


def _decode_video(path: Path) -> torch.Tensor:
    """Every frame of a video file as uint8 ``(T, 3, H, W)``: ``torchvision.io.read_video`` where this
    torchvision has it (before 0.22; it decodes with PyAV too), else PyAV directly; without PyAV a
    ``RuntimeError`` saying how to fix it."""
    import torchvision.io

    read_video = getattr(torchvision.io, "read_video", None)
    av = _pyav(path)
    try:
        if read_video is not None:
            frames, _, _ = read_video(str(path), pts_unit="sec", output_format="TCHW")
            return frames
        with av.open(str(path)) as container:
            arrays = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]   # (H, W, 3)
    except Exception as exc:                          # PyAV raises its own error types for damaged files
        raise ValueError(f"{path} is not a video partlab can read: {exc}") from None
    if not arrays:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


class VideoFramePairs(Dataset):
    """Pairs of frames of real videos, as the motion-supervised method trains on them.

    Layout (the preprocessed Tai-Chi-HD and VoxCeleb releases)::

        root/<split>/<video>/<frame>.png      one folder of frames per video (.png .jpg .jpeg), frames in
                                              natural name order (frame2 before frame10)
        root/<split>/<video>.mp4              or one video file per video (.mp4 .avi .mov .mkv .webm),
                                              decoded whole on each read: torchvision.io.read_video where
                                              torchvision still has it (< 0.22), else PyAV (``pip install av``);
                                              frame folders are much faster

    Names starting with ``.`` are ignored; anything else that is neither (a text file in the split
    folder, a sub-folder in a frame folder) is refused by name, never skipped.

    Pair sampling: the paper samples the source and the target "randomly from the entire video
    sequence". Here item ``i`` is a pair of video ``i mod V`` (``V`` videos, sorted by name; the
    training loop's shuffled sampler makes the video random), its two frames drawn uniformly among the
    ordered pairs of *distinct* frames (identical frames show no motion) by a generator seeded with
    ``(seed, i)``: an item is a pure function of ``(root, split, size, seed, i)``, so a run is
    reproducible and resumes exactly. ``pairs_per_video`` sets the length, ``V * pairs_per_video`` (each
    index a fresh pair, each video equally often, whatever the videos' lengths).

    Frames are read as RGB in [0, 1] (grey, palette, 16-bit and transparent frames as in
    :func:`partlab.segment_io.read_image`) and each is resized, not cropped, to ``size x size`` (bilinear,
    antialiased): frames of different sizes or aspect ratios, within a video or across videos, all come
    out ``(3, size, size)``.

    Items::

        image          float32 (3, size, size)   the target frame X_T (segmented and reconstructed)
        frame2         float32 (3, size, size)   the source frame X_S (warped to rebuild the target)
        video_name     str                       the video's name (folder or file name without suffix)
        frame_indices  int64   (2,)              (target, source) frame numbers in the video
        index          int64   ()                the item index

    Errors, each naming the path: a missing ``root`` or ``root/split`` (``FileNotFoundError`` stating the
    layout), no videos, a video folder without frame files, a video folder of a single frame (a pair needs
    two), an entry of an unknown kind (``ValueError``, when the dataset is built); a frame or video file that
    cannot be decoded, a video file of a single frame (``ValueError``, when it is read); video files
    without a decoder (``RuntimeError`` saying what to install).

    Args:
        root: the dataset folder (holding ``train/`` and ``test/``).
        size: output side in pixels.
        split: the sub-folder of ``root`` to read (``"train"``, ``"test"``).
        pairs_per_video: items per video (the length is ``V * pairs_per_video``).
        seed: seeds the frame choice.

    Attributes:
        videos: the video names, sorted; ``paths`` their folders or files.
    """

    def __init__(self, root: Union[str, os.PathLike], size: int = 64, split: str = "train",
                 pairs_per_video: int = 100, seed: int = 0) -> None:
        for name, value in (("size", size), ("pairs_per_video", pairs_per_video)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"VideoFramePairs: {name} must be a positive integer, got {value!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"VideoFramePairs: seed must be an integer >= 0, got {seed!r}")
        self.root, self.split, self.size = Path(root), str(split), size
        self.pairs_per_video, self.seed = pairs_per_video, seed
        folder = self.root / self.split
        layout = _LAYOUT.format(split=self.split)
        if not self.root.is_dir():
            raise FileNotFoundError(f"no video dataset at {self.root} ({'a file' if self.root.exists() else 'missing'}); "
                                    f"{layout}")
        if not folder.is_dir():
            raise FileNotFoundError(f"{self.root} has no {self.split}/ folder of videos; {layout}")
        self.videos: List[str] = []
        self.paths: List[Path] = []
        self._frames: List[List[Path]] = []              # frame files of a folder; [] for a video file
        with os.scandir(folder) as entries:
            for entry in _visible(entries):
                path = Path(entry.path)
                if entry.is_dir():
                    frames = self._frame_files(path)
                elif path.suffix.lower() in VIDEO_EXTENSIONS:
                    _pyav(path)                           # no decoder: say so now, not at the first item
                    frames = []
                else:
                    raise ValueError(f"{path} is neither a folder of frames nor a video file "
                                     f"({' '.join(VIDEO_EXTENSIONS)}); {layout}")
                name = path.name if entry.is_dir() else path.stem
                if name in self.videos:
                    raise ValueError(f"{path} and {self.paths[self.videos.index(name)]} are both video {name!r}; "
                                     f"keep one of them")
                self.videos.append(name)
                self.paths.append(path)
                self._frames.append(frames)
        if not self.videos:
            raise ValueError(f"{folder} holds no videos; {layout}")

    @staticmethod
    def _frame_files(folder: Path) -> List[Path]:
        with os.scandir(folder) as entries:
            frames = []
            for entry in _visible(entries):
                if entry.is_dir() or Path(entry.name).suffix.lower() not in FRAME_EXTENSIONS:
                    raise ValueError(f"{entry.path} is not a frame: a video folder holds only image files "
                                     f"({' '.join(FRAME_EXTENSIONS)})")
                frames.append(Path(entry.path))
        if not frames:
            raise ValueError(f"the video folder {folder} holds no frames ({' '.join(FRAME_EXTENSIONS)} files)")
        if len(frames) < 2:
            raise ValueError(f"the video folder {folder} holds a single frame ({frames[0].name}); a frame pair "
                             f"needs at least two")
        return frames

    def __len__(self) -> int:
        return len(self.videos) * self.pairs_per_video

    def _video_index(self, video: Union[int, str]) -> int:
        if isinstance(video, str):
            if video not in self.videos:
                raise KeyError(f"no video {video!r} in {self.root / self.split}")
            return self.videos.index(video)
        v = int(video)
        if not -len(self.videos) <= v < len(self.videos):
            raise IndexError(f"video {v} out of range: {self.root / self.split} holds {len(self.videos)} videos")
        return v % len(self.videos)

    def _read_frame(self, path: Path) -> torch.Tensor:
        from partlab.segment_io import read_image, resize_image

        return resize_image(read_image(path), self.size)                               # (3, size, size)

    def _decoded(self, v: int) -> torch.Tensor:
        """Every frame of video file ``v``, resized: ``(T, 3, size, size)``, ``T >= 2``."""
        import torch.nn.functional as F

        path = self.paths[v]
        frames = _decode_video(path)                                                    # (T, 3, H, W) uint8
        if frames.shape[0] < 2:
            what = "no frame" if frames.shape[0] == 0 else "a single frame"
            raise ValueError(f"the video file {path} holds {what}; a frame pair needs at least two")
        frames = frames.float() / 255.0
        return F.interpolate(frames, size=(self.size, self.size), mode="bilinear", align_corners=False,
                             antialias=True).clamp(0, 1)

    def frames(self, video: Union[int, str]) -> torch.Tensor:
        """Every frame of one video (its index or name), in order, resized: ``(T, 3, size, size)``."""
        v = self._video_index(video)
        if not self._frames[v]:
            return self._decoded(v)
        return torch.stack([self._read_frame(path) for path in self._frames[v]])

    def __getitem__(self, index: int) -> Dict[str, object]:
        i = utils.dataset_index(index, len(self))
        v = i % len(self.videos)
        rng = np.random.default_rng([self.seed, i])
        files = self._frames[v]
        decoded = None if files else self._decoded(v)
        count = len(files) if files else decoded.shape[0]
        target = int(rng.integers(count))
        source = int(rng.integers(count - 1))
        source += source >= target                                   # distinct, uniform over the others
        if files:
            image, frame2 = self._read_frame(files[target]), self._read_frame(files[source])
        else:
            image, frame2 = decoded[target], decoded[source]
        return {"image": image, "frame2": frame2, "video_name": self.videos[v],
                "frame_indices": torch.tensor([target, source]), "index": torch.tensor(i)}

    def __repr__(self) -> str:
        return (f"VideoFramePairs({str(self.root)!r}, size={self.size}, split={self.split!r}, "
                f"videos={len(self.videos)}, pairs_per_video={self.pairs_per_video}, seed={self.seed})")
