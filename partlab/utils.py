"""Small utilities every part of partlab uses: device choice, seeding, quiet-aware progress bars,
atomic file writes.

>>> from partlab import utils
>>> utils.device("cpu")
device(type='cpu')
"""

from __future__ import annotations

import os
import random
import secrets
import sys
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Optional, TypeVar

import numpy as np
import torch

T = TypeVar("T")

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def device(spec: "str | torch.device | None" = "auto") -> torch.device:
    """Resolve a device spec: ``"auto"`` picks cuda, then mps, then cpu.

    Accepts ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``, a ``torch.device`` or ``None`` (= auto).
    Asking for an accelerator that is absent raises a ``ValueError`` that says what is available.
    """
    if isinstance(spec, torch.device):
        return spec
    if spec is None or spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(spec, str) or spec.split(":")[0] not in DEVICE_CHOICES:
        raise ValueError(f"device={spec!r} is not understood; use one of {DEVICE_CHOICES} (or 'cuda:N')")
    kind = spec.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={spec!r} asked for, but CUDA is not available here; use device='auto' or 'cpu'")
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device='mps' asked for, but MPS is not available here; use device='auto' or 'cpu'")
    return torch.device(spec)


def describe_device(dev: "str | torch.device" = "auto") -> str:
    """One line naming the device, for notebooks to print (honesty: say where things ran)."""
    dev = device(dev)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    if dev.type == "mps":
        return f"mps (Apple GPU), torch {torch.__version__}"
    return f"cpu ({torch.get_num_threads()} threads), torch {torch.__version__}"


def peak_memory(dev: "str | torch.device" = "auto") -> str:
    """The process's peak memory so far, for benchmarks to print: ``max_memory_allocated`` on CUDA, the peak
    resident set size elsewhere (``ru_maxrss``: KiB on Linux, bytes on macOS; ``"peak RSS unknown"`` where
    the platform has no ``resource`` module)."""
    dev = device(dev)
    if dev.type == "cuda":
        return f"peak CUDA memory {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB"
    try:
        import resource
    except ImportError:                                  # Windows
        return "peak RSS unknown"
    scale = 2**20 if sys.platform == "darwin" else 2**10
    return f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / scale / 2**20:.2f} GiB"


def module_device(module: torch.nn.Module, default: "torch.device | None" = None) -> "torch.device | None":
    """The device of a module's first buffer or parameter (``default`` when it has neither)."""
    for tensor in module.buffers():
        return tensor.device
    for tensor in module.parameters():
        return tensor.device
    return default


def dataset_index(index: int, length: int) -> int:
    """``index`` as a position in ``0 .. length - 1`` (negative counts from the end, as for lists);
    ``IndexError`` naming both when it is out of range."""
    i = int(index)
    if i < 0:
        i += length
    if not 0 <= i < length:
        raise IndexError(f"index {int(index)} out of range for a dataset of length {length}")
    return i


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); return a CPU ``torch.Generator`` seeded the same."""
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))
    return torch.Generator().manual_seed(int(seed))


def progress_enabled() -> bool:
    """Progress bars are on unless ``PARTLAB_PROGRESS=0`` (set by the curriculum runner and the tests,
    so papermill outputs stay readable)."""
    return os.environ.get("PARTLAB_PROGRESS", "1").lower() not in ("0", "false", "off", "no")


def progress(iterable: Optional[Iterable[T]] = None, *, total: Optional[int] = None, desc: Optional[str] = None,
             enabled: Optional[bool] = None, **kwargs) -> Iterator[T]:
    """A tqdm bar (notebook widget or terminal) that is silent when progress is disabled.

    ``enabled=None`` follows :func:`progress_enabled`. Extra keyword arguments go to tqdm.
    """
    from tqdm.auto import tqdm

    on = progress_enabled() if enabled is None else enabled
    return tqdm(iterable, total=total, desc=desc, disable=not on, file=sys.stderr, dynamic_ncols=True, **kwargs)


def atomic_write(path: "str | os.PathLike", write: Callable[[IO], Any], mode: str = "w") -> Path:
    """Write ``path`` so that a reader sees the old file or the whole new one, never half of one.

    ``write(handle)`` fills a temporary file ``<name>.<random>.tmp`` in the same folder (created if
    needed), which then replaces ``path`` with ``os.replace`` (atomic within one folder). If ``write``
    raises, the temporary file is removed and ``path`` is left as it was. ``mode``: ``"w"`` (text,
    UTF-8) or ``"wb"`` (bytes). A folder without write permission raises ``PermissionError`` naming it.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out" / "scores.json"
    >>> atomic_write(target, lambda f: f.write("{}")).read_text()
    '{}'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode={mode!r}: use 'w' (text) or 'wb' (bytes)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")         # one per writer: no collisions
    try:
        handle = open(tmp, mode.replace("w", "x"), encoding=None if mode == "wb" else "utf-8")
    except PermissionError as exc:
        raise PermissionError(f"cannot write {path}: no permission to write in {path.parent}") from exc
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: "str | os.PathLike", text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`); return the path."""
    return atomic_write(path, lambda handle: handle.write(text))


def atomic_save(obj: Any, path: "str | os.PathLike") -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`atomic_write`); return the path."""
    return atomic_write(path, lambda handle: torch.save(obj, handle), mode="wb")
