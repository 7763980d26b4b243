"""Segmentation networks: output sizes, DeepLab's output stride, gradients, offline pretrained weights."""

import pytest
import torch

from partlab.models import DeepLabV2, UNet, build_network
from partlab.pretrained import PretrainedWeightsMissing


@pytest.mark.parametrize("size", [(65, 47), (16, 16), (33, 80)])
def test_unet_logits_at_input_size(size):
    net = UNet(out_channels=5, base_channels=8, depth=3)
    logits, features = net(torch.rand(2, 3, *size), return_features=True)
    assert logits.shape == (2, 5, *size)
    assert features.shape == (2, 8, *size)


def test_unet_gradients_reach_every_parameter_and_small_inputs_are_refused():
    net = UNet(out_channels=3, base_channels=4, depth=2)
    net(torch.rand(2, 3, 20, 24)).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with pytest.raises(ValueError, match="at least 4x4"):
        net(torch.rand(1, 3, 3, 8))


@pytest.fixture(scope="module")
def deeplab():
    torch.manual_seed(0)
    return DeepLabV2(out_channels=3, pretrained=False).eval()


def test_deeplab_output_stride_8_gives_33x33_for_256(deeplab):
    with torch.no_grad():
        logits, features = deeplab(torch.rand(1, 3, 256, 256), return_features=True)
    assert features.shape == (1, 2048, 33, 33)  # as in the original DeepLab-v2 / SCOPS
    assert logits.shape == (1, 3, 256, 256)


def test_deeplab_odd_sizes_gradients_and_groups(deeplab):
    deeplab.train()
    images = torch.rand(2, 3, 65, 47).contiguous(memory_format=torch.channels_last)
    logits = deeplab(images)
    assert logits.shape == (2, 3, 65, 47)
    logits.square().mean().backward()
    assert all(p.grad is not None for p in deeplab.head_parameters())
    assert deeplab.backbone.conv1.weight.grad is not None
    head = {id(p) for p in deeplab.head_parameters()}
    assert head.isdisjoint(id(p) for p in deeplab.backbone_parameters())
    assert len(head) + len(deeplab.backbone_parameters()) == len(list(deeplab.parameters()))
    assert deeplab.weights_used.startswith("random initialisation")
    assert not deeplab.bn_frozen


def test_deeplab_pretrained_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsMissing, match=r"ResNet50_Weights\.IMAGENET1K_V1.*never downloads"):
        DeepLabV2(out_channels=3, pretrained=True)
    net = DeepLabV2(out_channels=3, pretrained="auto")
    assert "not in the local cache" in net.weights_used and not net.bn_frozen


def test_build_network():
    assert isinstance(build_network("unet", 4, base_channels=4), UNet)
    with pytest.raises(ValueError, match="unknown network 'vgg'.*'deeplab', 'deeplab_v3', 'standin_unet', 'unet'"):
        build_network("vgg", 4)


def test_deeplab_loads_cached_weights_and_freezes_batchnorm(tmp_path, monkeypatch):
    import torchvision

    from partlab.pretrained import weights_path

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    reference = torchvision.models.resnet50().state_dict()  # stands in for the ImageNet file
    weights_path(weights).parent.mkdir(parents=True)
    torch.save(reference, weights_path(weights))
    net = DeepLabV2(out_channels=3, pretrained="auto").train()
    assert net.weights_used == f"ImageNet (torchvision {weights})"
    assert torch.equal(net.backbone.layer4[2].conv3.weight, reference["layer4.2.conv3.weight"])
    assert net.bn_frozen and not net.backbone.bn1.training and not net.backbone.bn1.weight.requires_grad
    assert all(p.requires_grad for p in net.backbone_parameters())
