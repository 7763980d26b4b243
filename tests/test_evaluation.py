import pytest
import torch
import torch.nn.functional as F

from partlab import evaluation
from partlab.data import SyntheticParts, stack_dataset


@pytest.fixture(scope="module")
def split():
    train = stack_dataset(SyntheticParts("bird", size=32, length=40, seed=0, split="train"))
    test = stack_dataset(SyntheticParts("bird", size=32, length=12, seed=0, split="test"))
    return train, test


def perfect(batch, k):
    probs = F.one_hot(batch["parts"], k + 1).permute(0, 3, 1, 2).float()
    return {"probs": probs, "labels": batch["parts"].clone()}


def test_perfect_prediction_scores_one(split):
    train, test = split
    scores = evaluation.score_parts(perfect(test, 6), test, pred_train=perfect(train, 6), truth_train=train,
                                    category="bird")
    for key in ("fg_ari", "fg_nmi", "fg_ari_image", "fg_nmi_image", "ari", "nmi", "miou", "fg_iou"):
        assert scores[key] == pytest.approx(1.0, abs=1e-6), key
    # keypoint scores compare parts with keypoint identities: several landmarks share a part (crown,
    # nape and eye lie on the head), so even the true labels stay below 1 - they are the ceiling
    assert 0.5 < scores["kp_fg_nmi"] < 1.0
    assert 0.0 <= scores["landmark_error"] < 0.25


def test_permuted_labels_score_the_same_and_noise_scores_low(split):
    _, test = split
    perm = torch.tensor([0, 3, 1, 2, 6, 4, 5])
    pred = perfect(test, 6)
    permuted = {"labels": perm[pred["labels"]], "probs": pred["probs"][:, torch.argsort(perm)]}
    scores = evaluation.score_parts(permuted, test)
    assert scores["miou"] == pytest.approx(1.0) and scores["fg_ari"] == pytest.approx(1.0)
    noise = torch.randint(0, 7, test["parts"].shape, generator=torch.Generator().manual_seed(0))
    low = evaluation.score_parts({"labels": noise}, test)
    assert low["fg_ari"] < 0.05 and "landmark_error" not in low


def test_predict_dataset_and_table(split):
    _, test = split

    class Constant(torch.nn.Module):
        def predict(self, images):
            probs = torch.full((len(images), 3, *images.shape[-2:]), 1 / 3)
            return {"probs": probs, "labels": probs.argmax(1)}

    pred = evaluation.predict_dataset(Constant(), test["image"], batch_size=5, device="cpu")
    assert pred["probs"].shape == (12, 3, 32, 32) and pred["centers"].shape == (12, 2, 2)
    assert torch.allclose(pred["centers"], torch.zeros(12, 2, 2), atol=1e-6)
    table = evaluation.format_table({"oracle": {"fg_ari": 0.9, "landmark_error": 0.05}, "kmeans": {"fg_ari": 0.2}})
    assert "fg_ari ↑" in table and "landmark_error ↓" in table and "0.900" in table
    first, second = evaluation.split_predictions(pred, 5)
    assert len(first["labels"]) == 5 and len(second["labels"]) == 7


def test_score_model_with_the_true_mask_hands_each_split_its_foreground(split):
    train, test = split
    from partlab.methods import SCOPS, ContrastiveParts

    torch.manual_seed(0)
    model = ContrastiveParts(6, feature_channels=3, base_channels=4, depth=1)
    own, _ = evaluation.score_model(model, train, test, category="bird", device="cpu")
    true, pred = evaluation.score_model(model, train, test, category="bird", device="cpu", mask="true")
    # inside the true mask: the background label is exactly the true background
    assert torch.equal(pred["labels"] == 0, test["fg"][:, 0] < 0.5)
    assert true["fg_iou"] == pytest.approx(1.0) and own["fg_iou"] < 1.0
    assert own["fg_ari"] == pytest.approx(true["fg_ari"])          # FG metrics: argmax over parts, same in both
    with pytest.raises(ValueError, match="takes no foreground mask"):
        evaluation.score_model(SCOPS(6, feature_channels=3, base_channels=4, depth=1), train, test, device="cpu",
                               mask="true")
    with pytest.raises(ValueError, match="'own' or 'true'"):
        evaluation.score_model(model, train, test, device="cpu", mask="rbd")


def test_baseline_masks_change_the_input_not_the_truth(split):
    train, test = split
    images, fg = test["image"], test["fg"]
    true = evaluation.baseline_mask(images, fg, "true")
    assert true.dtype == torch.bool and true.shape == (12, 1, 32, 32) and torch.equal(true, fg.bool())
    assert evaluation.baseline_mask(images, fg, "none").all()
    rbd = evaluation.baseline_mask(images, fg, "rbd")
    inter, union = (rbd & true).sum(), (rbd | true).sum()
    assert 0.2 < float(inter) / float(union) < 1.0          # the saliency finds the bird, imperfectly
    with pytest.raises(ValueError, match="mask='oracle'.*true"):
        evaluation.baseline_mask(images, fg, "oracle")
    given, _ = evaluation.score_baseline("kmeans", train, test, category="bird", features="rgb", device="cpu")
    blind, _ = evaluation.score_baseline("kmeans", train, test, category="bird", features="rgb", device="cpu",
                                         mask="none")
    assert given["fg_iou"] == pytest.approx(1.0) and blind["fg_iou"] < 0.5   # scored against the true parts


def test_score_baselines_is_score_baseline_for_every_name_and_mask(split):
    train, test = split
    kw = dict(category="bird", features="rgb", device="cpu")
    results, predictions = evaluation.score_baselines(train, test, names=["kmeans"], masks=("true", "none"), **kw)
    assert list(results) == ["kmeans (true)", "kmeans (none)"] == list(predictions)
    for mask in ("true", "none"):
        one, _ = evaluation.score_baseline("kmeans", train, test, mask=mask, **kw)
        assert results[f"kmeans ({mask})"] == pytest.approx(one)
    named, _ = evaluation.score_baselines(train, test, names=["dff"], label="{name}/{mask}", **kw)
    assert list(named) == ["dff/true"]


def test_rank_and_margins_follow_which_way_is_better():
    results = {"a": {"fg_ari": 0.3, "landmark_error": 0.20}, "b": {"fg_ari": 0.1, "landmark_error": 0.25},
               "c": {"fg_ari": 0.2, "landmark_error": 0.10}}
    assert evaluation.rank(results, "fg_ari") == ["a", "c", "b"]
    assert evaluation.rank(results, "landmark_error", ["a", "b"]) == ["a", "b"]
    margin = evaluation.margins(results, "a", ["b", "c"])
    assert margin == pytest.approx({"b.fg_ari": 0.2, "b.landmark_error": 0.05,
                                    "c.fg_ari": 0.1, "c.landmark_error": -0.10})


def test_summarize_seeds_is_mean_and_sample_std():
    sweep = evaluation.summarize_seeds({0: {"fg_ari": 0.2, "x": 1.0}, 1: {"fg_ari": 0.4}, 2: {"fg_ari": 0.6}})
    assert sweep["mean"] == {"fg_ari": pytest.approx(0.4)} and sweep["std"]["fg_ari"] == pytest.approx(0.2)
    assert sweep.format("fg_ari") == "0.400 ± 0.200"
    assert evaluation.summarize_seeds({3: {"a": 1.0}})["std"] == {"a": 0.0}


def test_seed_sweep_trains_every_seed_and_scores_the_same_test_images():
    sweep = evaluation.seed_sweep("oracle", "quick", seeds=(0, 1), n_eval=12, device="cpu", progress=False,
                                  overrides={"data.size": 32, "data.n_train": 8, "fit.max_steps": 2,
                                             "fit.batch_size": 4})
    assert sorted(sweep["per_seed"]) == [0, 1]
    assert sweep["per_seed"][0]["fg_ari"] != sweep["per_seed"][1]["fg_ari"]      # other seed, other run
    assert set(sweep["mean"]) >= {"fg_ari", "landmark_error"}


def test_seed_sweep_chooses_on_the_validation_split():
    settings = dict(seeds=(0,), n_eval=12, device="cpu", progress=False,
                    overrides={"data.size": 32, "data.n_train": 8, "fit.max_steps": 2, "fit.batch_size": 4})
    val = evaluation.seed_sweep("oracle", "quick", split="val", **settings)
    test = evaluation.seed_sweep("oracle", "quick", **settings)
    assert val["per_seed"][0]["fg_ari"] != test["per_seed"][0]["fg_ari"]          # other images scored
    _, val_images = evaluation.benchmark_splits(size=32, n_train=2, n_test=2, test_split="val")
    _, test_images = evaluation.benchmark_splits(size=32, n_train=2, n_test=2)
    assert not torch.equal(val_images["image"], test_images["image"])


def test_ablation_overrides_name_weights_and_settings():
    assert evaluation.ablation_overrides("scops", "no_sc") == {"weights.sc": 0.0, "weights.orthonormal": 0.0}
    assert evaluation.ablation_overrides("scops", "only_sc") == {"weights.con": 0.0, "weights.eqv": 0.0,
                                                                 "weights.lmeqv": 0.0}
    assert evaluation.ablation_overrides("scops", "no_saliency") == {"model.saliency": "none"}
    assert evaluation.ablation_overrides("scops", "full") == {}
    with pytest.raises(ValueError, match="no ablation 'bogus'.*no_sc"):
        evaluation.ablation_overrides("scops", "bogus")


def test_seed_sweep_of_an_ablation_is_the_sweep_with_its_overrides():
    settings = dict(seeds=(0,), n_eval=16, device="cpu", progress=False)
    small = {"data.size": 32, "data.n_train": 8, "fit.max_steps": 2, "fit.batch_size": 4}
    ablated = evaluation.seed_sweep("scops", "quick", ablation="no_sc", overrides=small, **settings)
    by_hand = evaluation.seed_sweep("scops", "quick", overrides={**small, "weights.sc": 0, "weights.orthonormal": 0},
                                    **settings)
    full = evaluation.seed_sweep("scops", "quick", overrides=small, **settings)
    assert ablated["per_seed"][0] == pytest.approx(by_hand["per_seed"][0])
    assert ablated["per_seed"][0] != pytest.approx(full["per_seed"][0])           # the ablation changed the run


def test_seed_sweep_scores_a_scenes_method_by_the_kmeans_protocol():
    """MaskContrast's sweep is scored on scenes (K-means mIoU with overclustering), never as parts of birds."""
    small = {"data.size": 32, "data.n_train": 8, "fit.max_steps": 1, "fit.batch_size": 4, "model.queue_size": 8}
    sweep = evaluation.seed_sweep("maskcontrast", "quick", seeds=(0,), n_eval=12, device="cpu", progress=False,
                                  overrides=small)
    scores = sweep["per_seed"][0]
    assert {"miou", "miou@8", "miou@16"} <= set(scores) and "fg_ari" not in scores
    assert all(0 <= scores[k] <= 1 for k in ("miou", "miou@8", "miou@16"))
    with pytest.raises(ValueError, match="part methods"):
        evaluation.seed_sweep("maskcontrast", "quick", seeds=(0,), n_eval=12, device="cpu", mask="true",
                              overrides=small)


def test_true_part_features_replace_the_cached_features_and_change_the_run():
    """seed_sweep(true_part_features=True): the training set's cached features become the one-hot true parts."""
    from partlab.methods.registry import get_method

    small = {"data.size": 32, "data.n_train": 8, "fit.max_steps": 2, "fit.batch_size": 4}
    _, dataset, _ = get_method("scops").recipe("quick").override(small).build(device="cpu")
    before = dataset.extras["features"].clone()
    evaluation.use_true_part_features(dataset, "scops")
    after = dataset.extras["features"]
    assert after.shape == before.shape and not torch.equal(after, before)
    parts = dataset.dataset[3]["parts"]
    num = int(parts.max())
    assert after[3, num:].abs().sum() == 0                                          # one channel per part, no more
    assert torch.equal(after[3, :num].sum(0) > 0,
                       torch.nn.functional.adaptive_avg_pool2d((parts > 0).float()[None, None],
                                                               after.shape[-2:])[0, 0] > 0)   # only where the bird is
    settings = dict(seeds=(0,), n_eval=16, device="cpu", progress=False, overrides=small)
    oracle = evaluation.seed_sweep("scops", "quick", true_part_features=True, **settings)
    plain = evaluation.seed_sweep("scops", "quick", **settings)
    assert oracle["per_seed"][0] != pytest.approx(plain["per_seed"][0])
    with pytest.raises(ValueError, match="part methods"):
        evaluation.seed_sweep("maskcontrast", "quick", seeds=(0,), n_eval=12, device="cpu", true_part_features=True,
                              overrides={**small, "model.queue_size": 8})
    with pytest.raises(ValueError, match="caches"):
        evaluation.use_true_part_features(dataset.dataset, "scops")


def test_a_share_of_true_part_features_mixes_them_into_the_cached_features():
    """seed_sweep(true_part_features=0.5): half the CNN's features, half the true parts, for the runs and the
    baselines; a share outside [0, 1] is refused before any training."""
    from partlab.methods.registry import get_method
    from partlab.part_basis import part_label_features

    small = {"data.size": 32, "data.n_train": 8, "fit.max_steps": 2, "fit.batch_size": 4}
    _, dataset, _ = get_method("scops").recipe("quick").override(small).build(device="cpu")
    before = dataset.extras["features"].clone()
    parts = torch.stack([dataset.dataset[i]["parts"] for i in range(len(dataset.dataset))])
    evaluation.use_true_part_features(dataset, "scops", share=0.5)
    assert torch.allclose(dataset.extras["features"], 0.5 * before + 0.5 * part_label_features(parts, before))
    assert evaluation.true_part_share(True) == 1.0 and evaluation.true_part_share(False) == 0.0
    assert evaluation.true_part_share(None) == 0.0 and evaluation.true_part_share(0.25) == 0.25
    with pytest.raises(ValueError, match="share in \\[0, 1\\], got 2"):
        evaluation.seed_sweep("scops", "quick", seeds=(0,), n_eval=12, device="cpu", true_part_features=2,
                              overrides=small)


def test_baselines_on_a_share_of_true_part_features_lie_between(split):
    """K-means on half CNN features, half true parts scores between K-means on either alone."""
    train, test = split
    kw = dict(category="bird", features="standin", device="cpu")
    plain, _ = evaluation.score_baseline("kmeans", train, test, **kw)
    half, _ = evaluation.score_baseline("kmeans", train, test, true_part_features=0.5, **kw)
    ceiling, _ = evaluation.score_baseline("kmeans", train, test, true_part_features=True, **kw)
    assert plain["fg_ari"] + 0.05 < half["fg_ari"] < ceiling["fg_ari"] - 0.05      # 0.14 < 0.34 < 0.45 here


def test_baselines_on_the_true_parts_as_features_are_their_ceiling(split):
    """score_baseline(true_part_features=True): K-means and DFF read the one-hot true parts instead of the CNN's
    features (far better), the position baselines read no features (unchanged)."""
    train, test = split
    kw = dict(category="bird", features="standin", device="cpu")
    for name in ("kmeans", "dff"):
        plain, _ = evaluation.score_baseline(name, train, test, **kw)
        ceiling, _ = evaluation.score_baseline(name, train, test, true_part_features=True, **kw)
        assert ceiling["fg_ari"] > plain["fg_ari"] + 0.15, name
    plain, _ = evaluation.score_baseline("position", train, test, **kw)
    same, _ = evaluation.score_baseline("position", train, test, true_part_features=True, **kw)
    assert same == pytest.approx(plain)
    images, fg = test["image"], test["fg"]
    with pytest.raises(ValueError, match="3 label maps for 12 images"):
        evaluation.baseline_parts("kmeans", images, fg, 6, features="standin", device="cpu",
                                  part_labels=test["parts"][:3])


def test_seed_sweep_scores_the_baselines_once_on_the_same_images():
    small = {"data.size": 32, "data.n_train": 8, "fit.max_steps": 2, "fit.batch_size": 4, "data.features": "standin"}
    settings = dict(seeds=(0,), n_eval=16, device="cpu", progress=False, overrides=small, split="val", split_seed=3)
    sweep = evaluation.seed_sweep("scops", "quick", baselines=("kmeans", "position"), baseline_masks=("rbd", "true"),
                                  **settings)
    assert list(sweep["baselines"]) == ["kmeans (rbd)", "position (rbd)", "kmeans (true)", "position (true)"]
    train, test = evaluation.benchmark_splits("bird", size=32, n_train=16, n_test=16, seed=3, test_split="val")
    by_hand, _ = evaluation.score_baselines(train, test, names=("kmeans",), masks=("rbd",), category="bird",
                                            num_parts=6, features="standin", device="cpu")
    assert sweep["baselines"]["kmeans (rbd)"] == pytest.approx(by_hand["kmeans (rbd)"])
    assert "baselines" not in evaluation.seed_sweep("scops", "quick", **settings)
    with pytest.raises(ValueError, match="unknown baseline.*'bogus'"):
        evaluation.seed_sweep("scops", "quick", baselines=("bogus",), **settings)
    with pytest.raises(ValueError, match="scene baselines"):
        evaluation.seed_sweep("maskcontrast", "quick", seeds=(0,), n_eval=12, device="cpu", baselines=("kmeans",),
                              overrides={**small, "model.queue_size": 8})


def test_seed_sweep_script_prints_the_baselines_under_the_runs(monkeypatch, capsys):
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "seed_sweep.py"
    monkeypatch.setattr(sys, "argv", [str(script), "scops", "--seeds", "0", "--n-eval", "12", "--split", "val",
                                      "--set", "data.size=32", "--set", "data.n_train=8", "--set", "fit.max_steps=1",
                                      "--set", "fit.batch_size=4", "--set", "data.features=standin",
                                      "--true-part-features", "--baselines", "kmeans", "position",
                                      "--baseline-mask", "true", "--columns", "fg_ari"])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[-2].startswith("| kmeans (true) on the true parts | ")          # K-means read the true parts
    assert rows[-1].startswith("| position (true) | ")                          # position reads no features
    assert "true part features" in out
    monkeypatch.setattr(sys, "argv", sys.argv[:sys.argv.index("--true-part-features") + 1] + ["0.5"]
                        + sys.argv[sys.argv.index("--true-part-features") + 1:])
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert rows[-2].startswith("| kmeans (true) on the features 0.5 CNN + 0.5 true parts | ")   # the mix, named
    assert "features 0.5 CNN + 0.5 true parts" in out.splitlines()[0]
