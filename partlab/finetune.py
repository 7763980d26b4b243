"""Semi-supervised fine-tuning: a pretrained MaskContrast network trained on a fraction of the labels.

The MaskContrast supplementary (Sec. 5, "Semi-Supervised Learning") fine-tunes the whole pretrained
segmentation network with 1 %, 2 %, 5 %, 12.5 % and 100 % of the PASCAL labels and compares it with the same
network trained from scratch (or from ImageNet weights). This module is that protocol, small:

1. :func:`finetune_network`: the pretrained query network's body (``model.network.body``) with its last 1x1
   conv - the 32-d embedding head - replaced by a fresh ``Conv2d(in, num_classes + 1, 1)`` (background is
   class 0); or, with ``pretrained=None``, the same architecture from a random initialisation;
2. :func:`label_subset`: the labelled images, ``max(1, round(fraction * n))`` drawn without replacement;
3. :func:`finetune_miou`: pixel cross-entropy on that subset with SGD (momentum 0.9, weight decay 1e-4) and
   the poly schedule ``lr_t = lr * (1 - t / steps) ** 0.9``, random horizontal flips; then the plain mIoU
   over the ``num_classes + 1`` classes (background included) on the test set's pixels.

The paper's learning rates (its defaults here):

=============================  ===========  =================  ====================
regime                         body ``lr``  final conv         BatchNorm statistics
=============================  ===========  =================  ====================
pretrained, fraction <= 2 %    0.001        0.1                frozen (eval mode)
pretrained, fraction > 2 %     0.004        0.004              updated
from scratch (any fraction)    0.004        0.004              updated
=============================  ===========  =================  ====================

They were chosen for DeepLab-v3 (ResNet-50) at batch 8 over tens of thousands of steps. partlab's quick
CPU networks (the small GroupNorm U-Net, a few hundred steps) learn little at 0.004. ``protocol="quick"``
gives them rates and step counts chosen on the validation scenes instead (:data:`QUICK_PROTOCOL`: 300 scenes
of split seed 100, seed 0, 500 labelled training scenes; README "Fine-tuning, protocol chosen on validation").
Every default, of either protocol, is overridable.

>>> from partlab.methods.maskcontrast import MaskContrast
>>> model = MaskContrast(4, base_channels=8, depth=2)
>>> finetune_network(model, 4).head.out_channels
5
>>> label_subset(100, 0.05, seed=0).shape
torch.Size([5])
"""

from __future__ import annotations

import copy
import inspect
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from partlab import utils
from partlab.methods.base import check_images
from partlab.methods.maskcontrast import MaskContrast, MaskContrastNet
from partlab.metrics import _confusion, _scores
from partlab.models import NETWORKS, build_network

__all__ = ["LOW_LABEL_FRACTION", "PROTOCOLS", "QUICK_PROTOCOL", "finetune_miou", "finetune_network",
           "finetune_settings", "finetune_table", "label_subset", "scratch_architecture"]

LOW_LABEL_FRACTION = 0.02       # at or below: the paper's 1-2 % recipe (body 0.001, final conv 0.1, BN frozen)
PROTOCOLS = ("paper", "quick")
# The quick CPU networks' settings, chosen on the validation scenes (2026-12-03) for MaskContrast's start
# ("pretrained") and the same network from scratch, per regime: <= 2 % of the labels ("low", chosen at 1 %),
# more but not all ("some", at 5 %), all of them ("all"). Candidates: body lr 0.001 / 0.004 / 0.02 for the
# pretrained start and 0.004 / 0.02 / 0.1 from scratch; 200 or 1000 steps with every label.
QUICK_PROTOCOL = {
    "pretrained": {"low": {"lr": 0.001, "head_lr": 0.1, "steps": 200},
                   "some": {"lr": 0.02, "steps": 200},
                   "all": {"lr": 0.02, "steps": 1000}},
    "scratch": {"low": {"lr": 0.004, "steps": 200},
                "some": {"lr": 0.1, "steps": 200},
                "all": {"lr": 0.1, "steps": 1000}},
}
HEAD_NAMES = ("head", "classifier")     # the last 1x1 conv of partlab's networks: U-Nets / DeepLab-v3


def _body(pretrained: nn.Module) -> nn.Module:
    """The segmentation network inside ``pretrained`` (a MaskContrast, its MaskContrastNet, or the network itself)."""
    if isinstance(pretrained, MaskContrast):
        return pretrained.network.body
    if isinstance(pretrained, MaskContrastNet):
        return pretrained.body
    if isinstance(pretrained, nn.Module):
        return pretrained
    raise ValueError(f"pretrained must be a MaskContrast model, its MaskContrastNet, a segmentation network "
                     f"or None (from scratch), got {type(pretrained).__name__}")


def _head_name(network: nn.Module) -> str:
    """The attribute holding ``network``'s last 1x1 conv: ``"head"`` (U-Nets) or ``"classifier"`` (DeepLab-v3)."""
    for name in HEAD_NAMES:
        if isinstance(getattr(network, name, None), nn.Conv2d):
            return name
    raise ValueError(f"{type(network).__name__} has no final 1x1 conv ({' or '.join(HEAD_NAMES)} as an nn.Conv2d) "
                     f"to replace; use network 'unet', 'standin_unet' or 'deeplab_v3'")


def finetune_network(pretrained: Optional[nn.Module], num_classes: int, /, *, network: str = "unet",
                     **network_kwargs: Any) -> nn.Module:
    """The segmentation network to fine-tune: images ``(B, 3, H, W)`` -> logits ``(B, num_classes + 1, H, W)``.

    Args:
        pretrained: a :class:`MaskContrast` model, its :class:`MaskContrastNet` (``model.network``), or a bare
            segmentation network with a final 1x1 conv ``head`` / ``classifier``: the result is a deep copy of
            its body whose final conv is a fresh ``Conv2d(in, num_classes + 1, 1)`` (every other weight
            copied; the saliency head is dropped). ``None``: ``build_network(network, num_classes + 1,
            **network_kwargs)`` from a random initialisation - pass the pretrained model's architecture
            (e.g. ``network="unet", base_channels=8, depth=2``) for a fair comparison.
        num_classes: object classes; the network predicts ``num_classes + 1`` (0 = background).
        network, network_kwargs: the architecture from scratch; ignored when ``pretrained`` is given (the
            architecture is then the pretrained one).

    The returned network shares no parameter or buffer with ``pretrained``; it is in train mode.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1 (object classes, background not counted), "
                         f"got {num_classes!r}")
    if pretrained is None:
        net = build_network(network, num_classes + 1, **network_kwargs)
        _head_name(net)                                  # the same kind of network as a pretrained one
        return net.train()
    net = copy.deepcopy(_body(pretrained))
    name = _head_name(net)
    old = getattr(net, name)
    if old.kernel_size != (1, 1):
        raise ValueError(f"{type(net).__name__}.{name} is a {old.kernel_size} conv, expected the final 1x1 conv")
    setattr(net, name, nn.Conv2d(old.in_channels, num_classes + 1, 1).to(old.weight.device, old.weight.dtype))
    return net.train()


def scratch_architecture(pretrained: nn.Module) -> tuple[str, dict]:
    """``(network, network_kwargs)`` that rebuild a MaskContrast model's segmentation network from a random
    initialisation: the architecture it was built with (:attr:`MaskContrastNet.architecture`), with
    ``pretrained=False`` where the network takes that argument (the stand-in U-Net's encoder, DeepLab's
    backbone). The "same network from scratch" of the supplementary's table.

    >>> from partlab.methods.maskcontrast import MaskContrast
    >>> scratch_architecture(MaskContrast(4, base_channels=8, depth=2))
    ('unet', {'base_channels': 8, 'depth': 2})
    """
    net = pretrained.network if isinstance(pretrained, MaskContrast) else pretrained
    architecture = getattr(net, "architecture", None)
    if architecture is None:
        raise ValueError(f"{type(pretrained).__name__} does not record its architecture; pass network= and "
                         f"network_kwargs= for the network from scratch")
    name, kwargs = architecture[0], dict(architecture[1])
    if "pretrained" in inspect.signature(NETWORKS[name]).parameters:
        kwargs["pretrained"] = False
    return name, kwargs


def label_subset(n: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices (sorted, ``LongTensor (k,)``) of the ``k = max(1, round(fraction * n))`` labelled images among ``n``.

    Drawn without replacement from a ``torch.Generator`` seeded with ``seed``: the same call gives the same
    subset, and with one seed the subsets are nested (a smaller fraction's images are among a larger one's:
    both are prefixes of the same permutation).

    >>> label_subset(10, 0.3, seed=1).tolist() == label_subset(10, 0.3, seed=1).tolist()
    True
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1 (the number of training images), got {n!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1] (0.01 for 1 % of the labels), got {fraction!r}")
    k = max(1, round(fraction * int(n)))
    order = torch.randperm(int(n), generator=torch.Generator().manual_seed(int(seed)))
    return order[:k].sort().values


def _check_data(data: Mapping, name: str, num_classes: int, ignore_index: Optional[int]):
    """``(images (N, 3, H, W) float, labels (N, H, W) int64)`` of a split, validated."""
    if not isinstance(data, Mapping) or "image" not in data or "semantic" not in data:
        keys = sorted(data) if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(f"{name} must be a dict with 'image' (N, 3, H, W) and 'semantic' (N, H, W) tensors "
                         f"(partlab.data.stack_dataset), got {keys}")
    try:
        images = check_images(data["image"])
    except ValueError as error:
        raise ValueError(f"{name}['image']: {error}") from None
    labels = data["semantic"]
    if not isinstance(labels, torch.Tensor) or labels.dim() != 3 or labels.is_floating_point() \
            or labels.dtype == torch.bool:
        desc = f"{tuple(labels.shape)} {labels.dtype}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"{name}['semantic'] must be an integer tensor (N, H, W), got {desc}")
    if labels.shape[0] != images.shape[0] or labels.shape[-2:] != images.shape[-2:]:
        raise ValueError(f"{name}['semantic'] has shape {tuple(labels.shape)} but {name}['image'] has "
                         f"{tuple(images.shape)}: one (H, W) label map per image")
    if images.shape[0] == 0:
        raise ValueError(f"{name} holds no images")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name}['image'] holds NaN or infinite values")
    labels = labels.long()
    valid = labels != ignore_index if ignore_index is not None else torch.ones_like(labels, dtype=torch.bool)
    bad = labels[valid & ((labels < 0) | (labels > num_classes))]
    if bad.numel():
        raise ValueError(f"{name}['semantic'] holds labels {bad.unique()[:10].tolist()} outside 0..{num_classes} "
                         f"(0 = background, 1..num_classes = objects) that are not ignore_index={ignore_index}")
    if not bool(valid.any()):
        raise ValueError(f"every pixel of {name}['semantic'] is ignore_index={ignore_index}: nothing to learn or score")
    return images, labels


def _set_train(network: nn.Module, freeze_bn: bool) -> None:
    """Train mode, except BatchNorm layers in eval mode when ``freeze_bn`` (their running statistics stay fixed;
    their affine weights still learn)."""
    network.train()
    if freeze_bn:
        for module in network.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _logits(network: nn.Module, images: torch.Tensor, size) -> torch.Tensor:
    """``(B, C, H, W)`` logits at the label size ``size`` (upsampled bilinearly if the network's differ)."""
    logits = network(images)
    if logits.shape[-2:] != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return logits


def finetune_settings(pretrained: bool, fraction: float, protocol: str = "paper") -> dict:
    """The default ``lr``, ``head_lr``, ``freeze_bn`` and ``steps`` of :func:`finetune_miou` for a start
    (``pretrained``: True for a MaskContrast model, False from scratch) and a label ``fraction``:
    ``protocol="paper"`` the supplementary's rates (module docstring) with 200 steps, ``"quick"``
    :data:`QUICK_PROTOCOL`. BatchNorm is frozen in the pretrained low-label regime under both.

    >>> finetune_settings(True, 0.01, "quick")
    {'lr': 0.001, 'head_lr': 0.1, 'freeze_bn': True, 'steps': 200}
    >>> finetune_settings(False, 1.0, "quick")
    {'lr': 0.1, 'head_lr': 0.1, 'freeze_bn': False, 'steps': 1000}
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}; choose one of {PROTOCOLS}")
    low_label = bool(pretrained) and fraction <= LOW_LABEL_FRACTION
    if protocol == "paper":
        lr = 0.001 if low_label else 0.004
        return {"lr": lr, "head_lr": 0.1 if low_label else lr, "freeze_bn": low_label, "steps": 200}
    regime = "low" if fraction <= LOW_LABEL_FRACTION else "some" if fraction < 1 else "all"
    chosen = QUICK_PROTOCOL["pretrained" if pretrained else "scratch"][regime]
    return {"lr": chosen["lr"], "head_lr": chosen.get("head_lr", chosen["lr"]), "freeze_bn": low_label,
            "steps": chosen["steps"]}


def finetune_miou(pretrained: Optional[nn.Module], train: Mapping, test: Mapping, num_classes: int, *,
                  fraction: float = 1.0, steps: Optional[int] = None, batch_size: int = 8, lr: Optional[float] = None,
                  head_lr: Optional[float] = None, weight_decay: float = 1e-4, momentum: float = 0.9,
                  freeze_bn: Optional[bool] = None, seed: int = 0, device: "str | torch.device" = "cpu",
                  network: str = "unet", network_kwargs: Optional[dict] = None, progress: bool = False,
                  ignore_index: Optional[int] = 255, protocol: str = "paper") -> dict:
    """Fine-tune :func:`finetune_network` on ``fraction`` of ``train``'s labels; the plain mIoU on ``test``.

    Args:
        pretrained: a MaskContrast model (or its network), or ``None`` for the same network from scratch.
        train, test: dicts with ``"image"`` ``(N, 3, H, W)`` float RGB in [0, 1] and ``"semantic"`` ``(N, H, W)``
            integer labels in ``0..num_classes`` (0 = background) or ``ignore_index`` (excluded from the loss and
            the score); :func:`partlab.data.stack_dataset` of :class:`partlab.data.SyntheticScenes` gives them.
        num_classes: object classes; the network predicts ``num_classes + 1``.
        fraction: of the training images whose labels are used (:func:`label_subset` with ``seed``), in (0, 1].
        steps, batch_size: SGD steps (default: the protocol's); images per step (distinct images, at most the
            labelled ones).
        lr: base learning rate of every layer but the final conv; default the protocol's: under ``"paper"``
            0.001 when ``pretrained`` and ``fraction <= 0.02``, else 0.004 (the quick CPU networks need larger
            values, module docstring). head_lr: of the final conv; default 0.1 in the pretrained low-label
            regime, else ``lr`` (``"quick"``: :data:`QUICK_PROTOCOL`).
        weight_decay, momentum: of SGD (1e-4, 0.9, as the paper). Schedule: ``lr * (1 - t / steps) ** 0.9``.
        freeze_bn: keep BatchNorm layers in eval mode while training (their statistics fixed); default as ``lr``:
            on in the pretrained low-label regime. The U-Nets normalise with GroupNorm: then it changes nothing.
        seed: of the labelled subset, the head's initialisation, the batches and the flips (one
            ``torch.Generator``); the global RNG state is left as it was.
        device: where to train (:func:`partlab.utils.device`).
        network, network_kwargs: the architecture from scratch (:func:`finetune_network`).
        progress: show a progress bar.
        protocol: where the defaults of ``steps``, ``lr``, ``head_lr`` and ``freeze_bn`` come from
            (:func:`finetune_settings`): ``"paper"``, the supplementary's rates, or ``"quick"``, the rates
            chosen on the validation scenes for the quick CPU networks.

    Returns ``{"miou", "iou", "acc", "n_labelled", "fraction", "steps", "lr", "head_lr", "freeze_bn", "loss"}``:
    the test scores of the network in eval mode (argmax over the ``num_classes + 1`` logits, confusion counted
    over every non-ignored test pixel, identity matching): ``miou`` the mean IoU over the classes present in the
    truth or the prediction, ``acc`` the pixel accuracy, ``iou`` the per-class list (index 0 = background;
    ``NaN`` only for a class neither present nor predicted, as :func:`partlab.metrics.linear_probe_miou`);
    then the settings used and the last training loss.

    Raises ``ValueError`` on bad input and ``FloatingPointError`` when the loss stops being finite (the learning
    rate is too large).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1 (object classes, background not counted), "
                         f"got {num_classes!r}")
    train_x, train_y = _check_data(train, "train", num_classes, ignore_index)
    test_x, test_y = _check_data(test, "test", num_classes, ignore_index)
    subset = label_subset(train_x.shape[0], fraction, seed)
    defaults = finetune_settings(pretrained is not None, fraction, protocol)
    steps = defaults["steps"] if steps is None else steps
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if head_lr is None:            # the protocol's own head rate (low-label regime), else the body's rate
        head_lr = defaults["head_lr"] if defaults["head_lr"] != defaults["lr"] else (lr or defaults["lr"])
    lr = defaults["lr"] if lr is None else lr
    freeze_bn = defaults["freeze_bn"] if freeze_bn is None else bool(freeze_bn)
    for name, value in (("lr", lr), ("head_lr", head_lr)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not 0 <= weight_decay < math.inf or not 0 <= momentum < 1:
        raise ValueError(f"weight_decay must be >= 0 and momentum in [0, 1), got {weight_decay}, {momentum}")
    dev = utils.device(device)
    ignore = -100 if ignore_index is None else ignore_index

    generator = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(int(seed))                     # the new head's init (and dropout, if any)
        net = finetune_network(pretrained, num_classes, network=network, **(network_kwargs or {})).to(dev)
        head = getattr(net, _head_name(net))
        head_ids = {id(p) for p in head.parameters()}
        body_params = [p for p in net.parameters() if p.requires_grad and id(p) not in head_ids]
        optimizer = torch.optim.SGD([{"params": body_params, "lr": lr}, {"params": list(head.parameters()),
                                     "lr": head_lr}], lr=lr, momentum=momentum, weight_decay=weight_decay)
        base_lrs = [lr, head_lr]
        labelled_x, labelled_y = train_x[subset], train_y[subset]            # (n, 3, H, W), (n, H, W)
        n = labelled_x.shape[0]
        _set_train(net, freeze_bn)
        loss_value = float("nan")
        for step in utils.progress(range(steps), desc="fine-tuning", enabled=progress):
            idx = torch.randperm(n, generator=generator)[:batch_size]
            x, y = labelled_x[idx].clone(), labelled_y[idx].clone()          # (b, 3, H, W), (b, H, W)
            flip = torch.rand(len(idx), generator=generator) < 0.5
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            x, y = x.to(dev), y.to(dev)
            poly = (1 - step / steps) ** 0.9
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * poly
            logits = _logits(net, x, y.shape[-2:])                           # (b, C + 1, H, W)
            count = (y != ignore).sum().clamp_min(1)
            loss = F.cross_entropy(logits.float(), y, ignore_index=ignore, reduction="sum") / count
            if not bool(torch.isfinite(loss)):
                raise FloatingPointError(f"fine-tuning diverged at step {step} (loss {float(loss)}); "
                                         f"lower lr={lr} / head_lr={head_lr}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())

    net.eval()
    classes = num_classes + 1
    conf = np.zeros((classes, classes), dtype=np.int64)                      # (predicted, true)
    with torch.no_grad():
        for start in range(0, test_x.shape[0], batch_size):
            y = test_y[start:start + batch_size]
            pred = _logits(net, test_x[start:start + batch_size].to(dev), y.shape[-2:]).argmax(1).cpu()
            valid = y != ignore
            conf += _confusion(pred[valid].numpy(), y[valid].numpy(), classes, classes)
    out = _scores(conf, np.arange(classes))
    out.update(n_labelled=int(n), fraction=float(fraction), steps=int(steps), lr=float(lr),
               head_lr=float(head_lr), freeze_bn=freeze_bn, loss=loss_value)
    return out


def finetune_table(pretrained_models: Mapping[str, Optional[nn.Module]], train: Mapping, test: Mapping,
                   num_classes: int, fractions: Sequence[float] = (0.01, 0.05, 1.0), **kwargs: Any
                   ) -> dict[str, dict[float, float]]:
    """``{name: {fraction: miou}}``: :func:`finetune_miou` of every model (``None``: from scratch) at every
    label fraction, the supplementary's semi-supervised table. ``kwargs`` go to every call (each regime's
    default learning rates and steps apply unless given; ``protocol="quick"`` for the quick CPU networks).
    A ``None`` entry trains the first pretrained model's architecture from a random initialisation
    (:func:`scratch_architecture`) unless ``network`` / ``network_kwargs`` say otherwise.
    """
    if not isinstance(pretrained_models, Mapping) or not pretrained_models:
        raise ValueError("pretrained_models must be a non-empty dict {name: MaskContrast model or None}")
    fractions = tuple(fractions)
    if not fractions:
        raise ValueError("fractions must name at least one label fraction in (0, 1]")
    for fraction in fractions:
        label_subset(1, fraction)                        # every fraction checked before any training
    scratch = dict(kwargs)
    first = next((model for model in pretrained_models.values() if model is not None), None)
    if first is not None and "network" not in kwargs and "network_kwargs" not in kwargs:
        scratch["network"], scratch["network_kwargs"] = scratch_architecture(first)
    return {name: {fraction: finetune_miou(model, train, test, num_classes, fraction=fraction,
                                           **(kwargs if model is not None else scratch))["miou"]
                   for fraction in fractions}
            for name, model in pretrained_models.items()}
