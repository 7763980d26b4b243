"""Warps and colour jitter (partlab.geometry): values a reader can check by hand."""

import pytest
import torch

from partlab.geometry import (
    Warp,
    color_jitter,
    grid,
    identity_warp,
    jitter_preset,
    pixel_grid,
    random_warp,
    similarity_warp,
    to_pixels,
    tps_warp,
    unwarp_points,
    valid_mask,
    warp_images,
    warp_jacobian,
    warp_labels,
    warp_points,
    warp_preset,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- identity, translation, rotation ---------------------------------------------------------


def test_identity_warp_changes_nothing():
    warp = identity_warp(2)
    img = torch.rand(2, 3, 5, 7)
    labels = torch.randint(0, 4, (2, 5, 7))
    points = torch.rand(2, 6, 2) * 2 - 1
    assert torch.allclose(warp_images(img, warp), img, atol=1e-6)
    assert torch.equal(warp_labels(labels, warp), labels)
    assert torch.allclose(warp_points(points, warp), points)
    assert torch.allclose(unwarp_points(points, warp), points)
    assert torch.allclose(grid(warp, (5, 7)), pixel_grid(5, 7).expand(2, 5, 7, 2))


def test_translation_moves_content_by_whole_pixels():
    # width 8: one pixel is 2/8 = 0.25 normalised units, so a shift of (0.25, 0) moves content 1 px right
    img = torch.rand(1, 1, 6, 8)
    out = warp_images(img, similarity_warp(0.0, 1.0, (0.25, 0.0)))
    assert torch.allclose(out[..., 1:], img[..., :-1], atol=1e-5)
    assert torch.allclose(out[..., 0], torch.zeros(1, 1, 6))            # zero padding on the left
    assert torch.allclose(warp_points(torch.tensor([[[0.0, 0.0]]]), similarity_warp(0.0, 1.0, (0.25, 0.0))),
                          torch.tensor([[[0.25, 0.0]]]))


def test_rotation_by_90_degrees_turns_content_clockwise():
    img = torch.arange(16.0).reshape(1, 1, 4, 4)                         # row-major 0..15
    out = warp_images(img, similarity_warp(90.0, 1.0, (0.0, 0.0)))[0, 0]
    # top-left -> top-right -> bottom-right -> bottom-left -> top-left (clockwise on screen)
    assert out[0, 3] == pytest.approx(0.0, abs=1e-4)
    assert out[3, 3] == pytest.approx(3.0, abs=1e-4)
    assert out[3, 0] == pytest.approx(15.0, abs=1e-4)
    assert out[0, 0] == pytest.approx(12.0, abs=1e-4)
    assert torch.allclose(out, torch.rot90(img[0, 0], -1), atol=1e-4)


def test_zoom_two_shows_the_central_half():
    # zoom 2 on a 4x4 image: output pixel centres x = +-0.25, +-0.75 read the input at +-0.125, +-0.375
    warp = similarity_warp(0.0, 2.0, (0.0, 0.0))
    z = torch.tensor([[[0.75, -0.25]]])
    assert torch.allclose(unwarp_points(z, warp), torch.tensor([[[0.375, -0.125]]]))
    mask = valid_mask(similarity_warp(0.0, 0.5, (0.0, 0.0)), 8)           # zoom 0.5: content in the middle
    assert mask[0, 0, 2:6, 2:6].min() == 1 and mask[0, 0, 0, 0] == 0


# --- TPS, inversion, landmarks ---------------------------------------------------------------


def test_tps_warp_interpolates_its_control_points():
    ticks = torch.linspace(-1, 1, 3)
    centers = torch.stack(torch.meshgrid(ticks, ticks, indexing="xy"), -1).reshape(-1, 2)  # (9, 2)
    targets = centers + 0.05 * torch.randn(2, 9, 2, generator=_gen())
    warp = tps_warp(centers, targets)
    assert torch.allclose(unwarp_points(centers.expand(2, 9, 2), warp), targets, atol=1e-5)
    # targets from an affine map give that affine map (zero bending)
    affine_targets = centers @ torch.tensor([[1.1, 0.2], [-0.1, 0.9]]).T + torch.tensor([0.1, -0.2])
    warp = tps_warp(centers, affine_targets[None])
    assert warp.weights.abs().max() < 1e-5


@pytest.mark.parametrize("preset", ["scops", "contrastive", "motion"])
def test_warp_points_inverts_unwarp_points(preset):
    warp = random_warp(8, **warp_preset(preset), generator=_gen(1))
    p = torch.rand(8, 50, 2, generator=_gen(2)) * 1.8 - 0.9
    assert (unwarp_points(warp_points(p, warp), warp) - p).abs().max() < 1e-4
    assert (warp_points(unwarp_points(p, warp), warp) - p).abs().max() < 1e-4


def test_landmark_blob_lands_where_warp_points_says():
    # a Gaussian blob (sigma 1.5 px) at a landmark; its centroid after warping the image
    # must be the warped landmark
    size = 64
    landmarks = torch.tensor([[[0.1, -0.15]], [[-0.2, 0.1]], [[0.0, 0.2]], [[0.15, 0.15]]])  # (4, 1, 2)
    g = pixel_grid(size, size)
    sigma = 2 * 1.5 / size
    blob = torch.exp(-((g - landmarks[:, :, None, None, :]) ** 2).sum(-1) / (2 * sigma**2))  # (4, 1, H, W)
    warp = random_warp(4, **warp_preset("scops"), generator=_gen(3))
    warped = warp_images(blob, warp)
    mass = warped / warped.sum(dim=(-2, -1), keepdim=True)
    centroid = (mass[..., None] * g).sum(dim=(-3, -2))                   # (4, 1, 2)
    expected = warp_points(landmarks, warp)
    error_px = (to_pixels(centroid, size) - to_pixels(expected, size)).norm(dim=-1)
    assert error_px.max() < 1.0


def test_jacobian_matches_autograd_and_inverse_gradient():
    warp = random_warp(2, **warp_preset("motion"), generator=_gen(4))
    z = (torch.rand(2, 3, 2, generator=_gen(5)) - 0.5).requires_grad_()
    t = unwarp_points(z, warp)
    rows = [torch.autograd.grad(t[..., a].sum(), z, retain_graph=True)[0] for a in range(2)]
    assert torch.allclose(warp_jacobian(z.detach(), warp), torch.stack(rows, -2), atol=1e-5)
    # d warp_points / d p = J_T^-1 at the solution
    p = t.detach().requires_grad_()
    q = warp_points(p, warp)
    rows = [torch.autograd.grad(q[..., a].sum(), p, retain_graph=True)[0] for a in range(2)]
    assert torch.allclose(torch.stack(rows, -2), torch.linalg.inv(warp_jacobian(q.detach(), warp)), atol=1e-4)


# --- random warps ------------------------------------------------------------------------------


def test_random_warp_ranges_batch_and_determinism():
    kwargs = dict(warp_preset("scops"), tps_noise=0.0)                    # pure similarities
    warp = random_warp(500, **kwargs, generator=_gen(6))
    assert warp.centers is None
    zoom = 1 / warp.affine[:, :, :2].det().sqrt()                         # det A = 1 / zoom^2
    assert zoom.min() >= 0.7 - 1e-5 and zoom.max() <= 2.0 + 1e-5
    a = warp.affine[:, :, :2] * zoom[:, None, None]                       # R(-angle)
    angle = torch.rad2deg(torch.atan2(-a[:, 0, 1], a[:, 0, 0]))
    assert angle.abs().max() <= 60 + 1e-3 and angle.abs().max() > 50
    shift = warp_points(torch.zeros(500, 1, 2), warp)[:, 0]               # where the centre goes
    assert shift.abs().max() <= 0.1 + 1e-5
    assert len(torch.unique(warp.affine[:, 0, 0])) == 500                 # one draw per image
    again = random_warp(500, **kwargs, generator=_gen(6))
    assert torch.equal(again.affine, warp.affine)
    full = random_warp(3, **warp_preset("scops"), generator=_gen(7))
    assert full.centers.shape == (3, 25, 2) and full.weights.shape == (3, 25, 2)


def test_warp_presets_and_checks():
    assert warp_preset("contrastive")["scale"] == (0.7, 2.0)
    assert warp_preset("motion")["affine_noise"] == 0.05
    with pytest.raises(ValueError, match="unknown warp preset"):
        warp_preset("nope")
    with pytest.raises(ValueError, match="scale"):
        random_warp(2, scale=(2.0, 0.7))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        warp_images(torch.rand(3, 8, 8), identity_warp(3))
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        warp_labels(torch.zeros(3, 1, 8, 8, dtype=torch.long), identity_warp(3))
    with pytest.raises(ValueError, match=r"\(B, N, 2\)"):
        warp_points(torch.rand(3, 2), identity_warp(3))
    with pytest.raises(ValueError, match="batch size"):
        warp_images(torch.rand(2, 1, 8, 8), identity_warp(3))
    with pytest.raises(ValueError, match=r"\(B, 2, 3\)"):
        Warp(torch.eye(2, 3))


def test_warp_labels_keep_integer_values_and_fill():
    labels = torch.randint(0, 5, (2, 16, 16), generator=_gen(8)).to(torch.uint8)
    warp = similarity_warp(torch.tensor([30.0, -45.0]), torch.tensor([0.7, 1.3]), torch.zeros(2, 2))
    out = warp_labels(labels, warp, fill=255)
    assert out.dtype == torch.uint8 and out.shape == (2, 16, 16)
    assert set(out.unique().tolist()) <= set(range(5)) | {255}
    assert (out[0] == 255).any()                                          # zoom 0.7 reads outside
    assert out[0, 8, 8] in labels[0].unique()


def test_non_square_and_float64():
    warp = random_warp(2, **warp_preset("scops"), generator=_gen(9), dtype=torch.float64)
    img = torch.rand(2, 3, 9, 13, dtype=torch.float64)
    out = warp_images(img, warp, size=(5, 7))
    assert out.shape == (2, 3, 5, 7) and out.dtype == torch.float64


# --- colour jitter -----------------------------------------------------------------------------


def test_color_jitter_identity_and_range():
    img = torch.rand(4, 3, 8, 8, generator=_gen(10))
    assert torch.equal(color_jitter(img, 0, 0, 0, 0, generator=_gen()), img)
    assert torch.equal(color_jitter(img, p=0.0, generator=_gen()), img)
    strong = color_jitter(img, brightness=2.0, contrast=2.0, saturation=2.0, hue=0.5, generator=_gen())
    assert strong.min() >= 0 and strong.max() <= 1


def test_color_jitter_brightness_factor_per_image():
    # brightness only: every image is multiplied by its own factor in [1 - 0.3, 1 + 0.3]
    img = torch.rand(1, 3, 8, 8, generator=_gen(11)).mul(0.5).add(0.1).expand(6, 3, 8, 8)
    out = color_jitter(img, brightness=0.3, contrast=0, saturation=0, hue=0, generator=_gen(12))
    ratio = out / img                                                     # (6, 3, 8, 8), constant per image
    factors = ratio.flatten(1).mean(1)
    assert torch.allclose(ratio, factors.view(6, 1, 1, 1).expand_as(ratio), atol=1e-5)
    assert factors.min() >= 0.7 - 1e-6 and factors.max() <= 1.3 + 1e-6
    assert len(torch.unique(factors)) == 6                                # B images, B parameters


def test_color_jitter_deterministic_grayscale_and_checks():
    img = torch.rand(3, 3, 8, 8, generator=_gen(13))
    a = color_jitter(img, **jitter_preset("contrastive"), generator=_gen(14))
    b = color_jitter(img, **jitter_preset("contrastive"), generator=_gen(14))
    assert torch.equal(a, b)
    gray = color_jitter(img, grayscale_p=1.0, generator=_gen())
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        color_jitter(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="hue"):
        color_jitter(img, hue=0.7)
