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
