"""Method variants on one cached training set (the registry's train_variants), and the loss-weight explorer
of the ablation notebook."""

import math

import pytest
import torch

from partlab import evaluation
from partlab.methods.registry import get_method, train_variants
from partlab.methods.scops import QUICK_WEIGHTS, scops_quick_setup
from partlab.widgets import weight_explorer


@pytest.fixture(scope="module")
def setup():
    _, train, info = scops_quick_setup("bird", size=32, n_train=8, features="rgb", saliency="oracle", device="cpu")
    info["fit"].update(batch_size=4, progress=False)
    train_eval, test = evaluation.benchmark_splits("bird", size=32, n_train=16, n_test=6)
    return train, info, train_eval, test


def test_variants_share_the_initialisation_and_switch_terms_off(setup):
    train, info, _, _ = setup
    models = train_variants("scops", ["full", "no_sc"], train, info, max_steps=1, lr=1e-12)
    full, no_sc = models["full"], models["no_sc"]
    assert no_sc.basis is None and full.basis is not None
    for a, b in zip(full.network.parameters(), no_sc.network.parameters()):
        assert torch.allclose(a, b, atol=1e-9)                     # same seed -> same network init
    trained = train_variants("scops", {"mine": {"con": 0.0}}, train, info, max_steps=2)["mine"]
    assert "con" not in trained.history[-1] and math.isfinite(trained.history[-1]["loss"])
    with pytest.raises(ValueError, match="no ablation 'no_such'"):
        train_variants("scops", ["no_such"], train, info)
    with pytest.raises(ValueError, match="weights go in weights.<term>"):
        train_variants("scops", {"mine": {"lambda_con": 0.0}}, train, info)


def test_quick_setup_uses_the_quick_weights_and_takes_overrides(setup):
    train, info = setup[0], setup[1]
    assert info["weights"]["con"] == QUICK_WEIGHTS["lambda_con"] == 300.0       # quick mode's one change
    assert info["weights"]["sc"] == 1e4 and info["weights"]["lmeqv"] == 1e2      # the rest: the paper's
    model, _, mine = scops_quick_setup("bird", size=32, n_train=8, features="rgb", saliency="oracle",
                                       device="cpu", lambda_con=10.0)
    assert model.weights["con"] == mine["weights"]["con"] == 10.0


def test_explorer_runs_what_the_button_runs(setup):
    train, info, train_eval, test = setup
    explorer = weight_explorer(train, info, test, category="bird", steps=2, train_eval=train_eval, run_now=True)
    assert set(explorer.weights()) == set(get_method("scops").weighted_terms)
    assert all(math.isfinite(v) for v in explorer.last_scores.values())
    explorer._boxes["sc"].value = False
    assert explorer.weights()["sc"] == 0.0
    scores = explorer.run()
    assert explorer.last_model.weights["sc"] == 0.0 and "fg_ari" in scores
    with pytest.raises(ValueError, match="finite and >= 0"):
        explorer.run({"con": -1.0})


# --- the live explorer: background training, stop, errors, the history --------------------------------------

import time  # noqa: E402

from partlab.widgets import WeightExplorer  # noqa: E402


def _wait_idle(explorer, seconds=120):
    deadline = time.monotonic() + seconds
    while explorer.running:
        assert time.monotonic() < deadline, "the background run did not finish"
        time.sleep(0.05)


def test_a_click_trains_in_the_background_with_progress_and_a_live_curve(setup, tmp_path):
    train, info, train_eval, test = setup
    path = tmp_path / "history.csv"
    explorer = WeightExplorer(train, info, test, category="bird", steps=4, train_eval=train_eval, update_every=1,
                              history_path=path)
    explorer._build()
    explorer._button.click()                                     # what a click does
    assert explorer._button.disabled and not explorer._stop_button.disabled   # at once, before any step
    _wait_idle(explorer)
    assert not explorer._button.disabled and explorer._stop_button.disabled
    assert explorer._button.description == "train (4 steps)" and explorer._progress.value == 4
    assert explorer._curve.value[:4] == b"\x89PNG" and explorer._parts.value[:4] == b"\x89PNG"
    assert "run 1 done: fg_ari" in explorer.message and "weights:" in explorer._result.value
    assert len(explorer.history) == 1 and explorer.history[0]["lambda_con"] == info["weights"]["con"]
    explorer._button.click()
    explorer._button.click()                                     # a second click while it runs: one message
    assert "a run is going" in explorer.message
    _wait_idle(explorer)
    assert [row["run"] for row in explorer.history] == [1, 2] and "<b>" in explorer._table.value
    reloaded = WeightExplorer(train, info, test, steps=4, history_path=path)   # saved after every run
    assert reloaded.history == explorer.history and reloaded.message.startswith("2 earlier runs reloaded")


def test_stop_keeps_the_last_result_and_errors_become_one_message(setup):
    train, info, train_eval, test = setup
    explorer = WeightExplorer(train, info, test, category="bird", steps=3, train_eval=train_eval, update_every=1)
    explorer._build()
    first = explorer.run()
    explorer._stop.set()                                         # Stop before the first record of the next run
    explorer._job(explorer.weights())
    assert "stopped at step 1 of 3" in explorer.message and explorer.last_scores is first
    assert len(explorer.history) == 1 and not explorer._button.disabled
    explorer._stop.clear()
    explorer._sliders["con"].value = 10.0
    explorer.train = None                                        # a broken run
    explorer._job(explorer.weights())
    assert explorer.message.startswith("the run failed: ") and "\n" not in explorer.message
    assert not explorer._button.disabled and not explorer._sliders["con"].disabled


def test_history_table_plot_and_csv(setup, tmp_path):
    train, info, _, test = setup
    explorer = WeightExplorer(train, info, test, steps=2)
    explorer.history = [{"run": 1, **{f"lambda_{t}": 1.0 for t in explorer.terms}, "fg_ari": 0.2, "landmark_error": 0.3},
                        {"run": 2, **{f"lambda_{t}": 0.0 for t in explorer.terms}, "fg_ari": 0.4, "landmark_error": 0.5}]
    table = explorer.history_table()
    assert "<b>0.400</b>" in table and "<b>0.300</b>" in table      # best: higher FG-ARI, lower error
    assert explorer.history_plot_png("fg_ari", "lambda_con")[:4] == b"\x89PNG"
    path = explorer.save_history(tmp_path / "h.csv")
    kept = list(explorer.history)
    assert WeightExplorer(train, info, test, steps=2, history_path=path).history == kept
    (tmp_path / "bad.csv").write_text("no,such,columns\n1,2,3\n")
    with pytest.raises(ValueError, match="does not parse.*kept"):
        explorer.load_history(tmp_path / "bad.csv")
    assert explorer.history == kept
    broken = WeightExplorer(train, info, test, steps=2, history_path=tmp_path / "bad.csv")
    assert broken.history == [] and "does not parse" in broken.message


def test_every_slider_label_fits_and_names_its_term(setup):
    train, info, _, test = setup
    explorer = WeightExplorer(train, info, test, steps=2)
    explorer._build()
    for term, slider in explorer._sliders.items():
        assert int(slider.style.description_width.rstrip("ch")) >= len(slider.description)
        assert slider.tooltip == explorer.notes[term] and "SCOPS Eq." in explorer.notes[term]


def test_a_typed_weight_sets_its_slider_and_a_bad_one_gets_one_message(setup):
    train, info, _, test = setup
    explorer = WeightExplorer(train, info, test, steps=2)
    explorer._build()
    explorer._typed_boxes["sc"].value = "250"
    assert explorer._sliders["sc"].value == pytest.approx(250.0) and explorer.weights()["sc"] == pytest.approx(250.0)
    explorer._sliders["con"].value = 10.0
    assert explorer._typed_boxes["con"].value == "10"                          # the box shows the slider
    for bad in ("1e9", "-3", "lots"):
        explorer._typed_boxes["con"].value = bad
        assert explorer.message.startswith(f"lambda_con: {bad!r} is not a weight in 0.001 .. 100000")
        assert explorer._sliders["con"].value == pytest.approx(10.0) and explorer._typed_boxes["con"].value == "10"
