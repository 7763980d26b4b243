"""The supervised oracle: the same network trained on the true part labels.

Every self-supervised method is compared to it: it is the upper bound on what the network can do
on a dataset. Loss: pixel-wise cross-entropy of the logits against ``batch["parts"]``,

    L = - mean_{b, p} log softmax(logits)_{b, y_bp, p}

over pixels whose label is not ``ignore_index``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from partlab.methods.base import PartSegmenter, check_images
from partlab.models import QUICK_UNET, build_network


class SupervisedOracle(PartSegmenter):
    """Supervised part segmentation with ``network`` (``"unet"`` or ``"deeplab"``).

    Args:
        num_parts: K; labels are 0 (background) .. K.
        network: network name for :func:`partlab.models.build_network`.
        ignore_index: label value excluded from the loss (255, as in VOC-style annotations).
        **network_kwargs: passed to the network (e.g. ``base_channels=8``, ``pretrained="auto"``).

    >>> oracle = SupervisedOracle(3, base_channels=8)
    >>> oracle(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 4, 32, 32])
    """

    TERMS = ("ce",)                                            # the key of losses(); no weights

    def __init__(self, num_parts: int, network: str = "unet", ignore_index: int = 255, **network_kwargs) -> None:
        super().__init__(num_parts)
        self.ignore_index = ignore_index
        self.network = build_network(network, num_parts + 1, **network_kwargs)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, K+1, H, W)``."""
        return self.run_network(check_images(images))

    def losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """``{"loss": ce, "ce": ce}``: mean cross-entropy against ``batch["parts"]`` ``(B, H, W)``."""
        if "parts" not in batch:
            raise KeyError(f"SupervisedOracle needs the true part labels: batch['parts'] of shape (B, H, W) "
                           f"with values 0..{self.num_parts}; the batch has only {sorted(batch)}")
        labels = batch["parts"]
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"batch['parts'] must be integer labels, got dtype {labels.dtype}")
        logits = self(batch["image"])  # (B, K+1, H, W)
        expected = (logits.shape[0], *logits.shape[2:])
        if tuple(labels.shape) != expected:
            raise ValueError(f"batch['parts'] must have shape (B, H, W) = {expected}, got {tuple(labels.shape)}")
        labels = labels.long()
        valid = labels[labels != self.ignore_index]
        if valid.numel() and (valid.min() < 0 or valid.max() > self.num_parts):
            raise ValueError(f"batch['parts'] holds labels in [{int(valid.min())}, {int(valid.max())}], "
                             f"but the oracle has num_parts={self.num_parts} (labels 0..{self.num_parts})")
        ce = F.cross_entropy(logits.float(), labels, ignore_index=self.ignore_index)
        return {"loss": ce, "ce": ce.detach()}

    def param_groups(self, config) -> list[dict]:
        """One group, or for DeepLab the backbone at ``config.lr`` and the head at 10x (as in SCOPS)."""
        return self.network_groups(config)


# Quick-mode oracle training (U-Net, 64 px, CPU): the settings of notebook 01's benchmark.
ORACLE_QUICK_FIT = {"max_steps": 300, "batch_size": 8, "lr": 2e-3, "optimizer": "adam", "log_every": 25}


def quick_recipe():
    """The quick recipe: the quick U-Net on 512 synthetic birds at 64 px, :data:`ORACLE_QUICK_FIT`."""
    from partlab.recipes import DataSpec, Recipe
    from partlab.train import TrainConfig

    return Recipe("oracle", "quick", {}, {"network": "unet", **QUICK_UNET}, DataSpec(size=64, n_train=512),
                  TrainConfig.from_kwargs(**ORACLE_QUICK_FIT, seed=0))


def paper_recipe():
    """The supervised upper bound at the papers' scale: the DeepLab-v2 ResNet-50 of SCOPS from ImageNet at
    256 px, batch 6, with DeepLab-v2's own supervised schedule (SGD lr 2.5e-4, head x10, momentum 0.9,
    weight decay 5e-4, poly 0.9) for 20k steps. (No paper trains it; these are DeepLab's settings.)"""
    from partlab.recipes import PAPER_NUM_WORKERS, DataSpec, Recipe
    from partlab.train import TrainConfig

    fit = TrainConfig.from_kwargs(max_steps=20_000, batch_size=6, lr=2.5e-4, optimizer="sgd", momentum=0.9,
                                  weight_decay=5e-4, lr_schedule="poly", poly_power=0.9, log_every=100,
                                  checkpoint_every=2000, seed=0, num_workers=PAPER_NUM_WORKERS)
    return Recipe("oracle", "paper", {}, {"network": "deeplab", "pretrained": True},
                  DataSpec(size=256, n_train=10_000, cache=False), fit, imagenet=True)


RECIPES = {"quick": quick_recipe, "paper": paper_recipe}


def setup(recipe, device: str = "auto", run_dir=None):
    """``(model, train_dataset, info)`` for an oracle recipe: the synthetic ``"train"`` split with its true
    part labels and a :class:`SupervisedOracle` built from ``recipe.model`` (K: the category's)."""
    from partlab import utils
    from partlab.data.synthetic import SyntheticParts

    dev = utils.device(device)
    data, settings = recipe.data, dict(recipe.model)
    seed = recipe.fit.seed
    dataset = SyntheticParts(data.category, size=data.size, length=data.n_train, seed=seed, split="train",
                             config=data.world_config())
    num_parts = settings.pop("num_parts", None)
    num_parts = dataset.num_parts if num_parts is None else num_parts
    torch.manual_seed(seed)
    model = SupervisedOracle(num_parts, **settings)
    from partlab.methods.registry import method_of

    info = {"method": method_of(SupervisedOracle).name, "category": data.category, "size": data.size, "n_train": data.n_train, "num_parts": num_parts,
            "device": utils.describe_device(dev), "weights": {}, "model_kwargs": settings,
            "fit": dict(recipe.fit.to_dict(), device=str(dev))}
    return model, dataset, info


def oracle_quick_setup(category: str = "bird", size: int = 64, n_train: int = 512, seed: int = 0,
                       network: str = "unet", device: str = "auto"):
    """``(model, train_dataset, info)`` for the supervised oracle, shaped like SCOPS' quick setup: the quick
    recipe (the quick-mode network :data:`partlab.models.QUICK_UNET` trained on the true part labels of
    ``n_train`` synthetic ``"train"`` images); ``info["fit"]`` holds the :func:`partlab.train.fit` keyword
    arguments (:data:`ORACLE_QUICK_FIT`). ``network="deeplab"`` uses ImageNet weights when they are in the
    local cache.

    >>> model, data, info = oracle_quick_setup("face", size=32, n_train=8, device="cpu")
    >>> model.num_parts, len(data), info["fit"]["max_steps"]
    (7, 8, 300)
    """
    recipe = quick_recipe()
    model = {"network": "unet", **QUICK_UNET} if network == "unet" else {"network": network, "pretrained": "auto"}
    recipe = recipe.override({"data.category": category, "data.size": size, "data.n_train": n_train,
                              "fit.seed": seed})
    recipe = type(recipe)(recipe.method, recipe.name, {}, model, recipe.data, recipe.fit)
    return setup(recipe, device=device)
