"""SCOPS losses (partlab.losses.scops): values a reader can check by hand."""

import math

import pytest
import torch

import partlab.losses as losses
from partlab.geometry import identity_warp, part_centers, random_warp, valid_mask, warp_images, warp_preset
from partlab.losses import (
    concentration_loss,
    equivariance_center_loss,
    equivariance_kl_loss,
    equivariance_loss,
    orthonormal_loss,
    semantic_consistency_loss,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_exports():
    for name in ("concentration_loss", "equivariance_kl_loss", "equivariance_center_loss", "equivariance_loss",
                 "semantic_consistency_loss", "orthonormal_loss"):
        assert name in losses.__all__ and callable(getattr(losses, name))


# --- Eq. (2): concentration --------------------------------------------------------------------


def test_concentration_of_a_delta_is_zero():
    parts = torch.zeros(2, 3, 5, 7)
    parts[:, 0, 1, 2] = 1.0
    parts[:, 1, 4, 6] = 0.3
    parts[:, 2, 0, 0] = 2.0
    assert concentration_loss(parts, eps=0.0).item() == pytest.approx(0.0, abs=1e-7)


def test_concentration_hand_values():
    # a 1x2 map: pixel centres at x = -0.5 and x = +0.5 (y = 0); mass split equally:
    # centre 0, variance 0.5 * 0.5^2 + 0.5 * 0.5^2 = 0.25
    half = torch.full((1, 1, 1, 2), 0.5)
    assert concentration_loss(half, eps=0.0).item() == pytest.approx(0.25)
    # summed over parts, mean over batch: image 0 has parts (split, delta) -> 0.25 + 0 ,
    # image 1 has (split, split) -> 0.5; mean = (0.25 + 0.5) / 2 = 0.375
    parts = torch.tensor([[[[0.5, 0.5]], [[1.0, 0.0]]], [[[0.5, 0.5]], [[0.5, 0.5]]]])  # (2, 2, 1, 2)
    assert concentration_loss(parts, eps=0.0).item() == pytest.approx(0.375)
    # eps: a 1x2 delta plus eps = 1 on both pixels -> masses (2, 1), pdf (2/3, 1/3),
    # centre -0.5 * 2/3 + 0.5 * 1/3 = -1/6, variance 2/3 * (1/3)^2 + 1/3 * (2/3)^2 = 2/9
    delta = torch.tensor([[[[1.0, 0.0]]]])
    assert concentration_loss(delta, eps=1.0).item() == pytest.approx(2 / 9)


def test_concentration_is_scale_invariant_and_translation_invariant():
    parts = torch.zeros(1, 2, 16, 16)
    parts[0, 0, 3:6, 4:8] = torch.rand(3, 4, generator=_gen())
    parts[0, 1, 9:12, 2:5] = torch.rand(3, 3, generator=_gen(1))
    value = concentration_loss(parts, eps=0.0)
    assert torch.allclose(concentration_loss(3.0 * parts, eps=0.0), value)
    # move every part 2 px right and 3 px down: centres move by (2, 3) * 2/16, variance unchanged
    moved = torch.roll(parts, shifts=(3, 2), dims=(-2, -1))
    assert torch.allclose(concentration_loss(moved, eps=0.0), value, atol=1e-6)
    shift = part_centers(moved) - part_centers(parts)
    assert torch.allclose(shift, torch.tensor([2 * 2 / 16, 3 * 2 / 16]).expand(1, 2, 2), atol=1e-6)


def test_concentration_degenerate_inputs_have_finite_gradients():
    for parts in (torch.zeros(2, 3, 6, 5),                   # all background
                  torch.rand(1, 1, 7, 3),                     # K = 1, odd non-square
                  torch.cat((torch.rand(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)), dim=1)):  # a part of zero mass
        for eps in (0.0, 1e-3):
            leaf = parts.clone().requires_grad_()
            value = concentration_loss(leaf, eps=eps)
            value.backward()
            assert torch.isfinite(value) and torch.isfinite(leaf.grad).all()


def test_concentration_gradcheck():
    parts = torch.rand(2, 2, 3, 4, dtype=torch.float64, generator=_gen(2)).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: concentration_loss(p, eps=1e-3), (parts,))


def test_concentration_checks():
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        concentration_loss(torch.rand(3, 4, 4))


# --- Eq. (3): equivariance ---------------------------------------------------------------------


def test_equivariance_is_zero_for_an_equivariant_prediction():
    logits = torch.randn(2, 4, 16, 16, generator=_gen(3))
    warp = random_warp(2, **warp_preset("scops"), generator=_gen(4))
    transformed = warp_images(logits, warp)                 # the prediction a perfect network makes
    terms = equivariance_loss(transformed, logits, warp)
    assert terms["kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert terms["center"].item() == pytest.approx(0.0, abs=1e-10)
    other = torch.randn(2, 4, 16, 16, generator=_gen(5))
    assert equivariance_kl_loss(other, logits, warp) > 0.1
    assert equivariance_center_loss(other, logits, warp) > 0


def test_equivariance_kl_hand_value_and_reduction():
    # target softmax(0, 0) = (1/2, 1/2), prediction softmax(log 3, 0) = (3/4, 1/4) at every pixel:
    # KL = 1/2 log((1/2)/(3/4)) + 1/2 log((1/2)/(1/4)) = 1/2 log(4/3), the same mean over B*H*W
    original = torch.zeros(2, 2, 3, 5)
    transformed = torch.stack((torch.full((2, 3, 5), math.log(3.0)), torch.zeros(2, 3, 5)), dim=1)
    value = equivariance_kl_loss(transformed, original, identity_warp(2))
    assert value.item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-5)
    # a mask of ones changes nothing; a mask keeps only its pixels
    ones = torch.ones(2, 1, 3, 5)
    assert torch.allclose(equivariance_kl_loss(transformed, original, identity_warp(2), mask=ones), value)
    mixed = transformed.clone()
    mixed[:, :, :, 0] = 0.0                                 # column 0 now matches the target: KL 0 there
    only_col0 = torch.zeros(2, 3, 5)
    only_col0[:, :, 0] = 1
    assert equivariance_kl_loss(mixed, original, identity_warp(2), mask=only_col0).item() == pytest.approx(0, abs=1e-7)
    assert equivariance_kl_loss(mixed, original, identity_warp(2)).item() == pytest.approx(
        0.4 * math.log(4 / 3), rel=1e-5)                    # 4 of 5 columns


def test_equivariance_center_hand_value():
    # K = 1 on a 1x2 map: the original's part sits on pixel 0 (x = -0.5), the transformed one on
    # pixel 1 (x = +0.5): centre difference (1, 0), MSE over B*K*2 = 2 numbers = (1 + 0) / 2
    original = torch.tensor([[[[0.0, 0.0]], [[30.0, -30.0]]]])
    transformed = torch.tensor([[[[0.0, 0.0]], [[-30.0, 30.0]]]])
    value = equivariance_center_loss(transformed, original, identity_warp(1), eps=0.0)
    assert value.item() == pytest.approx(0.5, abs=1e-6)


def test_equivariance_gradients():
    logits = torch.randn(2, 3, 8, 8, generator=_gen(6)).requires_grad_()
    transformed = torch.randn(2, 3, 8, 8, generator=_gen(7)).requires_grad_()
    warp = random_warp(2, **warp_preset("scops"), generator=_gen(8))
    equivariance_kl_loss(transformed, logits, warp).backward()
    assert logits.grad is None                              # the KL target is detached
    assert torch.isfinite(transformed.grad).all() and transformed.grad.abs().sum() > 0
    equivariance_center_loss(transformed, logits, warp).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0     # the centre term is not
    # all-background predictions, K = 1 and out-of-image pixels stay finite
    background = torch.zeros(2, 2, 7, 5)
    background[:, 0] = 50.0
    background.requires_grad_()
    terms = equivariance_loss(background, background, warp, mask=valid_mask(warp, (7, 5)))
    (terms["kl"] + terms["center"]).backward()
    assert all(torch.isfinite(v) for v in terms.values()) and torch.isfinite(background.grad).all()


def test_equivariance_checks():
    warp = identity_warp(1)
    with pytest.raises(ValueError, match="same shape"):
        equivariance_kl_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 5, 4), warp)
    with pytest.raises(ValueError, match=r"K >= 1"):
        equivariance_center_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), warp)
    with pytest.raises(ValueError, match="mask"):
        equivariance_kl_loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4), warp, mask=torch.ones(1, 4, 5))


# --- Eq. (4) and (5): semantic consistency, orthonormality ----------------------------------


def test_semantic_consistency_is_zero_for_exact_features():
    parts = torch.rand(2, 3, 5, 6, generator=_gen(9))
    basis = torch.rand(3, 8, generator=_gen(10))
    features = torch.einsum("bkhw,kc->bchw", parts, basis)
    assert semantic_consistency_loss(parts, features, basis).item() == pytest.approx(0.0, abs=1e-12)


def test_semantic_consistency_hand_values():
    # B = K = C = 1 on 2x2: R = [[1, 0], [0.5, 0]], w = [2] -> R w = [[2, 0], [1, 0]]
    parts = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]]]])
    basis = torch.tensor([[2.0]])
    features = torch.ones(1, 1, 2, 2)
    # V - R w = [[-1, 1], [0, 1]]: squares 1, 1, 0, 1 -> mean 3/4
    assert semantic_consistency_loss(parts, features, basis).item() == pytest.approx(0.75)
    # saliency D = [[1, 0], [1, 1]]: D V - R w = [[-1, 0], [0, 1]] -> mean 2/4
    saliency = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    assert semantic_consistency_loss(parts, features, basis, saliency).item() == pytest.approx(0.5)
    assert semantic_consistency_loss(parts, features, basis, saliency[:, None]).item() == pytest.approx(0.5)
    # saliency None == ones; relu on features and basis: negative values count as 0
    assert semantic_consistency_loss(parts, features, basis, torch.ones(1, 2, 2)) == \
        semantic_consistency_loss(parts, features, basis)
    assert semantic_consistency_loss(parts, -features, -basis).item() == pytest.approx(0.0)


def test_semantic_consistency_gradcheck_and_degenerate():
    parts = (torch.rand(1, 2, 2, 3, dtype=torch.float64, generator=_gen(11)) + 0.1).requires_grad_()
    features = (torch.rand(1, 3, 2, 3, dtype=torch.float64, generator=_gen(12)) + 0.1).requires_grad_()
    basis = (torch.rand(2, 3, dtype=torch.float64, generator=_gen(13)) + 0.1).requires_grad_()
    saliency = torch.rand(1, 2, 3, dtype=torch.float64, generator=_gen(14))
    assert torch.autograd.gradcheck(lambda p, f, b: semantic_consistency_loss(p, f, b, saliency),
                                    (parts, features, basis))
    zeros = torch.zeros(2, 1, 5, 3, requires_grad=True)     # K = 1, all background, odd size
    basis = torch.zeros(1, 4, requires_grad=True)
    value = semantic_consistency_loss(zeros, torch.rand(2, 4, 5, 3), basis)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(zeros.grad).all() and torch.isfinite(basis.grad).all()


def test_semantic_consistency_upsamples_low_resolution_features_exactly():
    # (B, C, h, w) smaller than the parts: the same value and gradients as upsampling first
    # (bilinear, align_corners=False), on the fast non-negative path and the fallback for signed features
    import torch.nn.functional as F

    for b, k, c, size, low, sign in ((2, 3, 5, (9, 7), (4, 3), 1.0), (1, 1, 4, (8, 8), (5, 5), 1.0),
                                     (2, 2, 3, (6, 6), (3, 3), -1.0)):
        logits = torch.randn(b, k + 1, *size, dtype=torch.float64, generator=_gen(40)).requires_grad_()
        basis = torch.randn(k, c, dtype=torch.float64, generator=_gen(41)).requires_grad_()
        low_res = torch.rand(b, c, *low, dtype=torch.float64, generator=_gen(42)) - (0.5 if sign < 0 else 0.0)
        saliency = torch.rand(b, 1, *size, dtype=torch.float64, generator=_gen(43))
        upsampled = F.interpolate(low_res, size=size, mode="bilinear", align_corners=False)
        for d in (saliency, None):
            want = semantic_consistency_loss(logits.softmax(1)[:, 1:], upsampled, basis, d)
            got = semantic_consistency_loss(logits.softmax(1)[:, 1:], low_res, basis, d)
            assert got.item() == pytest.approx(want.item(), rel=1e-10)
            for g_want, g_got in zip(torch.autograd.grad(want, (logits, basis)), torch.autograd.grad(got, (logits, basis))):
                assert torch.allclose(g_got, g_want, rtol=1e-8, atol=1e-12)
    # exact features at low resolution still give 0 (up to the expansion's rounding)
    parts = F.interpolate(torch.rand(1, 2, 3, 3, generator=_gen(44)), size=(6, 6), mode="bilinear", align_corners=False)
    basis = torch.rand(2, 4, generator=_gen(45))
    exact = torch.einsum("bkhw,kc->bchw", torch.rand(1, 2, 3, 3, generator=_gen(44)), basis)
    assert semantic_consistency_loss(parts, exact, basis).item() == pytest.approx(0.0, abs=1e-6)


def test_semantic_consistency_checks():
    with pytest.raises(ValueError, match="features"):
        semantic_consistency_loss(torch.rand(1, 2, 4, 4), torch.rand(1, 3, 8, 8), torch.rand(2, 3))
    with pytest.raises(ValueError, match="smaller"):
        semantic_consistency_loss(torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 2), torch.rand(2, 3))
    with pytest.raises(ValueError, match=r"basis must have shape \(K, C\) = \(2, 3\)"):
        semantic_consistency_loss(torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4), torch.rand(3, 3))
    with pytest.raises(ValueError, match="saliency"):
        semantic_consistency_loss(torch.rand(1, 2, 4, 4), torch.rand(1, 3, 4, 4), torch.rand(2, 3),
                                  torch.rand(1, 4, 5))


def test_orthonormal_hand_values():
    assert orthonormal_loss(torch.eye(3, 5)).item() == pytest.approx(0.0, abs=1e-6)
    assert orthonormal_loss(3.0 * torch.eye(3, 5)).item() == pytest.approx(0.0, abs=1e-6)   # rows are normalised
    # two identical unit rows: W^ W^T = [[1, 1], [1, 1]], minus I leaves two off-diagonal 1s -> 2
    assert orthonormal_loss(torch.tensor([[1.0, 0.0], [1.0, 0.0]])).item() == pytest.approx(2.0)
    # relu inside: [[1, -5], [0, 1]] -> [[1, 0], [0, 1]], orthonormal
    assert orthonormal_loss(torch.tensor([[1.0, -5.0], [0.0, 1.0]])).item() == pytest.approx(0.0, abs=1e-6)


def test_orthonormal_zero_row_is_finite():
    basis = torch.tensor([[0.0, 0.0], [0.0, 2.0]], requires_grad=True)
    value = orthonormal_loss(basis)                          # the zero row adds its diagonal (0 - 1)^2 = 1
    value.backward()
    assert value.item() == pytest.approx(1.0, abs=1e-6)
    assert torch.isfinite(basis.grad).all()
    with pytest.raises(ValueError, match=r"\(K, C\)"):
        orthonormal_loss(torch.rand(2, 3, 4))
