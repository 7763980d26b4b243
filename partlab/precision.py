"""Mixed precision in partlab: autocast around the networks, every loss term in float32.

Half precision (float16, bfloat16) speeds up convolutions, but the loss terms of these papers sum
many squared values (``part_consistency_loss`` on the Lab image reaches ~1e3 per pixel, past
float16's 65504 once summed), normalise by small masses (part centres) or subtract nearly equal
numbers. So, as DESIGN.md says:

- :func:`float32` decorates every public loss function (and :func:`partlab.geometry.part_centers`):
  inside it autocast is off and half-precision tensor arguments are cast to float32, whatever
  autocast region its caller is in; the result is the float32 value.
- :func:`autocast` is the region for the network forward passes: a method's ``forward`` and its
  frozen feature extractor run under it when :func:`partlab.train.fit` trains with ``amp``
  (it sets the method's ``amp_dtype`` for the duration of the run; see
  :meth:`partlab.methods.base.PartSegmenter.autocast`).

>>> import torch
>>> @float32
... def total(x):
...     return (x @ x.T).sum()
>>> with torch.autocast("cpu", dtype=torch.bfloat16):
...     total(torch.ones(3, 3)).dtype
torch.float32
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Optional, TypeVar

import torch

__all__ = ["HALF_DTYPES", "autocast", "float32"]

F = TypeVar("F", bound=Callable[..., Any])

HALF_DTYPES = (torch.float16, torch.bfloat16)


def _upcast(value: Any) -> Any:
    """A half-precision tensor as float32; tensors inside lists, tuples and dicts likewise; the rest as is."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in HALF_DTYPES else value
    if isinstance(value, (list, tuple)):
        return type(value)(_upcast(item) for item in value)
    if isinstance(value, dict):
        return {key: _upcast(item) for key, item in value.items()}
    return value


def _device_types(values) -> set[str]:
    kinds = set()
    for value in values:
        if isinstance(value, torch.Tensor):
            kinds.add(value.device.type)
        elif isinstance(value, (list, tuple)):
            kinds |= _device_types(value)
        elif isinstance(value, dict):
            kinds |= _device_types(value.values())
    return kinds


def float32(fn: F) -> F:
    """Run ``fn`` in float32: autocast disabled (on the devices of its tensor arguments, and the CPU),
    float16/bfloat16 tensor arguments cast to float32 (float64 ones are kept, for gradcheck).
    Gradients flow through the casts back to the half-precision inputs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kinds = _device_types(args) | _device_types(kwargs.values()) | {"cpu"}
        with contextlib.ExitStack() as stack:
            for kind in sorted(kinds):
                if torch.is_autocast_enabled(kind):
                    stack.enter_context(torch.autocast(kind, enabled=False))
            return fn(*_upcast(args), **_upcast(kwargs))

    return wrapper  # type: ignore[return-value]


def autocast(device: "torch.device | str", dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or a no-op region when ``dtype`` is None."""
    kind = torch.device(device).type
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=dtype)
