"""Contrastive part discovery as a method (partlab.methods.contrastive)."""

import math

import pytest
import torch

from partlab.data.extras import WithExtras
from partlab.methods import METHODS, ContrastiveParts
from partlab.methods.contrastive import CONTRASTIVE_ABLATIONS
from partlab.train import fit

K, C, S = 3, 8, 32
ALL_TERMS = {"f", "c", "v", "e", "fg"}
TINY = dict(base_channels=4, depth=2)


def _batch(b=2, h=S, w=S, seed=0):
    g = torch.Generator().manual_seed(seed)
    fg = torch.zeros(b, 1, h, w)
    fg[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    return {"image": torch.rand(b, 3, h, w, generator=g), "features": torch.rand(b, C, h // 4, w // 4, generator=g),
            "fg": fg, "saliency": 0.8 * fg + 0.1}


def _model(k=K, **kwargs):
    torch.manual_seed(0)
    return ContrastiveParts(k, feature_channels=C, **(TINY | kwargs))


class ItemDataset(torch.utils.data.Dataset):
    def __init__(self, n=16, seed=0):
        batch = _batch(n, seed=seed)
        self.images, self.fg = batch["image"], batch["fg"]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "fg": self.fg[i], "index": torch.tensor(i)}


def test_losses_have_every_term_and_reach_the_network():
    model = _model()
    out = model.losses(_batch())
    assert set(out) == ALL_TERMS | {"loss"}
    assert all(torch.isfinite(v) for v in out.values())
    expected = sum(model.weights[name] * out[name] for name in ALL_TERMS)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    out["loss"].backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_default_weights_are_the_papers():
    assert _model().weights == {"f": 5.0, "c": 2.3e3, "v": 30.0, "e": 5.7e3, "fg": 1.0}


@pytest.mark.parametrize("ablation", list(CONTRASTIVE_ABLATIONS))
def test_ablations_remove_their_term(ablation):
    from partlab.methods.registry import get_method

    out = _model(**get_method("contrastive").ablation(ablation)).losses(_batch())
    removed = set(CONTRASTIVE_ABLATIONS[ablation])                       # keyed by term name
    assert set(out) == (ALL_TERMS - removed) | {"loss"}


def test_forward_is_the_log_of_predict_and_the_background_comes_from_the_fg_head():
    model = _model()
    images = _batch()["image"]
    pred = model.predict(images)
    assert pred["probs"].shape == (2, K + 1, S, S)
    assert torch.allclose(pred["probs"].sum(1), torch.ones(2, S, S), atol=1e-5)
    assert torch.allclose(model(images).softmax(1), pred["probs"], atol=1e-5)
    fg_prob = pred["probs"][:, 1:].sum(1)
    assert torch.equal(pred["labels"] == 0, fg_prob < 0.5)
    # a given mask replaces the head; the parts inside it are the argmax over the K part channels
    mask = _batch()["fg"]
    given = model.predict(images, fg=mask)
    assert torch.equal(given["labels"] == 0, mask[:, 0] < 0.5)
    assert torch.allclose(given["probs"][:, 0], 1 - mask[:, 0])
    inside = mask[:, 0] > 0.5
    assert torch.equal(given["labels"][inside], (given["probs"][:, 1:].argmax(1) + 1)[inside])
    with pytest.raises(ValueError, match="fg must have shape"):
        model.predict(images, fg=torch.ones(2, 1, 8, 8))


def test_foreground_modes_and_clear_errors():
    batch = _batch()
    model_sal = _model(foreground="saliency")
    assert torch.isfinite(model_sal.losses(batch)["loss"])
    # the saliency is thresholded at 0.5: the same mask as fg here, so the same part terms
    torch.manual_seed(1)
    a = model_sal.losses(batch)
    model_fg = _model()
    torch.manual_seed(1)
    b = model_fg.losses(batch)
    assert a["f"].item() == pytest.approx(b["f"].item(), rel=1e-5) and a["v"].item() == pytest.approx(b["v"].item(), rel=1e-5)
    with pytest.raises(KeyError, match="batch\\['features'\\].*WithExtras"):
        _model().losses({k: v for k, v in batch.items() if k != "features"})
    with pytest.raises(KeyError, match="batch\\['fg'\\]"):
        _model().losses({k: v for k, v in batch.items() if k != "fg"})
    with pytest.raises(ValueError, match="batch_size >= 2"):
        _model().losses(_batch(b=1))
    assert "c" not in _model(lambda_c=0).losses(_batch(b=1))
    with pytest.raises(ValueError, match="foreground"):
        ContrastiveParts(3, feature_channels=C, foreground="rbd")
    with pytest.raises(ValueError, match="weights must be >= 0"):
        ContrastiveParts(3, feature_channels=C, lambda_c=-1)
    with pytest.raises(ValueError, match="channels"):
        _model().losses(dict(batch, features=torch.rand(2, C + 1, 8, 8)))


@pytest.mark.parametrize("case", ["constant", "empty_fg", "odd_size", "k1"])
def test_degenerate_inputs_give_finite_losses_and_gradients(case):
    k = 1 if case == "k1" else K
    model = _model(k)
    h, w = (33, 47) if case == "odd_size" else (S, S)
    batch = _batch(h=h, w=w)
    if case == "constant":
        batch["image"] = torch.full_like(batch["image"], 0.5)
        batch["features"] = torch.zeros_like(batch["features"])
    if case == "empty_fg":
        batch["fg"] = torch.zeros_like(batch["fg"])
    out = model.losses(batch)
    assert all(torch.isfinite(v) for v in out.values()), out
    out["loss"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    if case == "empty_fg":
        assert out["f"] == 0 and out["v"] == 0 and out["e"] == 0


def test_short_fit_trains_the_foreground_head_and_leaves_finite_weights():
    n = 16
    data = ItemDataset(n)
    train = WithExtras(data, features=torch.rand(n, C, 8, 8))
    model = _model()
    fit(model, train, max_steps=4, batch_size=4, lr=3e-3, progress=False, device="cpu", log_every=2)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert ALL_TERMS <= set(model.history[-1])
    # the foreground head alone learns the mask
    model = _model(lambda_f=0, lambda_c=0, lambda_v=0, lambda_e=0)
    fit(model, train, max_steps=30, batch_size=4, lr=3e-3, progress=False, device="cpu", log_every=10,
        optimizer="adam")
    assert model.history[-1]["fg"] < 0.8 * model.history[0]["fg"]


def test_nan_features_skip_the_step():
    n = 8
    features = torch.rand(n, C, 8, 8)
    features[0] = math.nan
    train = WithExtras(ItemDataset(n), features=features)
    model = _model()
    fit(model, train, max_steps=2, batch_size=4, progress=False, device="cpu", log_every=1)
    assert model.history[-1]["skipped"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_registered_for_run_folders():
    assert METHODS["ContrastiveParts"] is ContrastiveParts


def test_contrast_features_standardise_over_the_foreground_and_add_the_position_on_the_object():
    from partlab.baselines import position_features
    from partlab.methods.contrastive import contrast_features

    batch = _batch(3)
    fg = batch["fg"]
    feats = torch.nn.functional.interpolate(batch["features"], size=(S, S)) * fg
    assert contrast_features(feats, fg, "features") is feats                     # the paper's: as they are
    out = contrast_features(feats, fg, "standardised")
    inside = fg.expand_as(out).bool()
    values = out.permute(1, 0, 2, 3)[inside.permute(1, 0, 2, 3)].reshape(C, -1)
    torch.testing.assert_close(values.mean(1), torch.zeros(C), atol=1e-5, rtol=0)
    torch.testing.assert_close(values.pow(2).mean(1), torch.ones(C), atol=1e-4, rtol=0)
    assert (out[~inside] == 0).all()
    # a positive scale and a shift per channel change nothing
    affine = feats * torch.arange(1, C + 1.0)[None, :, None, None] + 5.0
    torch.testing.assert_close(contrast_features(affine * fg, fg, "standardised"), out, atol=1e-4, rtol=0)
    both = contrast_features(feats, fg, "standardised+position")
    assert both.shape == (3, C + 2, S, S)
    torch.testing.assert_close(both[:, :C], out)
    torch.testing.assert_close(both[:, C:], math.sqrt(C / 2) * position_features(fg, "object") * fg)
    with pytest.raises(ValueError, match="choose one of"):
        contrast_features(feats, fg, "whitened")
    with pytest.raises(ValueError, match="contrast_features='whitened'"):
        _model(contrast_features="whitened")


@pytest.mark.parametrize("mode", ["standardised", "standardised+position"])
def test_contrast_features_change_only_l_c_and_stay_finite_with_an_empty_foreground(mode):
    batch = _batch(3)
    batch["fg"][1] = 0                                                          # one image without an object
    torch.manual_seed(1)
    plain = _model().losses(batch)
    torch.manual_seed(1)
    model = _model(contrast_features=mode)
    out = model.losses(batch)
    assert all(torch.isfinite(v) for v in out.values())
    assert out["c"].item() != pytest.approx(plain["c"].item())
    for term in ("f", "v", "fg"):
        assert out[term].item() == pytest.approx(plain[term].item(), rel=1e-6), term
    out["loss"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
