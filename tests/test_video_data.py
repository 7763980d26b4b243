"""The real-video frame-pair reader (partlab.data.VideoFramePairs) on fixture folders built here: frames
written with PIL, each frame one flat colour whose red value names its frame number."""

import shutil
import sys

import pytest
import torch
from PIL import Image

import partlab.data.video as video_module
from partlab.data import VideoFramePairs, stack_dataset
from partlab.features import get_extractor
from partlab.methods import MotionCoPart

S = 16


def _red(j):
    return 20 * j + 10                     # frame j's red value: 10, 30, 50, ...


def _video(folder, n, size=(40, 30), suffix=".png", name="{:07d}"):
    """A folder of ``n`` flat frames; frame j has red value _red(j)."""
    folder.mkdir(parents=True)
    for j in range(n):
        Image.new("RGB", size, (_red(j), 100, 200)).save(folder / (name.format(j) + suffix))
    return folder


def _frame_number(image):
    """The frame number a flat frame (3, H, W) in [0, 1] shows."""
    return round((float(image[0].mean()) * 255 - 10) / 20)


@pytest.fixture
def root(tmp_path):
    """train/: walk (5 PNG frames 40x30), jump (3 JPG frames 24x24); test/: wave (2 frames)."""
    _video(tmp_path / "train" / "walk", 5)
    _video(tmp_path / "train" / "jump", 3, size=(24, 24), suffix=".jpg")
    _video(tmp_path / "test" / "wave", 2)
    return tmp_path


def test_items_are_pairs_of_distinct_frames_of_one_video(root):
    pairs = VideoFramePairs(root, size=S, pairs_per_video=20)
    assert pairs.videos == ["jump", "walk"] and len(pairs) == 40
    seen = set()
    for i in range(len(pairs)):
        item = pairs[i]
        assert item["image"].shape == item["frame2"].shape == (3, S, S)
        assert item["video_name"] == pairs.videos[i % 2] and int(item["index"]) == i
        target, source = item["frame_indices"].tolist()
        assert target != source                                          # distinct frames
        assert (_frame_number(item["image"]), _frame_number(item["frame2"])) == (target, source)
        seen.add((item["video_name"], target, source))
    assert ("jump", 0, 2) in seen and ("jump", 2, 0) in seen             # both orders occur
    assert 0 <= float(pairs[0]["image"].min()) and float(pairs[0]["image"].max()) <= 1


def test_pairs_are_a_function_of_seed_and_index(root):
    a, b = VideoFramePairs(root, size=S), VideoFramePairs(root, size=S)
    assert torch.equal(a[7]["frame_indices"], b[7]["frame_indices"]) and torch.equal(a[7]["image"], b[7]["image"])
    other = VideoFramePairs(root, size=S, seed=1)
    assert any(not torch.equal(a[i]["frame_indices"], other[i]["frame_indices"]) for i in range(10))
    assert torch.equal(a[-1]["image"], a[len(a) - 1]["image"])
    with pytest.raises(IndexError, match="out of range"):
        a[len(a)]


def test_frames_in_natural_order_and_test_split(root):
    _video(root / "train" / "long", 12, name="f{}")                     # f2 before f10
    pairs = VideoFramePairs(root, size=S)
    frames = pairs.frames("long")
    assert frames.shape == (12, 3, S, S) and [_frame_number(f) for f in frames] == list(range(12))
    assert pairs.frames(0).shape == (3, 3, S, S)                        # jump: 24x24 JPG frames, resized
    test = VideoFramePairs(root, size=S, split="test", pairs_per_video=1)
    assert test.videos == ["wave"] and sorted(test[0]["frame_indices"].tolist()) == [0, 1]


def test_batches_collate_and_train_the_motion_method(root):
    pairs = VideoFramePairs(root, size=32, pairs_per_video=2)
    batch = stack_dataset(pairs, n=2)
    assert batch["image"].shape == (2, 3, 32, 32) and batch["video_name"] == ["jump", "walk"]
    torch.manual_seed(0)
    model = MotionCoPart(2, features=get_extractor("rgb", device="cpu"), scale=1.0, base_channels=4, depth=2,
                         generator_channels=4, num_residual=1)
    losses = model.losses(batch)
    assert torch.isfinite(losses["loss"])


def test_frames_of_mixed_sizes_are_resized(root):
    folder = root / "train" / "mixed"
    folder.mkdir()
    Image.new("RGB", (50, 20), (_red(0), 0, 0)).save(folder / "a.png")
    Image.new("L", (17, 33), 128).save(folder / "b.png")                # grey, another size
    frames = VideoFramePairs(root, size=S).frames("mixed")
    assert frames.shape == (2, 3, S, S) and torch.allclose(frames[1], torch.full((3, S, S), 128 / 255), atol=1e-6)


# --- bad folders and files -----------------------------------------------------------------------------


def test_a_missing_root_or_split_states_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no video dataset at .*nowhere.*ROOT/train/<video>/<frame>\.png"):
        VideoFramePairs(tmp_path / "nowhere")
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"has no test/ folder of videos.*ROOT/test/<video>\.mp4"):
        VideoFramePairs(tmp_path, split="test")
    with pytest.raises(ValueError, match=r"train holds no videos.*Tai-Chi-HD"):
        VideoFramePairs(tmp_path)


@pytest.mark.parametrize("make, message", [
    (lambda v: v.mkdir(), r"video folder .*clip holds no frames"),
    (lambda v: _video(v, 1), r"video folder .*clip holds a single frame \(0000000\.png\).*at least two"),
    (lambda v: (_video(v, 3), (v / "notes.txt").write_text("x")), r"clip/notes\.txt is not a frame"),
    (lambda v: (_video(v, 3), (v / "nested").mkdir()), r"clip/nested is not a frame"),
    (lambda v: v.with_suffix(".txt").write_text("x"), r"clip\.txt is neither a folder of frames nor a video file"),
])
def test_bad_video_folders_are_named_when_the_dataset_is_built(tmp_path, make, message):
    _video(tmp_path / "train" / "good", 2)
    make(tmp_path / "train" / "clip")
    with pytest.raises(ValueError, match=message):
        VideoFramePairs(tmp_path)


def test_hidden_files_are_ignored(tmp_path):
    _video(tmp_path / "train" / "good", 2)
    (tmp_path / "train" / ".DS_Store").write_text("x")
    (tmp_path / "train" / "good" / ".thumbs").write_text("x")
    assert VideoFramePairs(tmp_path).videos == ["good"]


def test_an_unreadable_frame_is_named_when_read(tmp_path):
    folder = _video(tmp_path / "train" / "clip", 2)
    (folder / "0000001.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    pairs = VideoFramePairs(tmp_path, pairs_per_video=1)
    with pytest.raises(ValueError, match=r"clip/0000001\.png is not an image partlab can read"):
        pairs[0]


def test_video_files_without_a_decoder_say_what_to_install(tmp_path, monkeypatch):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "clip.mp4").write_bytes(b"\x00" * 16)
    monkeypatch.setitem(sys.modules, "av", None)                          # import av -> ImportError
    with pytest.raises(RuntimeError, match=r"clip\.mp4 needs a video decoder.*pip install av.*ffmpeg"):
        VideoFramePairs(tmp_path)


def test_video_files_through_the_decoder(tmp_path, monkeypatch):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "clip.mp4").write_bytes(b"")
    (tmp_path / "train" / "still.mov").write_bytes(b"")
    _video(tmp_path / "train" / "clip", 2)                               # same name as clip.mp4

    def decode(path):                                                     # uint8 (T, 3, H, W), frame j red _red(j)
        n = 4 if path.stem == "clip" else 1
        frames = torch.zeros(n, 3, 24, 40, dtype=torch.uint8)
        for j in range(n):
            frames[j, 0] = _red(j)
        return frames

    monkeypatch.setattr(video_module, "_pyav", lambda path: None)
    monkeypatch.setattr(video_module, "_decode_video", decode)
    with pytest.raises(ValueError, match=r"clip.* and .*clip.* are both video 'clip'"):
        VideoFramePairs(tmp_path)
    shutil.rmtree(tmp_path / "train" / "clip")
    pairs = VideoFramePairs(tmp_path, size=S, pairs_per_video=3)
    assert pairs.videos == ["clip", "still"]
    item = pairs[0]
    target, source = item["frame_indices"].tolist()
    assert item["video_name"] == "clip" and target != source
    assert (_frame_number(item["image"]), _frame_number(item["frame2"])) == (target, source)
    assert pairs.frames("clip").shape == (4, 3, S, S)
    with pytest.raises(ValueError, match=r"video file .*still\.mov holds a single frame"):
        pairs[1]


def test_bad_arguments(root):
    for kwargs, message in (({"size": 0}, "size must be a positive integer"),
                            ({"pairs_per_video": 1.5}, "pairs_per_video must be a positive integer"),
                            ({"seed": -1}, "seed must be an integer >= 0")):
        with pytest.raises(ValueError, match=message):
            VideoFramePairs(root, **kwargs)
    with pytest.raises(KeyError, match="no video 'dance'"):
        VideoFramePairs(root).frames("dance")
