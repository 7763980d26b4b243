"""partlab.part_basis: the part basis of SCOPS Eq. (4) fitted for fixed parts, and free maps + basis learned."""

import pytest
import torch
import torch.nn.functional as F

from partlab.losses import orthonormal_loss, semantic_consistency_loss
from partlab.part_basis import FactorizationRun, basis_cosine, factorize_features, fit_part_basis, part_label_features


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _onehot(labels, k):
    return F.one_hot(labels, k).permute(0, 3, 1, 2).float()          # (B, K, H, W)


def test_one_hot_parts_give_the_mean_feature_of_each_part():
    labels = torch.randint(0, 3, (2, 6, 5), generator=_gen())
    parts = _onehot(labels, 3)
    features = torch.randn(2, 4, 6, 5, generator=_gen(1))             # relu applied inside
    basis = fit_part_basis(parts, features)
    pixels = features.relu().permute(0, 2, 3, 1).reshape(-1, 4)
    flat = labels.reshape(-1)
    for k in range(3):
        assert torch.allclose(basis[k], pixels[flat == k].mean(0), atol=1e-6)


def test_saliency_masks_the_target():
    labels = torch.zeros(1, 2, 2, dtype=torch.long)
    labels[0, 1] = 1
    features = torch.full((1, 1, 2, 2), 2.0)
    saliency = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])               # (B, H, W)
    basis = fit_part_basis(_onehot(labels, 2), features, saliency)
    assert torch.allclose(basis, torch.tensor([[1.0], [1.0]]))        # means of D * V: (2+0)/2, (1+1)/2


def test_exact_mixture_is_recovered_with_zero_loss():
    parts = torch.rand(3, 3, 8, 8, generator=_gen()).softmax(dim=1)   # soft maps, full rank
    true_basis = torch.rand(3, 5, generator=_gen(1))
    features = torch.einsum("bkhw,kc->bchw", parts, true_basis)
    basis = fit_part_basis(parts, features)
    assert torch.allclose(basis, true_basis, atol=1e-4)
    assert semantic_consistency_loss(parts, features, basis).item() == pytest.approx(0.0, abs=1e-9)


def test_fitted_basis_is_the_minimum_over_non_negative_bases():
    parts = torch.rand(2, 3, 6, 6, generator=_gen()).softmax(dim=1)
    features = torch.rand(2, 7, 6, 6, generator=_gen(1))
    basis = fit_part_basis(parts, features)
    assert bool((basis >= 0).all())
    best = semantic_consistency_loss(parts, features, basis)
    gen = _gen(2)
    for _ in range(20):
        other = (basis + 0.05 * torch.randn(basis.shape, generator=gen)).clamp_min(0)
        assert semantic_consistency_loss(parts, features, other) >= best - 1e-7


def test_an_empty_part_gets_a_zero_row():
    labels = torch.randint(0, 2, (1, 4, 4), generator=_gen())
    parts = _onehot(labels, 3)                                        # part 2 never occurs
    basis = fit_part_basis(parts, torch.rand(1, 3, 4, 4, generator=_gen(1)))
    assert torch.isfinite(basis).all() and bool((basis[2] == 0).all())


def test_fit_part_basis_checks_shapes():
    with pytest.raises(ValueError, match="share B, H and W"):
        fit_part_basis(torch.rand(1, 2, 4, 4), torch.rand(1, 3, 5, 4))
    with pytest.raises(ValueError, match="non-negative"):
        fit_part_basis(-torch.ones(1, 2, 4, 4), torch.rand(1, 3, 4, 4))


def test_basis_cosine_is_the_gram_of_eq5():
    basis = torch.randn(4, 6, generator=_gen())
    cos = basis_cosine(basis)
    assert cos.shape == (4, 4)
    assert torch.allclose(cos, cos.T)
    eye = torch.eye(4)
    assert ((cos - eye) ** 2).sum().item() == pytest.approx(orthonormal_loss(basis).item(), rel=1e-5)
    assert torch.allclose(basis_cosine(torch.eye(3)), torch.eye(3))


def test_factorization_lowers_the_loss_and_is_deterministic():
    features = torch.rand(2, 4, 8, 8, generator=_gen())
    runs = [factorize_features(features, 2, steps=30, lr=0.05, seed=1) for _ in range(2)]
    run = runs[0]
    assert isinstance(run, FactorizationRun)
    assert run.probs.shape == (2, 3, 8, 8) and run.basis.shape == (2, 4)
    assert torch.allclose(run.probs.sum(1), torch.ones(2, 8, 8))
    assert run.history[-1]["sc"] < run.history[0]["sc"] and len(run.history) == 31
    assert torch.equal(runs[0].logits, runs[1].logits) and torch.equal(runs[0].basis, runs[1].basis)


def test_switched_off_pixels_are_reconstructed_as_zero():
    # SCOPS Eq. (6): where D = 0 the learned maps and basis give sum_k R_k relu(w_k) = 0
    features = torch.rand(1, 3, 8, 8, generator=_gen()) + 0.5
    saliency = torch.zeros(1, 1, 8, 8)
    saliency[..., :, :4] = 1.0                                        # left half salient
    run = factorize_features(features, 2, saliency, steps=150, lr=0.1, seed=0)
    reconstruction = torch.einsum("bkhw,kc->bchw", run.probs[:, 1:], run.basis.relu())
    off, on = reconstruction[..., 4:].norm(dim=1).mean(), reconstruction[..., :4].norm(dim=1).mean()
    assert off < 0.05 * on


def test_orthonormal_weight_pushes_the_basis_apart():
    features = torch.rand(2, 6, 8, 8, generator=_gen()) + 1.0       # one dominant common direction
    plain = factorize_features(features, 3, steps=60, lr=0.05, seed=0)
    pushed = factorize_features(features, 3, steps=60, lr=0.05, seed=0, orthonormal_weight=1.0)
    assert pushed.history[-1]["orthonormal"] < plain.history[-1]["orthonormal"]


def test_factorization_records_the_semantic_consistency_loss():
    features = torch.randn(2, 5, 6, 6, generator=_gen())              # relu applied inside
    saliency = torch.rand(2, 6, 6, generator=_gen(1))
    run = factorize_features(features, 3, saliency, steps=20, lr=0.05, seed=0)
    direct = semantic_consistency_loss(run.probs[:, 1:], features, run.basis, saliency).item()
    assert run.history[-1]["sc"] == pytest.approx(direct, rel=1e-4)
    assert run.history[-1]["orthonormal"] == pytest.approx(orthonormal_loss(run.basis).item(), rel=1e-5)


def test_part_label_features_are_the_parts_shares_at_the_features_energy():
    parts = torch.zeros(2, 4, 4, dtype=torch.long)
    parts[0, :2, :2] = 1                                    # image 0: part 1 fills the top-left feature cell
    parts[0, :2, 2:] = 2
    parts[1, 2:, :] = 1
    parts[1, 0, 0] = 3                                      # image 1: part 3 covers a quarter of a cell
    like = torch.rand(2, 5, 2, 2) + 0.5
    out = part_label_features(parts, like)
    assert out.shape == like.shape and bool((out >= 0).all())
    assert torch.equal(out[:, 3:], torch.zeros(2, 2, 2, 2))                          # channels past the parts: 0
    assert out[0, 0, 0, 0] > 0 and out[0, 1, 0, 0] == 0 and out[0, 1, 0, 1] > 0   # one part per channel
    assert torch.equal(out[0, :, 1], torch.zeros(5, 2))                             # background cells: 0
    assert out[1, 2, 0, 0] == pytest.approx(out[1, 0, 1, 0] / 4)                    # a quarter share
    cells = like.pow(2).sum(1)                              # foreground cells (over half a part): 4 in all
    energy = (cells[0, 0, 0] + cells[0, 0, 1] + cells[1, 1, 0] + cells[1, 1, 1]) / 4
    for n, y, x in ((0, 0, 0), (0, 0, 1), (1, 1, 0), (1, 1, 1)):                   # single-part cells: like's
        assert out[n, :, y, x].pow(2).sum() == pytest.approx(float(energy), rel=1e-5)   # mean energy


def test_part_label_features_mixed_into_the_cnn_features_by_share():
    """share=a: (1 - a) * like + a * the parts at like's energy; 1 is the parts alone, 0 is like unchanged."""
    parts = torch.zeros(2, 4, 4, dtype=torch.long)
    parts[0, :2, :2] = 1
    parts[1, 2:, :] = 2
    like = torch.rand(2, 4, 2, 2, generator=_gen(3)) + 0.5
    alone = part_label_features(parts, like)
    assert torch.equal(part_label_features(parts, like, share=1.0), alone)
    assert torch.equal(part_label_features(parts, like, share=0.0), like)
    half = part_label_features(parts, like, share=0.5)
    assert torch.allclose(half, 0.5 * like + 0.5 * alone)
    assert half[0, 0, 0, 0] == pytest.approx(0.5 * float(like[0, 0, 0, 0] + alone[0, 0, 0, 0]))  # by hand
    assert half[0, 1, 1, 1] == pytest.approx(0.5 * float(like[0, 1, 1, 1]))         # a background cell: like's half
    quarter = part_label_features(parts, like, share=0.25)
    assert torch.allclose(quarter, 0.75 * like + 0.25 * alone) and bool((quarter >= 0).all())
    none = torch.zeros(1, 8, 8, dtype=torch.long)                                      # no parts: like's share only
    assert torch.equal(part_label_features(none, torch.ones(1, 4, 4, 4), share=0.5), torch.full((1, 4, 4, 4), 0.5))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"share is the true parts' weight in \[0, 1\]"):
            part_label_features(parts, like, share=bad)


def test_part_label_features_refuse_too_few_channels_and_keep_no_parts_at_zero():
    parts = torch.randint(0, 4, (1, 8, 8))
    parts[0, 0, 0] = 3
    with pytest.raises(ValueError, match="3 parts need at least as many feature channels"):
        part_label_features(parts, torch.ones(1, 2, 4, 4))
    assert torch.equal(part_label_features(torch.zeros(1, 8, 8, dtype=torch.long), torch.ones(1, 4, 4, 4)),
                       torch.zeros(1, 4, 4, 4))
