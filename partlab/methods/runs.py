"""Run folders: a trained method saved so that it can be rebuilt without the code that trained it.

A run folder (``partlab train ... --out DIR``) holds two files:

- ``last.pt``: the checkpoint :func:`partlab.train.fit` writes with ``checkpoint_dir=DIR``;
- ``model.json``: how to rebuild the model, written by :func:`save_model_json`::

      {"format": "partlab.run/1", "method": "SCOPS",
       "kwargs": {"num_parts": 5, "network": "unet", "feature_channels": 3, ...},
       "category": "bird", "size": 64, "features": "rgb: raw RGB pixels ...", "info": {...}}

``kwargs`` are the constructor arguments the model was built with (recorded by
:class:`~partlab.methods.base.PartSegmenter`), JSON values only. Two rules keep a rebuild cheap and
faithful: a frozen feature extractor is stored by name (``{"feature_extractor": "standin"}``) and
rebuilt with :func:`partlab.features.get_extractor`; a network's ImageNet initialisation is not
loaded again (``pretrained=False``, the checkpoint holds every weight) and its BatchNorm freezing is
stored as it was (``freeze_bn``).

>>> model, meta = load_method("runs/scops_bird")        # doctest: +SKIP
>>> model.predict(images)["labels"]                     # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from partlab.methods import registry
from partlab.methods.base import PartSegmenter
from partlab.utils import atomic_write_text

RUN_FORMAT = "partlab.run/1"
MODEL_JSON = "model.json"
_EXTRACTOR_KEY = "feature_extractor"
MAX_PARTS = 255                        # label maps are 8-bit PNGs (0 = background)
SIZE_RANGE = (16, 4096)                # the image size a run predicts at (partlab segment resizes to it)
MAX_WEIGHTS = 200_000_000              # parameters + buffers a rebuilt model may hold (800 MB in float32)

# Methods a run folder can hold, by class name (the "method" of model.json): the method registry's.
METHODS: dict[str, type[PartSegmenter]] = registry.classes()


def constructor_kwargs(model: PartSegmenter) -> dict[str, Any]:
    """The keyword arguments that rebuild ``model`` (``type(model)(**kwargs)``), as JSON values.

    Raises ``ValueError`` naming an argument that cannot be stored as JSON.
    """
    args, kwargs = getattr(model, "init_args", ((), {}))
    signature = inspect.signature(type(model).__init__)
    bound = signature.bind(model, *args, **kwargs).arguments
    out: dict[str, Any] = {}
    for name, value in list(bound.items())[1:]:                      # the first is self
        if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        else:
            out[name] = value
    for name, value in out.items():
        if callable(getattr(value, "layers_for", None)):              # a frozen feature extractor
            out[name] = {_EXTRACTOR_KEY: value.name}
    network = getattr(model, "network", None)
    if hasattr(network, "bn_frozen"):                                # DeepLab: as trained, not as re-derived
        out["freeze_bn"] = bool(network.bn_frozen)
    for name, value in out.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"{type(model).__name__} argument {name}={value!r} cannot be stored in "
                             f"{MODEL_JSON}: only JSON values (numbers, strings, lists, dicts) can") from None
    return json.loads(json.dumps(out))                               # tuples -> lists, as a reload sees them


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, tensors as lists, non-finite floats as ``None`` and anything
    else that JSON cannot hold as its ``str``: for the ``info`` of :func:`save_model_json`."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return jsonable(value.tolist())
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def save_model_json(run_dir: str | os.PathLike, model: PartSegmenter, *, category: str, size: int,
                    features: Optional[str] = None, info: Optional[Mapping] = None) -> Path:
    """Write ``run_dir/model.json`` (atomically) describing how to rebuild ``model``; return its path.

    Args:
        run_dir: the run folder (created if needed); the checkpoint goes there too.
        model: a method of :data:`METHODS`.
        category, size: the synthetic data it was trained on.
        features: which semantic features it used (a sentence), ``None`` when none.
        info: anything else worth keeping (e.g. the ``info`` of ``scops_quick_setup``); made JSON-able.
    """
    name = type(model).__name__
    if name not in METHODS:
        raise ValueError(f"cannot save a {name}: run folders hold one of {sorted(METHODS)}")
    meta = {"format": RUN_FORMAT, "method": name, "kwargs": constructor_kwargs(model), "category": category,
            "size": int(size), "features": features, "info": jsonable(dict(info or {}))}
    return atomic_write_text(Path(run_dir) / MODEL_JSON, json.dumps(meta, indent=2, allow_nan=False) + "\n")


def read_model_json(run_dir: str | os.PathLike) -> dict:
    """The ``model.json`` of a run folder; ``FileNotFoundError`` / ``ValueError`` saying what is wrong."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}; make one with `partlab train scops --out {run_dir}`")
    path = run_dir / MODEL_JSON
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir} is not a partlab run folder: {path} is missing; make one with "
                                f"`partlab train scops --out {run_dir}`")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} cannot be read as JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise ValueError(f"{path} is not a partlab run description (format {RUN_FORMAT!r})")
    _check_model_json(meta, path)
    return meta


def _is_int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _check_model_json(meta: dict, path: Path) -> None:
    """``ValueError`` naming ``path`` and the field when ``meta`` cannot describe a model partlab
    builds: checked before anything is built, so a damaged or hostile file allocates nothing."""
    method = meta.get("method")
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"{path} names method {method!r}, which partlab does not know; known methods: "
                         f"{sorted(METHODS)}")
    kwargs = meta.get("kwargs")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{path}: kwargs must be a JSON object {{name: value}} of {method}'s arguments, got "
                         f"{type(kwargs).__name__}")
    if not _is_int_in(kwargs.get("num_parts"), 1, MAX_PARTS):
        raise ValueError(f"{path}: num_parts must be an integer in [1, {MAX_PARTS}], got "
                         f"{kwargs.get('num_parts')!r}")
    if not _is_int_in(meta.get("size"), *SIZE_RANGE):
        raise ValueError(f"{path}: size must be an integer in [{SIZE_RANGE[0]}, {SIZE_RANGE[1]}], got "
                         f"{meta.get('size')!r}")
    if not isinstance(meta.get("category"), str):
        raise ValueError(f"{path}: category must be a string, got {meta.get('category')!r}")
    accepted = _accepted_kwargs(METHODS[method], kwargs, path)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"{path}: unknown argument(s) {unknown} for {method} with network "
                         f"{kwargs.get('network', 'unet')!r}; it takes {sorted(accepted)}")


def _accepted_kwargs(cls: type, kwargs: Mapping[str, Any], path: Path) -> set[str]:
    """:func:`partlab.methods.base.accepted_kwargs`, its error naming ``path``."""
    from partlab.methods.base import accepted_kwargs

    try:
        return accepted_kwargs(cls, dict(kwargs))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _rebuild_kwargs(kwargs: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    out = dict(kwargs)
    for name, value in kwargs.items():
        if isinstance(value, Mapping) and set(value) == {_EXTRACTOR_KEY}:
            from partlab.features import get_extractor

            out[name] = get_extractor(value[_EXTRACTOR_KEY], device=device, verbose=False)
    if "pretrained" in out:
        out["pretrained"] = False                                   # the checkpoint holds the weights
    return out


def _build(cls: type[PartSegmenter], kwargs: dict[str, Any], path: Path) -> PartSegmenter:
    """``cls(**kwargs)``, first built without memory (on the ``meta`` device) to refuse, with one
    ``ValueError`` naming ``path``, arguments it rejects or a model of more than :data:`MAX_WEIGHTS`."""
    try:
        with torch.device("meta"):
            probe = cls(**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:         # values of the wrong type, range or size
        raise ValueError(f"{path}: its kwargs cannot build a {cls.__name__}: {exc}") from None
    weights = sum(t.numel() for t in (*probe.parameters(), *probe.buffers()))
    if weights > MAX_WEIGHTS:
        raise ValueError(f"{path}: its kwargs describe a {cls.__name__} of {weights:,} weights, more than the "
                         f"{MAX_WEIGHTS:,} partlab rebuilds; the file is damaged")
    return cls(**kwargs)


def load_method(run_dir_or_checkpoint: str | os.PathLike,
                map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a trained method from a run folder (or the ``last.pt`` inside one).

    Args:
        run_dir_or_checkpoint: the folder ``partlab train --out`` wrote, or a checkpoint file with a
            ``model.json`` next to it.
        map_location: the device the model (and a feature extractor, if any) is put on.

    Returns:
        ``(model, meta)``: the model in eval mode with the checkpoint's weights and ``model.history``;
        ``meta`` is ``model.json`` plus ``"run_dir"`` and ``"checkpoint"`` (``path``, ``step``).

    Raises:
        FileNotFoundError: the folder, ``model.json`` or the checkpoint is missing (the path is named).
        ValueError: an unknown method, a malformed ``model.json``, or a checkpoint that cannot be read
            or does not fit the model ``model.json`` describes.
    """
    from partlab.train import CHECKPOINT_NAME, load_checkpoint

    path = Path(run_dir_or_checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"no run folder or checkpoint at {path}; make one with "
                                f"`partlab train scops --out {path}`")
    run_dir, checkpoint_path = (path, path / CHECKPOINT_NAME) if path.is_dir() else (path.parent, path)
    meta = read_model_json(run_dir)
    if checkpoint_path.is_dir():
        raise ValueError(f"{checkpoint_path} is a folder, not a checkpoint")
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint_path}: the run has not saved one yet; continue it "
                                f"with `partlab train ... --out {run_dir} --resume`")
    device = torch.device(map_location) if isinstance(map_location, (str, torch.device)) else torch.device("cpu")
    model = _build(METHODS[meta["method"]], _rebuild_kwargs(meta["kwargs"], device), run_dir / MODEL_JSON)
    try:
        checkpoint = load_checkpoint(model, checkpoint_path, map_location=map_location)
    except RuntimeError as exc:
        raise ValueError(f"{exc}; train the run again, or use another run") from None
    meta = dict(meta, run_dir=str(run_dir), checkpoint={"path": str(checkpoint_path), "step": checkpoint["step"]})
    return model.to(device).eval(), meta
