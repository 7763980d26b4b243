"""Semi-supervised fine-tuning (MaskContrast supplementary, Sec. 5): the network surgery, the label subsets,
the recipe's defaults (BatchNorm frozen at 1-2 % of the labels) and a toy problem a few steps can learn."""

import math

import pytest
import torch
from torch import nn

from partlab import finetune
from partlab.finetune import (finetune_miou, finetune_network, finetune_settings, finetune_table, label_subset,
                              scratch_architecture)
from partlab.methods.maskcontrast import MaskContrast

NET = {"base_channels": 8, "depth": 2}
COLOURS = torch.tensor([[0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])


def _model(seed=0):
    torch.manual_seed(seed)
    return MaskContrast(4, **NET)


def colour_squares(n, size=32, seed=0):
    """Grey images with one square of each class's colour (class k = COLOURS[k]), a little noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, size, size, dtype=torch.long)                          # (N, H, W)
    for i in range(n):
        for k in range(1, 5):
            side = int(torch.randint(6, 12, (1,), generator=g))
            y, x = torch.randint(0, size - side, (2,), generator=g).tolist()
            labels[i, y:y + side, x:x + side] = k
    images = COLOURS[labels].permute(0, 3, 1, 2) + 0.05 * torch.randn(n, 3, size, size, generator=g)
    return {"image": images.clamp(0, 1), "semantic": labels}


# ------------------------------------------------------------------------------ finetune_network

def test_finetune_network_replaces_only_the_last_conv_and_copies_the_rest():
    model = _model()
    body = model.network.body
    net = finetune_network(model, 4)
    assert isinstance(net.head, nn.Conv2d) and net.head.out_channels == 5 and net.head.in_channels == 8
    assert net.head.kernel_size == (1, 1)
    original = dict(body.named_parameters())
    copied = dict(net.named_parameters())
    assert set(copied) == set(original)
    for name, p in copied.items():
        if name.startswith("head."):
            continue
        assert torch.equal(p, original[name]), name                              # same weights ...
        assert p.data_ptr() != original[name].data_ptr(), name                   # ... in their own storage
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 5, 32, 32)
    before = {name: p.clone() for name, p in model.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    # the MaskContrastNet itself works too, the same way
    from_net = finetune_network(model.network, 4)
    assert from_net.head.out_channels == 5
    assert torch.equal(from_net.down[0][0].weight, body.down[0][0].weight)


def test_from_scratch_has_the_same_architecture_and_shares_nothing():
    model = _model()
    pretrained = finetune_network(model, 4)
    scratch = finetune_network(None, 4, network="unet", **NET)
    shapes = {name: p.shape for name, p in pretrained.named_parameters()}
    assert {name: p.shape for name, p in scratch.named_parameters()} == shapes
    ours = {p.data_ptr() for p in model.parameters()}
    assert not ours & {p.data_ptr() for p in scratch.parameters()}
    assert not torch.equal(scratch.down[0][0].weight, model.network.body.down[0][0].weight)


def test_finetune_network_bad_input():
    with pytest.raises(ValueError, match="num_classes"):
        finetune_network(_model(), 0)
    with pytest.raises(ValueError, match="MaskContrast"):
        finetune_network("maskcontrast", 4)
    with pytest.raises(ValueError, match="1x1 conv"):
        finetune_network(nn.Sequential(nn.Conv2d(3, 4, 3)), 4)
    with pytest.raises(ValueError, match="unknown network"):
        finetune_network(None, 4, network="resnet")


# ------------------------------------------------------------------------------ label_subset

def test_label_subset_sizes_determinism_and_nesting():
    for n, fraction, k in ((100, 0.01, 1), (100, 0.05, 5), (100, 0.125, 12), (100, 1.0, 100), (10, 0.001, 1),
                           (16, 0.02, 1)):
        idx = label_subset(n, fraction, seed=3)
        assert idx.dtype == torch.long and idx.shape == (k,)
        assert len(idx.unique()) == k and int(idx.min()) >= 0 and int(idx.max()) < n
        assert torch.equal(idx, idx.sort().values)
    assert torch.equal(label_subset(100, 0.3, 7), label_subset(100, 0.3, 7))
    assert not torch.equal(label_subset(100, 0.3, 7), label_subset(100, 0.3, 8))
    small, large = set(label_subset(100, 0.05, 1).tolist()), set(label_subset(100, 0.5, 1).tolist())
    assert small <= large


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan"), True, "0.1"])
def test_label_subset_rejects_fractions_outside_0_1(fraction):
    with pytest.raises(ValueError, match="fraction"):
        label_subset(10, fraction, 0)


def test_label_subset_rejects_empty_sets():
    with pytest.raises(ValueError, match="n must"):
        label_subset(0, 0.5, 0)


# ------------------------------------------------------------------------------ finetune_miou

def test_finetune_learns_a_toy_problem_well_above_the_background_predictor():
    train, test = colour_squares(16, seed=0), colour_squares(8, seed=1)
    background = float((test["semantic"] == 0).float().mean())
    constant = background / 5                       # all-background: IoU = its share for class 0, 0 elsewhere
    for pretrained in (_model(), None):
        out = finetune_miou(pretrained, train, test, 4, steps=40, lr=0.2, network_kwargs=NET)
        assert {"miou", "iou", "acc", "n_labelled", "fraction", "steps"} <= set(out)
        assert out["n_labelled"] == 16 and out["fraction"] == 1.0 and out["steps"] == 40
        assert len(out["iou"]) == 5 and all(math.isfinite(v) for v in out["iou"])
        assert all(math.isfinite(out[key]) for key in ("miou", "acc", "loss"))
        assert out["miou"] > constant + 0.3 and out["acc"] > background, (pretrained is None, out)
        assert abs(out["miou"] - sum(out["iou"]) / 5) < 1e-9


def test_finetune_is_deterministic_and_leaves_the_global_rng_alone():
    train, test = colour_squares(8, seed=0), colour_squares(4, seed=1)
    model = _model()
    state = torch.random.get_rng_state()
    first = finetune_miou(model, train, test, 4, fraction=0.5, steps=5, batch_size=2, lr=0.05, seed=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert finetune_miou(model, train, test, 4, fraction=0.5, steps=5, batch_size=2, lr=0.05, seed=4) == first
    assert first["n_labelled"] == 4


def test_default_learning_rates_follow_the_paper():
    train, test = colour_squares(16, seed=0), colour_squares(2, seed=1)
    model = _model()
    low = finetune_miou(model, train, test, 4, fraction=0.01, steps=1)
    assert (low["lr"], low["head_lr"], low["freeze_bn"], low["n_labelled"]) == (0.001, 0.1, True, 1)
    high = finetune_miou(model, train, test, 4, fraction=0.05, steps=1)
    assert (high["lr"], high["head_lr"], high["freeze_bn"]) == (0.004, 0.004, False)
    scratch = finetune_miou(None, train, test, 4, fraction=0.01, steps=1, network_kwargs=NET)
    assert (scratch["lr"], scratch["head_lr"], scratch["freeze_bn"]) == (0.004, 0.004, False)
    custom = finetune_miou(model, train, test, 4, fraction=0.01, steps=1, lr=0.05, freeze_bn=False)
    assert (custom["lr"], custom["head_lr"], custom["freeze_bn"]) == (0.05, 0.1, False)


def test_quick_protocol_gives_the_rates_and_steps_chosen_on_validation():
    train, test = colour_squares(16, seed=0), colour_squares(2, seed=1)
    model = _model()
    expected = {(True, 0.01): (0.001, 0.1, True, 200), (True, 0.05): (0.02, 0.02, False, 200),
                (True, 1.0): (0.02, 0.02, False, 1000), (False, 0.01): (0.004, 0.004, False, 200),
                (False, 0.05): (0.1, 0.1, False, 200), (False, 1.0): (0.1, 0.1, False, 1000)}
    for (pretrained, fraction), (lr, head_lr, freeze_bn, steps) in expected.items():
        assert finetune_settings(pretrained, fraction, "quick") == {"lr": lr, "head_lr": head_lr,
                                                                   "freeze_bn": freeze_bn, "steps": steps}
    assert finetune_settings(True, 0.5, "quick") == finetune_settings(True, 0.05, "quick")   # "some" labels
    assert finetune_settings(True, 0.05, "paper")["steps"] == 200
    out = finetune_miou(None, train, test, 4, fraction=0.05, steps=1, network_kwargs=NET, protocol="quick")
    assert (out["lr"], out["head_lr"], out["steps"]) == (0.1, 0.1, 1)          # an explicit value wins
    out = finetune_miou(model, train, test, 4, fraction=0.01, steps=1, lr=0.05, protocol="quick")
    assert (out["lr"], out["head_lr"], out["freeze_bn"]) == (0.05, 0.1, True)
    with pytest.raises(ValueError, match="protocol"):
        finetune_miou(model, train, test, 4, steps=1, protocol="fast")


def test_batchnorm_stays_in_eval_mode_at_small_fractions():
    model = _model()
    body = model.network.body
    body.down[0][1] = nn.BatchNorm2d(8)                    # a BatchNorm in place of the first GroupNorm
    modes = []
    body.down[0][1].register_forward_hook(lambda module, inputs, output: modes.append(module.training))
    stats = body.down[0][1].running_mean.clone()
    train, test = colour_squares(16, seed=0), colour_squares(2, seed=1)

    def training_modes(**kwargs):
        modes.clear()
        finetune_miou(model, train, test, 4, steps=3, batch_size=4, **kwargs)
        return modes[:3]                                  # the training steps (then the eval pass)

    assert training_modes(fraction=0.01) == [False] * 3    # the hook travels with the deep copy
    assert training_modes(fraction=1.0) == [True] * 3
    assert training_modes(fraction=0.01, freeze_bn=False) == [True] * 3
    assert training_modes(fraction=1.0, freeze_bn=True) == [False] * 3
    assert torch.equal(body.down[0][1].running_mean, stats)   # the pretrained model is never touched


def test_ignore_index_pixels_are_left_out():
    train, test = colour_squares(4, seed=0), colour_squares(2, seed=1)
    test["semantic"][:, :4] = 255
    out = finetune_miou(None, train, test, 4, steps=2, network_kwargs=NET)
    assert math.isfinite(out["miou"])


def test_finetune_table_shape():
    train, test = colour_squares(8, seed=0), colour_squares(2, seed=1)
    table = finetune_table({"maskcontrast": _model(), "scratch": None}, train, test, 4, fractions=(0.25, 1.0),
                           steps=2, batch_size=2, network_kwargs=NET)
    assert set(table) == {"maskcontrast", "scratch"}
    assert all(set(row) == {0.25, 1.0} and all(math.isfinite(v) for v in row.values()) for row in table.values())
    with pytest.raises(ValueError, match="fraction"):
        finetune_table({"scratch": None}, train, test, 4, fractions=(0.5, 2.0), network_kwargs=NET)
    with pytest.raises(ValueError, match="non-empty"):
        finetune_table({}, train, test, 4)


def test_from_scratch_is_the_pretrained_models_architecture(monkeypatch):
    model = MaskContrast(4, network="standin_unet", embedding_dim=8)
    assert model.network.body.weights_used.startswith("encoder: stand-in")
    name, kwargs = scratch_architecture(model)
    assert name == "standin_unet" and kwargs["pretrained"] is False
    scratch = finetune_network(None, 4, network=name, **kwargs)
    assert type(scratch) is type(model.network.body) and scratch.weights_used.startswith("random")
    assert scratch_architecture(_model()) == ("unet", NET)                  # no pretrained= to switch off
    calls = []
    monkeypatch.setattr(finetune, "finetune_miou",
                        lambda model, *a, **kw: calls.append((model, kw)) or {"miou": 0.5})
    finetune_table({"maskcontrast": model, "from scratch": None}, {}, {}, 4, fractions=(0.5,), steps=1)
    assert calls[0][1] == {"fraction": 0.5, "steps": 1}
    assert calls[1][1] == {"fraction": 0.5, "steps": 1, "network": "standin_unet", "network_kwargs": kwargs}
    calls.clear()
    finetune_table({"maskcontrast": model, "from scratch": None}, {}, {}, 4, fractions=(0.5,), network="unet")
    assert calls[1][1] == {"fraction": 0.5, "network": "unet"}                # an explicit choice wins
    with pytest.raises(ValueError, match="architecture"):
        scratch_architecture(nn.Conv2d(3, 4, 1))


def test_finetune_miou_bad_input():
    train, test = colour_squares(4, seed=0), colour_squares(2, seed=1)
    model = _model()

    def call(**changes):
        args = {"train": train, "test": test, "num_classes": 4, "steps": 1}
        args.update(changes)
        return finetune_miou(model, **args)

    with pytest.raises(ValueError, match="'semantic'"):
        call(train={"image": train["image"]})
    with pytest.raises(ValueError, match="one \\(H, W\\) label map per image"):
        call(test={"image": test["image"], "semantic": test["semantic"][:, :16]})
    with pytest.raises(ValueError, match="outside 0..4"):
        call(train={"image": train["image"], "semantic": train["semantic"] * 2})
    with pytest.raises(ValueError, match="integer"):
        call(train={"image": train["image"], "semantic": train["semantic"].float()})
    with pytest.raises(ValueError, match="\\(B, 3, H, W\\)"):
        call(train={"image": train["image"][:, :2], "semantic": train["semantic"]})
    with pytest.raises(ValueError, match="NaN"):
        call(test={"image": test["image"] * float("nan"), "semantic": test["semantic"]})
    with pytest.raises(ValueError, match="fraction"):
        call(fraction=0.0)
    with pytest.raises(ValueError, match="steps"):
        call(steps=0)
    with pytest.raises(ValueError, match="lr"):
        call(lr=-0.1)
    with pytest.raises(ValueError, match="num_classes"):
        call(num_classes=0)


def test_a_from_scratch_network_may_take_its_own_pretrained_setting():
    """The stand-in U-Net's own ``pretrained`` keyword reaches the network (the first argument is positional-only)."""
    start = finetune_network(None, 4, network="standin_unet", pretrained=True)
    scratch = finetune_network(None, 4, network="standin_unet", pretrained=False)
    assert start.head.out_channels == 5 and scratch.head.out_channels == 5
    first = next(iter(start.encoder.parameters()))
    assert not torch.equal(first, next(iter(scratch.encoder.parameters())))
