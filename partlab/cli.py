"""The ``partlab`` command line.

    partlab info                               what partlab will use here (device, features, data)
    partlab render --category bird -n 16 out.png   a grid of synthetic samples with part overlays
    partlab train METHOD [--recipe quick|paper|NAME|FILE] [--set fit.lr=1e-4 ...] [--steps N] [--out DIR] [--resume] ...
                                               train a registered method (scops, contrastive, oracle) with a
                                               recipe on the synthetic world into a run folder
    partlab evaluate --run DIR [--run DIR2] [--run-mask own|true] [--baseline kmeans|dff|position|xy|rgbxy] [--baseline-mask true|rbd|none] [--json out.json]
                                               one benchmark table (partlab.evaluation) on the synthetic test split
    partlab segment --run DIR IMAGE... [--out DIR]  part overlays and label maps of your own PNG/JPG images
    partlab swap --run DIR SOURCE TARGET --parts 1 3 --out x.png [--hard]
                                               part swap (motion runs): the chosen parts of TARGET replaced
                                               by those of SOURCE (partlab.motion.part_swap)
    partlab notebooks run [--quick] [--only NAME] [-p KEY VALUE] [--html]   the curriculum (papermill)
    partlab notebooks list

A run folder (``--out`` of ``partlab train``) holds the checkpoint ``last.pt``, ``model.json``, from which
:func:`partlab.methods.load_method` rebuilds the model, and ``recipe.json``, from which the run can be
re-run (``--recipe runs/x/recipe.json``). The quick recipe (CPU, minutes) is the default; the paper's is
``partlab train scops --recipe paper --amp bf16`` on a GPU. Methods and recipes come from the method
registry (:mod:`partlab.methods.registry`).

Errors a user can fix (a missing folder, a bad argument, an unreadable file) print one line and exit
with status 2 (work that fails, such as a training run that diverges, one line and status 1), before anything is written: output paths are checked first, and a run folder that a
failed ``partlab train`` leaves without a checkpoint loses what that command added to it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

_RECORD_KEYS = ("step", "lr", "seconds", "skipped")   # history entries that are not loss terms
MAX_DATA_PIXELS = 250_000_000   # images x size^2 a command may synthesise and hold (3 GB of float32 RGB)


def _cmd_info(args) -> int:
    from partlab import utils
    from partlab.data import synthetic
    from partlab.features import get_extractor
    from partlab.methods.registry import REGISTRY

    print(f"partlab {__import__('partlab').__version__}")
    print(f"device (auto): {utils.describe_device('auto')}")
    extractor = get_extractor("auto", device="cpu", verbose=False)
    print(f"features (auto): {extractor.name}: {extractor.description}")
    print(f"synthetic categories: {', '.join(synthetic.CATEGORIES)}")
    for entry in REGISTRY.values():
        print(f"method {entry.name}: {entry.description}; trains on {entry.data}; recipes {', '.join(entry.recipes)}")
    return 0


def _check_output(path: Path, what: str, folder: bool) -> None:
    """Refuse, before any work, an output that cannot be written: a file where a folder is wanted (or
    the other way round), a path below a file, a folder without write permission."""
    if folder and path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file; give a folder")
    if not folder and path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name in it")
    parent = path if folder else path.parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{what} {path} cannot be written: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{what} {path} cannot be written: no permission to write in {existing}")


def _check_data_size(images: int, size: int, what: str) -> None:
    """Refuse synthetic data that would not fit in memory: more than :data:`MAX_DATA_PIXELS` pixels."""
    if images * size * size > MAX_DATA_PIXELS:
        raise ValueError(f"{what}: {images} images of {size} px are more than partlab holds in memory "
                         f"({MAX_DATA_PIXELS // 1_000_000} million pixels: at most "
                         f"{MAX_DATA_PIXELS // (size * size)} images of {size} px); use fewer images or a "
                         f"smaller --size")


def _cmd_render(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import torch
    from matplotlib.backend_bases import FigureCanvasBase

    from partlab import viz
    from partlab.data.synthetic import SyntheticParts

    output = Path(args.output)
    if not output.is_dir() and not output.suffix:
        output = output.with_suffix(".png")                    # what matplotlib writes for a bare name
    formats = FigureCanvasBase.get_supported_filetypes()
    if output.suffix and output.suffix[1:].lower() not in formats:
        raise ValueError(f"cannot write a {output.suffix!r} file; name the output .png (or one of "
                         f"{', '.join(sorted(formats))})")
    _check_output(output, "output", folder=False)
    data = SyntheticParts(category=args.category, size=args.size, length=args.n, seed=args.seed, split=args.split,
                          config=args.world)
    items = [data[i] for i in range(len(data))]
    images = torch.stack([it["image"] for it in items])
    labels = torch.stack([it["parts"] for it in items])
    landmarks = torch.stack([it["landmarks"] for it in items])
    visible = torch.stack([it["visible"] for it in items])
    fig = viz.show_parts(images, labels, landmarks=landmarks, visible=visible, side_by_side=True,
                         ncols=min(8, args.n))
    path = viz.save_figure(fig, output)
    print(f"wrote {path} ({args.n} {args.category} samples, {args.world} world, {args.size}px, seed {args.seed}, "
          f"split {args.split})")
    return 0


# ---------------------------------------------------------------------------------------------
# partlab train
# ---------------------------------------------------------------------------------------------


def _recipe(args):
    """The recipe ``partlab train`` runs: ``--recipe`` (a name of the method's or a ``recipe.json``), the
    shortcut flags, then every ``--set section.name=value``, then ``--allow-random-init``."""
    from partlab.methods.registry import get_method
    from partlab.recipes import RECIPE_FILE, load_recipe

    entry = get_method(args.method)
    if args.recipe in entry.recipes:
        recipe = entry.recipe(args.recipe)
    elif args.recipe.endswith(".json") or Path(args.recipe).is_dir():
        path = Path(args.recipe)
        if not (path / RECIPE_FILE if path.is_dir() else path).is_file():
            raise ValueError(f"--recipe {args.recipe}: no such recipe file")
        recipe = load_recipe(path)
        if recipe.method != args.method:
            raise ValueError(f"--recipe {args.recipe} is a recipe of {recipe.method!r}, not of {args.method!r}")
    else:
        raise ValueError(f"{args.method} has no recipe {args.recipe!r}; choose one of {list(entry.recipes)}, or give "
                         f"a recipe.json file")
    shortcuts = {"data.category": args.category, "data.world": args.world, "data.size": args.size, "data.n_train": args.n_train,
                 "data.features": args.features, "fit.max_steps": args.steps, "fit.batch_size": args.batch_size,
                 "fit.lr": args.lr, "fit.seed": args.seed, "fit.amp": args.amp}
    changes = {key: value for key, value in shortcuts.items() if value is not None}
    recipe = recipe.override(changes).override(args.set)
    return recipe.override({"allow_random_init": True}) if args.allow_random_init else recipe


def _fit_settings(info: dict, args, out: Path) -> dict:
    """The recipe's ``fit`` keyword arguments, writing checkpoints to ``out``."""
    return dict(info["fit"], checkpoint_dir=str(out), resume=args.resume)


def _check_run_folder(out: Path, resume: bool) -> None:
    """Refuse an ``--out`` that cannot hold the run, a finished run without ``--resume``, and a
    checkpoint to resume that cannot be read (before any setup work)."""
    from partlab.train import CHECKPOINT_NAME, _read_checkpoint

    _check_output(out, "--out", folder=True)
    checkpoint = out / CHECKPOINT_NAME
    if checkpoint.exists() and not checkpoint.is_file():
        raise ValueError(f"{checkpoint} is a folder, not a checkpoint; move it away, or choose another --out")
    if checkpoint.exists() and not resume:
        raise ValueError(f"{out} already holds a trained run ({CHECKPOINT_NAME}); pass --resume to continue it, "
                         f"or choose another --out")
    if checkpoint.exists():
        try:
            _read_checkpoint(checkpoint)
        except RuntimeError as exc:
            raise ValueError(f"{exc}; delete it to start {out} over, or choose another --out") from None


@contextlib.contextmanager
def _run_folder_kept_clean(out: Path) -> Iterator[None]:
    """When the command does not finish and ``out`` holds no checkpoint, remove what it added: the
    folders it created, or the files it wrote into a folder that was already there."""
    from partlab.train import CHECKPOINT_NAME

    created = None
    for folder in (out, *out.parents):
        if folder.exists():
            break
        created = folder                                          # the topmost folder this command makes
    before = set(out.iterdir()) if created is None else set()
    finished = False
    try:
        yield
        finished = True
    finally:
        if not finished and not (out / CHECKPOINT_NAME).exists():
            if created is not None:
                shutil.rmtree(created, ignore_errors=True)
            else:
                for entry in set(out.iterdir()) - before:
                    shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _check_resumed_run(out: Path, model, recipe) -> None:
    """A resumed run must rebuild the model it saved: the same method, constructor arguments, features and
    recipe (weights, model settings, data; :func:`partlab.train.fit` checks the optimisation settings)."""
    from partlab.methods.runs import MODEL_JSON, constructor_kwargs, read_model_json
    from partlab.recipes import RECIPE_FILE, load_recipe

    differences = []
    if (out / MODEL_JSON).is_file():
        saved = read_model_json(out)
        now = {"method": type(model).__name__, "kwargs": constructor_kwargs(model)}
        differences += [f"{key}: saved {saved.get(key)!r} -> now {value!r}" for key, value in now.items()
                        if saved.get(key) != value]
    if (out / RECIPE_FILE).is_file():
        saved, now = load_recipe(out).to_dict(), recipe.to_dict()
        for section in ("weights", "model", "data"):
            differences += [f"{section}.{key}: saved {saved[section].get(key)!r} -> now {now[section].get(key)!r}"
                            for key in sorted(set(saved[section]) | set(now[section]))
                            if saved[section].get(key) != now[section].get(key)]
    if differences:
        raise ValueError(f"cannot resume {out}: it was trained with other settings ({'; '.join(differences)}); "
                         f"use the same settings, or another --out")


def _format_terms(record: dict) -> str:
    return "  ".join(f"{name} {value:.4g}" for name, value in record.items() if name not in _RECORD_KEYS)


def _cmd_train(args) -> int:
    recipe = _recipe(args)                                      # every setting checked before anything is written
    out = Path(args.out or f"runs/{args.method}_{recipe.data.category}")
    if recipe.data.cache:                                      # quick mode holds every training image in memory
        _check_data_size(recipe.data.n_train, recipe.data.size, "--n-train")
    _check_run_folder(out, args.resume)
    recipe.check_imagenet()
    from partlab import distributed

    if distributed.init_from_env(args.device):               # under torchrun: every process has checked
        distributed.barrier()                                # the folder before rank 0 writes into it
        if not distributed.is_main():
            return _train_alongside(out, recipe, args)
    with _run_folder_kept_clean(out):
        return _train_into(out, recipe, args)


def _train_alongside(out: Path, recipe, args) -> int:
    """A torchrun process other than rank 0: the same model and data, trained in step with rank 0, which
    alone writes the run folder and prints."""
    from partlab.train import fit

    model, dataset, info = recipe.build(device=args.device)
    fit(model, dataset, **_fit_settings(info, args, out))
    return 0


def _train_into(out: Path, recipe, args) -> int:
    from partlab.methods.runs import MODEL_JSON, save_model_json
    from partlab.recipes import RECIPE_FILE
    from partlab.train import CHECKPOINT_NAME, TrainConfig, fit

    model, dataset, info = recipe.build(device=args.device, run_dir=out)
    if args.resume:
        _check_resumed_run(out, model, recipe)
    backbone = getattr(model.network, "weights_used", None)
    if backbone is not None:
        info["backbone"] = backbone
    settings = _fit_settings(info, args, out)
    TrainConfig.from_kwargs(**settings)                        # refuse bad settings before writing anything
    info["fit"] = settings
    features = info.get("features") if getattr(model, "feature_role", "") else None
    json_path = out / MODEL_JSON
    if not (args.resume and json_path.is_file()):  # a resumed run keeps the description it started with
        save_model_json(out, model, category=recipe.data.category, size=recipe.data.size, features=features,
                        info=info)
        recipe.save(out)
    print(recipe.describe())
    print(f"  device: {info['device']}")
    for name, value in (("features", features), ("backbone", backbone)):
        if value is not None:
            print(f"  {name}: {value}")
    fit(model, dataset, **settings)
    record = model.history[-1]
    print(f"wrote {out / CHECKPOINT_NAME} (step {record['step']}), {json_path} and {out / RECIPE_FILE}")
    print(f"final loss terms (step {record['step']}): {_format_terms(record)}")
    return 0


# ---------------------------------------------------------------------------------------------
# partlab evaluate
# ---------------------------------------------------------------------------------------------


def _pick(name: str, given, from_runs: list):
    """``given`` if set, else the one value the runs agree on (``None`` without runs)."""
    if given is not None:
        return given
    values = sorted(set(from_runs), key=str)
    if len(values) > 1:
        raise ValueError(f"the runs were trained with different {name}s {values}; pass --{name} to pick the "
                         f"test data")
    return values[0] if values else None


def _unique_name(name: str, taken) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name} ({n})", n + 1
    return candidate


def _run_world(meta: dict) -> str:
    """The synthetic world a run folder was trained on (its recipe.json; runs without one: default)."""
    from partlab.recipes import RECIPE_FILE, load_recipe

    run_dir = Path(meta["run_dir"])
    return load_recipe(run_dir).data.world if (run_dir / RECIPE_FILE).is_file() else "default"


def _cmd_evaluate(args) -> int:
    from partlab import evaluation
    from partlab.data.synthetic import num_parts
    from partlab.methods import load_method

    if not args.run and not args.baseline:
        raise ValueError("nothing to evaluate: give --run DIR (a folder from `partlab train scops --out DIR`) "
                         f"and/or --baseline {'|'.join(evaluation.ALL_BASELINES)}")
    if args.json:
        _check_output(Path(args.json), "--json", folder=False)
    args.baseline_mask = args.baseline_mask or ["true"]
    runs = [load_method(path) for path in args.run]
    if runs and any(_is_scenes(model) for model, _ in runs):
        return _evaluate_scenes(args, runs)
    semantic_only = [flag for flag, value in (("--clusters", args.clusters), ("--probe", args.probe),
                                              ("--finetune", args.finetune)) if value]
    if semantic_only:
        raise ValueError(f"{', '.join(semantic_only)} score semantic runs (MaskContrast: `partlab train maskcontrast`); "
                         f"part methods are scored by FG-ARI and landmark error without them")
    category = _pick("category", args.category, [meta["category"] for _, meta in runs]) or "bird"
    size = _pick("size", args.size, [meta["size"] for _, meta in runs]) or 64
    world = _pick("world", args.world, [_run_world(meta) for _, meta in runs]) or "default"
    _check_data_size(args.n_train + args.n_test, size, "--n-train + --n-test")
    train, test = evaluation.benchmark_splits(category, size=size, n_train=args.n_train, n_test=args.n_test,
                                              seed=args.seed, config=world)
    where = "" if world == "default" else f" ({world} world)"
    print(f"partlab evaluate: synthetic {category}{where}, {size} px: {args.n_test} test images, {args.n_train} train "
          f"images (landmark regression)")
    results: Dict[str, Dict[str, float]] = {}
    for model, meta in runs:
        name = _unique_name(Path(meta["run_dir"]).resolve().name, results)
        if (meta["category"], meta["size"]) != (category, size):
            print(f"  note: {name} was trained on {meta['category']} at {meta['size']} px")
        masks = args.run_mask or ["own"]
        for mask in masks:
            label = name if len(masks) == 1 else f"{name} ({mask} mask)"
            results[label], _ = evaluation.score_model(model, train, test, category=category, device=args.device,
                                                       mask=mask)
    names = list(dict.fromkeys(args.baseline))
    feature_names = [name for name in names if name in evaluation.BASELINES]
    position_names = [name for name in names if name not in evaluation.BASELINES]
    groups, extractor = [], None           # (baselines, row label); only feature baselines build an extractor
    if feature_names:
        from partlab.features import get_extractor

        extractor = get_extractor(args.features, device=args.device)
        groups.append((feature_names, f"{{name}} ({extractor.name}, {{mask}} mask)"))
    if position_names:
        groups.append((position_names, "{name} ({mask} mask)"))
    for group, label in groups:
        scores, _ = evaluation.score_baselines(train, test, names=group,
                                               masks=list(dict.fromkeys(args.baseline_mask)), label=label,
                                               extractor=extractor, device=args.device, category=category,
                                               num_parts=num_parts(category), seed=args.seed)
        for name, row in scores.items():
            results[_unique_name(name, results)] = row
    print(evaluation.format_table(results))
    if args.json:
        _write_json(Path(args.json), results)
    return 0


def _write_json(path: Path, results) -> None:
    """The scores as JSON, written atomically (:func:`partlab.utils.atomic_write`)."""
    from partlab.methods.runs import jsonable
    from partlab.utils import atomic_write_text

    atomic_write_text(path, json.dumps(jsonable(results), indent=2, allow_nan=False) + "\n")
    print(f"wrote {path}")


def _is_scenes(model) -> bool:
    from partlab.methods.registry import method_of

    return method_of(type(model)).data == "scenes"


def _evaluate_scenes(args, runs) -> int:
    """``partlab evaluate`` for semantic methods (MaskContrast): K-means mIoU on synthetic test scenes."""
    from partlab import evaluation
    from partlab.data import SyntheticScenes, stack_dataset

    if not all(_is_scenes(model) for model, _ in runs):
        raise ValueError("--run folders mix part methods and semantic (scenes) methods; evaluate them separately")
    size = _pick("size", args.size, [meta["size"] for _, meta in runs]) or 64
    world = _pick("world", args.world, [_run_world(meta) for _, meta in runs]) or "default"
    scenes = SyntheticScenes(size=size, length=args.n_test, seed=args.seed, split="test", config=world)
    test = stack_dataset(scenes)
    print(f"partlab evaluate: synthetic scenes ({scenes.num_classes} categories), {size} px: {args.n_test} test "
          f"scenes; K-means on object embeddings, Hungarian mIoU (background a class)")
    models: Dict[str, object] = {}
    for model, meta in runs:
        models[_unique_name(Path(meta["run_dir"]).resolve().name, models)] = model
    extractor = None
    if "features" in evaluation.SEMANTIC_BASELINES:
        from partlab.features import get_extractor

        extractor = get_extractor(args.features, device=args.device)
    clusters = tuple(dict.fromkeys(args.clusters or ()))
    train = {}
    if args.probe or args.finetune:            # labelled training scenes: the probe's and the fine-tuning's
        train = stack_dataset(SyntheticScenes(size=size, length=args.n_train, seed=args.seed, split="train",
                                              config=world))
    if args.probe:
        print(f"linear probe: a 1x1 conv on frozen features, trained on {args.n_train} labelled training scenes")
    bench = evaluation.scene_benchmark(models, train, test, scenes.num_classes, clusters=clusters, probe=args.probe,
                                       extractor=extractor, seed=args.seed, device=args.device)
    results = {name if name in models else f"kmeans ({name})": row for name, row in bench.results.items()}
    columns = ("miou",) + tuple(f"miou@{c}" for c in clusters) + ("acc", "nmi", "ari") + (("probe_miou",) * args.probe)
    if args.finetune:
        from partlab.finetune import finetune_table

        fractions = tuple(dict.fromkeys(args.finetune))
        print(f"fine-tuning ({args.finetune_protocol} protocol) on {', '.join(f'{f:.0%}' for f in fractions)} of "
              f"{args.n_train} labelled training scenes, against the first run's architecture from scratch")
        table = finetune_table({**models, "from scratch": None}, train, test, scenes.num_classes, fractions=fractions,
                               protocol=args.finetune_protocol, seed=args.seed, device=args.device)
        for name, row in table.items():
            results.setdefault(name, {}).update({f"finetune@{f:g}": value for f, value in row.items()})
        columns += tuple(f"finetune@{f:g}" for f in fractions)
    print(evaluation.format_table(results, columns=columns))
    if args.json:
        _write_json(Path(args.json), results)
    return 0


# ---------------------------------------------------------------------------------------------
# partlab segment
# ---------------------------------------------------------------------------------------------


def _cmd_segment(args) -> int:
    from partlab.methods import load_method
    from partlab.segment_io import output_names, read_image, segment_images, write_segmentation

    out = Path(args.out)
    _check_output(out, "--out", folder=True)
    pictures = [read_image(path) for path in args.images]
    model, meta = load_method(args.run)
    labels = segment_images(model, pictures, meta["size"], args.device)
    out.mkdir(parents=True, exist_ok=True)
    for path, name, picture, label_map in zip(args.images, output_names(args.images), pictures, labels):
        if name != Path(path).stem:
            print(f"note: {path} is written as {name}_*.png (an earlier image is also called {Path(path).stem})")
        parts_path, labels_path = write_segmentation(picture, label_map, out, name)
        print(f"wrote {parts_path} and {labels_path} ({meta['method']}, {meta['size']} px)")
    return 0


# ---------------------------------------------------------------------------------------------
# partlab swap
# ---------------------------------------------------------------------------------------------


def _cmd_swap(args) -> int:
    import torch

    from partlab import utils
    from partlab.methods import load_method
    from partlab.motion import check_swap_model, part_swap
    from partlab.segment_io import read_image, resize_image, write_image

    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise ValueError(f"--out {out}: name the output .png (or .jpg)")
    _check_output(out, "--out", folder=False)
    source_picture, target_picture = read_image(args.source), read_image(args.target)
    dev = utils.device(args.device)
    model, meta = load_method(args.run, map_location=dev)
    try:
        check_swap_model(model)
    except ValueError as exc:
        raise ValueError(f"{args.run} holds a {meta['method']} run: {exc}") from None
    size = meta["size"]
    source, target = (resize_image(picture, size)[None] for picture in (source_picture, target_picture))
    swapped = part_swap(model, source, target, args.parts, soft=not args.hard)      # (1, 3, size, size)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_image(swapped[0].to("cpu", torch.float32), out)
    parts = " ".join(str(p) for p in args.parts)
    print(f"wrote {out}: part(s) {parts} of {args.source} swapped into {args.target} "
          f"({'hard' if args.hard else 'soft'} mask, {size} px, K = {model.num_parts})")
    return 0


# ---------------------------------------------------------------------------------------------
# partlab notebooks
# ---------------------------------------------------------------------------------------------


def _cmd_notebooks(args) -> int:
    from partlab.notebooks.__main__ import main as notebooks_main

    return notebooks_main(args.rest, prog="partlab notebooks")


COMMANDS: Dict[str, Callable] = {"info": _cmd_info, "render": _cmd_render, "train": _cmd_train,
                                  "evaluate": _cmd_evaluate, "segment": _cmd_segment, "swap": _cmd_swap,
                                  "notebooks": _cmd_notebooks}


class _Parser(argparse.ArgumentParser):
    """``argparse`` whose errors are one line, like the commands' own:
    ``partlab train: error: argument --lr: must be a finite number > 0, got nan (see `partlab train -h`)``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} -h`)\n")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"a fraction of the labels must be in (0, 1], got {value}")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _integer(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer in [{low}, {high}], got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {value:g}")
    return value


def _features() -> tuple:
    from partlab.features.extractors import _EXTRACTOR_CHOICES

    return _EXTRACTOR_CHOICES


def _worlds() -> tuple:
    from partlab.data.synthetic import WORLDS

    return tuple(WORLDS)


def _baselines() -> tuple:
    from partlab.evaluation import ALL_BASELINES

    return ALL_BASELINES


def _categories() -> tuple:
    from partlab.data.synthetic import CATEGORIES

    return tuple(CATEGORIES)


def _amp(text: str):
    choices = {"fp16": "fp16", "bf16": "bf16", "off": False}
    if text not in choices:
        raise argparse.ArgumentTypeError(f"choose fp16 (CUDA), bf16 (CUDA or CPU) or off, got {text!r}")
    return choices[text]


def _add_train_parser(sub) -> None:
    from partlab.methods.registry import REGISTRY

    train = sub.add_parser("train", help="train a method on the synthetic world into a run folder",
                           description="Train a method with one of its recipes (quick: CPU, minutes; paper: the "
                                       "original's settings, for a GPU). The flags below are shortcuts for --set. "
                                       "Several GPUs: torchrun --nproc_per_node N -m partlab.cli train ... "
                                       "(--batch-size is then per process).")
    train.add_argument("method", choices=list(REGISTRY))
    train.add_argument("--recipe", default="quick",
                       help="quick (default), paper, another of the method's recipes (contrastive: coparts), "
                            "or a recipe.json file")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.NAME=VALUE",
                       help="change a recipe setting, e.g. --set fit.lr=1e-4 --set weights.con=100 "
                            "--set model.saliency=oracle --set data.size=128 (repeatable; values are JSON, else text: "
                            "null is None)")
    train.add_argument("--allow-random-init", action="store_true",
                       help="run a recipe that starts from ImageNet weights without them (random backbone, "
                            "offline stand-in features); recorded in the run folder")
    train.add_argument("--category", choices=list(_categories()), help="data.category")
    train.add_argument("--world", choices=list(_worlds()),
                       help="data.world: the synthetic world (default, or varied: colour does not name a part)")
    train.add_argument("--size", type=_positive_int, help="data.size: image size in pixels")
    train.add_argument("--n-train", type=_positive_int, help="data.n_train: number of training images")
    train.add_argument("--features", choices=list(_features()), help="data.features: the semantic features")
    train.add_argument("--steps", type=_positive_int, help="fit.max_steps: optimisation steps")
    train.add_argument("--batch-size", type=_positive_int, help="fit.batch_size")
    train.add_argument("--lr", type=_positive_float, help="fit.lr: learning rate")
    train.add_argument("--seed", type=_int_in(0, 2**32 - 1), help="fit.seed: seeds the data and the run")
    train.add_argument("--amp", type=_amp, nargs="?", const="fp16", metavar="{fp16,bf16,off}",
                       help="fit.amp: mixed precision around the networks (--amp alone: fp16, CUDA only)")
    train.add_argument("--device", default="auto")
    train.add_argument("--out", help="run folder (default: runs/<method>_<category>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")


def _add_evaluate_parser(sub) -> None:
    evaluate = sub.add_parser("evaluate", help="benchmark table of trained runs and baselines on synthetic data")
    evaluate.add_argument("--run", action="append", default=[], metavar="DIR",
                          help="a run folder from `partlab train` (repeatable)")
    evaluate.add_argument("--baseline", action="append", default=[], choices=list(_baselines()),
                          help="a training-free baseline (repeatable): kmeans, dff (on frozen CNN features, "
                               "--features); position (K-means on where a pixel lies on its object: the floor a "
                               "co-part method must clear), xy (on its image position), rgbxy (colour + position)")
    evaluate.add_argument("--baseline-mask", action="append", choices=("true", "rbd", "none"), metavar="MASK",
                          help="where the baselines look for parts (repeatable): true (the true foreground, the "
                               "default), rbd (the unsupervised saliency SCOPS gets: the fair comparison for it), "
                               "none (the whole image)")
    evaluate.add_argument("--run-mask", action="append", choices=("own", "true"), metavar="MASK",
                          help="own (default): the method finds the object; true: its parts are scored inside the "
                               "true foreground (contrastive runs; the paper's protocol). Repeatable")
    evaluate.add_argument("--category", choices=list(_categories()), help="default: the runs' category, else bird")
    evaluate.add_argument("--size", type=_positive_int, help="default: the runs' size, else 64")
    evaluate.add_argument("--world", choices=list(_worlds()),
                          help="the synthetic world: default, or varied (instance-varied colours); "
                               "default: the runs' world, else default")
    evaluate.add_argument("--n-test", type=_positive_int, default=200)
    evaluate.add_argument("--n-train", type=_positive_int, default=200,
                          help="train images for landmark regression (MaskContrast: labelled scenes for --probe and "
                               "--finetune)")
    evaluate.add_argument("--features", choices=list(_features()), default="auto",
                          help="the kmeans and dff baselines' features")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the synthetic data and the baselines")
    evaluate.add_argument("--json", metavar="FILE", help="also write {method: metrics} to this JSON file")
    scenes = evaluate.add_argument_group("semantic runs (MaskContrast)")
    scenes.add_argument("--clusters", type=_positive_int, nargs="+", metavar="C",
                        help="overclustering: also K-means with C clusters, each mapped to its majority class")
    scenes.add_argument("--probe", action="store_true",
                        help="also a linear probe on frozen features, trained on --n-train labelled scenes")
    scenes.add_argument("--finetune", type=_fraction, nargs="+", metavar="F",
                        help="also fine-tune each run and the same network from scratch on these fractions of the "
                             "--n-train labelled scenes, e.g. 0.01 0.05 1")
    scenes.add_argument("--finetune-protocol", choices=("quick", "paper"), default="quick",
                        help="the learning rates and steps: quick (chosen on validation for the quick CPU networks, "
                             "the default) or paper (the supplementary's, for the paper recipe)")


def _add_segment_parser(sub) -> None:
    segment = sub.add_parser("segment", help="part overlays and label maps of PNG/JPG images")
    segment.add_argument("--run", required=True, metavar="DIR", help="a run folder from `partlab train`")
    segment.add_argument("images", nargs="+", metavar="IMAGE")
    segment.add_argument("--out", default=".", help="folder for <name>_parts.png and <name>_labels.png")
    segment.add_argument("--device", default="auto")


def _add_swap_parser(sub) -> None:
    swap = sub.add_parser("swap", help="part swap with a motion run: parts of TARGET replaced by SOURCE's",
                          description="Replace the chosen parts of the TARGET image by those of the SOURCE image "
                                      "(Sec. 4.3 of the motion-supervised paper): both are resized to the run's "
                                      "size and segmented, SOURCE's encoder features are moved onto TARGET's "
                                      "parts by the part flow and blended in under the chosen parts' mask.")
    swap.add_argument("--run", required=True, metavar="DIR", help="a run folder from `partlab train motion`")
    swap.add_argument("source", metavar="SOURCE", help="PNG/JPG image whose parts are pasted")
    swap.add_argument("target", metavar="TARGET", help="PNG/JPG image that is edited")
    swap.add_argument("--parts", required=True, nargs="+", type=_positive_int, metavar="K",
                      help="part numbers to swap, 1..K (the labels of `partlab segment`)")
    swap.add_argument("--out", required=True, help="the swapped image (.png or .jpg), at the run's size")
    swap.add_argument("--hard", action="store_true",
                      help="a hard mask (the argmax parts) instead of the soft probabilities")
    swap.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="partlab", description="Self-supervised co-part segmentation toolkit.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="device, features and data partlab will use here")
    render = sub.add_parser("render", help="draw synthetic samples with part overlays to a PNG")
    render.add_argument("output", help="PNG file to write")
    render.add_argument("--category", choices=list(_categories()), default="bird")
    render.add_argument("-n", type=_int_in(1, 64), default=8, help="number of samples (1 to 64)")
    render.add_argument("--size", type=_positive_int, default=64)
    render.add_argument("--seed", type=int, default=0)
    render.add_argument("--split", default="train")
    render.add_argument("--world", choices=list(_worlds()), default="default",
                        help="default, varied (instance-varied colours: colour does not name a part), easy, hard")
    _add_train_parser(sub)
    _add_evaluate_parser(sub)
    _add_segment_parser(sub)
    _add_swap_parser(sub)
    nb = sub.add_parser("notebooks", help="run or list the curriculum notebooks (see `partlab notebooks -h`)",
                        add_help=False)
    nb.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ValueError, FileNotFoundError) as exc:           # what the user can fix: one line, status 2
        print(f"partlab {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:                              # the work itself failed (e.g. training diverged)
        print(f"partlab {args.command}: failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
