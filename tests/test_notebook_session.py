"""The notebook skeleton in the package: notebooks.setup, evaluation.benchmark, viz.benchmark_figure."""

import math

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from partlab import evaluation, viz  # noqa: E402
from partlab.methods.registry import REGISTRY  # noqa: E402
from partlab.notebooks import setup, training_summary  # noqa: E402

TINY = {"data.size": 32, "fit.batch_size": 4, "fit.progress": False, "fit.log_every": 1}


def _session(method="scops", **kwargs):
    settings = dict(TINY, **kwargs.pop("settings", {}))
    return setup(method, n_train=8, n_eval=20, steps=2, features="rgb", settings=settings, **kwargs)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_setup_builds_every_method_and_says_what_it_uses(name, capsys):
    s = _session(name, seed=3)
    printed = capsys.readouterr().out
    assert "device:" in printed and f"recipe {name}/quick" in printed and "20 + 20 images" in printed
    assert (s.method, s.n_train, s.steps, s.seed, s.size) == (name, 8, 2, 3, 32)
    assert s.test["image"].shape == (20, 3, 32, 32) and len(s.train_set) == 8
    s.fit()
    assert s.model.history[-1]["step"] == 2
    assert "loss" in training_summary(s.model) and "->" in training_summary(s.model)


def test_setup_refuses_other_datasets_and_applies_settings():
    with pytest.raises(ValueError, match="dataset='cub'.*synthetic"):
        setup("scops", dataset="cub", echo=False)
    s = _session(settings={"model.saliency": "none", "weights.con": 0.0}, echo=False, category="face")
    assert s.recipe.model["saliency"] == "none" and s.model.weights["con"] == 0.0 and s.category == "face"
    assert s.num_parts == s.model.num_parts


def test_a_variant_shares_the_data_and_split_and_trains_its_own_model():
    from partlab.models import StandinUNet

    s = _session(echo=False)
    pre = s.variant({"model.network": "standin_unet", "model.pretrained": False, "fit.lr": 1e-4})
    assert isinstance(pre.model.network, StandinUNet) and not isinstance(s.model.network, StandinUNet)
    assert pre.test is s.test and pre.train_eval is s.train_eval and pre.steps == s.steps == 2
    assert pre.info["fit"]["lr"] == 1e-4 and s.info["fit"]["lr"] != 1e-4
    torch.testing.assert_close(pre.train_set[0]["image"], s.train_set[0]["image"])
    pre.fit()
    assert pre.model.history[-1]["step"] == 2 and not getattr(s.model, "history", None)


def test_benchmark_rows_margins_summary_and_figure():
    s = _session(echo=False)
    s.fit()
    bench = s.benchmark(masks=("rbd", "true"), oracle_steps=2, progress=False)
    assert list(bench.results) == ["scops", "kmeans (rbd)", "dff (rbd)", "kmeans (true)", "dff (true)", "oracle"]
    assert bench.method == "scops" and bench.oracle == "oracle" and len(bench.baselines) == 4
    margin = bench.margins()
    r = bench.results
    assert margin["kmeans (rbd).fg_ari"] == pytest.approx(r["scops"]["fg_ari"] - r["kmeans (rbd)"]["fg_ari"])
    assert margin["dff (true).landmark_error"] == pytest.approx(r["dff (true)"]["landmark_error"]
                                                                - r["scops"]["landmark_error"])
    wins = bench.wins()
    assert all(set(won) <= {"fg_ari", "landmark_error"} for won in wins.values())
    assert bench.verdict().count("\n") == 3 and "scops vs kmeans (rbd): better on" in bench.verdict()
    flat = bench.flat()
    assert flat["oracle.fg_ari"] == r["oracle"]["fg_ari"] and "margin.dff (rbd).fg_ari" in flat
    assert all(math.isfinite(v) for v in flat.values())
    summary = bench.summary()
    assert "fg_ari (higher is better): scops" in summary and "oracle" in summary and "best baseline" in summary
    line = bench.headline()
    assert line.startswith("scops: fg_ari ") and "landmark_error↓" in line and "oracle" in line and "\n" not in line
    best = evaluation.rank(r, "fg_ari", bench.baselines)[0]
    assert f"vs {r[best]['fg_ari']:.3f} {best}" in line
    keys = bench.headline_metrics()
    assert keys[:3] == ["scops.fg_ari", f"{best}.fg_ari", "oracle.fg_ari"] and len(keys) == 6
    assert all(key in flat for key in keys)
    assert bench.predictions["scops"]["labels"].shape == (20, 32, 32)
    fig = viz.benchmark_figure(bench, title="t")
    outlined = [p for p in fig.axes[0].containers[0]]
    assert len(outlined) == len(evaluation.FIGURE_METRICS) and all(p.get_linewidth() > 1 for p in outlined)
    assert all(p.get_linewidth() <= 1 for p in fig.axes[0].containers[1])
    viz.benchmark_figure(bench.results, ["fg_ari"])                 # a plain results mapping works too


def test_benchmark_with_masks_per_model_and_without_baselines():
    s = _session("contrastive", echo=False)
    s.fit()
    bench = s.benchmark({"a": (s.model, "true"), "b": (s.model, "own")}, baselines=())
    assert list(bench.results) == ["a", "b"] and bench.baselines == [] and bench.oracle is None
    assert "best baseline" not in bench.summary()
    single = evaluation.benchmark(s.model, s.train_eval, s.test, baselines=(), category="bird")
    assert list(single.results) == ["contrastive"]
    with pytest.raises(ValueError, match="at least one model"):
        evaluation.benchmark({}, s.train_eval, s.test)
    # own mask vs true mask: FG metrics (argmax over the parts inside the true foreground) agree
    assert bench.results["a"]["fg_ari"] == pytest.approx(bench.results["b"]["fg_ari"])
    true_fg = s.test["fg"].reshape(bench.predictions["a"]["labels"].shape) > 0.5
    assert torch.equal(bench.predictions["a"]["labels"] > 0, true_fg)      # "true": parts exactly inside the mask


def test_a_scenes_session_scores_with_the_semantic_benchmark(capsys):
    """MaskContrast's session: scene splits, K-means mIoU (with overclustering) and the probe in one Benchmark
    whose headline, margins and figure use the semantic metrics."""
    s = _session("maskcontrast", settings={"model.queue_size": 8})
    out = capsys.readouterr().out
    assert "scenes of 4 categories (1-3 objects each)" in out and "network: encoder: stand-in standin_v1" in out
    assert s.scenes and set(s.test) >= {"semantic", "instances", "saliency"} and s.num_parts == 4
    s.fit()
    s.model.on_fit_end(s.train_set)
    bench = s.benchmark(clusters=(8,), probe_steps=3)
    baselines = ["rgb", "features", "rgb pixels", "features pixels"]      # per object, then per pixel (the paper's)
    assert list(bench.results) == ["maskcontrast"] + baselines
    assert bench.baselines == baselines and bench.oracle is None
    assert bench.results["rgb pixels"]["probe_miou"] == bench.results["rgb"]["probe_miou"]
    assert bench.metrics == ("miou", "probe_miou") and bench.figure_metrics == ("miou", "miou@8", "probe_miou")
    assert all(0 <= row[m] <= 1 for row in bench.results.values() for m in bench.figure_metrics)
    line = bench.headline()
    assert line.startswith("maskcontrast: miou ") and "probe_miou" in line and "oracle" not in line
    assert bench.headline_metrics()[:2] == ["maskcontrast.miou", bench.headline_metrics()[1]]
    assert set(bench.margins()) == {f"{b}.{m}" for b in baselines for m in ("miou", "probe_miou")}
    assert "miou@8" in bench.table()
    fig = viz.benchmark_figure(bench)
    assert len(fig.axes[0].containers) == 5 and len(fig.axes[0].containers[0]) == 3     # a bar group per row


def test_another_method_on_the_same_split_and_a_benchmark_on_chosen_metrics():
    from partlab.methods.registry import get_recipe

    s = _session("motion", echo=False)
    other = s.other("scops", steps=3, settings={"fit.progress": False, "fit.batch_size": 4})
    assert other.method == "scops" and other.test is s.test and other.train_eval is s.train_eval
    assert (other.seed, other.category, other.world, other.n_train, other.steps) == (s.seed, s.category, s.world, 8, 3)
    assert other.size == s.size == 32 and other.recipe.model == get_recipe("scops", "quick").model   # its own recipe
    with pytest.raises(ValueError, match="maskcontrast.*scenes"):
        s.other("maskcontrast")
    s.fit()
    bench = s.benchmark({"motion": s.model}, masks=("rbd",), metrics=("fg_iou", "landmark_error"))
    assert bench.metrics == ("fg_iou", "landmark_error")
    assert set(bench.margins()) == {f"{b}.{m}" for b in ("kmeans (rbd)", "dff (rbd)") for m in bench.metrics}
    assert bench.headline().startswith("motion: fg_iou ")


def test_setup_takes_a_recipe_by_name_and_refuses_the_paper_recipe():
    s = _session("contrastive", recipe="coparts", world="varied", echo=False)
    assert s.recipe.name == "coparts" and s.world == "varied"
    assert s.model.contrast_features == "standardised+position" and s.model.temperature == 0.5
    assert s.model.weights["c"] == 1.5e4 and s.model.weights["v"] == 30.0          # L_v stays the paper's
    assert s.other("contrastive", recipe="coparts").recipe.name == "coparts"
    with pytest.raises(ValueError, match="recipe='paper'.*GPU.*partlab train scops --recipe paper"):
        setup("scops", recipe="paper", echo=False)
    with pytest.raises(ValueError, match="no recipe 'nope'.*quick"):
        _session("scops", recipe="nope", echo=False)
