"""The appearance-varied world: colour does not name a part; the typed world is unchanged."""

import numpy as np
import pytest
import torch

from partlab.data.synthetic import APPEARANCES, CATEGORIES, WORLDS, SyntheticConfig, SyntheticParts, render
from partlab.data import stack_dataset
from partlab.recipes import DataSpec


@pytest.mark.parametrize("category", CATEGORIES)
def test_varied_is_the_same_scene_repainted(category):
    for index in range(3):
        typed = render(category, index, size=48)
        varied = render(category, index, size=48, config="varied")
        np.testing.assert_array_equal(typed["parts"], varied["parts"])
        np.testing.assert_array_equal(typed["landmarks"], varied["landmarks"])
        fg = typed["fg"][0] > 0
        assert np.abs(typed["image"][:, fg] - varied["image"][:, fg]).mean() > 0.02
        again = render(category, index, size=48, config=SyntheticConfig(appearance="varied"))
        np.testing.assert_array_equal(varied["image"], again["image"])


def _mean_part_colours(config, n=60):
    """(n, K, 3) mean colour of each part of each bird (nan where absent)."""
    data = SyntheticParts("bird", size=48, length=n, config=config, split="val")
    out = np.full((n, 6, 3), np.nan)
    for i in range(n):
        s = data[i]
        image, parts = s["image"].numpy(), s["parts"].numpy()
        for k in range(1, 7):
            if (parts == k).sum() > 4:
                out[i, k - 1] = image[:, parts == k].mean(1)
    return out


def test_in_the_varied_world_colour_does_not_name_the_part():
    """Nearest-mean classification of a part from its mean colour: easy when typed, near chance when varied."""
    def accuracy(colours):
        train, test = colours[:30], colours[30:]
        means = np.nanmean(train, axis=0)                                     # (K, 3)
        hits = total = 0
        for row in test:
            for k, c in enumerate(row):
                if np.isnan(c).any():
                    continue
                hits += int(np.argmin(((means - c) ** 2).sum(1)) == k)
                total += 1
        return hits / total

    typed, varied = accuracy(_mean_part_colours(None)), accuracy(_mean_part_colours("varied"))
    assert typed > 0.4 and varied < typed - 0.15, (typed, varied)


def test_world_names_and_bad_values():
    assert set(WORLDS) >= {"default", "varied"} and APPEARANCES == ("typed", "varied")
    assert SyntheticConfig.varied().appearance == "varied" and SyntheticConfig().appearance == "typed"
    with pytest.raises(ValueError, match="appearance"):
        SyntheticConfig(appearance="random")
    with pytest.raises(ValueError, match="preset"):
        render("bird", 0, config="colourful")
    assert DataSpec(world="varied").world == "varied"
    with pytest.raises(ValueError, match="data.world"):
        DataSpec(world="colourful")


def test_the_closeup_world_draws_the_same_birds_larger():
    default = SyntheticParts("bird", size=64, length=24, seed=5, split="val")
    closeup = SyntheticParts("bird", size=64, length=24, seed=5, split="val", config="closeup")
    share = lambda data: float(stack_dataset(data, keys=["fg"])["fg"].float().mean())
    assert share(closeup) > 2.5 * share(default)                       # about a third of the frame, not a tenth
    assert SyntheticConfig.closeup().scale == (1.6, 2.0) and DataSpec(world="closeup").world == "closeup"
    assert SyntheticConfig.closeup().appearance == "typed"              # only the size changes


def test_recipes_train_and_score_on_the_named_world():
    from partlab.methods.registry import get_method

    recipe = get_method("scops").recipe("quick").override({"data.world": "varied", "data.n_train": 2,
                                                            "data.features": "rgb", "model.saliency": "none"})
    assert "varied world" in recipe.describe()
    _, dataset, _ = recipe.build(device="cpu")
    first = dataset[0]["image"].numpy()
    np.testing.assert_allclose(first, SyntheticParts("bird", size=64, length=1, config="varied")[0]["image"].numpy())


def test_cli_renders_and_evaluates_the_varied_world(tmp_path, capsys):
    from partlab import cli

    png = tmp_path / "varied.png"
    assert cli.main(["render", str(png), "-n", "2", "--size", "32", "--world", "varied"]) == 0
    assert png.is_file() and "varied world" in capsys.readouterr().out
    assert cli.main(["evaluate", "--baseline", "position", "--baseline", "rgbxy", "--size", "32", "--n-test", "6",
                     "--n-train", "16", "--device", "cpu", "--world", "varied"]) == 0
    assert "synthetic bird (varied world), 32 px" in capsys.readouterr().out


def test_cli_feature_choices_match_the_extractors():
    from partlab import cli
    from partlab.features.extractors import _EXTRACTOR_CHOICES

    assert set(cli.build_parser()._subparsers._group_actions[0].choices["train"]._option_string_actions["--features"].choices) \
        == set(_EXTRACTOR_CHOICES)


def test_session_scores_a_model_on_both_worlds():
    from partlab.notebooks import setup

    s = setup("contrastive", n_train=4, n_eval=16, steps=1, features="rgb", echo=False,
              settings={"data.size": 32})
    s.fit()
    worlds = s.across_worlds(mask="true")
    assert list(worlds) == ["default", "varied"]
    for w in worlds.values():
        assert {"fg_ari", "fg_ari_image"} <= set(w["scores"]) and "position" in w["baselines"]
        assert w["pred"]["labels"].shape == w["test"]["parts"].shape
    np.testing.assert_array_equal(worlds["default"]["test"]["parts"], worlds["varied"]["test"]["parts"])
    assert worlds["default"]["baselines"] == worlds["varied"]["baselines"], "the position floor ignores colour"


def test_cli_train_world_shortcut():
    from partlab import cli

    args = cli.build_parser().parse_args(["train", "scops", "--world", "varied"])
    assert cli._recipe(args).data.world == "varied"


def test_a_scenes_session_clusters_the_same_scenes_on_both_worlds():
    """MaskContrast across worlds: the same scenes repainted; K-means on the true objects, one cluster id per object
    (the grid's fixed colours), mIoU next to colour K-means on the same scenes."""
    import torch
    from partlab.notebooks import setup

    s = setup("maskcontrast", n_train=8, n_eval=20, steps=1, features="rgb", echo=False,
              settings={"data.size": 32, "model.queue_size": 8, "fit.batch_size": 4, "fit.progress": False})
    s.fit()
    worlds = s.across_worlds()
    assert list(worlds) == ["default", "varied"]
    default, varied = worlds["default"], worlds["varied"]
    assert default["test"] is s.test
    np.testing.assert_array_equal(default["test"]["instances"], varied["test"]["instances"])   # the same scenes
    assert not torch.equal(default["test"]["image"], varied["test"]["image"])                  # repainted
    for w in worlds.values():
        labels, instances = w["pred"]["labels"], w["test"]["instances"]
        assert labels.shape == instances.shape and int(labels.max()) <= s.num_parts
        assert bool(((labels > 0) == (instances > 0)).all()), "every object pixel, and only those, gets a cluster"
        for i in range(len(labels)):                                  # one cluster per object
            for o in instances[i].unique().tolist():
                if o:
                    assert labels[i][instances[i] == o].unique().numel() == 1
        assert 0 <= w["scores"]["miou"] <= 1 and set(w["baselines"]) == {"rgb"}
