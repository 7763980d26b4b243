"""SCOPS as a method (partlab.methods.scops) and the WithExtras dataset wrapper."""

import math

import pytest
import torch
from torch import nn

from partlab.data.extras import WithExtras
from partlab.features import FeatureExtractor, RGBFeatures, extract_features, upsample_concat
from partlab.methods import SCOPS
from partlab.methods.registry import get_method
from partlab.methods.scops import ABLATIONS, postprocess_labels
from partlab.train import TrainConfig, fit

K, C, S = 3, 8, 32
ALL_TERMS = {"con", "eqv", "lmeqv", "sc", "orthonormal"}
TINY = dict(base_channels=4, depth=2)


class TinyExtractor(FeatureExtractor):
    """A frozen two-layer CNN: layer "a" (4 ch, stride 1) and "b" (4 ch, stride 4); SCOPS recipe a + 0.5 b."""

    name = "tiny"
    layers = ("a", "b")
    channels = {"a": 4, "b": 4}
    strides = {"a": 1, "b": 4}

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv_a = nn.Conv2d(3, 4, 3, padding=1)
        self.conv_b = nn.Conv2d(4, 4, 3, stride=4, padding=1)
        self.requires_grad_(False)
        self.recipes = {"scops": {"a": 1.0, "b": 0.5}}

    def forward(self, images, layers=None):
        a = self.conv_a(images).relu()
        out = {"a": a, "b": self.conv_b(a).relu()}
        return {name: out[name] for name in self._check_layers(layers)}


def _batch(b=2, h=S, w=S, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.rand(b, 3, h, w, generator=g),
            "features": torch.rand(b, C, h // 4, w // 4, generator=g),
            "saliency": torch.rand(b, 1, h, w, generator=g),
            "fg": (torch.rand(b, 1, h, w, generator=g) > 0.5).float()}


def _model(k=K, **kwargs):
    torch.manual_seed(0)
    return SCOPS(k, feature_channels=C, **(TINY | kwargs))


class ItemDataset(torch.utils.data.Dataset):
    def __init__(self, n=16, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, S, S, generator=g)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "index": torch.tensor(i)}


# --- the losses ---------------------------------------------------------------------------------


def test_losses_has_every_term_and_a_finite_weighted_total():
    model = _model()
    out = model.losses(_batch())
    assert set(out) == ALL_TERMS | {"loss"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in out.values())
    assert not any(out[t].requires_grad for t in ALL_TERMS)           # terms are detached for logging
    total = sum(model.weights[t] * out[t] for t in ALL_TERMS)
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-5)


def test_default_weights_are_the_originals_with_eqv_in_partlab_units():
    w = SCOPS(8, feature_channels=C, **TINY).weights
    assert w == {"con": pytest.approx(10 / 6), "eqv": pytest.approx(1e3 / 9), "lmeqv": 100.0, "sc": 1e4,
                 "orthonormal": 0.1}


def test_default_concentration_weight_reproduces_the_originals_effective_weight():
    # the original: 10 * (sum over images and parts of the variance) / B / B, at its batch of 6
    from partlab.losses import concentration_loss

    parts = torch.rand(6, 8, 16, 16, generator=torch.Generator().manual_seed(0))
    per_image = torch.stack([concentration_loss(parts[i:i + 1]) for i in range(6)])   # (B,)
    original = 10.0 * per_image.sum() / 6 / 6
    ours = SCOPS(8, feature_channels=C, **TINY).weights["con"] * concentration_loss(parts)
    assert ours.item() == pytest.approx(original.item(), rel=1e-6)


def test_gradients_reach_the_network_and_the_basis():
    model = _model()
    model.losses(_batch())["loss"].backward()
    assert model.basis.grad is not None and model.basis.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.network.parameters())
    assert model.network.head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_disabled_terms_are_absent_and_not_computed(ablation, monkeypatch):
    import partlab.methods.scops as scops

    calls = []
    for name in ("concentration_loss", "equivariance_loss", "equivariance_kl_loss", "equivariance_center_loss",
                 "semantic_consistency_loss", "orthonormal_loss", "random_warp", "color_jitter"):
        original = getattr(scops, name)
        monkeypatch.setattr(scops, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    model = _model(**get_method("scops").ablation(ablation))
    batch = _batch()
    if ablation == "no_sc":
        del batch["features"], batch["saliency"]                     # not needed without L_sc
        assert model.basis is None
    out = model.losses(batch)
    off = {t for t in ALL_TERMS if model.weights[t] == 0}
    assert set(out) == (ALL_TERMS - off) | {"loss"}
    if "con" in off:
        assert "concentration_loss" not in calls
    if {"eqv", "lmeqv"} <= off:
        assert not {"random_warp", "color_jitter", "equivariance_loss"} & set(calls)
    if "sc" in off:
        assert "semantic_consistency_loss" not in calls and "orthonormal_loss" not in calls
    assert torch.isfinite(out["loss"])


def test_one_equivariance_term_alone_uses_its_own_function():
    assert set(_model(lambda_lmeqv=0).losses(_batch())) == ALL_TERMS - {"lmeqv"} | {"loss"}
    assert set(_model(lambda_eqv=0).losses(_batch())) == ALL_TERMS - {"eqv"} | {"loss"}


def test_saliency_modes():
    batch = _batch()
    torch.manual_seed(3)
    with_batch = _model(lambda_con=0, lambda_eqv=0, lambda_lmeqv=0).losses(batch)["sc"]
    torch.manual_seed(3)
    none = _model(saliency="none", lambda_con=0, lambda_eqv=0, lambda_lmeqv=0).losses(batch)["sc"]
    oracle = _model(saliency="oracle", lambda_con=0, lambda_eqv=0, lambda_lmeqv=0).losses(batch)["sc"]
    assert len({with_batch.item(), none.item(), oracle.item()}) == 3
    # "oracle" with fg == saliency map is the same loss as "batch"
    same = dict(batch, fg=batch["saliency"])
    assert _model(saliency="oracle", lambda_con=0, lambda_eqv=0, lambda_lmeqv=0).losses(same)["sc"].item() == \
        pytest.approx(with_batch.item())
    image = torch.full((1, 3, S, S), 0.2)
    image[:, :, 10:22, 10:22] = 0.9
    rbd = _model(saliency="rbd", lambda_con=0, lambda_eqv=0, lambda_lmeqv=0)
    assert torch.isfinite(rbd.losses({"image": image, "features": torch.rand(1, C, 8, 8)})["sc"])
    with pytest.raises(ValueError, match="saliency"):
        SCOPS(K, feature_channels=C, saliency="sometimes", **TINY)


def test_missing_features_or_saliency_say_how_to_provide_them():
    batch = _batch()
    del batch["features"]
    with pytest.raises(KeyError, match="WithExtras.*extract_features.*features=extractor"):
        _model().losses(batch)
    batch = _batch()
    del batch["saliency"]
    with pytest.raises(KeyError, match="cached_saliency"):
        _model().losses(batch)
    with pytest.raises(ValueError, match="feature_channels"):
        SCOPS(K, **TINY)
    with pytest.raises(ValueError, match="channels"):
        _model().losses(dict(_batch(), features=torch.rand(2, C + 1, 8, 8)))


def test_features_from_an_extractor_equal_precomputed_ones_and_are_not_parameters():
    extractor = TinyExtractor()
    torch.manual_seed(0)
    online = SCOPS(K, features=extractor, **TINY)
    assert online.feature_channels == 8 and online.extractor is extractor
    assert not any(k.startswith(("_extractor", "extractor", "conv_")) for k in online.state_dict())
    assert not any(p is q for p in online.parameters() for q in extractor.parameters())
    before = [p.clone() for p in extractor.parameters()]

    batch = _batch()
    precomputed = extract_features(extractor, batch["image"], extractor.layers_for("scops"), size=(S, S),
                                   cache=False)
    torch.manual_seed(0)
    offline = SCOPS(K, feature_channels=8, **TINY)
    offline.load_state_dict(online.state_dict())
    torch.manual_seed(5)
    a = online.losses(batch)
    torch.manual_seed(5)
    b = offline.losses(dict(batch, features=precomputed))
    for term in ALL_TERMS | {"loss"}:
        assert a[term].item() == pytest.approx(b[term].item(), rel=1e-5), term

    a["loss"].backward()
    assert all(p.grad is None for p in extractor.parameters())
    fit(online, WithExtras(ItemDataset(8), saliency=torch.ones(8, 1, S, S)), max_steps=2, batch_size=4,
        progress=False, device="cpu")
    assert all(torch.equal(p, q) for p, q in zip(extractor.parameters(), before))
    with pytest.raises(ValueError, match="channels"):
        SCOPS(K, features=extractor, feature_channels=5, **TINY)


def test_real_extractor_class_works_on_the_fly():
    model = SCOPS(K, features=RGBFeatures(), **TINY)
    assert model.feature_channels == 3
    assert torch.isfinite(model.losses(_batch())["loss"])


# --- degenerate inputs --------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["constant", "all_background", "empty_part", "odd_size", "k1"])
def test_degenerate_inputs_give_finite_losses_and_gradients(case):
    k = 1 if case == "k1" else K
    model = _model(k)
    h, w = (33, 47) if case == "odd_size" else (S, S)
    batch = _batch(h=h, w=w)
    if case == "constant":
        batch["image"] = torch.full_like(batch["image"], 0.5)
        batch["features"] = torch.zeros_like(batch["features"])
        batch["saliency"] = torch.zeros_like(batch["saliency"])
    if case in ("all_background", "empty_part"):
        with torch.no_grad():                  # a head that puts (almost) everything on background / part 1
            model.network.head.weight.zero_()
            model.network.head.bias.copy_(torch.tensor([80.0, -80.0, -80.0, -80.0]) if case == "all_background"
                                          else torch.tensor([0.0, 0.0, -200.0, 0.0]))
    out = model.losses(batch)
    assert all(torch.isfinite(v) for v in out.values()), out
    out["loss"].backward()
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_zero_basis_row_is_finite():
    model = _model()
    with torch.no_grad():
        model.basis[0] = -1.0                 # relu(w_0) = 0
    out = model.losses(_batch())
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.isfinite(model.basis.grad).all()


def test_k1_predict_and_centers():
    model = _model(1)
    images = torch.rand(2, 3, 20, 24)
    pred = model.predict(images)
    assert pred["probs"].shape == (2, 2, 20, 24) and pred["labels"].shape == (2, 20, 24)
    assert model.centers(images).shape == (2, 1, 2)


# --- optimiser ----------------------------------------------------------------------------------


def test_param_groups_basis_sgd_and_clips():
    model = _model()
    groups = model.param_groups(TrainConfig(lr=1e-3))
    assert len(groups) == 2
    net, basis = groups
    assert net["clip"] == 5.0 and "lr" not in net and "optimizer" not in net
    assert {id(p) for p in net["params"]} == {id(p) for p in model.network.parameters()}
    assert basis["params"] == [model.basis]
    assert basis["optimizer"] == "sgd" and basis["lr"] == 0.01 and basis["momentum"] == 0.9
    assert basis["weight_decay"] == 5e-4 and basis["clip"] == 5.0
    custom = SCOPS(K, feature_channels=C, basis_lr=0.1, basis_clip=1.0, clip=2.0, **TINY)
    net, basis = custom.param_groups(TrainConfig(lr=1e-3))
    assert basis["lr"] == 0.1 and basis["clip"] == 1.0 and net["clip"] == 2.0
    assert len(_model(**get_method("scops").ablation("no_sc")).param_groups(TrainConfig())) == 1


def test_param_groups_deeplab_head_10x():
    model = SCOPS(K, network="deeplab", feature_channels=C)
    backbone, head, basis = model.param_groups(TrainConfig(lr=1e-5))
    assert "lr" not in backbone and head["lr"] == pytest.approx(1e-4) and basis["lr"] == 0.01
    assert {id(p) for p in head["params"]} == {id(p) for p in model.network.classifier.parameters()}


def test_short_fit_leaves_finite_weights_and_trains_basis():
    n = 16
    data = ItemDataset(n)
    train = WithExtras(data, features=torch.rand(n, C, 8, 8), saliency=torch.rand(n, 1, S, S))
    model = _model()
    basis0 = model.basis.detach().clone()
    fit(model, train, max_steps=5, batch_size=4, lr=1e-3, progress=False, device="cpu", log_every=1)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.basis.detach(), basis0)
    assert len(model.history) == 5 and all(r["skipped"] == 0 for r in model.history)
    assert ALL_TERMS <= set(model.history[-1])


def test_nan_features_skip_the_step_and_never_reach_the_weights():
    n = 8
    features = torch.rand(n, C, 8, 8)
    features[0] = math.nan                              # one corrupt item in the collection
    train = WithExtras(ItemDataset(n), features=features, saliency=torch.rand(n, 1, S, S))
    model = _model()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    batch = {"image": torch.stack([train[i]["image"] for i in range(4)]), "features": features[:4],
             "saliency": torch.rand(4, 1, S, S)}
    out = model.losses(batch)
    assert math.isnan(out["sc"]) and math.isnan(out["loss"].item())
    assert torch.isfinite(out["con"]) and torch.isfinite(out["orthonormal"])  # the other terms stay finite
    # one epoch = two batches of 4: exactly one holds the corrupt item and is skipped, the other trains
    fit(model, train, max_steps=2, batch_size=4, lr=1e-3, progress=False, device="cpu", log_every=1)
    assert model.history[-1]["skipped"] == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not torch.equal(model.basis.detach(), before["basis"])              # the clean step did train
    # every step corrupt: a clear error after max_nonfinite_steps, weights those of the last finite step
    model = _model()
    train = WithExtras(ItemDataset(n), features=torch.full((n, C, 8, 8), math.nan), saliency=torch.rand(n, 1, S, S))
    with pytest.raises(RuntimeError, match="consecutive non-finite steps.*sc"):
        fit(model, train, max_steps=10, batch_size=4, max_nonfinite_steps=3, progress=False, device="cpu")
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- inference ----------------------------------------------------------------------------------


def test_postprocess_normalises_parts_by_their_max_against_background_0_1():
    probs = torch.zeros(1, 3, 1, 3)
    probs[0, :, 0, 0] = torch.tensor([0.90, 0.08, 0.02])   # part 2 is weak but at its own maximum
    probs[0, :, 0, 1] = torch.tensor([0.10, 0.80, 0.10])
    probs[0, :, 0, 2] = torch.tensor([0.99, 0.009, 0.001])
    # part 1: max 0.8 -> normalised (0.1, 1, 0.011); part 2: max 0.1 -> (0.2, 1, 0.01)
    labels = postprocess_labels(probs)
    assert labels.tolist() == [[[2, 1, 0]]]
    assert probs.argmax(1).tolist() == [[[0, 1, 0]]]        # plain argmax would say background


class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, images):
        return self.logits.expand(images.shape[0], -1, -1, -1) + 0 * self.dummy


def test_predict_applies_the_post_processing_and_returns_softmax():
    logits = torch.zeros(1, 3, 16, 16)
    logits[0, 0] = 5.0                                      # background dominates everywhere
    logits[0, 1, 2:5, 2:5] = 3.0                            # part 1: small absolute prob, peak in the corner
    logits[0, 2, 10:13, 10:13] = 4.0                        # elsewhere both parts are < 0.1 of their peak
    model = _model(2)
    model.network = FixedLogits(logits)
    pred = model.predict(torch.rand(2, 3, 16, 16))
    assert torch.allclose(pred["probs"], logits.softmax(1).expand(2, -1, -1, -1))
    assert (pred["probs"].argmax(1) == 0).all()
    labels = pred["labels"]
    assert (labels[:, 2:5, 2:5] == 1).all() and (labels[:, 10:13, 10:13] == 2).all()
    assert (labels[:, 7, 7] == 0).all()
    centres = model.centers(torch.rand(1, 3, 16, 16))       # expectation of softmax[:, 1:], no eps
    assert centres.shape == (1, 2, 2) and centres[0, 0, 0] < 0 < centres[0, 1, 0]


def test_input_checks():
    model = _model()
    with pytest.raises(ValueError, match="3, H, W"):
        model.losses({"image": torch.rand(2, 1, S, S)})
    with pytest.raises(ValueError, match="3, H, W"):
        model.predict(torch.rand(3, S, S))
    with pytest.raises(ValueError, match="features"):
        SCOPS(K, features="vgg19", feature_channels=C, **TINY)
    with pytest.raises(ValueError, match=">= 0"):
        SCOPS(K, feature_channels=C, lambda_sc=-1.0, **TINY)


# --- WithExtras ---------------------------------------------------------------------------------


def test_with_extras_adds_row_i_to_item_i():
    data = ItemDataset(5)
    extras = WithExtras(data, features=torch.arange(5.0)[:, None], saliency=torch.zeros(5, 1, S, S))
    assert len(extras) == 5
    item = extras[3]
    assert item["features"].item() == 3.0 and torch.equal(item["image"], data[3]["image"])
    assert extras[-1]["features"].item() == 4.0
    with pytest.raises(IndexError):
        extras[5]
    with pytest.raises(ValueError, match="rows"):
        WithExtras(data, features=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="already have"):
        WithExtras(data, image=torch.zeros(5, 3))
    assert extras.images is data.images                      # attributes of the wrapped dataset


def test_with_extras_features_match_on_the_fly_upsampling():
    extractor = TinyExtractor()
    data = ItemDataset(4)
    feats = extract_features(extractor, data, extractor.layers_for("scops"), cache=False)
    batch_images = torch.stack([data[i]["image"] for i in range(4)])
    direct = upsample_concat(extractor(batch_images), extractor.layers_for("scops"))
    assert torch.allclose(WithExtras(data, features=feats)[2]["features"], direct[2], atol=1e-6)
    assert not math.isnan(feats.sum().item())


# --- partlab's addition: L_sc also rebuilds the position on the object -------------------------------


def test_semantic_features_append_the_position_on_the_object_in_non_negative_halves():
    from partlab.methods.scops import semantic_features

    feats = torch.rand(2, C, 8, 8) - 0.25                                        # some negative values
    mask = torch.zeros(2, 1, 32, 32)
    mask[0, :, 8:24, 8:24] = 1.0                                                  # a square in the middle
    mask[1, :, 0:16, 16:32] = 1.0                                                 # one in the top right
    assert semantic_features(feats, mask, "features") is feats                    # the paper's: as they are
    out = semantic_features(feats, mask, "features+position")
    assert out.shape == (2, C + 4, 8, 8) and bool((out >= 0).all())
    torch.testing.assert_close(out[:, :C], feats.relu())
    inside = torch.nn.functional.interpolate(mask, size=(8, 8), mode="area") >= 0.5
    pos = out[:, C:]
    assert bool((pos * ~inside == 0).all())                                       # zero off the object
    # x+ and x- never both positive; each mirrors the other across the object's centre (the same for y)
    assert bool((pos[:, 0] * pos[:, 1] == 0).all()) and bool((pos[:, 2] * pos[:, 3] == 0).all())
    torch.testing.assert_close(pos[0, 0], pos[0, 1].flip(-1))
    torch.testing.assert_close(pos[0, 2], pos[0, 3].flip(-2))
    torch.testing.assert_close(pos[0], pos[1].roll((2, -2), dims=(-2, -1)))     # translated object, same channels
    # scale: position energy on the object is C / 2 times the mean squared feature there (by hand)
    rms2 = (feats.relu() ** 2 * inside).sum() / (inside.sum() * C)
    energy = (pos ** 2).sum(1, keepdim=True)[inside].mean()
    assert energy.item() == pytest.approx((rms2 * C / 2).item(), rel=1e-4)
    # a larger copy of every feature scales the position channels with it: nothing else changes
    torch.testing.assert_close(semantic_features(3 * feats, mask, "features+position"), 3 * out)


def test_semantic_features_option_widens_the_basis_trains_and_checks_its_input():
    model = _model(semantic_features="features+position")
    assert model.basis.shape == (K, C + 4)
    out = model.losses(_batch())
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    assert model.basis.grad is not None and torch.isfinite(model.basis.grad).all()
    assert model.basis.grad[:, C:].abs().sum() > 0                                # the position rows learn
    empty = _batch()
    empty["saliency"] = torch.zeros_like(empty["saliency"])                        # no object anywhere
    assert all(torch.isfinite(v) for v in _model(semantic_features="features+position").losses(empty).values())
    with pytest.raises(ValueError, match="semantic_features='whitened'"):
        _model(semantic_features="whitened")
    with pytest.raises(ValueError, match="needs a saliency mask"):
        _model(semantic_features="features+position", saliency="none")
