"""Motion-supervised co-part segmentation as a method: the generator, the perceptual and equivariance
losses (partlab.losses.motion) and MotionCoPart (partlab.methods.motion) trained by partlab.train.fit."""

import math

import pytest
import torch

from partlab.features import get_extractor
from partlab.geometry import Warp, identity_warp, pixel_grid, random_warp, unwarp_points, warp_jacobian, warp_preset
from partlab.losses import equivariance_affine_loss, equivariance_shift_loss, perceptual_loss, transform_jacobian
from partlab.methods import MotionCoPart
from partlab.methods.motion import ABLATIONS
from partlab.methods.registry import get_method, get_recipe, train_variants
from partlab.motion import MotionGenerator, warp_with_flow
from partlab.train import fit

S = 32
TINY = dict(scale=1.0, base_channels=4, depth=2, generator_channels=4, num_residual=1)
ALL_TERMS = {"perceptual", "eqv_shift", "eqv_affine"}


def _texture(b=2, size=S, seed=0):
    """Smooth random images (a blurred noise field), so that a shift changes every feature map."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(b, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def _pair(kind="random", b=2, size=S):
    if kind == "constant":
        image = torch.full((b, 3, size, size), 0.5)
        return {"image": image, "frame2": image.clone()}
    if kind == "identical":
        image = _texture(b, size)
        return {"image": image, "frame2": image.clone()}
    return {"image": _texture(b, size, seed=1), "frame2": _texture(b, size, seed=2)}


def _model(k=3, features="standin", **kwargs):
    torch.manual_seed(0)
    return MotionCoPart(k, features=get_extractor(features, device="cpu"), **(TINY | kwargs))


# --- the generator ----------------------------------------------------------------------------------------


def test_generator_shapes_and_range():
    torch.manual_seed(0)
    g = MotionGenerator(base_channels=4, num_residual=1)
    source = torch.rand(2, 3, S, S)
    features = g.encode(source)
    assert features.shape == (2, 16, S // 4, S // 4) and g.feature_channels == 16
    out = g(source)
    assert out.shape == source.shape and (out >= 0).all() and (out <= 1).all()
    odd = torch.rand(1, 3, 30, 34)                                   # sides not divisible by 4
    assert g(odd).shape == odd.shape
    with pytest.raises(ValueError, match="at least 4x4"):
        g.encode(torch.rand(1, 3, 3, 8))


@pytest.mark.parametrize("num_down", [0, 1, 3])
def test_generator_num_down_sets_the_warp_resolution(num_down):
    g = MotionGenerator(base_channels=4, num_residual=1, num_down=num_down)
    source = torch.rand(2, 3, S, S)
    assert g.encode(source).shape == (2, 4 * 2**num_down, S // 2**num_down, S // 2**num_down)
    assert g(source).shape == source.shape
    with pytest.raises(ValueError, match="num_down >= 0"):
        MotionGenerator(base_channels=4, num_down=-1)


def test_generator_identity_flow_reconstructs_what_the_plain_autoencoder_does():
    # identical frames with identity affines: the flow is the identity grid and V = 1, so the deformation
    # layer passes the source features through and G rebuilds the source as its plain auto-encoder does
    torch.manual_seed(0)
    g = MotionGenerator(base_channels=4, num_residual=1).eval()
    source = torch.rand(2, 3, S, S)
    h = w = S // 4
    identity = pixel_grid(h, w).expand(2, h, w, 2)
    ones = torch.ones(2, 1, h, w)
    assert torch.allclose(g(source, flow=identity, visibility=ones), g(source), atol=1e-5)
    # V = 0 hides every source feature: the output no longer depends on the source
    zeros = torch.zeros(2, 1, h, w)
    assert torch.allclose(g(source, flow=identity, visibility=zeros), g(torch.rand(2, 3, S, S), flow=identity,
                                                                        visibility=zeros), atol=1e-6)
    with pytest.raises(ValueError, match="visibility must have shape"):
        g(source, flow=identity, visibility=torch.ones(2, 1, h + 1, w))


def test_image_skip_generator_starts_as_its_warped_base_and_then_learns_a_residual():
    # a fresh generator with image_skip returns its base image: the source warped by the flow
    torch.manual_seed(0)
    g = MotionGenerator(base_channels=4, num_residual=1, image_skip=True)
    source = _texture(2)
    assert torch.equal(g(source), source)
    h = w = S // 4
    shifted = pixel_grid(h, w).expand(2, h, w, 2) + torch.tensor([0.25, 0.0])         # half a frame's quarter
    full = pixel_grid(S, S).expand(2, S, S, 2) + torch.tensor([0.25, 0.0])
    inner = (..., slice(2, -2), slice(2, -2))          # the resized grid is exact away from the border pixels
    assert torch.allclose(g(source, flow=shifted)[inner], warp_with_flow(source, full)[inner], atol=1e-5)
    with pytest.raises(ValueError, match="needs the base image"):
        g.decode(g.encode(source))
    # one step of training moves the output off its base, and it stays in [0, 1]
    opt = torch.optim.SGD(g.parameters(), lr=1.0)
    (g(source) - 1.0).abs().mean().backward()
    opt.step()
    out = g(source)
    assert not torch.equal(out, source) and (out >= 0).all() and (out <= 1).all()


def test_image_skip_model_rebuilds_identical_frames_at_the_start_and_trains():
    m = _model(image_skip=True, generator_down=1)
    pair = _pair("identical")
    with torch.no_grad():
        motion = m.segment(pair["image"])
        out = m.reconstruct(pair["frame2"], motion, motion)
    assert out["flow"].shape == (2, S // 2, S // 2, 2) and out["base"].shape == pair["image"].shape
    assert torch.allclose(out["prediction"], pair["frame2"], atol=1e-3)      # identity flow, zero residual
    terms = m.losses(_pair())
    terms["loss"].backward()
    grads = [p.grad for p in m.network.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    naive = _model(image_skip=True, motion="naive")
    with torch.no_grad():
        motion = naive.segment(pair["image"])
        assert torch.equal(naive.reconstruct(pair["frame2"], motion, motion)["base"], pair["frame2"])


def test_identity_start_puts_every_anchor_at_the_centre_so_the_first_flow_is_the_identity():
    m = _model(identity_start=True, eps=0.0)
    pair = _pair()                                              # two different frames
    with torch.no_grad():
        target, source = m.segment(pair["image"]), m.segment(pair["frame2"])
        assert torch.allclose(target["shift"], torch.zeros_like(target["shift"]), atol=1e-6)
        flow = m.reconstruct(pair["frame2"], source, target)["flow"]
    assert torch.allclose(flow, pixel_grid(S // 4, S // 4).expand_as(flow), atol=1e-5)
    m.losses(pair)["loss"].backward()                            # the keypoint head still learns
    assert m.network.keypoint_head.weight.grad.abs().sum() > 0


def test_generator_naive_bottleneck_concatenates_the_segmentation():
    torch.manual_seed(0)
    g = MotionGenerator(base_channels=4, num_residual=1, condition_channels=3)
    source, seg = torch.rand(2, 3, S, S), torch.rand(2, 3, S, S).softmax(1)
    assert g(source, condition=seg).shape == source.shape
    assert not torch.allclose(g(source, condition=seg), g(source, condition=seg.flip(1)))
    with pytest.raises(ValueError, match="condition_channels=0"):
        MotionGenerator(base_channels=4, num_residual=0)(source, condition=seg)


# --- the perceptual loss (Eq. 6) -------------------------------------------------------------------------------


def test_perceptual_loss_is_zero_for_identical_images_and_grows_with_a_shift():
    extractor = get_extractor("standin", device="cpu")
    image = _texture(1, 64)
    assert perceptual_loss(image, image.clone(), extractor).item() == 0.0
    values = [perceptual_loss(torch.roll(image, shifts=d, dims=-1), image, extractor).item() for d in (1, 2, 4, 8)]
    assert 0 < values[0] < values[1] < values[2] < values[3], values


def test_perceptual_loss_by_hand_on_raw_pixels_and_small_images():
    rgb = get_extractor("rgb")
    a, b = torch.zeros(1, 3, 16, 16), torch.full((1, 3, 16, 16), 0.25)
    # constant images: |a - b| = 0.25 at every scale, weight 1 per layer, 4 scales
    assert perceptual_loss(a, b, rgb).item() == pytest.approx(1.0)
    assert perceptual_loss(a, b, rgb, layers={"rgb": 10.0}, scales=(1.0, 0.5)).item() == pytest.approx(5.0)
    # layers whose stride exceeds the downscaled image are left out at that scale (stand-in: stride 4 at 2 px)
    standin = get_extractor("standin", device="cpu")
    assert math.isfinite(perceptual_loss(_texture(1, 16), _texture(1, 16, seed=3), standin).item())
    with pytest.raises(ValueError, match="target must have"):
        perceptual_loss(a, b[..., :8], rgb)


def test_gradients_reach_the_generator_through_the_frozen_extractor_and_the_extractor_gets_none():
    model = _model(lambda_eqv_shift=0.0, lambda_eqv_affine=0.0)
    extractor = model.extractor
    assert all(not p.requires_grad for p in extractor.parameters())
    out = model.losses(_pair())
    assert set(out) == {"perceptual", "loss"}
    out["loss"].backward()
    generator_grads = [p.grad for p in model.generator.parameters()]
    assert all(g is not None for g in generator_grads) and all(g.abs().sum() > 0 for g in generator_grads[:3])
    assert all(p.grad is None for p in extractor.parameters())
    for head in (model.network.seg_head, model.network.keypoint_head, model.network.affine_head):
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0     # through the flow
    prediction = torch.rand(1, 3, S, S, requires_grad=True)
    perceptual_loss(prediction, torch.rand(1, 3, S, S), extractor).backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0


# --- equivariance ------------------------------------------------------------------------------------------------


def test_jacobian_by_autograd_is_the_affine_matrix_for_an_affine_warp_and_the_closed_form_for_a_tps():
    g = torch.Generator().manual_seed(0)
    affine = torch.tensor([[[1.2, -0.3, 0.1], [0.4, 0.9, -0.2]], [[0.8, 0.0, 0.0], [0.0, 1.5, 0.3]]])
    points = torch.rand(2, 5, 2, generator=g) * 2 - 1
    jacobian = transform_jacobian(points, Warp(affine))
    assert torch.allclose(jacobian, affine[:, None, :, :2].expand(2, 5, 2, 2), atol=1e-6)
    tps = random_warp(2, **warp_preset("motion"), generator=g)
    assert tps.centers is not None
    assert torch.allclose(transform_jacobian(points, tps), warp_jacobian(points, tps), atol=1e-5)
    with torch.no_grad():                                           # autograd inside, whatever the caller does
        assert torch.allclose(transform_jacobian(points, tps), warp_jacobian(points, tps), atol=1e-5)


def test_equivariance_losses_vanish_for_the_identity_and_for_consistent_predictions():
    g = torch.Generator().manual_seed(0)
    shift = torch.rand(2, 3, 2, generator=g) * 2 - 1
    affine = torch.eye(2) + 0.3 * torch.randn(2, 3, 2, 2, generator=g)
    identity = identity_warp(2)
    assert equivariance_shift_loss(shift, shift, identity).item() < 1e-6
    assert equivariance_affine_loss(affine, shift, affine, identity).item() < 1e-4
    # predictions that follow a random affine + TPS transform exactly: p_T = T(p_T'), A_T = J_T(p_T') A_T'
    warp = random_warp(2, **warp_preset("motion"), generator=g)
    shift_t = torch.rand(2, 3, 2, generator=g) - 0.5
    affine_t = torch.eye(2) + 0.2 * torch.randn(2, 3, 2, 2, generator=g)
    assert equivariance_shift_loss(unwarp_points(shift_t, warp), shift_t, warp).item() < 1e-6
    consistent = warp_jacobian(shift_t, warp) @ affine_t
    assert equivariance_affine_loss(consistent, shift_t, affine_t, warp).item() < 1e-4
    assert equivariance_shift_loss(shift, shift_t, warp).item() > 0.05     # and they see a mismatch
    assert equivariance_affine_loss(affine, shift_t, affine_t, warp).item() > 0.05
    singular = torch.zeros(2, 3, 2, 2)                                        # regularised inverse: finite
    assert math.isfinite(equivariance_affine_loss(singular, shift_t, affine_t, warp).item())


# --- MotionCoPart ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_every_ablation_is_finite_on_moving_constant_and_identical_frames(ablation):
    model = _model(**get_method("motion").ablation(ablation))
    expected = {"naive": {"perceptual"}, "shift_only": {"perceptual", "eqv_shift"}}.get(ablation, ALL_TERMS)
    for kind in ("random", "constant", "identical"):
        model.zero_grad()
        out = model.losses(_pair(kind))
        assert set(out) == expected | {"loss"}
        assert all(torch.isfinite(v) for v in out.values()), (kind, out)
        assert out["loss"].item() == pytest.approx(sum(model.weights[t] * out[t] for t in expected).item(), rel=1e-5)
        out["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_ablation_settings_and_their_checks():
    assert _model(**get_method("motion").ablation("naive")).weights == {"perceptual": 1.0, "eqv_shift": 0.0,
                                                                        "eqv_affine": 0.0}
    assert _model().weights == {"perceptual": 1.0, "eqv_shift": 10.0, "eqv_affine": 10.0}     # the paper's
    shift_only = _model(motion="shift")
    assert shift_only.weights["eqv_affine"] == 0.0 and shift_only.visibility == "stop_gradient"
    assert torch.equal(shift_only.predict(_texture())["affines"], torch.eye(2).expand(2, 3, 2, 2))
    assert _model(motion="naive").visibility == "none"
    with pytest.raises(ValueError, match="visibility must be 'none'"):
        _model(motion="naive", visibility="stop_gradient")
    with pytest.raises(ValueError, match="no affines"):
        _model(motion="shift", lambda_eqv_affine=10.0)
    with pytest.raises(ValueError, match="feature extractor"):
        MotionCoPart(3, **TINY)
    with pytest.raises(ValueError, match="motion="):
        _model(motion="dense")


def test_v_backprop_lets_the_target_background_reach_the_visibility():
    pair = _pair()
    full, backprop = _model(), _model(visibility="backprop")
    g = torch.Generator().manual_seed(0)
    motions = [{"seg": torch.rand(2, 4, 8, 8, generator=g).softmax(1).requires_grad_(), "shift": torch.zeros(2, 3, 2),
                "affine": torch.eye(2).expand(2, 3, 2, 2)} for _ in range(2)]
    source, target = motions
    for model, reaches in ((full, False), (backprop, True)):
        visibility = model.reconstruct(pair["frame2"], source, target)["visibility"]
        grad_target, grad_source = torch.autograd.grad(visibility.sum(), [target["seg"], source["seg"]],
                                                       allow_unused=True)
        assert (grad_target is not None and grad_target.abs().sum() > 0) == reaches
        assert grad_source.abs().sum() > 0                         # the source parts always get dV/dY_S


def test_batches_need_a_second_frame_of_the_same_size():
    model = _model()
    with pytest.raises(KeyError, match="frame2"):
        model.losses({"image": _texture()})
    with pytest.raises(ValueError, match="same shape"):
        model.losses({"image": _texture(), "frame2": _texture(2, 16)})


def test_one_part_and_mixed_precision():
    model = _model(k=1)
    out = model.losses(_pair())
    assert set(out) == ALL_TERMS | {"loss"} and all(torch.isfinite(v) for v in out.values())
    pred = model.predict(_texture())
    assert pred["probs"].shape == (2, 2, S, S) and pred["centers"].shape == (2, 1, 2)
    model.amp_dtype = torch.bfloat16                          # what fit(amp="bf16") sets: networks in bf16
    out = model.losses(_pair())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in out.values())


def test_two_steps_of_fit_on_synthetic_clips_then_predict_and_score(tmp_path):
    from partlab.evaluation import benchmark_splits, score_model

    recipe = get_recipe("motion", "quick").override({"data.size": S, "data.n_train": 4, "data.features": "rgb",
                                                     "fit.max_steps": 2, "fit.batch_size": 2, "fit.progress": False,
                                                     "fit.log_every": 1, "model.generator_channels": 4,
                                                     "model.base_channels": 4})
    model, data, info = recipe.build(device="cpu")
    assert {"image", "frame2"} <= set(data[0]) and info["num_parts"] == 6 and model.num_parts == 6
    fit(model, data, **info["fit"])
    assert [r["step"] for r in model.history] == [1, 2] and set(model.history[-1]) >= ALL_TERMS | {"loss"}
    images = torch.stack([data[i]["image"] for i in range(2)])
    pred = model.predict(images)
    assert pred["probs"].shape == (2, 7, S, S) and pred["labels"].shape == (2, S, S)
    assert pred["centers"].shape == (2, 6, 2) and pred["anchors"].shape == (2, 6, 2)
    assert pred["affines"].shape == (2, 6, 2, 2)
    assert torch.allclose(pred["probs"].sum(1), torch.ones(2, S, S), atol=1e-5)
    assert torch.allclose(model(images).softmax(1), pred["probs"], atol=1e-5)
    train, test = benchmark_splits("bird", size=S, n_train=16, n_test=4)
    scores, _ = score_model(model, train, test, category="bird", device="cpu")
    assert math.isfinite(scores["fg_iou"]) and math.isfinite(scores["landmark_error"])
    models = train_variants("motion", ["naive", "full"], data, info, max_steps=1)
    assert "eqv_shift" not in models["naive"].history[-1] and "eqv_shift" in models["full"].history[-1]


def test_the_registry_lists_the_method_with_its_ablations_and_recipes():
    entry = get_method("motion")
    assert entry.cls is MotionCoPart and entry.data == "frame pairs"
    assert entry.terms == ("perceptual", "eqv_shift", "eqv_affine") == entry.weighted_terms
    assert list(entry.ablations) == ["naive", "shift_only", "affine_only", "v_backprop", "full"]
    assert entry.ablation("shift_only") == {"lambda_eqv_affine": 0.0, "motion": "shift", "visibility": "none"}
    assert entry.ablation("v_backprop") == {"visibility": "backprop"}
    paper = entry.recipe("paper")
    assert (paper.data.size, paper.fit.batch_size, paper.fit.lr, paper.fit.betas) == (256, 20, 2e-4, (0.5, 0.999))
    assert paper.fit.optimizer == "adam" and paper.model["num_parts"] == 10 and paper.imagenet
    assert paper.weights == {"perceptual": 1.0, "eqv_shift": 10.0, "eqv_affine": 10.0}
    quick = entry.recipe("quick")
    assert quick.data.size == 64 and "num_parts" not in quick.model and quick.fit.max_steps <= 500
    assert "trained on frame pairs" in quick.describe()


def test_soft_flow_costs_by_hand_cases():
    from partlab.motion import soft_flow_costs
    extractor = get_extractor("standin", device="cpu")
    image = _texture(1)
    labels = torch.zeros(1, S, S, dtype=torch.long)
    labels[0, 8:16, 8:16], labels[0, 16:24, 12:20] = 1, 2
    same = soft_flow_costs(image, image, labels, labels, 2, extractor, scales=(1.0, 0.5))
    assert set(same) == {1.0, 0.5} and all(set(v) == {"copy", "hard", "soft"} for v in same.values())
    # no motion: every flow is the identity
    assert all(value == pytest.approx(0.0, abs=1e-4) for costs in same.values() for value in costs.values())
    moved = torch.roll(labels, shifts=2, dims=-1)                          # the parts move right in the target
    target = torch.roll(image, shifts=2, dims=-1)
    exact = soft_flow_costs(image, target, labels, moved, 2, extractor, scales=(0.5,), confidence=1.0)[0.5]
    assert exact["soft"] == pytest.approx(exact["hard"])                   # confidence 1 is the one-hot segmentation
    costs = soft_flow_costs(image, target, labels, moved, 2, extractor, scales=(1.0,), confidence=0.6)[1.0]
    assert all(math.isfinite(v) for v in costs.values()) and costs["soft"] != costs["hard"]
    with pytest.raises(ValueError, match="confidence"):
        soft_flow_costs(image, image, labels, labels, 2, extractor, confidence=0.2)
