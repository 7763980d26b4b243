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
