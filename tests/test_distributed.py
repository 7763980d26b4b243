"""Training in several processes (torchrun / DDP), run here as two CPU processes on the Gloo backend."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from partlab import distributed
from partlab.methods.registry import REGISTRY
from partlab.train import fit

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with Gloo")


class Linear(nn.Module):
    """A least-squares model: the loss is a mean over the batch, so 2 x batch b averages to 1 x batch 2b."""

    def __init__(self, nan_at=None, unused=True):
        super().__init__()
        torch.manual_seed(0)
        self.w = nn.Linear(12, 1)
        self.unused = nn.Linear(2, 2)                     # no gradient: DDP must not wait for it ...
        self.ddp_find_unused_parameters = unused          # ... which the model says
        self.nan_at, self.calls = nan_at, 0

    def losses(self, batch):
        self.calls += 1
        loss = (self.w(batch["image"].flatten(1))[:, 0] - batch["target"]).pow(2).mean()
        if self.nan_at is not None and self.calls == self.nan_at[1] and distributed.rank() == self.nan_at[0]:
            loss = loss * float("nan")
        return {"loss": loss, "mse": loss.detach()}


def _items(n=16):
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.rand(3, 2, 2, generator=g), "target": torch.rand((), generator=g)} for _ in range(n)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Gloo talks over the loopback interface, whatever the machine's host name resolves to
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}
DEADLINE_S = 300          # a run takes seconds here; past this a collective hangs, and the test says so


def _environment(rank, world, port):
    os.environ.update(LOOPBACK, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_PORT=str(port),
                      OMP_NUM_THREADS="1")


def _spawn(fn, args, world=2):
    """``mp.spawn`` with a deadline: processes still running after DEADLINE_S are killed and the test fails."""
    context = mp.spawn(fn, args=args, nprocs=world, join=False)
    end = time.monotonic() + DEADLINE_S
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > end:
                pytest.fail(f"{world} processes still running after {DEADLINE_S} s: a collective hangs")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()


def _worker(rank, world, port, out, make, settings):
    _environment(rank, world, port)
    torch.set_num_threads(1)
    try:
        model, dataset = make()
        fit(model, dataset, device="cpu", progress=False, **settings)
        torch.save({"state": model.state_dict(), "history": model.history}, f"{out}/rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(tmp_path, make, world=2, **settings):
    _spawn(_worker, (world, _free_port(), str(tmp_path), make, settings), world)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]


def _linear():
    return Linear(), _items()


def _linear_nan():
    return Linear(nan_at=(1, 2)), _items()


def test_two_processes_of_batch_2_train_as_one_of_batch_4_and_only_rank_0_writes(tmp_path):
    common = dict(max_steps=3, lr=0.1, optimizer="sgd", momentum=0.0, log_every=1, seed=3)
    ranks = _run(tmp_path, _linear, batch_size=2, checkpoint_dir=str(tmp_path / "run"), **common)
    single = Linear()
    fit(single, _items(), batch_size=4, device="cpu", progress=False, **common)
    for r in ranks:
        for name, value in single.state_dict().items():
            torch.testing.assert_close(r["state"][name], value, rtol=1e-5, atol=1e-6)
        assert [h["step"] for h in r["history"]] == [1, 2, 3]
        for mine, one in zip(r["history"], single.history):          # terms averaged over the processes
            assert mine["mse"] == pytest.approx(one["mse"], rel=1e-5)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["last.pt"]


def test_a_step_non_finite_in_one_process_is_skipped_by_all(tmp_path):
    ranks = _run(tmp_path, _linear_nan, batch_size=2, max_steps=3, lr=0.1, optimizer="sgd", log_every=1)
    assert ranks[0]["history"][-1]["skipped"] == ranks[1]["history"][-1]["skipped"] == 1
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name])


def _linear_unsaid():
    return Linear(unused=False), _items()


def test_a_parameter_left_without_gradient_is_named_with_the_fix(tmp_path):
    with pytest.raises(Exception, match="did not use.*ddp_find_unused_parameters = True"):
        _run(tmp_path, _linear_unsaid, batch_size=2, max_steps=3, lr=0.1, optimizer="sgd")


def _every_method():
    """Each registered method's quick recipe, shrunk: ``{name: (model, dataset)}``."""
    from partlab.methods.registry import REGISTRY, get_recipe

    small = {"data.size": 32, "data.n_train": 8, "data.features": "rgb", "model.network": "unet"}
    out = {}
    for name in sorted(REGISTRY):
        recipe = get_recipe(name, "quick")
        changes = {k: v for k, v in small.items() if k != "model.network" or "network" in recipe.model}
        if name == "maskcontrast":
            changes["model.queue_size"] = 8
        model, dataset, _ = recipe.override(changes).build(device="cpu")
        out[name] = (model, dataset)
    return out


def _worker_every(rank, world, port, out):
    _environment(rank, world, port)
    torch.set_num_threads(1)
    try:
        states = {}
        for name, (model, dataset) in _every_method().items():
            fit(model, dataset, device="cpu", progress=False, batch_size=2, max_steps=2, lr=1e-3, log_every=1)
            states[name] = {"state": model.state_dict(), "history": model.history}
        torch.save(states, f"{out}/rank{rank}.pt")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_every_method_trains_in_two_processes_with_one_set_of_weights(tmp_path):
    # two steps: DDP raises at the second if a method leaves a trainable parameter without a gradient
    _spawn(_worker_every, (2, _free_port(), str(tmp_path)))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert sorted(ranks[0]) == sorted(REGISTRY)
    for name in ranks[0]:
        first, second = ranks[0][name], ranks[1][name]
        assert all(torch.isfinite(torch.tensor(h["loss"])) for h in first["history"]), name
        assert first["history"][-1]["loss"] == pytest.approx(second["history"][-1]["loss"])   # averaged over ranks
        for key, value in first["state"].items():
            if value.is_floating_point():
                torch.testing.assert_close(value, second["state"][key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
    # each MaskContrast step queues the prototypes of both processes' batches (2 x 2), gathered across ranks
    assert int(ranks[0]["maskcontrast"]["state"]["queue.count"]) == 8


def test_without_torchrun_nothing_is_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_from_env("cpu") is False
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.any_rank(True) is True and distributed.mean_over_ranks({"a": 2.0}) == {"a": 2.0}


def test_a_half_set_torchrun_environment_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match="RANK, MASTER_ADDR, MASTER_PORT are not set: start partlab with torchrun"):
        distributed.init_from_env("cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="not an integer"):
        distributed.init_from_env("cpu")


def test_partlab_train_under_torchrun_writes_one_run_folder_from_rank_0(tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PARTLAB_PROGRESS="0", **LOOPBACK)
    # a session of its own: on a hang, the agent and both ranks (which hold the pipes) are killed together
    agent = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                              "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "partlab.cli",
                              "train", "oracle", "--size", "32", "--n-train", "8", "--steps", "2", "--batch-size", "2",
                              "--device", "cpu", "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True)
    try:
        stdout, stderr = agent.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(agent.pid, signal.SIGKILL)
        stdout, stderr = agent.communicate()
        pytest.fail(f"torchrun still running after {DEADLINE_S} s:\n{stderr[-2000:]}")
    assert agent.returncode == 0, stderr[-2000:]
    assert stdout.count("wrote ") == 1 and stdout.count("recipe oracle/quick") == 1
    assert sorted(p.name for p in out.iterdir()) == ["last.pt", "model.json", "recipe.json"]
    assert torch.load(out / "last.pt", weights_only=False)["step"] == 2
