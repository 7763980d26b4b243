"""Feature extractors: the shipped stand-in, VGG19 loading from a local cache, recipes, the cache."""

import json

import pytest
import torch

from partlab import pretrained
from partlab.features import (
    STANDIN_FILE,
    StandinFeatures,
    StandinMissing,
    VGG19Features,
    build_standin,
    clear_cache,
    extract_features,
    get_extractor,
    standin_path,
    upsample_concat,
)
from partlab.features.extractors import vgg19_features_module


def test_the_stand_in_ships_with_its_training_record():
    path = standin_path()
    assert path.name == STANDIN_FILE and path.is_file(), "data/standin/ must ship the stand-in"
    assert path.stat().st_size < 4 * 2 ** 20, "the stand-in must stay a few MB at most"
    record = json.loads((path.parent / "TRAINING.json").read_text())
    assert record["command"] == "python -m partlab.features build-standin"
    assert "no part labels" in record["task"]
    assert record["loss_curve"][-1] < record["loss_curve"][0]


def test_stand_in_layers_shapes_and_recipes():
    ex = get_extractor("standin", device="cpu")
    images = torch.rand(2, 3, 64, 48)
    out = ex(images, layers=["relu1_1", "relu3_2", "relu5_2"])
    assert out["relu1_1"].shape == (2, 24, 64, 48)
    assert out["relu3_2"].shape == (2, 96, 16, 12) and out["relu5_2"].shape == (2, 96, 16, 12)
    assert ex.strides["relu5_2"] == 4 and ex.channels["relu4_2"] == 96
    for method in ("scops", "contrastive", "kmeans", "dff", "perceptual"):
        assert set(ex.layers_for(method)) <= set(ex.layers)
    assert all((t >= 0).all() for t in out.values())                       # ReLU outputs: NMF-ready
    assert not any(p.requires_grad for p in ex.parameters())
    assert "not ImageNet" in ex.description


def test_gradients_reach_the_input_through_the_frozen_network():
    ex = get_extractor("standin", device="cpu")
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    ex(x, layers=["relu2_1"])["relu2_1"].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_missing_stand_in_says_how_to_rebuild(tmp_path, monkeypatch):
    monkeypatch.setenv("PARTLAB_STANDIN", str(tmp_path / "nope.pt"))
    with pytest.raises(StandinMissing, match="build-standin"):
        StandinFeatures()
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    with pytest.raises(StandinMissing, match="could not read"):
        StandinFeatures(tmp_path / "bad.pt")


def test_build_standin_writes_a_loadable_file_and_record(tmp_path):
    out = tmp_path / "s.pt"
    record = build_standin(out, steps=2, images=16, batch_size=4, progress=False)
    assert out.is_file() and (tmp_path / "TRAINING.json").is_file()
    assert record["config"]["steps"] == 2 and len(record["loss_curve"]) >= 1
    ex = StandinFeatures(out)
    assert ex(torch.rand(1, 3, 32, 32), layers=["relu5_2"])["relu5_2"].shape == (1, 96, 8, 8)


def test_vgg19_offline_error_names_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    clear_cache()
    with pytest.raises(pretrained.PretrainedWeightsMissing, match="vgg19.*features='standin'"):
        get_extractor("vgg19", device="cpu")


def test_vgg19_loads_weights_from_the_local_cache(tmp_path, monkeypatch, capsys):
    """A fixture cache with random VGG19 weights under the torchvision file name."""
    from torchvision.models import VGG19_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    clear_cache()
    path = pretrained.weights_path(VGG19_Weights.IMAGENET1K_V1)
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in vgg19_features_module().state_dict().items()}
    torch.save(state, path)
    ex = get_extractor("auto", device="cpu")
    assert isinstance(ex, VGG19Features) and "vgg19" in capsys.readouterr().out
    out = ex(torch.rand(1, 3, 64, 64), layers=["relu3_2", "relu5_4"])
    assert out["relu3_2"].shape == (1, 256, 16, 16) and out["relu5_4"].shape == (1, 512, 4, 4)
    assert ex.layers_for("scops") == {"relu5_2": 1.0, "relu5_4": 1.0}
    clear_cache()


def test_auto_without_imagenet_weights_says_it_uses_the_stand_in(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ex = get_extractor("auto", device="cpu")
    assert ex.name == "standin"
    assert "using the offline stand-in" in capsys.readouterr().out


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="choices"):
        get_extractor("resnet")
    with pytest.raises(ValueError, match="no layer"):
        get_extractor("standin", device="cpu")(torch.rand(1, 3, 16, 16), layers=["relu5_4"])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        get_extractor("standin", device="cpu")(torch.rand(3, 16, 16))


def test_extract_features_upsamples_weights_and_caches():
    ex = get_extractor("rgb")
    images = torch.rand(5, 3, 8, 8)
    feats = extract_features(ex, images, layers={"rgb": 2.0}, size=16, batch_size=2)
    assert feats.shape == (5, 3, 16, 16)
    assert torch.allclose(feats, 2 * torch.nn.functional.interpolate(images, size=16, mode="bilinear",
                                                                     align_corners=False))
    assert extract_features(ex, images, layers={"rgb": 2.0}, size=16) is feats       # cached
    a = {"x": torch.ones(1, 1, 2, 2), "y": torch.ones(1, 2, 4, 4)}
    both = upsample_concat(a, {"x": 0.5, "y": 1.0})
    assert both.shape == (1, 3, 4, 4) and torch.allclose(both[:, 0], torch.full((1, 4, 4), 0.5))
