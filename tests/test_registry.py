"""The method registry and recipes: every registered method builds from its recipe, trains, saves a run
folder, reloads, predicts and goes through `partlab train` / `partlab evaluate`; recipes refuse what they
do not know, in one message."""

import json
import os

import pytest
import torch

from partlab import cli
from partlab.methods import load_method
from partlab.methods.registry import REGISTRY, get_method, get_recipe, train_variants
from partlab.methods.runs import METHODS, save_model_json
from partlab.recipes import RECIPE_FILE, load_recipe
from partlab.train import fit

TINY = {"data.size": 32, "data.n_train": 8, "data.features": "rgb", "fit.max_steps": 2, "fit.batch_size": 4,
        "fit.progress": False, "fit.log_every": 1}


def test_everything_that_lists_methods_reads_the_registry():
    assert set(METHODS) == {entry.cls.__name__ for entry in REGISTRY.values()}
    train_choices = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["train"]._actions
                         if a.dest == "method").choices
    assert list(train_choices) == list(REGISTRY)
    for entry in REGISTRY.values():
        assert {"quick", "paper"} <= set(entry.recipes) and entry.data in ("images", "frame pairs", "scenes")
        for name in entry.ablations:                        # every ablation turns into constructor overrides
            entry.ablation(name)
        notes = getattr(entry.cls, "TERM_NOTES", {})         # the explorer's caption of every weighted term
        assert set(entry.weighted_terms) <= set(notes), (entry.name, set(entry.weighted_terms) - set(notes))
        assert all("(" in notes[t] and notes[t].endswith(")") for t in entry.weighted_terms), notes


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_builds_trains_saves_reloads_and_predicts(name, tmp_path):
    recipe = get_recipe(name, "quick").override(TINY)
    model, data, info = recipe.build(device="cpu", run_dir=tmp_path)
    assert info["method"] == name and info["recipe"]["method"] == name
    fit(model, data, **dict(info["fit"], checkpoint_dir=str(tmp_path)))
    assert model.history[-1]["step"] == 2
    assert set(model.history[-1]) >= set(get_method(name).terms)
    save_model_json(tmp_path, model, category=recipe.data.category, size=recipe.data.size, info=info)
    recipe.save(tmp_path)
    loaded, meta = load_method(tmp_path)
    assert load_recipe(tmp_path) == recipe
    images = torch.stack([data[i]["image"] for i in range(2)])
    before, after = model.predict(images), loaded.predict(images)
    assert after["probs"].shape == (2, loaded.num_parts + 1, 32, 32)
    assert torch.allclose(before["probs"], after["probs"], atol=1e-5)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_goes_through_train_and_evaluate(name, tmp_path, capsys):
    out = tmp_path / name
    assert cli.main(["train", name, "--size", "32", "--n-train", "8", "--steps", "2", "--batch-size", "4",
                     "--features", "rgb", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"recipe {name}/quick" in printed and (out / RECIPE_FILE).is_file()
    assert cli.main(["evaluate", "--run", str(out), "--n-train", "16", "--n-test", "4", "--device", "cpu"]) == 0
    assert ("miou" if get_method(name).data == "scenes" else "fg_ari") in capsys.readouterr().out


def test_the_paper_recipe_records_the_papers_optimiser_and_runs_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "paper"
    # in-process data here (forking loader workers out of a test process that holds threads can deadlock);
    # test_saliency runs RBD in real loader workers, with a deadline
    assert cli.main(["train", "scops", "--recipe", "paper", "--steps", "2", "--size", "64", "--n-train", "6",
                     "--allow-random-init", "--device", "cpu", "--set", "fit.num_workers=0",
                     "--out", str(out)]) == 0
    saved = json.loads((out / RECIPE_FILE).read_text())
    assert saved["fit"]["optimizer"] == "sgd" and saved["fit"]["lr"] == 1e-5 and saved["fit"]["momentum"] == 0.9
    assert saved["fit"]["weight_decay"] == 5e-4 and saved["fit"]["lr_schedule"] == "poly"
    assert saved["fit"]["batch_size"] == 6 and saved["model"]["network"] == "deeplab"
    assert saved["weights"]["con"] == pytest.approx(10 / 6) and saved["allow_random_init"] is True
    assert saved["model"]["clip"] == 5.0 and saved["model"]["basis_lr"] == 0.01
    assert saved["fit"]["num_workers"] == 0
    # the recipe itself: RBD and rendering in loader workers beside the GPU step
    assert get_recipe("scops", "paper").fit.num_workers == min(8, os.cpu_count())
    model_json = json.loads((out / "model.json").read_text())
    assert "random initialisation" in model_json["info"]["backbone"]


@pytest.mark.parametrize("method, weights_file", [
    ("contrastive", "vgg19-dcbb9e9d.pth"),
    ("maskcontrast", "resnet50-0676ba61.pth"),          # DeepLab-v3 starts from ResNet-50 too
])
def test_a_paper_recipe_without_imagenet_weights_is_refused_in_one_line(method, weights_file, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    out = tmp_path / "run"
    assert cli.main(["train", method, "--recipe", "paper", "--steps", "2", "--device", "cpu",
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and weights_file in err and "--allow-random-init" in err
    assert not out.exists()


@pytest.mark.parametrize("method", sorted(m for m in REGISTRY if "paper" in get_method(m).recipes))
def test_every_paper_recipe_trains_a_step_on_the_cpu_with_its_own_networks(method, tmp_path, monkeypatch):
    # the paper's networks and optimiser, shrunk in data only: a random ResNet-50 start where ImageNet is missing
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    recipe = get_recipe(method, "paper").override({"allow_random_init": True, "data.size": 128, "data.n_train": 4,
                                                   "fit.batch_size": 2, "fit.max_steps": 1, "fit.num_workers": 0})
    model, dataset, info = recipe.build(device="cpu")
    fit(model, dataset, **dict(info["fit"], progress=False))
    record = model.history[-1]
    assert record["step"] == 1 and record["skipped"] == 0
    assert all(torch.isfinite(torch.tensor(v)) for k, v in record.items() if k not in ("step", "skipped"))


@pytest.mark.parametrize("args, message", [
    (["--recipe", "fast"], "has no recipe 'fast'; choose one of ['quick', 'paper']"),
    (["--set", "fit.lr_typo=1"], "unknown recipe setting 'fit.lr_typo'"),
    (["--set", "weights.bogus=1"], "no loss term(s) ['bogus']"),
    (["--set", "model.bogus=1"], "unknown model setting(s) ['bogus']"),
    (["--set", "lr=1"], "unknown recipe setting 'lr'"),
    (["--set", "fit.lr"], "write section.name=value"),
    (["--set", "weights.con=-1"], "finite numbers >= 0"),
])
def test_bad_recipe_settings_are_one_line_and_write_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "scops", *args, "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists()


def test_recipe_files_of_another_format_are_refused(tmp_path):
    recipe = get_recipe("oracle", "quick")
    path = recipe.save(tmp_path)
    raw = json.loads(path.read_text())
    raw["format"] = "partlab.recipe/0"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="format 'partlab.recipe/0'; this partlab reads 'partlab.recipe/1'"):
        load_recipe(tmp_path)
    assert cli.main(["train", "oracle", "--recipe", str(path), "--device", "cpu", "--out", str(tmp_path / "r")]) == 2


def test_the_quick_recipe_is_the_quick_setup(tmp_path):
    from partlab.methods.scops import scops_quick_setup

    recipe = get_recipe("scops", "quick").override({**TINY, "model.saliency": "oracle"})
    model, _, info = recipe.build(device="cpu")
    legacy, _, legacy_info = scops_quick_setup("bird", size=32, n_train=8, features="rgb", saliency="oracle",
                                               device="cpu")
    assert model.weights == legacy.weights and info["features"] == legacy_info["features"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), legacy.state_dict().values()))


def test_train_variants_takes_any_registered_method():
    recipe = get_recipe("contrastive", "quick").override(TINY)
    _, data, info = recipe.build(device="cpu")
    models = train_variants("contrastive", ["full", "no_c"], data, info, max_steps=1)
    assert "c" in models["full"].history[-1] and "c" not in models["no_c"].history[-1]


def test_command_line_settings_parse_json_and_keep_choice_words():
    recipe = get_recipe("motion", "quick").override(["model.visibility=none", "data.noise=null", "fit.lr=2e-4",
                                                     "model.image_skip=false", "model.scales=[0.5, 0.25]"])
    assert recipe.model["visibility"] == "none"          # a choice of MotionCoPart, not None (its default)
    assert recipe.data.noise is None and recipe.fit.lr == 2e-4
    assert recipe.model["image_skip"] is False and recipe.model["scales"] == [0.5, 0.25]


def test_the_coparts_recipe_is_the_quick_recipe_with_only_l_c_changed(tmp_path):
    quick, coparts = get_recipe("contrastive", "quick"), get_recipe("contrastive", "coparts")
    assert coparts.name == "coparts" and (coparts.data, coparts.fit) == (quick.data, quick.fit)
    assert {k: v for k, v in coparts.weights.items() if quick.weights[k] != v} == {"c": 1.5e4}
    assert {k: v for k, v in coparts.model.items() if quick.model.get(k) != v} == {
        "contrast_features": "standardised+position", "temperature": 0.5}
    coparts.save(tmp_path)
    assert load_recipe(tmp_path) == coparts                                     # a coparts run can be re-run
    model, _, _ = coparts.override(TINY).build(device="cpu")
    assert model.contrast_features == "standardised+position" and model.weights["c"] == 1.5e4
