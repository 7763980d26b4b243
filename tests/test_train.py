"""partlab.train.fit: reproducibility, resume, checkpoints, the non-finite guard, the optimiser hooks."""

import math
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from partlab.methods import SupervisedOracle
from partlab.train import TrainConfig, fit, load_checkpoint, plot_history

QUICK = dict(batch_size=4, lr=1e-2, progress=False, device="cpu", log_every=1)


class RandomParts(Dataset):
    """Random 16x16 images with random labels 0..2 (enough to exercise the loop)."""

    def __init__(self, length: int = 12) -> None:
        generator = torch.Generator().manual_seed(123)
        self.images = torch.rand(length, 3, 16, 16, generator=generator)
        self.parts = torch.randint(0, 3, (length, 16, 16), generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.images[index], "parts": self.parts[index], "name": f"item{index}"}


class NoisyOracle(SupervisedOracle):
    """An oracle whose loss draws from the torch and NumPy RNGs, as augmentations do."""

    def losses(self, batch: dict) -> dict:
        shift = float(np.random.uniform(-0.05, 0.05))
        image = (batch["image"] + 0.05 * torch.randn_like(batch["image"]) + shift).clamp(0, 1)
        return super().losses({**batch, "image": image})


def _oracle(cls=NoisyOracle) -> SupervisedOracle:
    torch.manual_seed(0)
    return cls(2, base_channels=4, depth=1)


def _weights(model: nn.Module) -> dict:
    return {key: value.clone() for key, value in model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_same_seed_same_weights_and_history_records():
    data = RandomParts()
    a = fit(_oracle(), data, max_steps=8, **QUICK)
    b = fit(_oracle(), data, max_steps=8, **QUICK)
    c = fit(_oracle(), data, max_steps=8, seed=1, **QUICK)
    assert _same(_weights(a), _weights(b))
    assert not _same(_weights(a), _weights(c))
    assert [r["step"] for r in a.history] == list(range(1, 9))
    assert set(a.history[0]) == {"step", "loss", "ce", "lr", "seconds", "skipped"}
    assert not a.training and next(a.parameters()).device.type == "cpu"
    fig = plot_history(a.history, log_scale=True)
    assert fig.axes[0].get_yscale() == "log"


def test_interrupted_and_resumed_run_is_bitwise_identical(tmp_path):
    data = RandomParts()
    straight = fit(_oracle(), data, max_steps=10, **QUICK)

    def interrupt(step, record):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(_oracle(), data, max_steps=10, checkpoint_dir=tmp_path, checkpoint_every=5, callback=interrupt, **QUICK)
    assert load_checkpoint(_oracle(), tmp_path)["step"] == 5
    resumed = fit(_oracle(), data, max_steps=10, checkpoint_dir=tmp_path, checkpoint_every=5, **QUICK)
    assert _same(_weights(straight), _weights(resumed))
    assert [r["step"] for r in resumed.history] == list(range(1, 11))
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]


def test_checkpoints_are_atomic_and_load(tmp_path):
    model = fit(_oracle(), RandomParts(), max_steps=6, checkpoint_dir=tmp_path, checkpoint_every=2, **QUICK)
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    fresh = _oracle()
    checkpoint = load_checkpoint(fresh, tmp_path / "last.pt")
    assert checkpoint["step"] == 6 and checkpoint["config"]["max_steps"] == 6
    assert _same(_weights(fresh), _weights(model)) and fresh.history == model.history
    # an existing finished checkpoint is reused: nothing is trained again
    again = fit(_oracle(), RandomParts(), max_steps=6, checkpoint_dir=tmp_path, **QUICK)
    assert _same(_weights(again), _weights(model))


def test_resume_refuses_other_settings_or_shapes(tmp_path):
    fit(_oracle(), RandomParts(), max_steps=2, checkpoint_dir=tmp_path, **QUICK)
    with pytest.raises(ValueError, match=r"lr: checkpoint 0.01 -> now 0.001"):
        fit(_oracle(), RandomParts(), max_steps=4, checkpoint_dir=tmp_path, **(QUICK | {"lr": 1e-3}))
    torch.manual_seed(0)
    other = SupervisedOracle(2, base_channels=8, depth=1)
    with pytest.raises(RuntimeError, match="does not fit this SupervisedOracle"):
        fit(other, RandomParts(), max_steps=4, checkpoint_dir=tmp_path, **QUICK)
    fit(other, RandomParts(), max_steps=2, checkpoint_dir=tmp_path, resume=False, **QUICK)


class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def losses(self, batch: dict) -> dict:
        term = (self.weight * batch["image"].mean()).sum() * math.nan
        return {"loss": term + self.weight.sum(), "bad_term": term, "good_term": self.weight.sum()}


def test_nonfinite_losses_are_skipped_then_raise():
    model = NaNModel()
    with pytest.raises(RuntimeError, match=r"10 consecutive non-finite.*'bad_term'.*'loss'"):
        fit(model, RandomParts(), max_steps=50, **QUICK)
    assert torch.equal(model.weight.detach(), torch.ones(3))
    assert model.history[-1]["skipped"] == 10 and math.isnan(model.history[-1]["loss"])


class GroupedModel(nn.Module):
    """Two parameter tensors with huge gradients; the first group clipped at 0.1, the second SGD, unclipped."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(4))
        self.b = nn.Parameter(torch.zeros(4))
        self.steps_seen = []

    def losses(self, batch: dict) -> dict:
        loss = -1000 * (self.a.sum() + self.b.sum())
        return {"loss": loss}

    def param_groups(self, config: TrainConfig) -> list:
        return [{"params": [self.a], "clip": 0.1, "lr": 1.0, "optimizer": "sgd", "momentum": 0.0},
                {"params": [self.b], "lr": 1e-3, "optimizer": "sgd", "momentum": 0.0}]

    def on_step(self, step: int) -> None:
        self.steps_seen.append(step)


def test_param_groups_with_own_clip_lr_and_on_step_hook():
    model = fit(GroupedModel(), RandomParts(), max_steps=1, **(QUICK | {"grad_clip": None}))
    assert torch.linalg.norm(model.a.detach()).item() == pytest.approx(0.1, rel=1e-4)  # lr 1 * clipped grad
    assert torch.allclose(model.b.detach(), torch.full((4,), 1.0))  # lr 1e-3 * 1000, not clipped
    assert model.steps_seen == [1]


def test_global_grad_clip_and_poly_schedule():
    class Plain(GroupedModel):
        param_groups = None

    model = fit(Plain(), RandomParts(), max_steps=4, optimizer="sgd", momentum=0.0, lr=1.0, grad_clip=1.0,
                lr_schedule="poly", progress=False, device="cpu", batch_size=4, log_every=1)
    assert [r["lr"] for r in model.history] == pytest.approx([(1 - t / 4) ** 0.9 for t in range(4)])
    expected = sum((1 - t / 4) ** 0.9 for t in range(4))  # each step moves (a, b) by lr * unit vector
    assert torch.linalg.norm(torch.cat([model.a, model.b]).detach()).item() == pytest.approx(expected, rel=1e-4)


def test_config_errors_are_clear():
    with pytest.raises(TypeError, match=r"unknown training option\(s\) \['learning_rate'\].*'lr'"):
        fit(_oracle(), RandomParts(), learning_rate=0.1)
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosine")
    with pytest.raises(TypeError, match=r"\.losses\(batch\)"):
        fit(nn.Linear(2, 2), RandomParts(), max_steps=1)
    with pytest.raises(ValueError, match="empty"):
        fit(_oracle(), RandomParts(length=0), max_steps=1)
    with pytest.raises(TypeError, match="'loss'"):
        fit(type("NoTotal", (NaNModel,), {"losses": lambda self, b: {"ce": self.weight.sum()}})(),
            RandomParts(), max_steps=1, **QUICK)


def test_small_dataset_warns_and_uses_it_whole():
    callbacks = []
    with pytest.warns(UserWarning, match="larger than the dataset"):
        fit(_oracle(), RandomParts(length=3), max_steps=2, callback=lambda s, r: callbacks.append(s),
            **(QUICK | {"batch_size": 8}))
    assert callbacks == [1, 2]


def test_amp_is_a_documented_no_op_on_cpu_and_bf16_runs():
    with pytest.warns(UserWarning, match="no effect on cpu"):
        fit(_oracle(), RandomParts(), max_steps=1, amp=True, **QUICK)
    model = fit(_oracle(), RandomParts(), max_steps=2, amp="bf16", **QUICK)
    assert all(torch.isfinite(p).all() for p in model.parameters())
