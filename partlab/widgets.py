"""Interactive explorers for the notebooks (ipywidgets), built by an explicit call.

DESIGN.md: widgets are built after an explicit call with the notebook's parameter values, so a
headless papermill run exercises the same code as a click. :func:`weight_explorer` is the loss-weight
explorer of every method in the registry (:mod:`partlab.methods.registry`): one log-scale slider and one
on/off box per weighted loss term, a button that re-trains a small model with those weights, its scores
and segmentations below.

>>> explorer = weight_explorer(train_set, info, test, category="bird", steps=100)   # doctest: +SKIP
>>> explorer.display()                      # sliders + "train" button (+ the first run's result)
>>> explorer.run({"sc": 0.0})               # what the button does, callable from code (weights by term)
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

from partlab import evaluation, viz


class WeightExplorer:
    """Re-train a method with chosen loss weights and show the result (see the module docstring).

    Args:
        train: the training set of the method's setup (e.g. :func:`partlab.methods.scops.scops_quick_setup`).
        info: its ``info`` (``"method"``, model settings, fit settings, default weights by term).
        test: a stacked test split (:func:`partlab.evaluation.benchmark_splits`) with its train split
            given as ``train_eval`` (landmark regression); without ``train_eval`` no landmark error.
        steps: training steps per click.

    Attributes:
        terms: the method's weighted loss terms (one slider each), from the registry.
        last_scores: the benchmark scores of the last run (``None`` before the first).
        last_model: the last trained model.
    """

    def __init__(self, train, info: dict, test: Mapping, *, category: Optional[str] = None, steps: int = 100,
                 train_eval: Optional[Mapping] = None, n_show: int = 6):
        from partlab.methods.registry import get_method

        self.entry = get_method(info["method"])
        self.terms = self.entry.weighted_terms
        self.train, self.info, self.test, self.train_eval = train, info, test, train_eval
        self.category, self.steps, self.n_show = category, int(steps), int(n_show)
        self.defaults = {term: float(info["weights"][term]) for term in self.terms}
        self.last_scores: Optional[dict] = None
        self.last_model = None
        self._widgets = None

    def _build(self):
        import ipywidgets as w

        rows, self._sliders, self._boxes = [], {}, {}
        for term in self.terms:
            default = self.defaults[term]
            slider = w.FloatLogSlider(value=default if default > 0 else 1.0, base=10, min=-3, max=5, step=0.1,
                                      description=f"lambda_{term}", readout_format=".2g", continuous_update=False)
            box = w.Checkbox(value=default > 0, description="on", indent=False)
            self._sliders[term], self._boxes[term] = slider, box
            rows.append(w.HBox([slider, box]))
        button = w.Button(description=f"train ({self.steps} steps)", button_style="primary")
        self._output = w.Output()
        button.on_click(lambda _: self.run())
        self._widgets = w.VBox(rows + [button, self._output])
        # stable CSS classes: the browser test (tests/test_browser.py) finds the explorer by them
        self._widgets.add_class("partlab-weight-explorer")
        button.add_class("partlab-train-button")
        self._output.add_class("partlab-explorer-output")
        return self._widgets

    def weights(self) -> dict:
        """The weights the widgets show, by term (0 for a term whose box is unticked); defaults before
        :meth:`display`."""
        if self._widgets is None:
            return dict(self.defaults)
        return {term: (self._sliders[term].value if self._boxes[term].value else 0.0) for term in self.terms}

    def run(self, weights: Optional[Mapping[str, float]] = None) -> dict:
        """Train with ``weights`` by term (default: the widgets' values), score on the test split, show it."""
        from partlab.methods.registry import train_variants

        chosen = dict(self.weights() if weights is None else dict(self.defaults, **weights))
        bad = [k for k in chosen if k not in self.terms or not (chosen[k] >= 0 and math.isfinite(chosen[k]))]
        if bad:
            raise ValueError(f"weights must be finite and >= 0 and named in {list(self.terms)}; got {bad}")
        model = train_variants(self.entry.name, {"explorer": chosen}, self.train, self.info,
                               max_steps=self.steps)["explorer"]
        device = self.info["fit"].get("device", "cpu")
        scores, pred = evaluation.score_model(model, self.train_eval or self.test, self.test,
                                              category=self.category, device=device)
        if self.train_eval is None:
            scores.pop("landmark_error", None)
        self.last_model, self.last_scores = model, scores
        self._show(chosen, scores, pred)
        return scores

    def _show(self, chosen: dict, scores: dict, pred: dict) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        def draw():
            print("weights:", {k: round(v, 4) for k, v in chosen.items()})
            print(evaluation.format_table({"explorer": scores}))
            n = min(self.n_show, len(self.test["image"]))
            fig = viz.show_parts(self.test["image"][:n], pred["labels"][:n], ncols=n)
            display(fig)
            plt.close(fig)

        if self._widgets is not None:
            self._output.clear_output(wait=True)
            with self._output:
                draw()
        else:
            draw()

    def display(self) -> None:
        """Show the sliders, the button and (after a run) the result."""
        from IPython.display import display

        display(self._widgets if self._widgets is not None else self._build())


def weight_explorer(train, info: dict, test: Mapping, *, category: Optional[str] = None, steps: int = 100,
                    train_eval: Optional[Mapping] = None, run_now: bool = True) -> WeightExplorer:
    """Build the loss-weight explorer; ``run_now`` trains once with the default weights right away
    (a headless run thereby exercises exactly what the button does)."""
    explorer = WeightExplorer(train, info, test, category=category, steps=steps, train_eval=train_eval)
    explorer._build()
    if run_now:
        explorer.run()
    return explorer
