"""The one training loop of partlab: every method contributes ``losses(batch)``, this module does the rest.

>>> model = fit(model, dataset, max_steps=500, batch_size=8, lr=1e-3)   # doctest: +SKIP
>>> plot_history(model.history, log_scale=True)                          # doctest: +SKIP

What :func:`fit` does, step by step:

1. draws the next batch of an endless shuffled stream over ``dataset`` (epoch ``e`` is
   ``randperm(len(dataset))`` from a generator seeded by ``(seed, e)``, so the batch at any step is a
   pure function of ``(seed, step)``) and moves every tensor to the device;
2. sets the learning rate (``"constant"`` or ``"poly"``: ``lr * (1 - step / max_steps) ** 0.9``, as in
   DeepLab/SCOPS), calls ``model.losses(batch)`` under optional autocast;
3. skips the step if the total ``"loss"`` (or, without a grad scaler, the gradient norm) is not finite,
   and raises after ``max_nonfinite_steps`` consecutive skips, naming the offending terms;
4. back-propagates, clips gradient norms (per parameter group with a ``"clip"`` value, the others
   together at ``grad_clip``), steps the optimiser(s), calls ``model.on_step(step)`` if defined (and
   ``model.on_fit_end(dataset)`` after the last step, before its checkpoint);
5. every ``log_every`` steps appends a record to ``model.history`` and calls ``callback(step, record)``;
   every ``checkpoint_every`` steps and at the end writes ``checkpoint_dir/last.pt`` atomically.

Optimiser hook: ``model.param_groups(config) -> list[dict]`` (keys ``params`` and optionally ``lr``,
``momentum``, ``weight_decay``, ``betas``, ``clip`` and ``optimizer`` = ``"adam"``/``"sgd"``; groups of
different optimizer kinds get separate optimisers). Without it all trainable parameters form one group.

Reproducibility: on CPU with ``num_workers=0`` a run is bitwise reproducible for a given seed, and a run
interrupted and resumed from its checkpoint ends with bitwise the same weights as an uninterrupted one
(the checkpoint holds model, optimisers, grad scaler, history and the torch/CUDA/NumPy/Python RNG states;
the data order needs no state, being a function of ``(seed, step)``). With worker processes, randomness
drawn inside the workers restarts from the seed on resume. CUDA kernels are not all deterministic.

Several processes (``torchrun``, :mod:`partlab.distributed`): each process trains on its own device, the
loss step runs through one module wrapped in ``DistributedDataParallel`` (its forward returns
``model.losses(batch)``, so gradients are averaged over the processes), each process takes its slice of
every global batch of ``batch_size x world_size`` items (``batch_size`` is per process), a non-finite step
is skipped by every process when it is non-finite in any, records average the terms over the processes, and
rank 0 alone writes checkpoints, shows progress and calls ``callback``. A model with trainable parameters
that some steps leave unused sets ``ddp_find_unused_parameters = True``.

AMP: ``amp=True`` (or ``"fp16"``) autocasts to float16 with a ``GradScaler`` on CUDA and is a no-op with a
warning elsewhere; ``amp="bf16"`` autocasts to bfloat16 (no scaler) on CUDA and CPU. Autocast wraps the
network forward passes only: for the duration of the run :func:`fit` sets the method's ``amp_dtype``, which
its networks and frozen feature extractor run under (:meth:`partlab.methods.base.PartSegmenter.autocast`);
the loss terms are float32 (:mod:`partlab.precision`). A module without ``amp_dtype`` gets its whole
``losses(batch)`` under autocast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from partlab import distributed, precision, utils

_log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "poly")
AMP_MODES = (False, True, "fp16", "bf16")
CHECKPOINT_NAME = "last.pt"
# Settings that change what a run computes: a resume with different values is refused.
_RESUME_MUST_MATCH = ("batch_size", "lr", "seed", "amp", "grad_clip", "optimizer", "momentum", "weight_decay",
                      "betas", "lr_schedule", "poly_power")
_HISTORY_KEYS = ("step", "lr", "seconds", "skipped")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`fit`; its keyword arguments are exactly these fields.

    Attributes:
        max_steps: optimisation steps in total (a resumed run continues up to it).
        batch_size: items per batch; a dataset smaller than that gives batches of the whole dataset.
        lr: base learning rate (groups from ``param_groups`` may set their own).
        device: ``"auto"`` (cuda, mps, cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"``.
        amp: ``False``, ``True``/``"fp16"`` (CUDA only, GradScaler) or ``"bf16"`` (CUDA and CPU).
        seed: seeds Python, NumPy, torch and the data order.
        checkpoint_dir: where ``last.pt`` goes; ``None`` = no checkpoints.
        checkpoint_every: steps between checkpoints (a final one is always written).
        resume: continue from ``checkpoint_dir/last.pt`` when it exists.
        progress: show a progress bar; ``None`` follows :func:`partlab.utils.progress_enabled`.
        num_workers: DataLoader worker processes.
        log_every: steps between history records (the last step is always recorded).
        grad_clip: max global gradient norm over parameters whose group has no ``"clip"``; ``None`` = off.
        optimizer: ``"adam"`` or ``"sgd"``.
        momentum: SGD momentum.
        betas: Adam betas.
        weight_decay: L2 weight decay (both optimisers).
        lr_schedule: ``"constant"`` or ``"poly"`` (``lr * (1 - step / max_steps) ** poly_power``).
        poly_power: exponent of the poly schedule (0.9 as in DeepLab/SCOPS).
        channels_last: model and 4-D batch tensors in channels-last memory format.
        max_nonfinite_steps: consecutive non-finite steps tolerated before a ``RuntimeError``.
        callback: ``callback(step, record)`` at every history record (live plots in notebooks).
    """

    max_steps: int = 1000
    batch_size: int = 8
    lr: float = 1e-3
    device: str = "auto"
    amp: bool | str = False
    seed: int = 0
    checkpoint_dir: Optional[str | os.PathLike] = None
    checkpoint_every: int = 1000
    resume: bool = True
    progress: Optional[bool] = None
    num_workers: int = 0
    log_every: int = 10
    grad_clip: Optional[float] = None
    optimizer: str = "adam"
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    poly_power: float = 0.9
    channels_last: bool = False
    max_nonfinite_steps: int = 10
    callback: Optional[Callable[[int, dict], Any]] = None

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "checkpoint_every", "log_every", "max_nonfinite_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule={self.lr_schedule!r}; choose one of {LR_SCHEDULES}")
        if not (self.amp is True or self.amp is False or self.amp in ("fp16", "bf16")):
            raise ValueError(f"amp={self.amp!r}; choose one of {AMP_MODES}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be positive or None, got {self.grad_clip!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers!r}")
        if self.callback is not None and not callable(self.callback):
            raise ValueError(f"callback must be callable, got {type(self.callback).__name__}")
        object.__setattr__(self, "betas", tuple(self.betas))

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "TrainConfig":
        """Build a config, refusing unknown names with the list of valid ones."""
        valid = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(kwargs) - set(valid))
        if unknown:
            raise TypeError(f"unknown training option(s) {unknown}; valid options are {valid}")
        return cls(**kwargs)

    def replace(self, **kwargs: Any) -> "TrainConfig":
        """A copy with some settings changed (unknown names refused as in :meth:`from_kwargs`)."""
        current = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return TrainConfig.from_kwargs(**(current | kwargs))

    def to_dict(self) -> dict:
        """The settings as plain values (what a checkpoint stores; the callback is left out)."""
        out = {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name != "callback"}
        out["checkpoint_dir"] = None if self.checkpoint_dir is None else str(self.checkpoint_dir)
        return out


class _ShuffledBatches(Sampler):
    """Endless batches of indices: epoch ``e`` visits ``randperm(n)`` drawn from a generator seeded by
    ``(seed, e)``, in batches of ``batch_size`` (the incomplete last batch is dropped). Starts at batch
    number ``start`` of that stream, so a resumed run sees the batches an uninterrupted run would."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start
        self.rank, self.world = rank, world              # several processes: this one's slice of each global batch

    def __iter__(self) -> Iterator[list[int]]:
        size = self.batch_size * self.world
        per_epoch = self.n // size
        epoch, offset = divmod(self.start, per_epoch)
        while True:
            epoch_seed = int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0])
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch_seed)).tolist()
            for b in range(offset, per_epoch):
                first = b * size + self.rank * self.batch_size
                yield order[first:first + self.batch_size]
            epoch, offset = epoch + 1, 0


class _LossStep(nn.Module):
    """The module whose forward is the training step's losses, so that ``DistributedDataParallel`` wraps it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Any) -> dict:
        return self.model.losses(batch)


def fit(model: nn.Module, dataset: Dataset, config: Optional[TrainConfig] = None, **kwargs: Any) -> nn.Module:
    """Train ``model`` on ``dataset`` by minimising ``model.losses(batch)["loss"]``; return the model.

    Args:
        model: an ``nn.Module`` with ``losses(batch) -> dict`` (weighted total under ``"loss"``),
            optionally ``param_groups(config)`` and ``on_step(step)``.
        dataset: a map-style dataset of dicts (``"image"`` ``(3, H, W)`` plus whatever the method reads).
        config: a :class:`TrainConfig`; keyword arguments (its field names) override it.

    Returns:
        The model, in eval mode, on the training device, with ``model.history`` (list of records
        ``{"step", <each loss term>, "lr", "seconds", "skipped"}``; terms are means over the finite steps
        since the previous record). A fresh run starts a new history; a resumed run continues it.
    """
    cfg = TrainConfig.from_kwargs(**kwargs) if config is None else config.replace(**kwargs)
    if not isinstance(model, nn.Module) or not callable(getattr(model, "losses", None)):
        raise TypeError(f"fit needs an nn.Module with a .losses(batch) -> dict method (the methods in "
                        f"partlab.methods have one); got {type(model).__name__}")
    n = _dataset_length(dataset)
    distributed.init_from_env(cfg.device)
    rank, world = distributed.rank(), distributed.world_size()
    main = rank == 0
    batch_size = cfg.batch_size
    if world > 1 and batch_size * world > n:
        raise ValueError(f"{world} processes of batch_size={batch_size} need at least {batch_size * world} items, "
                         f"but the dataset has {n}; lower batch_size (it is per process) or the process count")
    if batch_size > n:
        warnings.warn(f"batch_size={batch_size} is larger than the dataset ({n} items): every batch holds the "
                      f"whole dataset", stacklevel=2)
        batch_size = n

    dev = distributed.local_device(cfg.device)
    utils.seed_everything(cfg.seed if rank == 0 else cfg.seed + 100_003 * rank)   # own augmentations per process
    model.to(dev)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizers = _build_optimizers(model, cfg)
    autocast_dtype, use_scaler = _amp_settings(cfg.amp, dev)
    # partlab's methods (they have ``amp_dtype``) autocast their network forward passes only and compute
    # the loss terms in float32; any other module gets its whole ``losses()`` under autocast.
    network_amp = hasattr(model, "amp_dtype")
    previous_amp_dtype = model.amp_dtype if network_amp else None
    scaler = torch.amp.GradScaler("cuda" if use_scaler else "cpu", enabled=use_scaler)

    path = None if cfg.checkpoint_dir is None else Path(cfg.checkpoint_dir) / CHECKPOINT_NAME
    step, history, seconds = 0, [], 0.0
    if cfg.resume and path is not None and path.is_file():
        checkpoint = _read_checkpoint(path)
        _check_resume_config(checkpoint["config"], cfg, path)
        _load_model_state(model, checkpoint["model"], path)
        if len(checkpoint["optimizers"]) != len(optimizers):
            raise RuntimeError(f"{path} holds {len(checkpoint['optimizers'])} optimiser(s) but this model's "
                               f"parameter groups need {len(optimizers)}; pass resume=False or another checkpoint_dir")
        for optimizer, state in zip(optimizers, checkpoint["optimizers"]):
            optimizer.load_state_dict(state)
        scaler.load_state_dict(checkpoint["scaler"])
        _set_rng_state(checkpoint["rng"])
        step, history, seconds = checkpoint["step"], checkpoint["history"], checkpoint["seconds"]
        if rank:                                          # the checkpoint holds rank 0's random state
            utils.seed_everything(cfg.seed + 100_003 * rank + step)
        _log.info("resuming from %s at step %d", path, step)
    model.history = history
    if step >= cfg.max_steps:
        _log.info("%s is already at step %d >= max_steps=%d: nothing to train", path, step, cfg.max_steps)
        return model.eval()

    step_module: nn.Module = _LossStep(model)
    if world > 1:
        step_module = nn.parallel.DistributedDataParallel(
            step_module, device_ids=[dev.index] if dev.type == "cuda" else None,
            find_unused_parameters=bool(getattr(model, "ddp_find_unused_parameters", False)))
    loader = DataLoader(dataset, batch_sampler=_ShuffledBatches(n, batch_size, cfg.seed, step, rank, world),
                        num_workers=cfg.num_workers, pin_memory=dev.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))
    batches = iter(loader)
    sums: dict[str, torch.Tensor | float] = {}
    finite_steps = 0
    skipped = history[-1]["skipped"] if history else 0
    consecutive_bad, bad_terms = 0, set()
    start = time.perf_counter() - seconds
    model.train()
    if network_amp:
        model.amp_dtype = autocast_dtype
    bar = utils.progress(total=cfg.max_steps, initial=step, desc=f"training {type(model).__name__}",
                         enabled=cfg.progress if main else False)
    try:
        while step < cfg.max_steps:
            batch = _to_device(next(batches), dev, cfg.channels_last)
            _set_learning_rates(optimizers, cfg, step)
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            with contextlib.nullcontext() if network_amp else precision.autocast(dev, autocast_dtype):
                terms = _run_step(step_module, batch, model)
            loss = _total_loss(terms)
            bad = [] if torch.isfinite(loss) else _nonfinite_terms(terms)
            if world > 1 and distributed.any_rank(bool(bad), dev) and not bad:
                bad = ["loss in another process"]                 # every process skips the step together
            if not bad:
                scaler.scale(loss).backward()
                for optimizer in optimizers:
                    scaler.unscale_(optimizer)
                if not _clip_gradients(optimizers, cfg.grad_clip) and not use_scaler:
                    bad = ["gradient norm (all loss terms finite)"]
            step += 1
            if bad:
                skipped += 1
                consecutive_bad += 1
                bad_terms.update(bad)
                for name in terms:
                    sums.setdefault(name, 0.0)  # recorded as NaN when the whole window was skipped
            else:
                consecutive_bad, bad_terms = 0, set()
                for optimizer in optimizers:
                    scaler.step(optimizer)
                scaler.update()
                if callable(getattr(model, "on_step", None)):
                    model.on_step(step)
                finite_steps += 1
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + torch.as_tensor(value).detach().float()
            bar.update(1)
            failing = consecutive_bad >= cfg.max_nonfinite_steps

            if step % cfg.log_every == 0 or step == cfg.max_steps or failing:
                record = {"step": step}
                record.update(distributed.mean_over_ranks(
                    {name: float(total) / finite_steps if finite_steps else math.nan for name, total in sums.items()},
                    dev))
                record.update(lr=optimizers[0].param_groups[0]["lr"], seconds=time.perf_counter() - start,
                              skipped=skipped)
                history.append(record)
                sums, finite_steps = {}, 0
                if "loss" in record:
                    bar.set_postfix(loss=f"{record['loss']:.4g}")
                if cfg.callback is not None and main:
                    cfg.callback(step, record)
            if failing:
                raise RuntimeError(f"{consecutive_bad} consecutive non-finite steps (up to step {step}); "
                                   f"non-finite: {sorted(bad_terms)}. The weights are those of the last finite "
                                   f"step. Lower the lr, enable grad_clip or check the loss terms.")
            if step == cfg.max_steps and callable(getattr(model, "on_fit_end", None)):
                model.on_fit_end(dataset)                 # e.g. MaskContrast's clusters; saved with the last step
            if path is not None and (step % cfg.checkpoint_every == 0 or step == cfg.max_steps):
                if main:
                    _save_checkpoint(path, model, optimizers, scaler, step, history, time.perf_counter() - start, cfg)
                distributed.barrier()                     # no process runs ahead of a checkpoint being written
    finally:
        bar.close()
        if network_amp:
            model.amp_dtype = previous_amp_dtype
    return model.eval()


def load_checkpoint(model: nn.Module, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load the weights of a :func:`fit` checkpoint (a ``last.pt`` file or its folder) into ``model``.

    Sets ``model.history`` and returns the checkpoint dict (``"step"``, ``"config"``, ``"history"``, ...).
    Raises ``RuntimeError`` naming the parameters whose shapes differ.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    checkpoint = _read_checkpoint(path, map_location)
    _load_model_state(model, checkpoint["model"], path)
    model.history = checkpoint["history"]
    return checkpoint


def plot_history(history: Sequence[dict] | nn.Module, ax=None, terms: Optional[Sequence[str]] = None,
                 log_scale: bool = False):
    """Loss curves: each loss term of ``history`` (or ``model.history``) against the step.

    Args:
        history: records from :func:`fit`, or a trained model carrying them.
        ax: matplotlib axes to draw into; ``None`` = a new figure.
        terms: which terms to plot; ``None`` = every loss term.
        log_scale: logarithmic y axis (symlog when some values are <= 0).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    from partlab import viz

    if isinstance(history, nn.Module):
        history = getattr(history, "history", [])
    if not history:
        raise ValueError("the history is empty: train with partlab.train.fit first")
    available = [key for key in history[-1] if key not in _HISTORY_KEYS]
    terms = available if terms is None else list(terms)
    missing = [term for term in terms if term not in available]
    if missing:
        raise ValueError(f"terms {missing} are not in the history; it has {available}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    viz.draw_loss_curves(ax, history, terms, log_scale=log_scale)
    ax.legend(fontsize="small")
    return ax.figure


def _dataset_length(dataset: Dataset) -> int:
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError(f"fit needs a map-style dataset with __len__ and __getitem__, "
                        f"got {type(dataset).__name__}") from None
    if n == 0:
        raise ValueError("the dataset is empty: fit needs at least one item")
    return n


def _build_optimizers(model: nn.Module, cfg: TrainConfig) -> list[torch.optim.Optimizer]:
    """One optimiser per optimizer kind among the parameter groups (config kind first)."""
    hook = getattr(model, "param_groups", None)
    groups = [dict(group) for group in hook(cfg)] if callable(hook) else [
        {"params": [p for p in model.parameters() if p.requires_grad]}]
    grouped_ids = set()
    by_kind: dict[str, list[dict]] = {}
    for group in groups:
        group["params"] = list(group["params"])
        grouped_ids.update(id(p) for p in group["params"])
        kind = group.pop("optimizer", cfg.optimizer)
        if kind not in OPTIMIZERS:
            raise ValueError(f"a parameter group asks for optimizer={kind!r}; choose one of {OPTIMIZERS}")
        group.setdefault("lr", cfg.lr)
        group["initial_lr"] = group["lr"]
        by_kind.setdefault(kind, []).append(group)
    left_out = sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in grouped_ids)
    if left_out:
        warnings.warn(f"{left_out} trainable parameter values are in no group of {type(model).__name__}.param_groups "
                      f"and will not be trained", stacklevel=3)
    if not any(group["params"] for group in groups):
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    optimizers = []
    for kind in sorted(by_kind, key=lambda k: k != cfg.optimizer):
        if kind == "sgd":
            optimizers.append(torch.optim.SGD(by_kind[kind], lr=cfg.lr, momentum=cfg.momentum,
                                              weight_decay=cfg.weight_decay))
        else:
            optimizers.append(torch.optim.Adam(by_kind[kind], lr=cfg.lr, betas=cfg.betas,
                                               weight_decay=cfg.weight_decay))
    return optimizers


def _amp_settings(amp: bool | str, dev: torch.device) -> tuple[Optional[torch.dtype], bool]:
    """(autocast dtype or None, use a GradScaler)."""
    if amp is False:
        return None, False
    if amp == "bf16" and dev.type in ("cuda", "cpu"):
        return torch.bfloat16, False
    if dev.type == "cuda":
        return torch.float16, True
    warnings.warn(f"amp={amp!r} has no effect on {dev.type}: training in float32 "
                  f"(amp='bf16' autocasts on cpu)", stacklevel=3)
    return None, False


def _to_device(batch: Any, dev: torch.device, channels_last: bool) -> Any:
    """Move every tensor of a (nested) batch to ``dev``; 4-D float tensors to channels-last if asked."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(dev, non_blocking=True)
        if channels_last and batch.dim() == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, dict):
        return {key: _to_device(value, dev, channels_last) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(value, dev, channels_last) for value in batch)
    return batch


def _run_step(step_module: nn.Module, batch: Any, model: nn.Module) -> Any:
    """``model.losses(batch)`` through the step module (DDP's wrapper under torchrun), with DDP's error about
    parameters left without a gradient said in partlab's terms."""
    try:
        return step_module(batch)
    except RuntimeError as exc:
        if "Expected to have finished reduction" not in str(exc):
            raise
        raise RuntimeError(f"{type(model).__name__} has trainable parameters that the last step's losses did not "
                           f"use, so DistributedDataParallel waited for their gradients: set "
                           f"ddp_find_unused_parameters = True on the model (or freeze those parameters with "
                           f"requires_grad_(False))") from exc


def _set_learning_rates(optimizers: list[torch.optim.Optimizer], cfg: TrainConfig, step: int) -> None:
    """Poly schedule: ``lr_t = lr_0 * (1 - t / max_steps) ** poly_power`` for step ``t = 0 .. max_steps-1``."""
    if cfg.lr_schedule == "constant":
        return
    factor = (1.0 - step / cfg.max_steps) ** cfg.poly_power
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor


def _total_loss(terms: Any) -> torch.Tensor:
    if not isinstance(terms, dict) or "loss" not in terms:
        got = sorted(terms) if isinstance(terms, dict) else type(terms).__name__
        raise TypeError(f"model.losses(batch) must return a dict with the weighted total under 'loss'; got {got}")
    loss = terms["loss"]
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
        raise TypeError("model.losses(batch)['loss'] must be a scalar tensor that requires grad")
    return loss.reshape(())


def _nonfinite_terms(terms: dict) -> list[str]:
    return [name for name, value in terms.items() if not torch.isfinite(torch.as_tensor(value)).all()]


def _clip_gradients(optimizers: list[torch.optim.Optimizer], grad_clip: Optional[float]) -> bool:
    """Clip groups with a ``"clip"`` value each on its own, the rest together at ``grad_clip``.

    Returns whether all gradient norms are finite."""
    norms = []
    unclipped = []
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if group.get("clip") is not None:
                norms.append(torch.nn.utils.clip_grad_norm_(params, group["clip"]))
            else:
                unclipped += params
    if unclipped:
        if grad_clip is not None:
            norms.append(torch.nn.utils.clip_grad_norm_(unclipped, grad_clip))
        else:  # max_norm=inf: the norm only (the gradients are multiplied by exactly 1)
            norms.append(torch.nn.utils.clip_grad_norm_(unclipped, math.inf))
    return bool(torch.isfinite(torch.stack([norm.float().cpu() for norm in norms])).all()) if norms else True


def _rng_state() -> dict:
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": int(numpy_state[2]),
                  "has_gauss": int(numpy_state[3]), "cached_gaussian": float(numpy_state[4])},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _save_checkpoint(path: Path, model: nn.Module, optimizers: list[torch.optim.Optimizer],
                     scaler: torch.amp.GradScaler, step: int, history: list[dict], seconds: float,
                     cfg: TrainConfig) -> None:
    """Write the checkpoint atomically: to ``last.pt.<random>.tmp`` in the same folder, then ``os.replace``
    (:func:`partlab.utils.atomic_save`)."""
    checkpoint = {
        "format": "partlab.train/1",
        "model": model.state_dict(),
        "optimizers": [optimizer.state_dict() for optimizer in optimizers],
        "scaler": scaler.state_dict(),
        "step": step,
        "seconds": seconds,
        "history": history,
        "config": cfg.to_dict(),
        "rng": _rng_state(),
    }
    utils.atomic_save(checkpoint, path)


def _read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint dict of ``path``, read without running code from it (``weights_only=True``);
    ``RuntimeError`` naming the file when it is damaged, truncated or not a :func:`fit` checkpoint."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        text = str(exc)
        blocked = text.split("GLOBAL ", 1)[1].split()[0] if "GLOBAL " in text else None  # torch names it
        reason = (f"it asks to load {blocked}, and partlab loads only tensors and plain values" if blocked
                  else "it is empty, truncated or damaged")
        raise RuntimeError(f"cannot read checkpoint {path}: {reason}") from None
    missing = [] if not isinstance(checkpoint, dict) else [key for key in _CHECKPOINT_KEYS if key not in checkpoint]
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != "partlab.train/1" or missing:
        raise RuntimeError(f"cannot read checkpoint {path}: it is not a partlab.train checkpoint"
                           + (f" (it lacks {missing})" if missing else ""))
    return checkpoint


_CHECKPOINT_KEYS = ("model", "optimizers", "scaler", "step", "seconds", "history", "config", "rng")


def _load_model_state(model: nn.Module, state: dict, path: Path) -> None:
    """``model.load_state_dict`` with an error that lists the differing parameters."""
    own = model.state_dict()
    problems = [f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
                for key, value in state.items() if key in own and own[key].shape != value.shape]
    problems += [f"{key}: missing in the checkpoint" for key in own if key not in state]
    problems += [f"{key}: not in the model" for key in state if key not in own]
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... ({len(problems)} in all)" if len(problems) > 8 else "")
        raise RuntimeError(f"checkpoint {path} does not fit this {type(model).__name__}: {shown}. "
                           f"Pass resume=False or another checkpoint_dir to start over.")
    model.load_state_dict(state)


def _check_resume_config(saved: dict, cfg: TrainConfig, path: Path) -> None:
    """Refuse to resume with settings that change the computation; warn when a poly run changes length."""
    current = cfg.to_dict()
    differences = [f"{key}: checkpoint {saved.get(key)!r} -> now {current[key]!r}"
                   for key in _RESUME_MUST_MATCH if saved.get(key) != current[key]]
    if differences:
        raise ValueError(f"cannot resume from {path}: it was trained with different settings "
                         f"({'; '.join(differences)}). Use the same settings, or resume=False / another "
                         f"checkpoint_dir to start over.")
    if cfg.lr_schedule == "poly" and saved.get("max_steps") != cfg.max_steps:
        warnings.warn(f"resuming {path} with max_steps={cfg.max_steps} (was {saved.get('max_steps')}): the poly "
                      f"learning-rate schedule changes from here on", stacklevel=3)
