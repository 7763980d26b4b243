"""`partlab train / evaluate / segment` and the run folders behind them (partlab.methods.runs).

Everything is tiny: 32 px images, 16 training images, 3 steps, raw RGB features for SCOPS (no
dependence on the stand-in network) and the true foreground as its saliency.
"""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from partlab import cli
from partlab.methods import SCOPS, SupervisedOracle, load_method
from partlab.methods.runs import constructor_kwargs, save_model_json
from partlab.train import fit

TINY_RUN = ["--size", "32", "--n-train", "16", "--steps", "3", "--batch-size", "4", "--device", "cpu"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run folders trained through the CLI: {"scops": path, "oracle": path, "contrastive": path}."""
    root = tmp_path_factory.mktemp("runs")
    out = {"scops": root / "scops_bird", "oracle": root / "oracle_bird", "contrastive": root / "contrastive_bird"}
    assert cli.main(["train", "scops", *TINY_RUN, "--features", "rgb", "--set", "model.saliency=oracle",
                     "--out", str(out["scops"])]) == 0
    assert cli.main(["train", "oracle", *TINY_RUN, "--out", str(out["oracle"])]) == 0
    assert cli.main(["train", "contrastive", *TINY_RUN, "--features", "rgb", "--out", str(out["contrastive"])]) == 0
    return out


def _image(path, size=(40, 30), colour=(200, 30, 30)):
    picture = Image.new("RGB", size, (90, 120, 90))
    picture.paste(colour, (10, 8, 28, 22))
    picture.save(path)
    return path


# --- partlab train ------------------------------------------------------------------------------


@pytest.mark.parametrize("method, cls", [("scops", "SCOPS"), ("oracle", "SupervisedOracle"),
                                         ("contrastive", "ContrastiveParts")])
def test_train_writes_checkpoint_and_model_json(runs, method, cls):
    run = runs[method]
    assert (run / "last.pt").is_file()
    meta = json.loads((run / "model.json").read_text())
    assert meta["method"] == cls and meta["category"] == "bird" and meta["size"] == 32
    assert meta["kwargs"]["num_parts"] == 6 and meta["info"]["fit"]["max_steps"] == 3
    if method == "scops":
        assert meta["kwargs"]["feature_channels"] == 3                    # features="batch": C stored
        assert meta["features"].startswith("rgb") and meta["info"]["saliency"] == "oracle"
    elif method == "contrastive":
        assert meta["kwargs"]["feature_channels"] == 3 and meta["kwargs"]["foreground"] == "fg"
        assert meta["features"].startswith("rgb") and meta["info"]["foreground"] == "fg"
    else:
        assert meta["features"] is None


def test_train_prints_where_files_went_and_the_loss_terms(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "oracle", *TINY_RUN, "--steps", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out / "last.pt") in printed and str(out / "model.json") in printed
    assert "final loss terms (step 2): loss" in printed and "ce " in printed


def test_train_refuses_to_overwrite_a_run_and_resumes_one(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert cli.main(["train", "oracle", *TINY_RUN, "--steps", "2", "--out", out]) == 0
    assert cli.main(["train", "oracle", *TINY_RUN, "--steps", "2", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "already holds a trained run" in err and "--resume" in err and "Traceback" not in err
    assert cli.main(["train", "oracle", *TINY_RUN, "--out", out, "--resume"]) == 0      # 2 -> 3 steps
    assert "(step 3)" in capsys.readouterr().out
    assert cli.main(["train", "oracle", *TINY_RUN, "--size", "48", "--out", out, "--resume"]) == 2
    assert "size: saved 32 -> now 48" in capsys.readouterr().err


# --- load_method --------------------------------------------------------------------------------


def _trained(method, tmp_path):
    """A method trained for 2 steps in Python, with its run folder written as the CLI does."""
    from partlab.data.synthetic import SyntheticParts
    from partlab.methods.contrastive import contrastive_quick_setup
    from partlab.methods.scops import scops_quick_setup

    if method == "scops":
        model, data, info = scops_quick_setup("bird", size=32, n_train=8, features="rgb", saliency="oracle",
                                              device="cpu", base_channels=4, depth=1)
    elif method == "contrastive":
        model, data, info = contrastive_quick_setup("bird", size=32, n_train=8, features="rgb", device="cpu",
                                                    base_channels=4, depth=1)
    else:
        data, info = SyntheticParts("bird", size=32, length=8), {}
        model = SupervisedOracle(data.num_parts, base_channels=4, depth=1)
    fit(model, data, max_steps=2, batch_size=4, device="cpu", progress=False, checkpoint_dir=tmp_path)
    save_model_json(tmp_path, model, category="bird", size=32, info=info)
    return model, torch.stack([data[i]["image"] for i in range(4)])


@pytest.mark.parametrize("method", ["scops", "oracle", "contrastive"])
def test_load_method_rebuilds_identical_predictions(tmp_path, method):
    model, images = _trained(method, tmp_path)
    loaded, meta = load_method(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    assert meta["checkpoint"]["step"] == 2 and loaded.history == model.history
    expected, got = model.predict(images), loaded.predict(images)
    assert torch.equal(expected["probs"], got["probs"]) and torch.equal(expected["labels"], got["labels"])
    same, _ = load_method(tmp_path / "last.pt")                    # the checkpoint file works too
    assert torch.equal(same.predict(images)["probs"], expected["probs"])


def test_constructor_kwargs_are_json_and_rebuild_the_model():
    model = SCOPS(3, feature_channels=5, base_channels=4, depth=1, lambda_con=2.0, warp={"rotation": 10.0})
    kwargs = constructor_kwargs(model)
    assert kwargs == {"num_parts": 3, "feature_channels": 5, "base_channels": 4, "depth": 1, "lambda_con": 2.0,
                      "warp": {"rotation": 10.0}}
    rebuilt = SCOPS(**json.loads(json.dumps(kwargs)))
    assert rebuilt.weights == model.weights and rebuilt.basis.shape == (3, 5)


def test_load_method_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run folder or checkpoint at .*nowhere.*partlab train scops"):
        load_method(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="model.json is missing"):
        load_method(tmp_path)
    save_model_json(tmp_path, SupervisedOracle(2, base_channels=4, depth=1), category="bird", size=32)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*last\.pt"):
        load_method(tmp_path)
    meta = json.loads((tmp_path / "model.json").read_text())
    (tmp_path / "model.json").write_text(json.dumps(dict(meta, method="Dragon")))
    with pytest.raises(ValueError, match="'Dragon'.*known methods"):
        load_method(tmp_path)


# --- partlab evaluate ---------------------------------------------------------------------------


def test_evaluate_runs_and_a_baseline_into_one_table_and_json(runs, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert cli.main(["evaluate", "--run", str(runs["scops"]), "--run", str(runs["oracle"]), "--baseline", "kmeans",
                     "--baseline-mask", "true", "--baseline-mask", "none", "--features", "rgb", "--n-test", "6", "--n-train", "16", "--device", "cpu",
                     "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "synthetic bird, 32 px" in printed and "landmark_error" in printed
    results = json.loads(out.read_text())
    assert list(results) == ["scops_bird", "oracle_bird", "kmeans (rgb, true mask)", "kmeans (rgb, none mask)"]
    for metrics in results.values():
        assert {"fg_ari", "miou", "landmark_error"} <= set(metrics)
        assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


def test_evaluate_position_baselines_builds_no_extractor_and_shows_per_image_scores(tmp_path, capsys, monkeypatch):
    import partlab.features

    def refuse(*args, **kwargs):
        raise AssertionError("a position baseline built a feature extractor")

    monkeypatch.setattr(partlab.features, "get_extractor", refuse)
    out = tmp_path / "metrics.json"
    assert cli.main(["evaluate", "--baseline", "position", "--baseline", "xy", "--size", "32", "--n-test", "6",
                     "--n-train", "16", "--device", "cpu", "--json", str(out)]) == 0
    header = capsys.readouterr().out.splitlines()[1]
    assert "fg_ari ↑" in header and "fg_ari_image ↑" in header
    results = json.loads(out.read_text())
    assert list(results) == ["position (true mask)", "xy (true mask)"]
    assert all({"fg_ari", "fg_ari_image", "fg_nmi_image"} <= set(metrics) for metrics in results.values())


def test_evaluate_a_contrastive_run_with_its_own_and_the_true_mask(runs, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert cli.main(["evaluate", "--run", str(runs["contrastive"]), "--run-mask", "own", "--run-mask", "true",
                     "--n-test", "6", "--n-train", "16", "--device", "cpu", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert list(results) == ["contrastive_bird (own mask)", "contrastive_bird (true mask)"]
    assert results["contrastive_bird (true mask)"]["fg_iou"] == pytest.approx(1.0)
    assert cli.main(["evaluate", "--run", str(runs["scops"]), "--run-mask", "true", "--n-test", "6",
                     "--n-train", "16", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "takes no foreground mask" in err and len(err.strip().splitlines()) == 1


def test_evaluate_a_maskcontrast_run_with_overclustering_probe_and_finetuning(tmp_path, capsys, monkeypatch):
    run = tmp_path / "mc_run"
    assert cli.main(["train", "maskcontrast", *TINY_RUN, "--out", str(run)]) == 0
    calls = []

    def fake_table(models, train, test, num_classes, fractions, **kwargs):     # the real one has its own tests
        calls.append((list(models), len(train["image"]), len(test["image"]), num_classes, fractions, kwargs))
        return {name: {f: 0.25 + 0.5 * f for f in fractions} for name in models}

    monkeypatch.setattr("partlab.finetune.finetune_table", fake_table)
    out = tmp_path / "scores.json"
    assert cli.main(["evaluate", "--run", str(run), "--n-test", "6", "--n-train", "8", "--device", "cpu",
                     "--clusters", "6", "--probe", "--finetune", "0.5", "--json", str(out)]) == 0
    scores = json.loads(out.read_text())
    assert {"mc_run", "kmeans (rgb)", "kmeans (rgb pixels)", "from scratch"} <= set(scores)
    for name in ("mc_run", "kmeans (rgb)", "kmeans (rgb pixels)"):
        assert 0 <= scores[name]["miou@6"] <= 1 and 0 <= scores[name]["probe_miou"] <= 1
    assert scores["kmeans (rgb)"]["probe_miou"] == scores["kmeans (rgb pixels)"]["probe_miou"]
    assert scores["mc_run"]["finetune@0.5"] == scores["from scratch"]["finetune@0.5"] == 0.5
    assert calls == [(["mc_run", "from scratch"], 8, 6, 4, (0.5,), {"protocol": "quick", "seed": 0, "device": "cpu"})]
    printed = capsys.readouterr().out
    assert "miou@6" in printed and "probe_miou" in printed and "finetune@0.5" in printed
    assert cli.main(["evaluate", "--baseline", "position", "--probe"]) == 2     # a part benchmark: refused
    assert "score semantic runs" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:                 # argparse: the usage error, exit status 2
        cli.main(["evaluate", "--run", str(run), "--finetune", "1.5"])
    assert exit_info.value.code == 2 and "must be in (0, 1]" in capsys.readouterr().err


def test_evaluate_missing_run_is_one_line_saying_how_to_make_it(tmp_path, capsys):
    missing = tmp_path / "runs" / "scops_bird"
    assert cli.main(["evaluate", "--run", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and f"partlab train scops --out {missing}" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert cli.main(["evaluate"]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


# --- partlab segment ----------------------------------------------------------------------------


def test_segment_writes_overlay_and_label_pngs(runs, tmp_path, capsys):
    first, second = _image(tmp_path / "bird.png"), _image(tmp_path / "photo.jpg", size=(24, 36))
    out = tmp_path / "seg"
    assert cli.main(["segment", "--run", str(runs["scops"]), str(first), str(second), "--out", str(out),
                     "--device", "cpu"]) == 0
    assert "bird_parts.png" in capsys.readouterr().out
    for name, size in (("bird", (40, 30)), ("photo", (24, 36))):
        overlay, labels = Image.open(out / f"{name}_parts.png"), Image.open(out / f"{name}_labels.png")
        assert overlay.mode == "RGB" and overlay.size == size and labels.size == size
        values = np.asarray(labels)                                       # palette image: value = label
        assert labels.mode == "P" and values.min() >= 0 and values.max() <= 6


def test_segment_errors_are_one_clear_line(runs, tmp_path, capsys):
    good = _image(tmp_path / "good.png")
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    cases = [
        ([str(runs["scops"]), str(tmp_path / "missing.png")], "no image at"),
        ([str(runs["scops"]), str(not_image)], "is not an image"),
        ([str(tmp_path), str(good)], "model.json is missing"),
        ([str(tmp_path / "norun"), str(good)], "partlab train scops --out"),
    ]
    for (run, image), message in cases:
        assert cli.main(["segment", "--run", run, image, "--out", str(tmp_path / "seg")]) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("partlab segment: error:") and "Traceback" not in err
    assert not (tmp_path / "seg").exists()
