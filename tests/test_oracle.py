"""The supervised oracle: the upper bound every self-supervised method is compared to."""

import importlib.util

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from partlab.methods import PartSegmenter, SupervisedOracle
from partlab.train import fit


class ToyShapes(Dataset):
    """32x32 images with up to three coloured shapes on a noisy background; labels 1 = square,
    2 = disc, 3 = bar, 0 = background. Item ``i`` depends only on ``(seed, i)``."""

    size = 32
    colours = np.array([[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.2, 0.3, 0.9]], dtype=np.float32)

    def __init__(self, length: int, seed: int = 0) -> None:
        self.length, self.seed = length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        s = self.size
        yy, xx = np.mgrid[:s, :s]
        image = rng.uniform(0.35, 0.6) + rng.normal(0, 0.05, (3, s, s)).astype(np.float32)
        labels = np.zeros((s, s), dtype=np.int64)
        cy, cx = rng.integers(6, s - 6, 2)
        masks = [(abs(yy - cy) <= 4) & (abs(xx - cx) <= 4)]
        cy, cx = rng.integers(6, s - 6, 2)
        masks.append((yy - cy) ** 2 + (xx - cx) ** 2 <= 25)
        cx = rng.integers(3, s - 3)
        masks.append((abs(xx - cx) <= 1) & (yy >= 4) & (yy < s - 4))
        for label, mask in enumerate(masks, start=1):
            colour = self.colours[label - 1] + rng.normal(0, 0.05, 3)
            image[:, mask] = colour[:, None]
            labels[mask] = label
        return {"image": torch.from_numpy(np.clip(image, 0, 1).astype(np.float32)), "parts": torch.from_numpy(labels)}


def _stack(dataset, key):
    return torch.stack([dataset[i][key] for i in range(len(dataset))])


def test_oracle_learns_toy_parts_above_majority_baseline():
    torch.manual_seed(0)
    oracle = SupervisedOracle(3, base_channels=8, depth=2)
    fit(oracle, ToyShapes(64), max_steps=100, batch_size=8, lr=1e-2, log_every=10, progress=False, device="cpu")
    losses = [record["loss"] for record in oracle.history]
    assert np.mean(losses[-3:]) < 0.5 * losses[0]

    test = ToyShapes(16, seed=1)
    images, labels = _stack(test, "image"), _stack(test, "parts")
    pred = oracle.predict(images)
    assert pred["probs"].shape == (16, 4, 32, 32)
    assert torch.allclose(pred["probs"].sum(1), torch.ones(16, 32, 32), atol=1e-5)
    accuracy = (pred["labels"] == labels).float().mean().item()
    majority = (labels == 0).float().mean().item()
    assert accuracy > 0.9 and accuracy > majority + 0.1, (accuracy, majority)
    assert not oracle.training


def test_oracle_needs_part_labels():
    oracle = SupervisedOracle(3, base_channels=4, depth=1)
    with pytest.raises(KeyError, match="true part labels"):
        oracle.losses({"image": torch.rand(2, 3, 16, 16)})
    with pytest.raises(ValueError, match="num_parts=3"):
        oracle.losses({"image": torch.rand(2, 3, 16, 16), "parts": torch.full((2, 16, 16), 4)})
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        oracle.losses({"image": torch.rand(2, 3, 16, 16), "parts": torch.zeros(2, 8, 8, dtype=torch.long)})
    terms = oracle.losses({"image": torch.rand(2, 3, 16, 16), "parts": torch.randint(0, 4, (2, 16, 16))})
    assert set(terms) == {"loss", "ce"} and terms["loss"].requires_grad


def test_check_images_messages():
    oracle = SupervisedOracle(2, base_channels=4, depth=1)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\), got \(1, 1, 32, 32\)"):
        oracle(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="floating point"):
        oracle(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="at least 16x16"):
        oracle(torch.rand(1, 3, 8, 32))
    with pytest.raises(TypeError):
        PartSegmenter(3)  # abstract


def test_oracle_deeplab_param_groups_give_the_head_10x_lr():
    from partlab.train import TrainConfig

    oracle = SupervisedOracle(2, network="deeplab")
    groups = oracle.param_groups(TrainConfig(lr=1e-4))
    assert groups[1]["lr"] == pytest.approx(1e-3) and "lr" not in groups[0]
    assert sum(len(g["params"]) for g in groups) == len(list(oracle.parameters()))


@pytest.mark.skipif(importlib.util.find_spec("partlab.data.synthetic") is None,
                    reason="partlab.data.synthetic is not there yet")
def test_oracle_fits_synthetic_parts():
    from partlab.data.synthetic import SyntheticParts

    data = SyntheticParts(category="bird", size=32, length=8, seed=0, split="train")
    torch.manual_seed(0)
    oracle = SupervisedOracle(data.num_parts, base_channels=8, depth=2)
    fit(oracle, data, max_steps=60, batch_size=4, lr=1e-2, log_every=10, progress=False, device="cpu")
    assert oracle.history[-1]["loss"] < 0.7 * oracle.history[0]["loss"]
