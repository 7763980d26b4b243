import os
from pathlib import Path

import numpy as np
import pytest
import torch

from partlab import utils


def test_device_auto_and_cpu():
    assert utils.device("cpu") == torch.device("cpu")
    assert utils.device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else None
    if expected:
        assert utils.device("auto").type == "cuda"
    elif not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        assert utils.device("auto") == torch.device("cpu")
        assert utils.device(None) == torch.device("cpu")


def test_device_bad_spec_names_choices():
    with pytest.raises(ValueError, match="device='tpu'.*auto"):
        utils.device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_absent_is_clear():
    with pytest.raises(ValueError, match="CUDA is not available"):
        utils.device("cuda")


def test_describe_device_says_cpu():
    assert utils.describe_device("cpu").startswith("cpu (")


def test_seed_everything_reproducible():
    utils.seed_everything(3)
    a = (torch.rand(3), np.random.rand(3))
    utils.seed_everything(3)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match="seed"):
        utils.seed_everything(-1)


def test_progress_disabled_by_env(monkeypatch, capsys):
    monkeypatch.setenv("PARTLAB_PROGRESS", "0")
    assert not utils.progress_enabled()
    assert list(utils.progress(range(5), desc="quiet")) == [0, 1, 2, 3, 4]
    assert "quiet" not in capsys.readouterr().err
    monkeypatch.setenv("PARTLAB_PROGRESS", "1")
    assert utils.progress_enabled()


def test_atomic_write_text_creates_folder_and_writes(tmp_path):
    path = tmp_path / "new" / "folder" / "scores.json"
    assert utils.atomic_write_text(path, '{"nmi": 0.5}\n') == path
    assert path.read_text() == '{"nmi": 0.5}\n'
    assert sorted(p.name for p in path.parent.iterdir()) == ["scores.json"]          # no temporary file left


def test_atomic_write_failure_keeps_the_original(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("old\n")

    def half_then_fail(handle):
        handle.write("half a fi")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        utils.atomic_write(path, half_then_fail)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.csv"]


def test_atomic_write_bytes_and_torch_save(tmp_path):
    utils.atomic_write(tmp_path / "raw.bin", lambda handle: handle.write(b"\x00\x01"), mode="wb")
    assert (tmp_path / "raw.bin").read_bytes() == b"\x00\x01"
    utils.atomic_save({"x": torch.arange(3)}, tmp_path / "last.pt")
    assert torch.equal(torch.load(tmp_path / "last.pt", weights_only=True)["x"], torch.arange(3))
    with pytest.raises(ValueError, match="mode='a'"):
        utils.atomic_write(tmp_path / "log.txt", lambda handle: None, mode="a")


def test_atomic_write_temporary_names_do_not_collide(tmp_path, monkeypatch):
    seen = []

    def record(handle):
        seen.append(Path(handle.name))
        assert seen[-1].parent == tmp_path and seen[-1].name.startswith("out.json.") and seen[-1].suffix == ".tmp"

    utils.atomic_write(tmp_path / "out.json", record)
    utils.atomic_write(tmp_path / "out.json", record)
    assert seen[0] != seen[1]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere")
def test_atomic_write_unwritable_folder_is_clear(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "model.json").write_text("old")
    locked.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="cannot write .*model.json: no permission to write in .*locked"):
            utils.atomic_write_text(locked / "model.json", "new")
        assert (locked / "model.json").read_text() == "old"
    finally:
        locked.chmod(0o755)


def test_atomic_write_below_a_file_fails_before_writing(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError):
        utils.atomic_write_text(tmp_path / "file" / "scores.json", "{}")


def test_peak_memory_reports_this_process_in_gib():
    text = utils.peak_memory("cpu")
    assert text.startswith("peak RSS ") and text.endswith(" GiB")
    assert 0.01 < float(text.split()[2]) < 1024          # a Python process with torch holds tens of MiB at least
