"""Interactive explorers for the notebooks (ipywidgets), built by an explicit call.

DESIGN.md: widgets are built after an explicit call with the notebook's parameter values, so a
headless papermill run exercises the same code as a click. :func:`weight_explorer` is the loss-weight
explorer of every method in the registry (:mod:`partlab.methods.registry`): one log-scale slider and one
on/off box per weighted loss term, a button that re-trains a small model with those weights, its scores
and segmentations below.

>>> explorer = weight_explorer(train_set, info, test, category="bird", steps=100)   # doctest: +SKIP
>>> explorer.display()                      # sliders + "train" button (+ the first run's result)
>>> explorer.run({"sc": 0.0})               # what the button does, callable from code (weights by term)

:func:`part_swap_picker` is the part-swap demo of the motion-supervised method (Sec. 4.3): one tick box
per part, a soft/hard toggle, and the source, the target with its parts, the mask and the swapped image.

>>> picker = part_swap_picker(model, source, target, parts=[1])    # doctest: +SKIP
>>> picker.display()                        # tick boxes + toggle + figure             # doctest: +SKIP
>>> picker.swap([1, 3], soft=False)         # what ticking does, callable from code    # doctest: +SKIP
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

from partlab import evaluation, viz


class _OutputWidget:
    """What the widgets share: draw into their output area once the ipywidgets are built (:meth:`display`),
    straight into the notebook before that (headless runs), and :meth:`display` itself."""

    _widgets = None

    def _build(self):
        raise NotImplementedError

    def _render(self, draw) -> None:
        if self._widgets is not None:
            self._output.clear_output(wait=True)
            with self._output:
                draw()
        else:
            draw()

    def display(self) -> None:
        """Show the controls and (after a run) the result."""
        from IPython.display import display

        display(self._widgets if self._widgets is not None else self._build())


class WeightExplorer(_OutputWidget):
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

        self._render(draw)


def weight_explorer(train, info: dict, test: Mapping, *, category: Optional[str] = None, steps: int = 100,
                    train_eval: Optional[Mapping] = None, run_now: bool = True) -> WeightExplorer:
    """Build the loss-weight explorer; ``run_now`` trains once with the default weights right away
    (a headless run thereby exercises exactly what the button does)."""
    explorer = WeightExplorer(train, info, test, category=category, steps=steps, train_eval=train_eval)
    explorer._build()
    if run_now:
        explorer.run()
    return explorer


class PartSwapPicker(_OutputWidget):
    """Pick the parts of a target frame to replace by a source image's (:func:`partlab.motion.part_swap`).

    Args:
        model: a trained :class:`partlab.methods.MotionCoPart` (motion ``"affine"`` or ``"shift"``).
        source, target: one image each, ``(3, H, W)`` or ``(1, 3, H, W)``, RGB in [0, 1], the same size.
        parts: the parts ticked at first (1..K).
        soft: the soft mask (probabilities) at first, else the hard argmax mask.

    Attributes:
        selection: ``(parts, soft)`` the widgets show (the initial values before :meth:`display`).
        last_result: the last swapped image ``(3, H, W)`` on the CPU (``None`` before the first swap).
        last_mask: its blend mask ``(1, H/4, W/4)``.
        labels: the target's part labels ``(H, W)`` (argmax of ``model.predict``), drawn over the target.
    """

    def __init__(self, model, source, target, *, parts: Sequence[int] = (), soft: bool = True):
        import torch

        from partlab.motion import check_swap_parts, check_swap_model

        check_swap_model(model)
        self.model = model
        self.source, self.target = (self._one_image(x, name) for x, name in ((source, "source"), (target, "target")))
        if self.source.shape != self.target.shape:
            raise ValueError(f"source {tuple(self.source.shape[-2:])} and target {tuple(self.target.shape[-2:])} "
                             f"must have the same size")
        self.num_parts = model.num_parts
        self._parts, self._soft = check_swap_parts(parts, self.num_parts), bool(soft)
        self.labels = model.predict(self.target)["labels"][0].cpu()
        self.last_result: Optional[torch.Tensor] = None
        self.last_mask: Optional[torch.Tensor] = None
        self._widgets = None
        self._quiet = False                  # True while swap() sets the widgets: one swap, not one per change

    @staticmethod
    def _one_image(x, name: str):
        import torch

        if isinstance(x, torch.Tensor) and x.dim() == 3:
            x = x[None]
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[:2] != (1, 3) or not x.is_floating_point():
            got = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(f"{name} must be one float image (3, H, W) or (1, 3, H, W) in [0, 1], got {got}")
        return x.float().cpu()

    def _build(self):
        import ipywidgets as w

        self._boxes = {k: w.Checkbox(value=k in self._parts, description=f"part {k}", indent=False,
                                     layout=w.Layout(width="auto"))
                       for k in range(1, self.num_parts + 1)}
        self._toggle = w.ToggleButtons(options=["soft", "hard"], value="soft" if self._soft else "hard",
                                       description="mask")
        self._output = w.Output()
        for widget in (*self._boxes.values(), self._toggle):
            widget.observe(self._changed, names="value")
        self._widgets = w.VBox([w.HBox(list(self._boxes.values())), self._toggle, self._output])
        self._widgets.add_class("partlab-part-swap-picker")
        return self._widgets

    def _changed(self, _change) -> None:
        if not self._quiet:
            self.swap()

    @property
    def selection(self) -> tuple[list[int], bool]:
        """``(parts, soft)``: the ticked parts and the toggle (the last choice before :meth:`display`)."""
        if self._widgets is None:
            return list(self._parts), self._soft
        return [k for k, box in self._boxes.items() if box.value], self._toggle.value == "soft"

    def swap(self, parts: Optional[Sequence[int]] = None, soft: Optional[bool] = None):
        """Swap ``parts`` (default: the ticked ones) with a ``soft`` or hard mask (default: the toggle's),
        set the widgets to that choice, show the result and return the swapped image ``(3, H, W)``."""
        from partlab.motion import check_swap_parts, part_swap

        chosen, is_soft = self.selection
        chosen = chosen if parts is None else check_swap_parts(parts, self.num_parts)
        is_soft = is_soft if soft is None else bool(soft)
        self._parts, self._soft = list(chosen), is_soft
        if self._widgets is not None:
            self._quiet = True
            try:
                for k, box in self._boxes.items():
                    box.value = k in chosen
                self._toggle.value = "soft" if is_soft else "hard"
            finally:
                self._quiet = False
        image, mask = part_swap(self.model, self.source, self.target, chosen, soft=is_soft, return_mask=True)
        self.last_result, self.last_mask = image[0].float().cpu(), mask[0].float().cpu()
        self._show(chosen, is_soft)
        return self.last_result

    def _show(self, chosen: list, soft: bool) -> None:
        import matplotlib.pyplot as plt
        from IPython.display import display

        def draw():
            fig, axes = plt.subplots(1, 4, figsize=(4 * 2.2, 2.4))
            panels = [(viz.to_hwc(self.source[0]), "source"),
                      (viz.overlay(self.target[0], self.labels), "target and its parts"),
                      (self.last_mask[0].numpy(), f"{'soft' if soft else 'hard'} mask, parts {chosen or 'none'}"),
                      (viz.to_hwc(self.last_result), "swapped")]
            for ax, (picture, title) in zip(axes, panels):
                ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1,
                          interpolation="nearest")
                ax.set_title(title, fontsize=8)
                ax.axis("off")
            fig.tight_layout()
            display(fig)
            plt.close(fig)

        self._render(draw)


def part_swap_picker(model, source, target, *, parts: Sequence[int] = (), soft: bool = True,
                     run_now: bool = True) -> PartSwapPicker:
    """Build the part-swap picker (:class:`PartSwapPicker`); ``run_now`` swaps ``parts`` right away (a
    headless run thereby exercises exactly what ticking a box does)."""
    picker = PartSwapPicker(model, source, target, parts=parts, soft=soft)
    picker._build()
    if run_now:
        picker.swap()
    return picker
