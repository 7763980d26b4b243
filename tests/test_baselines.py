"""DFF (NMF) and K-means baselines: the NMF solver, planted-cluster recovery, the part-map format."""

import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from partlab.baselines import border_share, dff, dff_parts, kmeans_parts, nmf


def _planted(n=6, size=12, noise=0.05, seed=0):
    """Features (n, 4, size, size): a centred square object split into 3 vertical stripes, each stripe
    (part 1, 2, 3) carrying its own non-negative direction; the background a 4th. Returns feats, fg, gt."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.zeros(n, size, size, dtype=torch.long)
    lo, hi = size // 6, size - size // 6
    width = (hi - lo) // 3
    for k in range(3):
        gt[:, lo:hi, lo + k * width: lo + (k + 1) * width] = k + 1
    basis = torch.eye(4) + 0.1                                               # (4 labels, 4 channels)
    feats = basis[gt].permute(0, 3, 1, 2).clone()                           # (n, 4, H, W)
    feats += noise * torch.rand(feats.shape, generator=g)
    fg = (gt > 0).float()[:, None]
    return feats, fg, gt


def test_nmf_error_decreases_monotonically():
    V = torch.rand(300, 40, generator=torch.Generator().manual_seed(1))
    _, _, info = nmf(V, 6, max_iter=60, tol=0.0, check_every=1)
    errors = torch.tensor(info["errors"])
    assert len(errors) == 61
    assert bool((errors[1:] <= errors[:-1] * (1 + 1e-5)).all())
    assert errors[-1] < errors[0]


def test_nmf_recovers_an_exact_nonnegative_product():
    g = torch.Generator().manual_seed(2)
    V = torch.rand(400, 5, generator=g) @ torch.rand(5, 30, generator=g)
    W, H, info = nmf(V, 5, max_iter=1000, tol=0.0)
    assert info["errors"][-1] < 0.02
    assert torch.linalg.norm(V - W @ H) / torch.linalg.norm(V) == pytest.approx(info["errors"][-1], rel=1e-3, abs=1e-4)
    assert (W >= 0).all() and (H >= 0).all()


def test_nmf_stopping_rule_and_determinism():
    V = torch.rand(200, 20, generator=torch.Generator().manual_seed(3))
    W1, H1, info = nmf(V, 4, max_iter=200, tol=1e-3, seed=7)
    assert info["converged"] and info["iterations"] % 10 == 0 and info["iterations"] < 200
    e = info["errors"]
    assert (e[-2] - e[-1]) / e[0] < 1e-3                      # stopped at the first check below tol
    assert all((a - b) / e[0] >= 1e-3 for a, b in zip(e[:-2], e[1:-1]))
    W2, H2, _ = nmf(V, 4, max_iter=200, tol=1e-3, seed=7)
    assert torch.equal(W1, W2) and torch.equal(H1, H2)
    W3, _, _ = nmf(V, 4, max_iter=200, tol=1e-3, seed=8)
    assert not torch.equal(W1, W3)
    _, _, info = nmf(V, 4, max_iter=35, tol=0.0)
    assert info["iterations"] == 35 and not info["converged"] and len(info["errors"]) == 1 + 3 + 1


def test_nmf_rejects_negative_input():
    with pytest.raises(ValueError, match="non-negative"):
        nmf(-torch.ones(4, 3), 2)


def test_dff_heatmaps_are_normalised_per_map():
    feats, _, _ = _planted()
    heat = dff(feats, 4, size=24)
    assert heat.shape == (6, 4, 24, 24)
    assert torch.allclose(heat.amax(dim=(2, 3)), torch.ones(6, 4), atol=1e-5)
    assert heat.min() >= 0


def _fg_ari(out, gt):
    m = gt > 0
    return adjusted_rand_score(gt[m].numpy(), out["labels"][m].numpy())


def _check_format(out, fg, k):
    n, _, h, w = fg.shape
    assert out["probs"].shape == (n, k + 1, h, w) and out["labels"].shape == (n, h, w)
    assert torch.allclose(out["probs"].sum(1), torch.ones(n, h, w), atol=1e-5)
    assert (out["labels"][fg[:, 0] < 0.5] == 0).all()
    assert (out["labels"][fg[:, 0] >= 0.5] >= 1).all() and out["labels"].max() <= k
    inside = fg[:, 0] >= 0.5                                                # labels = argmax over the parts
    assert torch.equal(out["labels"][inside], out["probs"][:, 1:].argmax(1)[inside] + 1)


def test_kmeans_recovers_planted_parts():
    feats, fg, gt = _planted()
    out = kmeans_parts(feats, fg, 3, seed=0)
    _check_format(out, fg, 3)
    assert _fg_ari(out, gt) > 0.99
    again = kmeans_parts(feats, fg, 3, seed=0)
    assert torch.equal(out["labels"], again["labels"])


def test_kmeans_upsamples_to_the_mask_size():
    feats, fg, gt = _planted(size=8)
    fg_big = torch.nn.functional.interpolate(fg, size=16, mode="nearest")
    out = kmeans_parts(feats, fg_big[:, 0], 3)                              # (N, H, W) mask accepted too
    _check_format(out, fg_big, 3)


def test_dff_with_mask_recovers_planted_parts():
    feats, fg, gt = _planted()
    out = dff_parts(feats, 3, fg=fg, seed=0)
    _check_format(out, fg, 3)
    assert _fg_ari(out, gt) > 0.99
    assert torch.equal(out["labels"], dff_parts(feats, 3, fg=fg, seed=0)["labels"])


def test_dff_without_mask_takes_the_border_factor_as_background():
    feats, fg, gt = _planted()
    out = dff_parts(feats, 3, seed=0)
    assert out["probs"].shape == (6, 4, 12, 12)
    assert torch.allclose(out["probs"].sum(1), torch.ones(6, 12, 12), atol=1e-5)
    assert adjusted_rand_score(gt.flatten().numpy(), out["labels"].flatten().numpy()) > 0.99
    assert ((out["labels"] == 0) == (gt == 0)).all()


def test_border_share():
    heat = torch.zeros(1, 2, 8, 8)
    heat[0, 0, 0, :] = 1                        # all on the border
    heat[0, 1, 3:5, 3:5] = 1                    # all inside
    assert border_share(heat).tolist() == [1.0, 0.0]


def test_kmeans_fit_size_clusters_upsampled_features():
    # 2x2 feature maps, a mask covering a quarter of each feature cell: no feature pixel is >= 50%
    # foreground at the features' resolution, while at the appendix's upsampled size every masked pixel counts
    n = 4
    feats = torch.rand(n, 5, 2, 2, generator=torch.Generator().manual_seed(0))
    fg = torch.zeros(n, 1, 16, 16)
    fg[:, :, 2:6, 2:6] = 1.0
    fg[:, :, 10:14, 10:14] = 1.0
    with pytest.raises(ValueError, match="only 0 foreground feature pixels"):
        kmeans_parts(feats, fg, 2)
    out = kmeans_parts(feats, fg, 2, fit_size=16, max_iter=100)
    _check_format(out, fg, 2)


def test_kmeans_protocols_name_their_layers():
    from partlab import evaluation
    from partlab.baselines import KMEANS_PROTOCOLS
    from partlab.features import VGG19_RECIPES, get_extractor

    assert set(KMEANS_PROTOCOLS) == {"partlab", "appendix"}
    assert VGG19_RECIPES[KMEANS_PROTOCOLS["appendix"]["layers"]] == {"relu5_2": 1.0, "relu5_4": 1.0}
    assert KMEANS_PROTOCOLS["appendix"]["fit_size"] == 64 and KMEANS_PROTOCOLS["appendix"]["max_iter"] == 100
    assert get_extractor("standin", device="cpu").layers_for("kmeans_appendix") == {"relu4_2": 1.0, "relu5_2": 1.0}
    feats, fg, _ = _planted(size=8)
    images = torch.rand(len(fg), 3, 8, 8)
    out = evaluation.baseline_parts("kmeans", images, fg, 3, features="rgb", device="cpu", kmeans="appendix")
    assert out["labels"].shape == (len(fg), 8, 8)
    with pytest.raises(ValueError, match="kmeans='paper'.*appendix"):
        evaluation.baseline_parts("kmeans", images, fg, 3, features="rgb", device="cpu", kmeans="paper")
