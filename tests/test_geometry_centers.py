"""Coordinate helpers and part centres: values a reader can check by hand."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from partlab.geometry import part_centers, pixel_grid, to_normalized, to_pixels


# --- coordinate helpers -----------------------------------------------------------------------


def test_pixel_grid_values_and_layout():
    grid = pixel_grid(2, 4)
    assert grid.shape == (2, 4, 2)
    # columns of a width-4 map: x = (2j+1)/4 - 1 = -0.75, -0.25, 0.25, 0.75; rows of a height-2 map: y = -0.5, 0.5
    assert torch.allclose(grid[0, :, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.allclose(grid[:, 0, 1], torch.tensor([-0.5, 0.5]))
    assert torch.allclose(grid[1, 3], torch.tensor([0.75, 0.5]))


def test_pixel_grid_is_identity_for_grid_sample():
    img = torch.rand(1, 3, 5, 7)
    grid = pixel_grid(5, 7)[None]
    assert torch.allclose(F.grid_sample(img, grid, align_corners=False), img, atol=1e-6)


def test_pixel_grid_dtype_device():
    grid = pixel_grid(3, 3, device="cpu", dtype=torch.float64)
    assert grid.dtype == torch.float64 and grid.device.type == "cpu"
    with pytest.raises(ValueError, match="h, w >= 1"):
        pixel_grid(0, 3)


def test_to_pixels_and_back():
    # pixel centre of column 3 of width 8 is x = 7/8 - 1; to_pixels gives back exactly 3
    pts = torch.tensor([[7 / 8 - 1, 3 / 4 - 1]])  # row 1 of height 4: y = 3/4 - 1
    assert torch.allclose(to_pixels(pts, (4, 8)), torch.tensor([[3.0, 1.0]]))
    # image corners sit half a pixel outside the outermost centres
    assert np.allclose(to_pixels(np.array([-1.0, 1.0]), 10), [-0.5, 9.5])
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(5, 3, 2))
    assert np.allclose(to_normalized(to_pixels(x, (6, 9)), (6, 9)), x)
    assert isinstance(to_pixels([[0.0, 0.0]], 4), np.ndarray)


def test_coordinate_helpers_reject_bad_shapes():
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        to_pixels(torch.zeros(3, 3), 4)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        to_normalized(torch.zeros(3, 2), (1, 2, 3))


# --- part centres -----------------------------------------------------------------------------


def test_delta_map_gives_the_pixel_centre():
    h, w, i, j = 6, 8, 2, 5
    parts = torch.zeros(1, 1, h, w)
    parts[0, 0, i, j] = 3.0  # the scale does not matter: the map is normalised
    c = part_centers(parts)
    assert torch.allclose(c, torch.tensor([[[(2 * j + 1) / w - 1, (2 * i + 1) / h - 1]]]))
    assert torch.allclose(c, pixel_grid(h, w)[i, j].view(1, 1, 2))
    assert torch.allclose(to_pixels(c, (h, w)), torch.tensor([[[float(j), float(i)]]]))


def test_translated_map_gives_translated_centre():
    torch.manual_seed(0)
    h, w = 16, 20
    parts = torch.zeros(2, 3, h, w)
    parts[..., 4:9, 3:10] = torch.rand(2, 3, 5, 7)  # mass away from the border, so rolling does not wrap
    rolled = torch.roll(parts, shifts=3, dims=-1)    # 3 px right
    shift = part_centers(rolled) - part_centers(parts)
    assert torch.allclose(shift[..., 0], torch.full((2, 3), 6 / w), atol=1e-5)  # 3 px = 2*3/W
    assert torch.allclose(shift[..., 1], torch.zeros(2, 3), atol=1e-5)


def test_uniform_map_is_centred():
    assert torch.allclose(part_centers(torch.ones(2, 4, 5, 7)), torch.zeros(2, 4, 2), atol=1e-6)


def test_eps_pulls_towards_the_centre():
    h = w = 4
    parts = torch.zeros(1, 1, h, w)
    parts[0, 0, 0, 0] = 1.0  # corner pixel centre (-0.75, -0.75)
    assert torch.allclose(part_centers(parts, eps=0.0), torch.tensor([[[-0.75, -0.75]]]))
    # eps adds uniform mass 16 * eps with centre (0, 0): c = 1 * (-0.75) / (1 + 16 eps)
    eps = 1 / 16
    assert torch.allclose(part_centers(parts, eps=eps), torch.tensor([[[-0.375, -0.375]]]))
    # zero mass with eps > 0: the uniform map's centre
    assert torch.allclose(part_centers(torch.zeros(1, 1, h, w), eps=1e-3), torch.zeros(1, 1, 2))
    with pytest.raises(ValueError, match="eps"):
        part_centers(parts, eps=-1.0)


def test_zero_mass_part_is_centre_with_finite_gradient():
    parts = torch.zeros(1, 2, 4, 4)
    parts[0, 0, 1, 1] = 1.0  # part 1 has mass, part 2 is empty
    parts.requires_grad_(True)
    c = part_centers(parts)
    assert torch.isfinite(c).all()
    assert torch.allclose(c[0, 1], torch.zeros(2))
    c.sum().backward()
    assert torch.isfinite(parts.grad).all()


def test_gradient_matches_finite_differences():
    torch.manual_seed(1)
    parts = (torch.rand(1, 2, 3, 4, dtype=torch.float64) + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: part_centers(p, eps=1e-3), (parts,))


@pytest.mark.parametrize("bad", [torch.zeros(2, 3, 4), torch.zeros(1, 2, 3, 4, 5), np.zeros((1, 2, 3, 4))])
def test_bad_shapes_raise(bad):
    with pytest.raises(ValueError, match=r"\(B, K, H, W\)"):
        part_centers(bad)
