"""Quick mode's pretrained start: the stand-in trunk as a U-Net encoder; stand-in versions and pretext pieces."""

import pytest
import torch

from partlab.features import get_extractor
from partlab.features.standin import STANDIN_VERSIONS, hue_rotate, sinkhorn, swapped_clustering_loss
from partlab.models import NETWORKS, StandinUNet, build_network


def test_pretrained_encoder_is_the_stand_in_trunk():
    net = StandinUNet(7, pretrained=True)
    extractor = get_extractor("standin", device="cpu")
    trunk = dict(extractor.features.named_parameters())
    first = net.encoder[0][0]
    torch.testing.assert_close(first.weight, trunk["0.weight"])
    assert all(p.requires_grad for p in net.backbone_parameters())
    x = torch.rand(2, 3, 40, 56)
    assert net(x).shape == (2, 7, 40, 56)
    logits, feats = net(x, return_features=True)
    assert feats.shape == (2, net.feature_channels, 40, 56)
    scratch = StandinUNet(7, pretrained=False)
    assert not torch.equal(scratch.encoder[0][0].weight, first.weight)
    assert net.weights_used.startswith("encoder: stand-in standin_v1") and extractor.weights_hash in net.weights_used
    assert scratch.weights_used.startswith("random initialisation")
    v2 = StandinUNet(7, pretrained=True, standin="standin_v2")
    assert "standin_v2" in v2.weights_used
    assert extractor.features[0].weight.requires_grad is False, "the shared extractor stays frozen"


def test_backbone_and_head_groups_split_the_parameters():
    net = build_network("standin_unet", 5, encoder_blocks=4)
    assert "standin_unet" in NETWORKS
    backbone, head = set(map(id, net.backbone_parameters())), set(map(id, net.head_parameters()))
    assert backbone and head and not backbone & head
    assert backbone | head == set(map(id, net.parameters()))
    frozen = StandinUNet(5, freeze_encoder=True)
    assert not list(frozen.backbone_parameters())
    with pytest.raises(ValueError, match="encoder_blocks"):
        StandinUNet(5, encoder_blocks=2)


def test_methods_give_the_new_part_ten_times_the_learning_rate():
    from partlab.methods import SCOPS
    from partlab.train import TrainConfig

    model = SCOPS(4, network="standin_unet", feature_channels=8, saliency="none")
    groups = model.param_groups(TrainConfig(lr=1e-4))
    lrs = sorted(g.get("lr", 1e-4) for g in groups if g.get("optimizer") != "sgd")
    assert lrs == [1e-4, pytest.approx(1e-3)]
    from partlab.methods import MaskContrast

    mc = MaskContrast(4, network="standin_unet")
    groups = mc.param_groups(TrainConfig(lr=1e-4))
    assert [g.get("lr") for g in groups] == [None, pytest.approx(1e-3)]
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(id(p) for p in mc.network.parameters())
    assert len(MaskContrast(4, network="unet", base_channels=8, depth=2).param_groups(TrainConfig(lr=1e-4))) == 1


def test_motion_segmenter_starts_from_the_stand_in_encoder():
    from partlab.motion import MotionSegmenter

    torch.manual_seed(0)
    net = MotionSegmenter(3, scale=0.5, network="standin_unet", anchors="segments", identity_start=True)
    trunk = dict(get_extractor("standin", device="cpu").features.named_parameters())
    torch.testing.assert_close(net.hourglass.encoder[0][0].weight, trunk["0.weight"])
    assert net.separate_encoder and net.weights_used.startswith("encoder: stand-in standin_v1")
    out = net(torch.rand(2, 3, 32, 32))
    assert out["seg"].shape == (2, 4, 32, 32) and out["heatmap"].shape == (2, 3, 16, 16)
    assert torch.allclose(out["seg"].sum(1), torch.ones(2, 32, 32), atol=1e-5)
    assert torch.allclose(out["affine"], torch.eye(2).expand(2, 3, 2, 2), atol=1e-5)   # A_k = I at the start
    backbone, new = set(map(id, net.backbone_parameters())), set(map(id, net.head_parameters()))
    assert backbone and new and not backbone & new and backbone | new == set(map(id, net.parameters()))
    scratch = MotionSegmenter(3, scale=0.5, network="standin_unet", pretrained=False)
    assert not torch.equal(scratch.hourglass.encoder[0][0].weight, trunk["0.weight"])
    plain = MotionSegmenter(3, scale=0.5, base_channels=4)
    assert not plain.separate_encoder and plain.backbone_parameters() == []
    with pytest.raises(ValueError, match="hourglass"):
        MotionSegmenter(3, network="deeplab")
    with pytest.raises(ValueError, match="in_channels"):
        MotionSegmenter(3, network="standin_unet", pretrained=False, in_channels=1)


def test_motion_trains_the_stand_in_encoder_at_the_base_rate_and_the_rest_at_ten_times():
    from partlab.features import get_extractor as extractor_named
    from partlab.methods import MotionCoPart
    from partlab.train import TrainConfig

    rgb = extractor_named("rgb")
    small = {"scale": 0.5, "generator_channels": 4, "num_residual": 1, "anchors": "segments"}
    model = MotionCoPart(3, features=rgb, network="standin_unet", pretrained=False, **small)
    groups = model.param_groups(TrainConfig(lr=1e-4))
    assert [g.get("lr") for g in groups] == [None, pytest.approx(1e-3)]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.network.hourglass.encoder.parameters()}
    every = [id(p) for g in groups for p in g["params"]]
    assert sorted(every) == sorted(id(p) for p in model.parameters())            # each parameter once
    plain = MotionCoPart(3, features=rgb, base_channels=4, **small)
    assert all("lr" not in g for g in plain.param_groups(TrainConfig(lr=1e-4)))     # the scratch start: one rate
    batch = {"image": torch.rand(2, 3, 32, 32), "frame2": torch.rand(2, 3, 32, 32)}
    out = model.losses(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and model.network.hourglass.encoder[0][0].weight.grad.abs().sum() > 0


def test_stand_in_versions_load_by_name():
    assert "standin_v1" in STANDIN_VERSIONS
    v1 = get_extractor("standin_v1", device="cpu")
    assert v1.version == "standin_v1" and v1.layers_for("scops")
    v2 = get_extractor("standin_v2", device="cpu")
    assert v2.version == "standin_v2" and v2.layers_for("kmeans") == v1.layers_for("kmeans")
    assert "descriptor vector exchange" in v2.description and v2.weights_hash != v1.weights_hash
    assert get_extractor("standin", device="cpu").version == "standin_v1"           # v1 stays the default


def test_stand_in_v2_ships_with_the_record_of_its_recipe():
    import json

    from partlab.features.standin import STANDIN_TRAINING_V2, standin_path, training_record_path

    path = standin_path("standin_v2")
    record = json.loads(training_record_path(path, "standin_v2").read_text())
    assert record["command"] == "python -m partlab.features build-standin --version standin_v2"
    assert record["version"] == "standin_v2" and "no part labels" in record["task"]
    assert record["config"] == json.loads(json.dumps(STANDIN_TRAINING_V2))
    assert record["config"]["exchange"]["weight"] > 0 and record["config"]["worlds"] == ["default", "varied"]
    assert record["loss_curve"][-1] < record["loss_curve"][0]
    assert json.loads((path.parent / "TRAINING.json").read_text())["command"].endswith("build-standin")


def test_build_standin_v2_writes_its_own_record_and_loads_as_v2(tmp_path):
    from partlab.features import build_standin
    from partlab.features.standin import StandinFeatures

    out = tmp_path / "v2.pt"
    record = build_standin(out, version="standin_v2", steps=2, images=16, batch_size=4, progress=False)
    assert (tmp_path / "TRAINING_standin_v2.json").is_file() and not (tmp_path / "TRAINING.json").exists()
    assert record["config"]["exchange"] and record["version"] == "standin_v2"
    assert StandinFeatures(out).version == "standin_v2"
    with pytest.raises(ValueError, match="standin_v9"):
        build_standin(tmp_path / "x.pt", version="standin_v9", steps=1)


def test_hue_rotation_keeps_grey_and_is_periodic():
    x = torch.rand(3, 3, 8, 8)
    torch.testing.assert_close(hue_rotate(x, torch.zeros(3)), x)
    torch.testing.assert_close(hue_rotate(x, torch.full((3,), 2 * torch.pi)), x, atol=1e-5, rtol=0)
    grey = torch.rand(2, 1, 5, 5).expand(2, 3, 5, 5)
    torch.testing.assert_close(hue_rotate(grey, torch.tensor([1.0, 2.5])), grey, atol=1e-6, rtol=0)
    red = torch.zeros(1, 3, 1, 1)
    red[:, 0] = 1
    turned = hue_rotate(red, torch.tensor([2 * torch.pi / 3]))                  # red -> green
    assert turned[0, 1] > 0.99 and turned[0, 0] < 0.01


def test_sinkhorn_balances_and_clustering_loss_trains():
    torch.manual_seed(0)
    scores = 0.5 * torch.tanh(torch.randn(64, 4)) + torch.tensor([0.4, 0, 0, 0])   # cosines; all prefer 0
    q = sinkhorn(scores, iterations=10)
    torch.testing.assert_close(q.sum(1), torch.ones(64))
    torch.testing.assert_close(q.sum(0), torch.full((4,), 16.0), atol=0.5, rtol=0)
    z = torch.nn.functional.normalize(torch.randn(32, 8), dim=1).requires_grad_()
    protos = torch.nn.functional.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    loss = swapped_clustering_loss(z, z, protos, temperature=0.1)
    loss.backward()
    assert torch.isfinite(loss) and z.grad.abs().sum() > 0 and protos.grad.abs().sum() > 0


def test_random_crops_and_multicrop_loss():
    from partlab.features.standin import multicrop_clustering_loss, random_crops

    images = torch.rand(3, 3, 32, 32)
    g = torch.Generator().manual_seed(0)
    crops = random_crops(images, (0.1, 0.3), 16, g)
    assert crops.shape == (3, 3, 16, 16) and crops.min() >= 0 and crops.max() <= 1
    full = random_crops(images, (1.0, 1.0), 32, g)                                   # the whole image
    torch.testing.assert_close(full, images, atol=1e-5, rtol=0)
    z = [torch.nn.functional.normalize(torch.randn(6, 8), dim=1).requires_grad_() for _ in range(4)]
    protos = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    loss = multicrop_clustering_loss(z[:2], z[2:], protos, temperature=0.1)
    loss.backward()
    assert torch.isfinite(loss) and all(t.grad is not None for t in z)


def test_recipes_switch_to_the_pretrained_start():
    from partlab.methods.registry import get_method

    recipe = get_method("scops").recipe("quick").override(["model.network=standin_unet", "model.pretrained=true",
                                                          "data.n_train=2", "data.features=rgb"])
    recipe = recipe.override({"model.saliency": "none"})
    assert recipe.model["network"] == "standin_unet" and "base_channels" not in recipe.model
    model, _, _ = recipe.build(device="cpu")
    assert isinstance(model.network, StandinUNet) and model.network.pretrained
    with pytest.raises(ValueError, match="depth"):
        get_method("scops").recipe("quick").override({"model.network": "standin_unet", "model.depth": 3})


def test_descriptor_exchange_copies_the_matching_pixel_of_the_partner():
    from partlab.features.standin import exchange_descriptors, exchange_partners

    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(2, 8, 3, 4), dim=1)
    # the partner holds the same descriptors at shuffled pixels: a sharp exchange finds each one there
    shuffled = e.flatten(2)[:, :, torch.randperm(12)].reshape(2, 8, 3, 4)
    torch.testing.assert_close(exchange_descriptors(e, shuffled, temperature=1e-3), e, atol=1e-4, rtol=0)
    # a partner with one descriptor everywhere: every pixel becomes that descriptor
    constant = e[:, :, :1, :1].expand_as(e)
    torch.testing.assert_close(exchange_descriptors(e, constant, temperature=0.1), constant)
    e.requires_grad_()
    out = exchange_descriptors(e, e.flip(0), temperature=0.05)
    out.sum().backward()
    assert torch.isfinite(out).all() and e.grad.abs().sum() > 0
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        partners = exchange_partners(torch.randn(5, 4, 2, 2), "random", g)
        assert (partners != torch.arange(5)).all()
    directions = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.9, 0.1, 0, 0]])
    near = directions[:, :, None, None].expand(3, 4, 2, 2)          # 2 is nearest to 0 and to 1
    assert exchange_partners(near, "nearest", g).tolist() == [2, 2, 0]
    assert exchange_partners(near[:1], "random", g).tolist() == [0]
    with pytest.raises(ValueError, match="partner"):
        exchange_partners(near, "farthest", g)
