"""Losses of contrastive part discovery (partlab.losses.contrastive): hand values, invariances,
gradients and degenerate inputs."""

import math

import pytest
import torch
import torch.nn.functional as F

from partlab.geometry import identity_warp, random_warp, similarity_warp, warp_images
from partlab.losses import (
    cross_image_similarity,
    masked_equivariance_loss,
    part_consistency_loss,
    part_contrastive_loss,
    part_prototypes,
    rgb_to_lab,
)
from partlab.losses.contrastive import contrastive_reference_values  # a diagnostic, not a loss


def _naive_consistency(parts, values, fg):
    """The DESIGN.md formula with the full (B, K, C, H, W) tensor."""
    m = parts * fg                                                             # (B, K, H, W)
    mu = (m[:, :, None] * values[:, None]).sum((-2, -1)) / (m.sum((-2, -1))[..., None] + 1e-5)  # (B, K, C)
    sq = (values[:, None] - mu[..., None, None]) ** 2                          # (B, K, C, H, W)
    return ((m[:, :, None] * sq).sum((1, 2, 3, 4)) / (fg.sum((1, 2, 3)) + 1e-5)).mean()


def _naive_contrastive(z, t):
    """Mean over anchors (a, i) and positives b != a of the InfoNCE term, by loops."""
    z = F.normalize(z, dim=-1)
    b, k, _ = z.shape
    losses = []
    for a in range(b):
        for i in range(k):
            neg = [z[a, i] @ z[c, j] / t for c in range(b) for j in range(k) if j != i]
            for p in range(b):
                if p == a:
                    continue
                pos = z[a, i] @ z[p, i] / t
                logits = torch.stack([pos] + neg)
                losses.append(torch.logsumexp(logits, 0) - pos)
    return torch.stack(losses).mean()


# --- L_f / L_v ------------------------------------------------------------------------------------


def test_consistency_hand_values():
    values = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)                        # one channel, two pixels
    fg = torch.ones(1, 1, 1, 2)
    one_part = torch.ones(1, 1, 1, 2)
    # mean 2, squared deviations 1 + 1, divided by the 2 foreground pixels
    assert part_consistency_loss(one_part, values, fg).item() == pytest.approx(1.0, rel=1e-4)
    # two parts that split the pixels: each part is constant -> 0
    split = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    assert part_consistency_loss(split, values, fg).item() == pytest.approx(0.0, abs=1e-6)
    # two half-half soft parts: each has mass 1, mean 2 and spread .5 * 1 + .5 * 1 -> (1 + 1) / 2
    soft = torch.full((1, 2, 1, 2), 0.5)
    assert part_consistency_loss(soft, values, fg).item() == pytest.approx(1.0, rel=1e-4)
    # the mask removes the pixel of value 3: the remaining part is constant -> 0
    fg_left = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    assert part_consistency_loss(one_part, values, fg_left).item() == pytest.approx(0.0, abs=1e-6)


def test_consistency_matches_the_formula_and_reductions():
    g = torch.Generator().manual_seed(0)
    parts = torch.rand(3, 4, 6, 5, generator=g).softmax(1)
    values = torch.randn(3, 7, 6, 5, generator=g) * 3
    fg = (torch.rand(3, 1, 6, 5, generator=g) > 0.4).float()
    mean = part_consistency_loss(parts, values, fg)
    assert mean.item() == pytest.approx(_naive_consistency(parts, values, fg).item(), rel=1e-5)
    assert part_consistency_loss(parts, values, fg, reduction="sum").item() == pytest.approx(3 * mean.item(), rel=1e-6)
    assert part_consistency_loss(parts, values, fg[:, 0]).item() == pytest.approx(mean.item())   # (B, H, W) fg
    # fg applied inside: pre-masked parts give the same value
    assert part_consistency_loss(parts * fg, values, fg).item() == pytest.approx(mean.item(), rel=1e-6)


def test_consistency_invariances():
    g = torch.Generator().manual_seed(1)
    parts = torch.rand(2, 3, 8, 8, generator=g).softmax(1)
    values = torch.randn(2, 5, 8, 8, generator=g)
    fg = torch.ones(2, 1, 8, 8)
    base = part_consistency_loss(parts, values, fg).item()
    # adding a constant to the values changes no deviation from the part means
    assert part_consistency_loss(parts, values + 7.0, fg).item() == pytest.approx(base, rel=1e-4)
    # relabelling the parts changes nothing
    assert part_consistency_loss(parts[:, [2, 0, 1]], values, fg).item() == pytest.approx(base, rel=1e-6)
    # translating image, parts and mask together (circularly) changes nothing
    shift = lambda x: torch.roll(x, shifts=(2, 3), dims=(-2, -1))
    assert part_consistency_loss(shift(parts), shift(values), shift(fg)).item() == pytest.approx(base, rel=1e-6)


def test_consistency_gradcheck_and_degenerate_inputs():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    values = torch.randn(2, 2, 4, 4, generator=g, dtype=torch.float64)
    fg = (torch.rand(2, 1, 4, 4, generator=g) > 0.3).double()
    assert torch.autograd.gradcheck(lambda x: part_consistency_loss(x.softmax(1), values, fg), (logits,))
    cases = {
        "empty fg": (logits.detach().float().softmax(1), values.float(), torch.zeros(2, 1, 4, 4)),
        "empty part": (torch.cat([torch.zeros(2, 1, 4, 4), torch.ones(2, 2, 4, 4) / 2], 1), values.float(), fg.float()),
        "constant values": (logits.detach().float().softmax(1), torch.full((2, 2, 4, 4), 3.0), fg.float()),
        "K=1": (torch.ones(2, 1, 4, 4), values.float(), fg.float()),
    }
    for name, (parts, v, mask) in cases.items():
        parts = parts.clone().requires_grad_()
        loss = part_consistency_loss(parts, v, mask)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(parts.grad).all(), name
        if name in ("empty fg", "constant values"):
            assert loss.item() == pytest.approx(0.0, abs=1e-5), name


def test_consistency_checks():
    parts, values, fg = torch.rand(2, 3, 4, 4), torch.rand(2, 5, 4, 4), torch.ones(2, 1, 4, 4)
    with pytest.raises(ValueError, match="upsample"):
        part_consistency_loss(parts, torch.rand(2, 5, 2, 2), fg)
    with pytest.raises(ValueError, match="fg must have shape"):
        part_consistency_loss(parts, values, torch.ones(2, 1, 3, 3))
    with pytest.raises(ValueError, match="reduction"):
        part_consistency_loss(parts, values, fg, reduction="none")
    with pytest.raises(ValueError, match="parts must have shape"):
        part_consistency_loss(torch.rand(3, 4, 4), values, fg)


def test_rgb_to_lab_matches_known_colours():
    colours = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]).view(1, 3, 3, 1).permute(0, 2, 1, 3)
    lab = rgb_to_lab(colours)[0, :, :, 0].T                                   # (3 colours, Lab)
    assert lab[0].tolist() == pytest.approx([100.0, 0.0, 0.0], abs=0.05)       # white
    assert lab[1].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=0.05)         # black
    assert lab[2].tolist() == pytest.approx([53.24, 80.09, 67.20], abs=0.1)    # sRGB red (skimage's rgb2lab)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        rgb_to_lab(torch.rand(1, 4, 2, 2))


# --- prototypes and L_c ---------------------------------------------------------------------------


def test_prototypes_hand_values():
    parts = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 2, 1, 2)         # part 1 everywhere, part 2 empty
    features = torch.tensor([[2.0, 4.0], [1.0, 0.0]]).view(1, 2, 1, 2)       # C=2
    z = part_prototypes(parts, features)
    assert z.shape == (1, 2, 2)
    assert z[0, 0].tolist() == pytest.approx([3.0, 0.5], rel=1e-6)
    assert z[0, 1].tolist() == [0.0, 0.0]                                       # empty part: zero vector
    fg = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
    assert part_prototypes(parts, features, fg)[0, 0].tolist() == pytest.approx([2.0, 1.0], rel=1e-6)


def test_contrastive_hand_value():
    t = 0.19
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])             # norms differ: normalised inside
    z = torch.stack([torch.stack([e1, e2]), torch.stack([2 * e1, e2])])      # (B=2, K=2, C=2)
    # every anchor: positive cosine 1, two negatives (the other part in both images) with cosine 0
    expected = math.log(math.exp(1 / t) + 2) - 1 / t
    assert part_contrastive_loss(z, t, positives="all").item() == pytest.approx(expected, rel=1e-4)
    assert part_contrastive_loss(z, t, positives="random").item() == pytest.approx(expected, rel=1e-4)  # B=2: one positive


def test_contrastive_matches_loops_and_random_is_unbiased():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 4, 5, generator=g)
    full = part_contrastive_loss(z, 0.5, positives="all")
    assert full.item() == pytest.approx(_naive_contrastive(z, 0.5).item(), rel=1e-5)
    draws = torch.stack([part_contrastive_loss(z, 0.5, generator=g) for _ in range(400)])
    assert draws.mean().item() == pytest.approx(full.item(), rel=0.02)
    assert draws.std() > 0                                                       # the positive really is drawn


def test_contrastive_invariances_and_ordering():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(4, 3, 6, generator=g)
    base = part_contrastive_loss(z, positives="all").item()
    assert part_contrastive_loss(3.0 * z, positives="all").item() == pytest.approx(base, rel=1e-5)     # scale
    assert part_contrastive_loss(z[:, [1, 2, 0]], positives="all").item() == pytest.approx(base, rel=1e-5)  # relabel
    assert part_contrastive_loss(z[[2, 0, 3, 1]], positives="all").item() == pytest.approx(base, rel=1e-5)  # reorder
    # parts that agree across images score lower than parts shuffled differently in each image
    aligned = torch.eye(3).expand(4, 3, 3) + 0.05 * torch.randn(4, 3, 3, generator=g)
    shuffled = torch.stack([aligned[n, torch.randperm(3, generator=g)] for n in range(4)])
    assert part_contrastive_loss(aligned, positives="all") < part_contrastive_loss(shuffled, positives="all")


def test_contrastive_degenerate_inputs():
    z = torch.zeros(2, 3, 4, requires_grad=True)                                 # all parts empty
    loss = part_contrastive_loss(z)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()
    one = torch.randn(3, 1, 4, requires_grad=True)                               # K = 1: no negatives
    loss = part_contrastive_loss(one)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(one.grad).all()
    with pytest.raises(ValueError, match="at least 2 images"):
        part_contrastive_loss(torch.randn(1, 3, 4))
    with pytest.raises(ValueError, match="temperature"):
        part_contrastive_loss(torch.randn(2, 3, 4), temperature=0)
    with pytest.raises(ValueError, match="positives"):
        part_contrastive_loss(torch.randn(2, 3, 4), positives="hard")


def test_contrastive_gradcheck():
    z = torch.randn(3, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: part_contrastive_loss(x, 0.3, positives="all"), (z,))


# --- L_e ------------------------------------------------------------------------------------------


def test_equivariance_zero_for_an_equivariant_prediction():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 4, 16, 16, generator=g)
    fg = torch.ones(2, 1, 16, 16)
    warp = random_warp(2, generator=g)
    assert masked_equivariance_loss(warp_images(logits, warp), logits, warp, fg).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_equivariance_loss(torch.randn(2, 4, 16, 16), logits, warp, torch.zeros(2, 16, 16)).item() == 0.0


def test_equivariance_hand_value_and_per_image_normalisation():
    # identity warp, spatially constant logits: KL(p || q) at every pixel of the foreground
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    kl = float((p * (p / q).log()).sum())
    original = p.log().view(1, 3, 1, 1).expand(2, 3, 4, 4)
    transformed = q.log().view(1, 3, 1, 1).expand(2, 3, 4, 4)
    fg = torch.zeros(2, 1, 4, 4)
    fg[0, :, :1, :1] = 1                                                         # image 0: 1 pixel
    fg[1] = 1                                                                    # image 1: 16 pixels
    loss = masked_equivariance_loss(transformed, original, identity_warp(2), fg)
    assert loss.item() == pytest.approx(kl, rel=1e-5)                           # each image's mean is kl
    # a pixel of image 0 that disagrees weighs 1/1, one of image 1 weighs 1/16: per-image means
    transformed = transformed.clone()
    transformed[0, :, 0, 0] = p.log()
    assert masked_equivariance_loss(transformed, original, identity_warp(2), fg).item() == pytest.approx(kl / 2, rel=1e-5)


def test_equivariance_gradient_reaches_only_the_transformed_branch_and_fg_is_warped():
    g = torch.Generator().manual_seed(6)
    original = torch.randn(1, 3, 16, 16, generator=g, requires_grad=True)
    transformed = torch.randn(1, 3, 16, 16, generator=g, requires_grad=True)
    fg = torch.zeros(1, 1, 16, 16)
    fg[..., :, :8] = 1                                                           # left half
    shift = similarity_warp(torch.zeros(1), torch.ones(1), torch.tensor([[1.0, 0.0]]))  # half the width
    loss = masked_equivariance_loss(transformed, original, shift, fg)
    loss.backward()
    assert original.grad is None or not original.grad.any()                      # target detached
    grad = transformed.grad.abs().sum(dim=(0, 1))                                # (H, W)
    # the foreground moved with the warp: gradient only where the warped mask is non-zero
    fg_warped = warp_images(fg, shift)[0, 0]
    assert grad[fg_warped == 0].sum() == 0 and grad[fg_warped > 0.5].sum() > 0
    with pytest.raises(ValueError, match="same shape"):
        masked_equivariance_loss(transformed, original[:, :2], shift, fg)


def test_cross_image_similarity_hand_values():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    aligned = torch.stack([torch.stack([e1, e2]), torch.stack([3 * e1, e2])])  # parts agree across images
    assert torch.allclose(cross_image_similarity(aligned), torch.eye(2))
    swapped = torch.stack([torch.stack([e1, e2]), torch.stack([e2, e1])])      # part 1 of one = part 2 of the other
    assert torch.allclose(cross_image_similarity(swapped), 1 - torch.eye(2))
    z = torch.randn(4, 3, 5)
    brute = torch.stack([F.normalize(z[a], dim=-1) @ F.normalize(z[b], dim=-1).T
                         for a in range(4) for b in range(4) if a != b]).mean(0)
    assert torch.allclose(cross_image_similarity(z), brute, atol=1e-6)
    with pytest.raises(ValueError, match="B >= 2"):
        cross_image_similarity(torch.randn(1, 3, 5))


def _labelled(n=6, k=3, size=8, seed=0):
    """n images whose pixels carry part labels 0..k-1 in vertical bands (shifted per image), all foreground."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.stack([(torch.arange(size)[None, :].expand(size, size) * k // size + int(torch.randint(0, k, (1,),
                          generator=g))) % k for _ in range(n)])
    parts = F.one_hot(labels, k).permute(0, 3, 1, 2).float()                   # (n, k, size, size)
    return parts, torch.ones(n, size, size)


def test_reference_values_hand_value_for_features_that_name_the_part():
    parts, fg = _labelled()
    # features = the part's one-hot code: every prototype of part i is e_i in every image
    ref = contrastive_reference_values(parts.clone(), parts, fg, batch_size=4, temperature=0.19, batches=5)
    b, k = 4, 3
    assert ref["collapsed"] == pytest.approx(math.log(1 + b * (k - 1)))
    assert ref["true"] == pytest.approx(math.log(1 + b * (k - 1) * math.exp(-1 / 0.19)), rel=1e-5)
    assert ref["permuted"] > ref["collapsed"] > ref["true"]


def test_reference_values_are_all_at_collapse_for_features_that_carry_nothing():
    parts, fg = _labelled()
    constant = torch.ones(parts.shape[0], 5, *parts.shape[-2:])
    ref = contrastive_reference_values(constant, parts, fg, batch_size=3, batches=4)
    assert ref["true"] == pytest.approx(ref["collapsed"]) and ref["permuted"] == pytest.approx(ref["collapsed"])


def test_reference_values_refuse_what_they_cannot_measure():
    parts, fg = _labelled()
    with pytest.raises(ValueError, match="K >= 2"):
        contrastive_reference_values(parts[:, :1], parts[:, :1], fg)
    with pytest.raises(ValueError, match="batch_size"):
        contrastive_reference_values(parts, parts, fg, batch_size=7)
    with pytest.raises(ValueError, match="foreground mask"):
        contrastive_reference_values(parts, parts, None)
    with pytest.raises(ValueError, match="upsample"):
        contrastive_reference_values(parts[..., :4, :4], parts, fg)
