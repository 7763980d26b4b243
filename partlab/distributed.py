"""Multi-process training with ``torchrun``: the few helpers :func:`partlab.train.fit` and the CLI share.

    torchrun --nproc_per_node 4 -m partlab.cli train scops --recipe paper --amp bf16 --out runs/scops_paper

``torchrun`` starts one process per GPU and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``;
:func:`init_from_env` then joins the process group (NCCL on CUDA, Gloo on the CPU) and every process
trains on its own GPU (``cuda:LOCAL_RANK``). :func:`partlab.train.fit` wraps the method's loss step in
``DistributedDataParallel``, gives each process its own slice of every global batch (``batch_size`` is
per process: the global batch is ``batch_size x WORLD_SIZE``), and lets rank 0 alone write checkpoints,
logs and progress. Without ``torchrun`` (``WORLD_SIZE`` unset or 1) nothing here does anything.
"""

from __future__ import annotations

import os
from typing import Union

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "is_distributed", "rank", "world_size", "is_main", "barrier", "any_rank",
           "mean_over_ranks", "local_device"]


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; start partlab with "
                         f"torchrun --nproc_per_node N, or unset WORLD_SIZE") from None


def is_distributed() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one process that writes files and prints."""
    return rank() == 0


def local_device(spec: Union[str, torch.device, None] = "auto") -> torch.device:
    """The device of this process: ``cuda:LOCAL_RANK`` under torchrun when ``spec`` is ``"auto"`` or a bare
    ``"cuda"`` and CUDA is there; otherwise :func:`partlab.utils.device` of ``spec``."""
    from partlab import utils

    dev = utils.device(spec)
    if dev.type == "cuda" and dev.index is None and _env_world_size() > 1:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def init_from_env(device: Union[str, torch.device, None] = "auto") -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1), once; NCCL when this process trains on
    CUDA (and selects ``cuda:LOCAL_RANK``), Gloo otherwise. Returns whether training is distributed."""
    if is_distributed():
        return True
    if _env_world_size() <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; run one process")
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} "
                           f"{'is' if len(missing) == 1 else 'are'} not set: start partlab with torchrun "
                           f"--nproc_per_node N (it sets them), or unset WORLD_SIZE")
    dev = local_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def any_rank(flag: bool, device: Union[str, torch.device] = "cpu") -> bool:
    """``flag`` OR-ed over every process (each must call it at the same point); ``flag`` in one process."""
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def mean_over_ranks(values: dict, device: Union[str, torch.device] = "cpu") -> dict:
    """The float ``values`` (same keys on every process) averaged over the processes."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    stacked = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(stacked)
    stacked /= dist.get_world_size()
    return dict(zip(keys, stacked.tolist()))
