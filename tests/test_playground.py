"""Free part maps (partlab.playground): the loop minimises what it is given, reproducibly."""

import pytest
import torch

from partlab.losses import concentration_loss
from partlab.playground import optimize_free_maps


def _con(probs):
    return concentration_loss(probs[:, 1:])


def test_concentration_gathers_the_maps():
    run = optimize_free_maps(_con, num_parts=3, size=(12, 16), steps=60, snapshot_steps=(0, 30, 60))
    assert run.logits.shape == (1, 4, 12, 16) and not run.logits.requires_grad
    assert [r["step"] for r in run.history] == list(range(61))
    assert run.history[-1]["loss"] < 0.5 * run.history[0]["loss"]
    assert sorted(run.snapshots) == [0, 30, 60] and run.snapshots[0].shape == (4, 12, 16)
    # the last snapshot and the history describe the final maps
    assert torch.allclose(run.snapshots[60], run.probs[0])
    assert run.history[-1]["loss"] == pytest.approx(_con(run.probs).item(), rel=1e-5)


def test_same_seed_same_run_other_seed_other_run():
    a = optimize_free_maps(_con, 2, 8, steps=10, seed=3)
    b = optimize_free_maps(_con, 2, 8, steps=10, seed=3)
    c = optimize_free_maps(_con, 2, 8, steps=10, seed=4)
    assert torch.equal(a.logits, b.logits)
    assert not torch.equal(a.logits, c.logits)


def test_zero_steps_is_the_initial_state():
    run = optimize_free_maps(_con, 2, 8, steps=0, init_std=0.0, snapshot_steps=[0])
    assert len(run.history) == 1
    assert torch.allclose(run.probs, torch.full((1, 3, 8, 8), 1 / 3))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_parts"):
        optimize_free_maps(_con, 0, 8)
    with pytest.raises(ValueError, match="snapshot_steps"):
        optimize_free_maps(_con, 2, 8, steps=5, snapshot_steps=[6])
    with pytest.raises(ValueError, match="scalar"):
        optimize_free_maps(lambda probs: probs.sum(dim=1), 2, 8, steps=1)
