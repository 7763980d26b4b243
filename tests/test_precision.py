"""Mixed precision (partlab.precision): every public loss is float32 under any autocast, fit autocasts the
networks only, and values that cancel or underflow in float32 stay right."""

import math

import pytest
import torch
from torch import nn

import partlab.losses as losses
from partlab.geometry import part_centers, random_warp
from partlab.losses import (
    concentration_loss,
    orthonormal_loss,
    part_consistency_loss,
    rgb_to_lab,
)
from partlab.methods import SCOPS, SupervisedOracle
from partlab.precision import float32
from partlab.train import fit

B, K, C, H, W = 3, 4, 6, 16, 16


def _inputs(device: str = "cpu") -> dict:
    """Float32 inputs (leaves that require grad) for every public loss; Lab-like values where it matters."""
    g = torch.Generator().manual_seed(0)

    def leaf(x):
        return x.to(device).requires_grad_(True)

    images = torch.rand(B, 3, H, W, generator=g)
    return {
        "logits": leaf(3 * torch.randn(B, K + 1, H, W, generator=g)),
        "logits_t": leaf(3 * torch.randn(B, K + 1, H, W, generator=g)),
        "lab": rgb_to_lab(images).to(device),                        # L in [0, 100], a/b about +-100
        "features": leaf(torch.rand(B, C, H, W, generator=g) * 40),
        "basis": leaf(torch.randn(K, C, generator=g).abs()),
        "fg": (torch.rand(B, 1, H, W, generator=g) > 0.3).float().to(device),
        "warp": random_warp(B, generator=torch.Generator().manual_seed(1)).to(device),
        "images": leaf(images.clone()),
    }


def _calls(x: dict) -> dict:
    """One call of every public loss function (and part_centers) on the inputs; each returns a tensor."""
    def parts():
        return x["logits"].softmax(1)[:, 1:]

    def fg_parts():
        return x["logits"][:, 1:].softmax(1)

    return {
        "part_centers": lambda: part_centers(parts(), eps=1e-3),
        "concentration_loss": lambda: concentration_loss(parts()),
        "equivariance_kl_loss": lambda: losses.equivariance_kl_loss(x["logits_t"], x["logits"], x["warp"]),
        "equivariance_center_loss": lambda: losses.equivariance_center_loss(x["logits_t"], x["logits"], x["warp"]),
        "equivariance_loss": lambda: sum(losses.equivariance_loss(x["logits_t"], x["logits"], x["warp"]).values()),
        "semantic_consistency_loss": lambda: losses.semantic_consistency_loss(parts(), x["features"], x["basis"]),
        "orthonormal_loss": lambda: orthonormal_loss(x["basis"]),
        "part_consistency_loss": lambda: part_consistency_loss(fg_parts(), x["lab"], x["fg"]),
        "part_prototypes": lambda: losses.part_prototypes(fg_parts(), x["features"], x["fg"]),
        "part_contrastive_loss": lambda: losses.part_contrastive_loss(
            losses.part_prototypes(fg_parts(), x["features"], x["fg"]), positives="all"),
        "cross_image_similarity": lambda: losses.cross_image_similarity(
            losses.part_prototypes(fg_parts(), x["features"], x["fg"])),
        "masked_equivariance_loss": lambda: losses.masked_equivariance_loss(
            x["logits_t"][:, 1:], x["logits"][:, 1:], x["warp"], x["fg"]),
        "rgb_to_lab": lambda: rgb_to_lab(x["images"]),
        "perceptual_loss": lambda: losses.perceptual_loss(x["images"], x["images"].detach().flip(-1), _extractor,
                                                          layers={"c": 10.0}, scales=(1.0, 0.5)),
        "transform_jacobian": lambda: losses.transform_jacobian(part_centers(parts(), eps=1e-3), x["warp"]),
        "equivariance_shift_loss": lambda: losses.equivariance_shift_loss(
            part_centers(parts(), eps=1e-3), part_centers(x["logits_t"].softmax(1)[:, 1:], eps=1e-3), x["warp"]),
        "equivariance_affine_loss": lambda: losses.equivariance_affine_loss(
            affines(x["features"]), part_centers(x["logits_t"].softmax(1)[:, 1:], eps=1e-3),
            affines(x["features"].flip(0)), x["warp"]),
        "mask_prototypes": lambda: losses.mask_prototypes(x["features"], x["fg"]),
        "maskcontrast_loss": lambda: losses.maskcontrast_loss(
            x["features"], x["features"].flip(0), x["fg"], x["fg"].flip(-1), x["basis"]),
        "balanced_bce_loss": lambda: losses.balanced_bce_loss(x["logits"][:, :1], x["fg"]),
    }


_CONV = nn.Conv2d(3, 4, 3, padding=1).requires_grad_(False)


def _extractor(images, layers):
    """A tiny frozen feature network for the perceptual loss (one layer, ``"c"``)."""
    return {"c": torch.relu(_CONV.to(images.device)(images))}


def affines(features):
    """(B, K, 2, 2) matrices near the identity that depend on the features."""
    return torch.eye(2, device=features.device) + 0.01 * features[:, :K, 0, :4].reshape(B, K, 2, 2)


def test_every_public_loss_is_covered():
    assert set(_calls(_inputs())) == set(losses.__all__) | {"part_centers"}


def _check_under_autocast(device: str, dtype: torch.dtype) -> None:
    x = _inputs(device)
    leaves = [v for v in x.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    for name, call in _calls(x).items():
        expected = call().detach()
        with torch.autocast(device, dtype=dtype):
            value = call()
        assert value.dtype == torch.float32, name
        torch.testing.assert_close(value.detach(), expected, rtol=1e-4, atol=1e-6, msg=name)
        grads = torch.autograd.grad(value.sum(), [v for v in leaves], allow_unused=True)
        assert all(g is None or torch.isfinite(g).all() for g in grads), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_losses_under_cpu_autocast_are_the_float32_values(dtype):
    _check_under_autocast("cpu", dtype)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_losses_under_cuda_autocast_are_the_float32_values(dtype):
    _check_under_autocast("cuda", dtype)


def test_part_consistency_on_lab_values_is_finite_under_fp16():
    x = _inputs()
    parts = x["logits"][:, 1:].softmax(1)
    reference = part_consistency_loss(parts, x["lab"], x["fg"])
    with torch.autocast("cpu", dtype=torch.float16):
        value = part_consistency_loss(parts.half(), x["lab"].half(), x["fg"].half())
    assert math.isfinite(value.item())
    assert value.item() == pytest.approx(reference.item(), rel=2e-3)   # half inputs, float32 arithmetic


def test_float32_decorator_keeps_float64_and_casts_half_inside_containers():
    @float32
    def dtypes(a, pair, named):
        return a.dtype, pair[0].dtype, named["x"].dtype

    half = torch.ones(2, dtype=torch.float16)
    assert dtypes(half, (half,), {"x": torch.ones(2, dtype=torch.float64)}) == (
        torch.float32, torch.float32, torch.float64)


# --- part_consistency_loss: centred ------------------------------------------------------------------


def test_part_consistency_is_accurate_on_offset_and_constant_features():
    g = torch.Generator().manual_seed(3)
    parts = torch.randn(2, 4, 16, 16, generator=g).softmax(1)
    fg = torch.ones(2, 1, 16, 16)
    offset = 1e4 + torch.randn(2, 3, 16, 16, generator=g)
    exact = part_consistency_loss(parts.double(), offset.double(), fg.double()).item()
    assert part_consistency_loss(parts, offset, fg).item() == pytest.approx(exact, rel=1e-3)  # was 28 for 4.03
    constant = torch.full((2, 3, 16, 16), 70.0)
    assert part_consistency_loss(parts, constant, fg).item() == pytest.approx(0.0, abs=1e-6)
    # Lab-like: hard parts at L = 20 and L = 80 plus unit noise. Centring on the image mean leaves the
    # parts' own offsets (+-30 against a spread of 1): the error stays at ~1e-7 of the foreground's
    # total variance (~900 here), i.e. ~1e-4 of this small within-part value
    labels = torch.arange(16).view(1, 1, 16).expand(2, 16, 16) >= 8
    hard = torch.stack((~labels, labels), dim=1).float()                     # (2, 2, 16, 16)
    lab = torch.where(labels, 80.0, 20.0)[:, None] + torch.randn(2, 1, 16, 16, generator=g)
    exact = part_consistency_loss(hard.double(), lab.double(), fg.double()).item()
    assert part_consistency_loss(hard, lab, fg).item() == pytest.approx(exact, rel=1e-3)
    # a soft, Lab-range case as in L_v: float32 matches float64 to 1e-5
    lab = rgb_to_lab(torch.rand(2, 3, 16, 16, generator=g))
    exact = part_consistency_loss(parts.double(), lab.double(), fg.double()).item()
    assert part_consistency_loss(parts, lab, fg).item() == pytest.approx(exact, rel=1e-5)


# --- eps = 0: finite or refused ------------------------------------------------------------------------


@pytest.mark.parametrize("gap", [80.0, 88.0, 90.0, 91.5, 95.0, 100.0, 103.0, 110.0])
def test_centres_and_concentration_with_eps_0_have_finite_gradients_when_a_part_underflows(gap):
    logits = torch.zeros(2, 3, 8, 8)
    logits[:, 0] = gap                                   # parts 1 and 2 get mass ~exp(-gap): subnormal or 0
    logits[:, 1, 1, 2] = 1.0
    logits.requires_grad_(True)
    centres = part_centers(logits.softmax(1)[:, 1:], eps=0.0)
    con = concentration_loss(logits.softmax(1)[:, 1:], eps=0.0)
    (grad,) = torch.autograd.grad((centres * torch.tensor([0.3, -0.7])).sum() + con, logits)
    assert torch.isfinite(centres).all() and torch.isfinite(con) and torch.isfinite(grad).all()


def test_orthonormal_loss_with_eps_0_on_zero_rows_is_finite():
    basis = torch.zeros(3, 5, requires_grad=True)
    value = orthonormal_loss(basis, eps=0.0)
    value.backward()
    assert value.item() == 3.0                           # three zero rows: each diagonal entry counts 1
    assert torch.isfinite(basis.grad).all()
    with pytest.raises(ValueError, match="eps"):
        orthonormal_loss(basis, eps=-1.0)


# --- fit: autocast around the networks only --------------------------------------------------------------


class _Images(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        g = torch.Generator().manual_seed(index)
        return {"image": torch.rand(3, 32, 32, generator=g), "features": torch.rand(8, 4, 4, generator=g),
                "saliency": torch.ones(1, 32, 32), "parts": torch.randint(0, 3, (32, 32), generator=g)}


def test_fit_with_bf16_runs_the_network_in_bf16_and_the_terms_in_float32():
    torch.manual_seed(0)
    model = SCOPS(2, feature_channels=8, base_channels=4, depth=1)
    seen = {}
    def record(module, args, out):
        seen.setdefault("network", out.dtype)

    model.network.register_forward_hook(record)
    original = model.weighted_total

    def spy(terms, output):
        seen["terms"] = {name: value.dtype for name, value in terms.items()}
        return original(terms, output)

    model.weighted_total = spy
    fit(model, _Images(), max_steps=1, batch_size=2, amp="bf16", device="cpu", progress=False)
    assert seen["network"] == torch.bfloat16
    assert set(seen["terms"].values()) == {torch.float32}
    assert model.amp_dtype is None                      # restored after the run: predict runs in float32
    assert model.predict(torch.rand(1, 3, 32, 32))["probs"].dtype == torch.float32


def test_fit_autocasts_the_whole_losses_of_a_module_without_amp_dtype():
    class Plain(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 1)

        def losses(self, batch):
            out = self.layer(batch["image"].mean((-2, -1)))
            self.dtype_seen = out.dtype
            return {"loss": out.float().pow(2).mean()}

    model = Plain()
    fit(model, _Images(), max_steps=1, batch_size=2, amp="bf16", device="cpu", progress=False)
    assert model.dtype_seen == torch.bfloat16


def test_moving_a_method_moves_its_frozen_extractor_but_not_its_dtype():
    from partlab.features import StandinFeatures, extractor_on, get_extractor

    extractor = StandinFeatures()                        # a private instance: get_extractor's is shared
    model = SCOPS(2, features=extractor, base_channels=4, depth=1)
    model.to("meta")
    assert model.extractor.mean.device.type == "meta"    # fit(device=...) calls model.to(device)
    assert next(model.parameters()).device.type == "meta"
    model = SCOPS(2, features=StandinFeatures(), base_channels=4, depth=1).double()
    assert model.extractor.mean.dtype == torch.float32   # dtype conversions leave it alone
    # get_extractor's cached instance is not moved from under its other users: the model takes the
    # cached instance of the new device instead
    shared = get_extractor("standin", device="cpu")
    model = SCOPS(2, features=shared, base_channels=4, depth=1).to("meta")
    assert shared.mean.device.type == "cpu" and model.extractor.mean.device.type == "meta"
    assert extractor_on(shared, "cpu") is shared


def test_oracle_under_fit_amp_still_trains():
    torch.manual_seed(0)
    model = SupervisedOracle(2, base_channels=4, depth=1)
    fit(model, _Images(), max_steps=2, batch_size=2, amp="bf16", device="cpu", progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())
