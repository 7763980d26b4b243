"""Motion model of the motion-supervised method (partlab.motion): hand values, invariances,
gradients and degenerate inputs."""

import pytest
import torch

from partlab.geometry import pixel_grid, to_normalized
from partlab.motion import (
    MotionSegmenter,
    background_visibility,
    part_flow,
    regularized_inverse,
    warp_with_flow,
)


def _eye(b, k):
    return torch.eye(2).expand(b, k, 2, 2).clone()


def _seg_from_labels(labels, k):
    """One-hot ``(B, K+1, H, W)`` from integer labels ``(B, H, W)``."""
    return torch.nn.functional.one_hot(labels, k + 1).permute(0, 3, 1, 2).float()


def _square_labels(h, w, rows, cols):
    labels = torch.zeros(1, h, w, dtype=torch.long)
    labels[0, rows[0]:rows[1], cols[0]:cols[1]] = 1
    return labels


# --- part_flow: identity, translation, affine -------------------------------------------------


def test_identical_frames_give_the_identity_flow_and_reconstruct_the_source():
    torch.manual_seed(0)
    seg = torch.rand(2, 4, 5, 7).softmax(1)                         # K = 3, soft
    shift = torch.rand(2, 3, 2) * 2 - 1
    affine = _eye(2, 3) + 0.3 * torch.randn(2, 3, 2, 2)             # same matrices in both frames
    flow = part_flow(seg, shift, shift, affine, affine)
    assert flow.shape == (2, 5, 7, 2)
    assert torch.allclose(flow, pixel_grid(5, 7).expand(2, 5, 7, 2), atol=1e-5)
    source = torch.rand(2, 3, 5, 7)
    assert torch.allclose(warp_with_flow(source, flow), source, atol=1e-4)


def test_translated_part_moves_and_the_background_stays():
    # 8x8 frames; the part is a 2x2 square at rows 1-2, cols 1-2 in the source, rows 4-5, cols 3-4 in the target
    h = w = 8
    source = torch.linspace(0, 1, h * w).view(1, 1, h, w).clone()     # textured background
    source[..., 1:3, 1:3] = 10.0
    seg_target = _seg_from_labels(_square_labels(h, w, (4, 6), (3, 5)), 1)
    p_source = to_normalized(torch.tensor([[[1.5, 1.5]]]), (h, w))   # square centres, pixel (x, y)
    p_target = to_normalized(torch.tensor([[[3.5, 4.5]]]), (h, w))
    d = p_source - p_target                                          # 2 px left, 3 px up
    assert torch.allclose(d, torch.tensor([[[-0.5, -0.75]]]))
    flow = part_flow(seg_target, p_source, p_target, _eye(1, 1), _eye(1, 1))
    z = pixel_grid(h, w)
    on_part = seg_target[0, 1].bool()
    assert torch.allclose(flow[0][on_part], z[on_part] + d[0, 0], atol=1e-5)
    assert torch.allclose(flow[0][~on_part], z[~on_part], atol=1e-6)           # background: identity
    warped = warp_with_flow(source, flow)
    assert torch.allclose(warped[0, 0][on_part], torch.full((4,), 10.0), atol=1e-4)  # the part moved
    assert torch.allclose(warped[0, 0][~on_part], source[0, 0][~on_part], atol=1e-5)
    # the source square is still visible in the warped background: the visibility mask hides exactly it
    seg_source = _seg_from_labels(_square_labels(h, w, (1, 3), (1, 3)), 1)
    hidden = background_visibility(seg_source, seg_target)[0, 0] < 0.5
    assert torch.equal(hidden, seg_source[0, 1].bool())


def test_affine_flow_by_hand():
    # 4x4 map, one part covering everything; columns/rows at -0.75, -0.25, 0.25, 0.75
    seg = torch.zeros(1, 2, 4, 4)
    seg[:, 1] = 1.0
    p_target, p_source = torch.tensor([[[0.25, 0.0]]]), torch.tensor([[[-0.5, 0.5]]])
    a_target = torch.tensor([[[[2.0, 0.0], [0.0, 4.0]]]])
    a_source = torch.tensor([[[[0.0, -2.0], [2.0, 0.0]]]])           # rotation by 90 deg, scale 2
    # A_S A_T^-1 = [[0, -0.5], [1, 0]]
    flow = part_flow(seg, p_source, p_target, a_source, a_target)[0]
    # z = (0.75, -0.75): z - p_T = (0.5, -0.75) -> (0.375, 0.5) -> + p_S = (-0.125, 1.0)
    assert torch.allclose(flow[0, 3], torch.tensor([-0.125, 1.0]), atol=1e-5)
    # z = (-0.25, 0.25): z - p_T = (-0.5, 0.25) -> (-0.125, -0.5) -> (-0.625, 0.0)
    assert torch.allclose(flow[2, 1], torch.tensor([-0.625, 0.0]), atol=1e-5)
    # z = (-0.25, -0.25): z - p_T = (-0.5, -0.25) -> (0.125, -0.5) -> (-0.375, 0.0)
    assert torch.allclose(flow[1, 1], torch.tensor([-0.375, 0.0]), atol=1e-5)
    # soft assignment: 1/4 background, 3/4 part -> 0.25 z + 0.75 T(z)
    seg[0, 0, 0, 3], seg[0, 1, 0, 3] = 0.25, 0.75
    soft = part_flow(seg, p_source, p_target, a_source, a_target)[0, 0, 3]
    assert torch.allclose(soft, torch.tensor([0.25 * 0.75 + 0.75 * -0.125, 0.25 * -0.75 + 0.75 * 1.0]), atol=1e-5)


def test_two_parts_each_follow_their_own_motion():
    seg = torch.zeros(1, 3, 2, 2)
    seg[0, 1, :, 0] = 1.0                                            # part 1: left column
    seg[0, 2, :, 1] = 1.0                                            # part 2: right column
    shift_target = torch.zeros(1, 2, 2)
    shift_source = torch.tensor([[[0.1, 0.0], [0.0, -0.2]]])
    flow = part_flow(seg, shift_source, shift_target, _eye(1, 2), _eye(1, 2))[0]
    z = pixel_grid(2, 2)
    assert torch.allclose(flow[:, 0], z[:, 0] + torch.tensor([0.1, 0.0]))
    assert torch.allclose(flow[:, 1], z[:, 1] + torch.tensor([0.0, -0.2]))


# --- part_flow: degenerate input, gradients -----------------------------------------------------


def test_singular_target_affine_gives_a_finite_flow():
    seg = torch.rand(1, 2, 3, 3).softmax(1).requires_grad_()
    shift_source, shift_target = torch.rand(1, 1, 2, requires_grad=True), torch.rand(1, 1, 2, requires_grad=True)
    affine_source = _eye(1, 1).requires_grad_()
    for singular in (torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2), torch.tensor([[[[1.0, 1.0], [1.0, 1.001]]]])):
        affine_target = singular.clone().requires_grad_()
        flow = part_flow(seg, shift_source, shift_target, affine_source, affine_target)
        assert torch.isfinite(flow).all()
        grads = torch.autograd.grad(flow.sum(), (seg, shift_source, shift_target, affine_source, affine_target))
        assert all(torch.isfinite(g).all() for g in grads)
    # A_T = 0: the damped inverse is 0, so the part reads the source anchor everywhere
    flow = part_flow(seg, shift_source, shift_target, affine_source, torch.zeros(1, 1, 2, 2))
    z = pixel_grid(3, 3)
    expected = seg[0, 0, ..., None] * z + seg[0, 1, ..., None] * shift_source[0, 0]
    assert torch.allclose(flow[0], expected, atol=1e-6)


def test_regularized_inverse_matches_the_exact_inverse_when_well_conditioned():
    torch.manual_seed(0)
    m = torch.eye(2) + 0.3 * torch.randn(5, 3, 2, 2)
    assert torch.allclose(regularized_inverse(m), torch.linalg.inv(m), rtol=1e-4, atol=1e-5)
    assert torch.allclose(regularized_inverse(m, eps=0.0), torch.linalg.inv(m), rtol=1e-5, atol=1e-6)
    assert torch.equal(regularized_inverse(torch.zeros(2, 2)), torch.zeros(2, 2))
    assert regularized_inverse(torch.ones(2, 2)).abs().max() <= 1 / (2 * 1e-6 ** 0.5)


@pytest.mark.parametrize("k", [1, 2])
def test_part_flow_gradients_reach_every_input(k):
    torch.manual_seed(k)
    inputs = (torch.randn(2, k + 1, 3, 4, dtype=torch.float64).softmax(1),
              torch.rand(2, k, 2, dtype=torch.float64) - 0.5,
              torch.rand(2, k, 2, dtype=torch.float64) - 0.5,
              torch.eye(2, dtype=torch.float64) + 0.2 * torch.randn(2, k, 2, 2, dtype=torch.float64),
              torch.eye(2, dtype=torch.float64) + 0.2 * torch.randn(2, k, 2, 2, dtype=torch.float64))
    inputs = tuple(x.requires_grad_() for x in inputs)
    assert torch.autograd.gradcheck(part_flow, inputs)
    grads = torch.autograd.grad(part_flow(*inputs).pow(2).sum(), inputs)
    assert all(g.abs().sum() > 0 for g in grads)


def test_part_flow_is_float32_under_autocast_and_checks_shapes():
    seg = torch.rand(1, 3, 4, 4).softmax(1).bfloat16()
    shift, affine = torch.zeros(1, 2, 2).bfloat16(), _eye(1, 2).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert part_flow(seg, shift, shift, affine, affine).dtype == torch.float32
    with pytest.raises(ValueError, match="shift_target"):
        part_flow(seg.float(), torch.zeros(1, 2, 2), torch.zeros(1, 3, 2), _eye(1, 2), _eye(1, 2))
    with pytest.raises(ValueError, match="seg_target"):
        part_flow(torch.rand(1, 1, 4, 4), torch.zeros(1, 0, 2), torch.zeros(1, 0, 2), _eye(1, 0), _eye(1, 0))


# --- background_visibility ------------------------------------------------------------------------


def test_visibility_by_hand():
    # three pixels, K = 2: (a) soft, (b) target object, (c) target background behind the source object
    seg_target = torch.tensor([[0.5, 0.2, 0.3], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 3)
    seg_source = torch.tensor([[0.2, 0.4, 0.4], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]).T.reshape(1, 3, 1, 3)
    v = background_visibility(seg_source, seg_target)
    assert v.shape == (1, 1, 1, 3)
    assert torch.allclose(v.flatten(), torch.tensor([1 - 0.5 * 0.8, 1.0, 0.0]))


def test_visibility_is_one_where_the_source_is_background():
    seg_source = torch.zeros(2, 4, 3, 3)
    seg_source[:, 0] = 1.0
    seg_target = torch.rand(2, 4, 3, 3).softmax(1)
    assert torch.equal(background_visibility(seg_source, seg_target), torch.ones(2, 1, 3, 3))


def test_visibility_stops_the_gradient_through_the_target_background_only():
    torch.manual_seed(0)
    seg_source = torch.rand(2, 3, 4, 4).softmax(1).requires_grad_()
    seg_target = torch.rand(2, 3, 4, 4).softmax(1).requires_grad_()
    target_background = 1 - seg_target[:, 1:].sum(1, keepdim=True).detach()
    source_object = seg_source[:, 1:].sum(1, keepdim=True).detach()

    v = background_visibility(seg_source, seg_target)
    g_source, g_target = torch.autograd.grad(v.sum(), (seg_source, seg_target), allow_unused=True)
    assert g_target is None or torch.equal(g_target, torch.zeros_like(g_target))   # nothing reaches Y_T
    assert torch.allclose(g_source[:, 1:], -target_background.expand(2, 2, 4, 4))  # dV/dY_S,k = -Y_T,0
    assert torch.equal(g_source[:, 0], torch.zeros(2, 4, 4))

    # with the flow in the same graph, V adds nothing to the target's gradient (channel 0 included)
    shift, affine = torch.rand(2, 2, 2), _eye(2, 2)
    flow_only = torch.autograd.grad(part_flow(seg_target, shift, 0 * shift, affine, affine).sum(), seg_target)[0]
    both = part_flow(seg_target, shift, 0 * shift, affine, affine).sum() + 3.0 * background_visibility(
        seg_source, seg_target).sum()
    assert torch.allclose(torch.autograd.grad(both, seg_target)[0], flow_only)

    # the V-back-prop ablation: the target's part channels get dV/dY_T,k = O_S, channel 0 still nothing
    v = background_visibility(seg_source, seg_target, stop_gradient=False)
    g_target = torch.autograd.grad(v.sum(), seg_target)[0]
    assert torch.allclose(g_target[:, 1:], source_object.expand(2, 2, 4, 4))
    assert torch.equal(g_target[:, 0], torch.zeros(2, 4, 4))


def test_visibility_checks_shapes():
    with pytest.raises(ValueError, match="same shape"):
        background_visibility(torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 5))


# --- warp_with_flow ---------------------------------------------------------------------------------


def test_warp_with_flow_follows_grid_sample_conventions():
    maps = torch.rand(1, 2, 4, 6)
    flow = pixel_grid(4, 6)[None].clone()
    flow[..., 0] += 2 / 6                                           # read one column to the right
    out = warp_with_flow(maps, flow)
    assert torch.allclose(out[..., :-1], maps[..., 1:], atol=1e-5)
    assert torch.equal(out[..., -1], torch.zeros(1, 2, 4))          # zero padding
    assert torch.allclose(warp_with_flow(maps, flow, padding_mode="border")[..., -1], maps[..., -1], atol=1e-5)
    assert warp_with_flow(maps.double(), flow).dtype == torch.float64


# --- MotionSegmenter ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scale,size", [(1.0, (12, 16)), (0.5, (16, 16)), (0.25, (32, 32))])
def test_segmenter_outputs(scale, size):
    torch.manual_seed(0)
    net = MotionSegmenter(3, scale=scale, base_channels=4)
    out = net(torch.rand(2, 3, *size))
    small = (round(size[0] * scale), round(size[1] * scale))
    assert out["seg"].shape == (2, 4, *size)
    assert out["shift"].shape == (2, 3, 2)
    assert out["affine"].shape == (2, 3, 2, 2)
    assert out["heatmap"].shape == (2, 3, *small)
    assert torch.allclose(out["seg"].sum(1), torch.ones(2, *size), atol=1e-5)
    assert (out["seg"] >= 0).all()
    assert torch.allclose(out["heatmap"].sum((-2, -1)), torch.ones(2, 3), atol=1e-5)
    assert torch.allclose(out["affine"], _eye(2, 3), atol=1e-5)    # weight 0, bias [1, 0, 0, 1]
    assert (out["shift"].abs() <= 1).all()


def test_segmenter_anchors_stay_inside_and_gradients_reach_the_heads():
    torch.manual_seed(0)
    net = MotionSegmenter(2, scale=0.5, base_channels=4)
    with torch.no_grad():
        net.keypoint_head.bias.copy_(torch.tensor([50.0, -50.0]))
    out = net(torch.rand(1, 3, 16, 16))
    assert (out["shift"].abs() <= 1).all()
    loss = out["seg"][:, 1].mean() + out["shift"].sum() + out["affine"].sum()
    loss.backward()
    for head in (net.seg_head, net.keypoint_head, net.affine_head):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_segmenter_is_finite_on_a_constant_image():
    net = MotionSegmenter(2, scale=0.5, base_channels=4)
    images = torch.full((1, 3, 16, 16), 0.5)
    assert torch.allclose(net.downscale(images), torch.full((1, 3, 8, 8), 0.5))   # anti-aliasing keeps constants
    out = net(images)
    assert all(torch.isfinite(value).all() for value in out.values())


def test_segment_anchors_are_the_segments_centres_of_mass():
    torch.manual_seed(0)
    net = MotionSegmenter(2, scale=1.0, base_channels=4, anchors="segments")
    assert net.keypoint_head is None
    labels = _square_labels(16, 16, (2, 6), (10, 14))           # part 1 in the top right, part 2 empty
    with torch.no_grad():                                     # the segmentation head outputs the labels, sharply
        net.seg_head.weight.zero_()
        net.seg_head.bias.zero_()
    logits = 60.0 * _seg_from_labels(labels, 2)
    net.seg_head.register_forward_hook(lambda module, args, out: out + logits)
    out = net(torch.rand(1, 3, 16, 16))
    centre = to_normalized(torch.tensor([[11.5, 3.5]]), (16, 16))[0]    # pixel centre (x, y) of the square
    assert torch.allclose(out["shift"][0, 0], centre, atol=1e-3)
    assert torch.allclose(out["shift"][0, 1], torch.zeros(2), atol=1e-3)     # an empty part sits at the centre
    assert torch.allclose(out["heatmap"].sum((-2, -1)), torch.ones(1, 2), atol=1e-5)
    assert torch.allclose(out["affine"], _eye(1, 2), atol=1e-5)


def test_segment_anchors_pass_gradients_to_the_segmentation_and_stay_finite():
    torch.manual_seed(0)
    net = MotionSegmenter(3, scale=0.5, base_channels=4, anchors="segments")
    out = net(torch.full((2, 3, 16, 16), 0.5))                # a constant image
    assert all(torch.isfinite(value).all() for value in out.values())
    (out["shift"].sum() + out["affine"].sum()).backward()
    assert net.seg_head.weight.grad.abs().sum() > 0 and net.affine_head.weight.grad.abs().sum() > 0
    assert torch.isfinite(net.seg_head.weight.grad).all()
    with pytest.raises(ValueError, match="anchors"):
        MotionSegmenter(2, anchors="heatmaps")


def test_segmenter_checks_its_arguments():
    with pytest.raises(ValueError, match="scale"):
        MotionSegmenter(2, scale=2.0)
    with pytest.raises(ValueError, match="num_parts"):
        MotionSegmenter(0)
    with pytest.raises(ValueError, match="images"):
        MotionSegmenter(2, scale=1.0, base_channels=4)(torch.rand(3, 16, 16))
