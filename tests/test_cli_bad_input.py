"""Mistakes a new user makes at the command line: each is one line on stderr and exit status 2, or a
correct result; nothing half-written is left in a run folder or an output folder.

Runs are tiny (an oracle at 32 px, 2 steps); images are a few dozen pixels.
"""

import json
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from partlab import cli, segment_io

TINY_RUN = ["--size", "32", "--n-train", "16", "--steps", "2", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained oracle run folder (do not modify: copy it with ``_copy_run``)."""
    out = tmp_path_factory.mktemp("bad_input") / "oracle_bird"
    assert cli.main(["train", "oracle", *TINY_RUN, "--out", str(out)]) == 0
    return out


def _copy_run(run, tmp_path, name="run"):
    copy = tmp_path / name
    shutil.copytree(run, copy)
    return copy


def _one_line(capsys, *fragments, command=None):
    """The captured stderr: one line, no traceback, holding every fragment; returned for more checks."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    if command is not None:
        assert err.startswith(f"partlab {command}: error:"), err
    for fragment in fragments:
        assert fragment in err, err
    return err


def _refused_at_parse_time(argv, capsys, *fragments):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    return _one_line(capsys, *fragments, command=argv[0])


def _png(path, width, height, bit_depth, colour_type, rows: bytes = b""):
    """A PNG written by hand (any header, e.g. one that claims 30000 x 30000 pixels)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def _image(path, size=(40, 30)):
    picture = Image.new("RGB", size, (90, 120, 90))
    picture.paste((200, 30, 30), (10, 8, 28, 22))
    picture.save(path)
    return path


# --- partlab render -----------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [(["-n", "0"], "argument -n: must be an integer in [1, 64], got 0"),
                                            (["-n", "-3"], "argument -n"), (["-n", "1000"], "argument -n"),
                                            (["-n", "two"], "'two' is not an integer"),
                                            (["--size", "0"], "argument --size")])
def test_render_bad_numbers_are_refused_at_parse_time(tmp_path, capsys, flags, message):
    _refused_at_parse_time(["render", str(tmp_path / "out.png"), *flags], capsys, message)
    assert not list(tmp_path.iterdir())


def test_render_into_a_folder_or_an_unknown_format_is_one_line(tmp_path, capsys):
    assert cli.main(["render", str(tmp_path), "-n", "2"]) == 2
    _one_line(capsys, "is a folder", command="render")
    assert cli.main(["render", str(tmp_path / "new" / "grid.txt"), "-n", "2"]) == 2
    _one_line(capsys, "'.txt'", "png", command="render")
    assert not list(tmp_path.iterdir())                                  # no folder "new" left behind


def test_render_without_a_suffix_says_the_file_it_wrote(tmp_path, capsys):
    assert cli.main(["render", str(tmp_path / "grid"), "-n", "2", "--size", "32"]) == 0
    assert f"wrote {tmp_path / 'grid.png'} " in capsys.readouterr().out
    assert (tmp_path / "grid.png").is_file()


# --- partlab train ------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--lr", "-1"], "argument --lr: must be a finite number > 0, got -1"),
    (["--lr", "nan"], "argument --lr: must be a finite number > 0, got nan"),
    (["--lr", "inf"], "argument --lr: must be a finite number > 0, got inf"),
    (["--lr", "0"], "argument --lr"), (["--lr", "fast"], "'fast' is not a number"),
    (["--steps", "0"], "argument --steps"), (["--batch-size", "-2"], "argument --batch-size"),
    (["--n-train", "0"], "argument --n-train"), (["--size", "0"], "argument --size"),
    (["--category", "dragon"], "argument --category: invalid choice: 'dragon'"),
    (["--amp", "fp8"], "argument --amp: choose fp16"),
])
def test_train_bad_settings_are_refused_before_anything_is_written(tmp_path, capsys, flags, message):
    out = tmp_path / "run"
    _refused_at_parse_time(["train", "oracle", *TINY_RUN, "--out", str(out), *flags], capsys, message)
    assert not out.exists()


def test_train_setup_failure_leaves_no_run_folder(tmp_path, capsys):
    out = tmp_path / "runs" / "oracle_bird"
    assert cli.main(["train", "oracle", *TINY_RUN, "--set", "model.num_parts=0", "--out", str(out)]) == 2
    _one_line(capsys, "num_parts", command="train")
    assert not (tmp_path / "runs").exists()
    assert cli.main(["train", "oracle", *TINY_RUN, "--set", "data.category=dragon", "--out", str(out)]) == 2
    _one_line(capsys, "data.category='dragon'", command="train")
    assert not (tmp_path / "runs").exists()


def test_a_failed_training_leaves_nothing_half_written(tmp_path, capsys, monkeypatch):
    import partlab.train

    def failing_fit(model, dataset, **settings):
        raise ValueError("training failed before its first checkpoint")

    monkeypatch.setattr(partlab.train, "fit", failing_fit)
    out = tmp_path / "runs" / "oracle_bird"
    assert cli.main(["train", "oracle", *TINY_RUN, "--out", str(out)]) == 2
    _one_line(capsys, "before its first checkpoint", command="train")
    assert not (tmp_path / "runs").exists()                        # the folders this command made are gone
    existing = tmp_path / "mine"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep me")
    assert cli.main(["train", "oracle", *TINY_RUN, "--out", str(existing)]) == 2
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]     # model.json removed, notes kept


def test_data_that_would_not_fit_in_memory_is_refused(run, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "oracle", *TINY_RUN, "--n-train", "1000000000", "--out", str(out)]) == 2
    _one_line(capsys, "--n-train: 1000000000 images of 32 px are more than partlab holds", command="train")
    assert not out.exists()
    assert cli.main(["evaluate", "--run", str(run), "--n-test", "1000000000", "--device", "cpu"]) == 2
    _one_line(capsys, "more than partlab holds in memory", command="evaluate")


def test_train_out_below_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert cli.main(["train", "oracle", *TINY_RUN, "--out", str(tmp_path / "file" / "run")]) == 2
    _one_line(capsys, "is a file", command="train")


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "hostile", "folder", "not_partlab"])
def test_resume_from_an_unreadable_checkpoint_is_one_line(run, tmp_path, capsys, damage):
    import torch

    out = _copy_run(run, tmp_path)
    checkpoint = out / "last.pt"
    data = checkpoint.read_bytes()
    checkpoint.unlink()
    if damage == "truncated":
        checkpoint.write_bytes(data[:100])
    elif damage == "empty":
        checkpoint.write_bytes(b"")
    elif damage == "garbage":
        checkpoint.write_bytes(bytes(range(256)) * 8)
    elif damage == "hostile":
        torch.save({"format": "partlab.train/1", "payload": _Hostile()}, checkpoint)
    elif damage == "folder":
        checkpoint.mkdir()
    else:
        torch.save({"format": "partlab.train/1", "model": {}}, checkpoint)
    before = sorted(p.name for p in out.iterdir())
    assert cli.main(["train", "oracle", *TINY_RUN, "--steps", "3", "--out", str(out), "--resume"]) == 2
    err = _one_line(capsys, str(checkpoint), command="train")
    assert "weights_only" not in err and "--out" in err
    if damage != "folder":
        assert "delete it" in err
    if damage == "hostile":
        assert "posix.system" in err or "os.system" in err
    assert sorted(p.name for p in out.iterdir()) == before
    assert cli.main(["evaluate", "--run", str(out), "--n-test", "4", "--n-train", "4", "--device", "cpu"]) == 2
    err = _one_line(capsys, str(checkpoint), command="evaluate")
    assert "weights_only" not in err


class _Hostile:
    def __reduce__(self):
        import os

        return os.system, ("echo this should never run",)


# --- model.json ---------------------------------------------------------------------------------


def _edit_model_json(run, tmp_path, edit):
    out = _copy_run(run, tmp_path)
    meta = json.loads((out / "model.json").read_text())
    edit(meta)
    (out / "model.json").write_text(json.dumps(meta))
    return out


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["kwargs"].update(bogus=1), "unknown argument(s) ['bogus']"),
    (lambda m: m["kwargs"].update(base_channnels=8), "unknown argument(s) ['base_channnels']"),
    (lambda m: m.update(kwargs=[1, 2]), "kwargs must be a JSON object"),
    (lambda m: m["kwargs"].update(num_parts=10**9), "num_parts must be an integer in [1, 255]"),
    (lambda m: m["kwargs"].update(num_parts="six"), "num_parts must be an integer in [1, 255]"),
    (lambda m: m["kwargs"].pop("num_parts"), "num_parts must be an integer in [1, 255]"),
    (lambda m: m.update(size=10**5), "size must be an integer in [16, 4096], got 100000"),
    (lambda m: m.update(size=-5), "size must be an integer in [16, 4096], got -5"),
    (lambda m: m.pop("size"), "size must be an integer in [16, 4096], got None"),
    (lambda m: m["kwargs"].update(base_channels=10**6), "weights"),
    (lambda m: m["kwargs"].update(base_channels="wide"), "cannot build"),
    (lambda m: m["kwargs"].update(network="resnet"), "resnet"),
    (lambda m: m["kwargs"].update(depth=40), "cannot build"),
    (lambda m: m.update(method=["SCOPS"]), "names method ['SCOPS'], which partlab does not know"),
])
def test_a_bad_model_json_is_one_line_before_building_anything(run, tmp_path, capsys, edit, message):
    out = _edit_model_json(run, tmp_path, edit)
    assert cli.main(["evaluate", "--run", str(out), "--n-test", "4", "--n-train", "4", "--device", "cpu"]) == 2
    _one_line(capsys, message, str(out / "model.json"), command="evaluate")


@pytest.mark.parametrize("text", ["", "{\"format\": \"partlab.run/1\", \"meth", "[1, 2]"])
def test_a_truncated_model_json_is_one_line(run, tmp_path, capsys, text):
    out = _copy_run(run, tmp_path)
    (out / "model.json").write_text(text)
    assert cli.main(["segment", "--run", str(out), str(_image(tmp_path / "a.png")), "--out",
                     str(tmp_path / "seg")]) == 2
    _one_line(capsys, str(out / "model.json"), command="segment")
    assert not (tmp_path / "seg").exists()


# --- partlab evaluate --json --------------------------------------------------------------------


@pytest.mark.parametrize("target, message", [("folder", "is a folder"), ("below_a_file", "is a file")])
def test_evaluate_json_path_is_checked_before_evaluating(run, tmp_path, capsys, target, message):
    (tmp_path / "file").write_text("")
    path = tmp_path if target == "folder" else tmp_path / "file" / "metrics.json"
    assert cli.main(["evaluate", "--run", str(run), "--n-test", "4", "--n-train", "4", "--device", "cpu",
                     "--json", str(path)]) == 2
    captured = capsys.readouterr()
    assert "partlab evaluate: synthetic" not in captured.out                 # refused before evaluating
    assert "--json" in captured.err and message in captured.err and len(captured.err.strip().splitlines()) == 1


# --- partlab segment ----------------------------------------------------------------------------


def test_segment_refuses_a_decompression_bomb(run, tmp_path, capsys):
    bomb = _png(tmp_path / "bomb.png", 30000, 30000, 8, 2)
    middle = _png(tmp_path / "middle.png", 10000, 10000, 8, 2)               # PIL only warns at this size
    for image in (bomb, middle):
        assert cli.main(["segment", "--run", str(run), str(image), "--out", str(tmp_path / "seg")]) == 2
        _one_line(capsys, str(image), "megapixels", command="segment")
    assert not (tmp_path / "seg").exists()


def test_segment_out_naming_a_file_is_one_line(run, tmp_path, capsys):
    target = tmp_path / "result.png"
    target.write_bytes(b"")
    assert cli.main(["segment", "--run", str(run), str(_image(tmp_path / "a.png")), "--out", str(target)]) == 2
    _one_line(capsys, "--out", "is a file", command="segment")


def test_segment_same_file_names_get_distinct_outputs(run, tmp_path, capsys):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first, second = _image(tmp_path / "a" / "bird.png"), _image(tmp_path / "b" / "bird.png", size=(24, 36))
    third = _image(tmp_path / "a" / "bird.jpg", size=(20, 20))
    out = tmp_path / "seg"
    assert cli.main(["segment", "--run", str(run), str(first), str(second), str(third), "--out", str(out),
                     "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"{second} is written as bird-2" in printed and f"{third} is written as bird-3" in printed
    assert Image.open(out / "bird_parts.png").size == (40, 30)
    assert Image.open(out / "bird-2_parts.png").size == (24, 36)
    assert Image.open(out / "bird-3_labels.png").size == (20, 20)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}_{k}.png" for n in ("bird", "bird-2", "bird-3")
                                                           for k in ("parts", "labels"))


def test_read_image_scales_16_bit_grey_to_unit_range(tmp_path):
    ramp = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    image = segment_io.read_image(tmp_path / "grey16.png")
    assert image.shape == (30, 40, 3) and image.dtype == np.float32
    np.testing.assert_allclose(image[..., 0], ramp / 65535.0, atol=1e-6)
    assert np.array_equal(image[..., 0], image[..., 2])


def test_read_image_16_bit_rgb_and_8_bit_modes(tmp_path):
    rgb = np.zeros((30, 40, 3), np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 40000, 1000, 65535
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)
    image = segment_io.read_image(_png(tmp_path / "rgb16.png", 40, 30, 16, 2, rows))
    np.testing.assert_allclose(image[0, 0], [40000 / 65535, 1000 / 65535, 1.0], atol=1 / 255)
    Image.new("L", (8, 6), 51).save(tmp_path / "grey.png")
    np.testing.assert_allclose(segment_io.read_image(tmp_path / "grey.png"), 0.2, atol=1e-6)
    palette = Image.new("P", (8, 6))
    palette.putpalette([255, 0, 0] * 256)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_allclose(segment_io.read_image(tmp_path / "palette.png")[0, 0], [1, 0, 0])
    Image.new("RGBA", (8, 6), (0, 0, 0, 0)).save(tmp_path / "clear.png")     # transparent: over white
    np.testing.assert_allclose(segment_io.read_image(tmp_path / "clear.png"), 1.0)


def test_segment_a_16_bit_png_like_its_8_bit_version(run, tmp_path, capsys):
    ramp = np.linspace(0, 1, 40 * 30).reshape(30, 40)
    Image.fromarray((ramp * 65535).round().astype(np.uint16)).save(tmp_path / "deep.png")     # mode I;16
    Image.fromarray((ramp * 255).round().astype(np.uint8)).save(tmp_path / "flat.png")        # mode L
    out = tmp_path / "seg"
    assert cli.main(["segment", "--run", str(run), str(tmp_path / "deep.png"), str(tmp_path / "flat.png"),
                     "--out", str(out), "--device", "cpu"]) == 0
    deep, flat = (np.asarray(Image.open(out / f"{name}_parts.png")).astype(int) for name in ("deep", "flat"))
    assert deep.shape == (30, 40, 3) and np.mean(np.abs(deep - flat) > 2) < 0.05      # not all white


def test_segment_an_image_that_is_not_one_or_truncated(run, tmp_path, capsys):
    good = _image(tmp_path / "good.png")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:60])
    for image, message in ((truncated, "not an image partlab can read"), (tmp_path, "is a folder")):
        assert cli.main(["segment", "--run", str(run), str(good), str(image), "--out", str(tmp_path / "seg")]) == 2
        _one_line(capsys, message, command="segment")
    assert not (tmp_path / "seg").exists()


def test_missing_required_arguments_are_one_line(capsys):
    _refused_at_parse_time(["segment", "a.png"], capsys, "--run")
