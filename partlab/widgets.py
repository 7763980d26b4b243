"""Interactive explorers for the notebooks (ipywidgets), built by an explicit call.

DESIGN.md: widgets are built after an explicit call with the notebook's parameter values, so a
headless papermill run exercises the same code as a click. :func:`weight_explorer` is the loss-weight
explorer of every method in the registry (:mod:`partlab.methods.registry`): one log-scale slider and one
on/off box per weighted loss term, captioned with the term and its equation in the paper; a button that
re-trains a small model with those weights in the background while the widget shows the progress, a live
loss curve and a Stop button; its scores and segmentations below; and the history of the runs as a table
(the best of each metric in bold) and a plot of a chosen metric against a chosen weight, saved as CSV.

>>> explorer = weight_explorer(train_set, info, test, category="bird", steps=100)   # doctest: +SKIP
>>> explorer.display()                      # sliders + "train" button (+ the first run's result)
>>> explorer.run({"sc": 0.0})               # what the button does, callable from code (weights by term)
>>> explorer.history[-1]                    # {"run": 2, "lambda_con": 300.0, ..., "fg_ari": ...}

:func:`part_swap_picker` is the part-swap demo of the motion-supervised method (Sec. 4.3): one tick box
per part, a soft/hard toggle, and the source, the target with its parts, the mask and the swapped image.

>>> picker = part_swap_picker(model, source, target, parts=[1])    # doctest: +SKIP
>>> picker.display()                        # tick boxes + toggle + figure             # doctest: +SKIP
>>> picker.swap([1, 3], soft=False)         # what ticking does, callable from code    # doctest: +SKIP
"""

from __future__ import annotations

import html
import math
from pathlib import Path
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


HISTORY_METRICS = ("fg_ari", "fg_ari_image", "fg_iou", "landmark_error")   # history columns, when scored
WEIGHT_EXPONENTS = (-3, 5)       # the sliders' range, 10^-3 .. 10^5: the papers' weights span 0.1 .. 10^4


class _Stopped(Exception):
    """Raised from the training callback after Stop: ends the run, keeps the last finished result."""


def figure_png(fig) -> bytes:
    """A matplotlib :class:`~matplotlib.figure.Figure` as PNG bytes, without pyplot (safe off the main
    thread, where the explorer trains)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return buffer.getvalue()


def loss_curve_png(records: Sequence[Mapping[str, float]], terms: Sequence[str], *, steps: Optional[int] = None) -> bytes:
    """The live loss curve: one line per loss term present in ``records`` (``model.history``) and the
    weighted total, log scale, as PNG bytes (drawn by :func:`partlab.viz.draw_loss_curves`, without pyplot)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2, 2.4))
    ax = fig.add_subplot()
    shown = [name for name in ["loss", *terms]                    # a log axis cannot show a term that is never > 0
             if any(math.isfinite(y) and y > 0 for y in (r.get(name, math.nan) for r in records))]
    viz.draw_loss_curves(ax, records, shown, labels={"loss": "total (weighted)"}, marker="o", markersize=2.5)
    ax.set_yscale("log")
    if steps:
        ax.set_xlim(0, steps)
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    return figure_png(fig)


class WeightExplorer(_OutputWidget):
    """Re-train a method with chosen loss weights and show the result (see the module docstring).

    Args:
        train: the training set of the method's setup (e.g. :func:`partlab.methods.scops.scops_quick_setup`).
        info: its ``info`` (``"method"``, model settings, fit settings, default weights by term).
        test: a stacked test split (:func:`partlab.evaluation.benchmark_splits`) with its train split
            given as ``train_eval`` (landmark regression); without ``train_eval`` no landmark error.
        steps: training steps per click.
        live: a click trains in a background thread, so that the widget shows the progress, a live loss
            curve (every ``update_every`` steps) and a Stop button; ``False``: the click blocks until done.
        history_path: a CSV file the history is saved to after every run and reloaded from when the
            explorer is built (it survives a kernel restart); ``None``: the history lives in memory only.

    Attributes:
        terms: the method's weighted loss terms (one slider each), from the registry.
        notes: ``{term: "what it is, paper and equation"}`` (the class's ``TERM_NOTES``), shown beside each slider.
        last_scores: the benchmark scores of the last finished run (``None`` before the first).
        last_model: the last trained model.
        history: one row per finished run: ``run``, ``lambda_<term>`` for each term, the scores.
    """

    def __init__(self, train, info: dict, test: Mapping, *, category: Optional[str] = None, steps: int = 100,
                 train_eval: Optional[Mapping] = None, n_show: int = 6, live: bool = True, update_every: int = 5,
                 history_path=None):
        import threading

        from partlab.methods.registry import get_method

        self.entry = get_method(info["method"])
        self.terms = self.entry.weighted_terms
        self.notes = {term: getattr(self.entry.cls, "TERM_NOTES", {}).get(term, term) for term in self.terms}
        self.train, self.info, self.test, self.train_eval = train, info, test, train_eval
        self.category, self.steps, self.n_show = category, int(steps), int(n_show)
        self.live, self.update_every = bool(live), max(1, int(update_every))
        self.defaults = {term: float(info["weights"][term]) for term in self.terms}
        self.last_scores: Optional[dict] = None
        self.last_model = None
        self.history: list = []
        self.history_path = history_path
        self.message = ""
        self._widgets = None
        self._thread = None
        self._stop = threading.Event()
        if history_path is not None and Path(history_path).is_file():
            try:
                self.load_history(history_path)
                self.message = f"{len(self.history)} earlier runs reloaded from {history_path}"
            except ValueError as exc:
                self.message = str(exc)

    # -- the widgets ---------------------------------------------------------------------------------
    def _build(self):
        import ipywidgets as w

        width = max(len(f"lambda_{term}") for term in self.terms) + 1          # no label cut short
        style = {"description_width": f"{width}ch"}
        rows, self._sliders, self._boxes, self._typed_boxes = [], {}, {}, {}
        for term in self.terms:
            default = self.defaults[term]
            slider = w.FloatLogSlider(value=default if default > 0 else 1.0, base=10, min=WEIGHT_EXPONENTS[0],
                                      max=WEIGHT_EXPONENTS[1], step=0.1, description=f"lambda_{term}", readout=False,
                                      continuous_update=False, style=style,
                                      layout=w.Layout(width=f"{width + 22}ch", flex="0 0 auto"),
                                      tooltip=self.notes[term])
            typed = w.Text(value=f"{slider.value:.3g}", continuous_update=False, layout=w.Layout(width="7em", flex="0 0 auto"),
                           tooltip=f"type a weight in {10.0 ** WEIGHT_EXPONENTS[0]:g} .. {10.0 ** WEIGHT_EXPONENTS[1]:g}")
            slider.observe(lambda change, t=typed: setattr(t, "value", f"{change['new']:.3g}"), names="value")
            typed.observe(lambda change, k=term: self._typed(k, change["new"]), names="value")
            box = w.Checkbox(value=default > 0, description="on", indent=False, layout=w.Layout(width="4em", flex="0 0 auto"))
            note = w.HTML(f'<span style="color:#57606a">{html.escape(self.notes[term])}</span>', layout=w.Layout(flex="1 1 auto"))
            note.add_class("partlab-term-note")
            self._sliders[term], self._boxes[term], self._typed_boxes[term] = slider, box, typed
            rows.append(w.HBox([slider, typed, box, note]))
        self._button = w.Button(description=self._idle_label(), button_style="primary", layout=w.Layout(width="auto"))
        self._stop_button = w.Button(description="stop", disabled=True, layout=w.Layout(width="auto"))
        self._progress = w.IntProgress(value=0, min=0, max=self.steps, layout=w.Layout(width="16em"))
        self._status = w.HTML(self._status_html(self.message, error="does not parse" in self.message))
        self._curve = w.Image(format="png", layout=w.Layout(display="none"))
        self._result = w.HTML()
        self._parts = w.Image(format="png", layout=w.Layout(display="none"))
        self._output = w.VBox([self._result, self._parts])
        self._table = w.HTML()
        options = list(self._metric_columns()) or list(HISTORY_METRICS)
        self._metric = w.Dropdown(options=options, value=options[0], description="metric", layout=w.Layout(width="auto"))
        self._against = w.Dropdown(options=[f"lambda_{t}" for t in self.terms], description="against",
                                   layout=w.Layout(width="auto"))
        self._plot = w.Image(format="png", layout=w.Layout(display="none"))
        self._path = w.Text(value=str(self.history_path or "explorer_history.csv"), description="CSV",
                            layout=w.Layout(width="28em"))
        save, load = w.Button(description="save history"), w.Button(description="load history")
        self._button.on_click(lambda _: self.start())
        self._stop_button.on_click(lambda _: self.stop())
        save.on_click(lambda _: self._guarded(lambda: self.save_history(self._path.value), "saved"))
        load.on_click(lambda _: self._guarded(lambda: self.load_history(self._path.value), "loaded"))
        for dropdown in (self._metric, self._against):
            dropdown.observe(lambda _: self._show_history(), names="value")
        history = w.VBox([w.HTML("<b>history</b> (one row per run; the best of each column in bold)"), self._table,
                          w.HBox([self._metric, self._against]), self._plot, w.HBox([self._path, save, load])])
        self._widgets = w.VBox(rows + [w.HBox([self._button, self._stop_button, self._progress]), self._status,
                                       self._curve, self._output, history])
        # stable CSS classes: the browser test (tests/test_browser.py) finds the explorer by them
        self._widgets.add_class("partlab-weight-explorer")
        self._button.add_class("partlab-train-button")
        self._stop_button.add_class("partlab-stop-button")
        self._status.add_class("partlab-explorer-status")
        self._curve.add_class("partlab-live-curve")
        self._output.add_class("partlab-explorer-output")
        self._table.add_class("partlab-explorer-history")
        self._plot.add_class("partlab-history-plot")
        self._show_history()
        if self.last_scores is not None:
            self._show_result(*self._last_shown)
        return self._widgets

    def _typed(self, term: str, text: str) -> None:
        """A weight typed into the box beside a slider: set the slider, or say why not and show its value."""
        slider = self._sliders[term]
        low, high = 10.0 ** WEIGHT_EXPONENTS[0], 10.0 ** WEIGHT_EXPONENTS[1]
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not low <= value <= high:
            self._say(f"lambda_{term}: {text!r} is not a weight in {low:g} .. {high:g} (untick 'on' for 0); "
                      f"it stays {slider.value:.3g}", error=True)
            self._typed_boxes[term].value = f"{slider.value:.3g}"
            return
        if abs(value - slider.value) > 1e-9 * value:
            slider.value = value

    def _idle_label(self) -> str:
        return f"train ({self.steps} steps)"

    @staticmethod
    def _status_html(text: str, error: bool = False) -> str:
        colour = "#cf222e" if error else "#1f2328"
        return f'<span style="color:{colour}">{html.escape(text)}</span>' if text else ""

    def _say(self, text: str, error: bool = False) -> None:
        self.message = text
        if self._widgets is not None:
            self._status.value = self._status_html(text, error)
        elif text:
            print(text)

    def _guarded(self, action, done: str) -> None:
        try:
            action()
            self._say(f"history {done}: {len(self.history)} runs ({self._path.value})")
        except (OSError, ValueError) as exc:
            self._say(str(exc), error=True)

    def weights(self) -> dict:
        """The weights the widgets show, by term (0 for a term whose box is unticked); defaults before
        :meth:`display`."""
        if self._widgets is None:
            return dict(self.defaults)
        return {term: (self._sliders[term].value if self._boxes[term].value else 0.0) for term in self.terms}

    def _check(self, weights: Optional[Mapping[str, float]]) -> dict:
        chosen = dict(self.weights() if weights is None else dict(self.defaults, **weights))
        bad = [k for k in chosen if k not in self.terms or not isinstance(chosen[k], (int, float))
               or not (chosen[k] >= 0 and math.isfinite(chosen[k]))]
        if bad:
            raise ValueError(f"weights must be finite and >= 0 and named in {list(self.terms)}; got {bad}")
        return {k: float(v) for k, v in chosen.items()}

    # -- training ------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether a background run is going."""
        return self._thread is not None and self._thread.is_alive()

    def run(self, weights: Optional[Mapping[str, float]] = None) -> dict:
        """Train with ``weights`` by term (default: the widgets' values) in this thread, score on the test
        split, show it, add a history row; returns the scores. What the button does, callable from code."""
        if self.running:
            raise RuntimeError("a run is going; wait for it or click stop")
        chosen = self._check(weights)
        return self._finish(chosen, self._train(chosen))

    def start(self, weights: Optional[Mapping[str, float]] = None) -> None:
        """What the button does: :meth:`run` in a background thread (``live``), so that the widget shows the
        progress, the live loss curve and the Stop button while it trains. Problems become one message in
        the widget, and the controls come back."""
        import threading

        if self.running:
            self._say("a run is going: wait for it or click stop", error=True)
            return
        try:
            chosen = self._check(weights)
        except ValueError as exc:
            self._say(str(exc), error=True)
            return
        self._stop.clear()
        self._set_running(True)
        if not self.live:
            self._job(chosen)
            return
        self._thread = threading.Thread(target=self._job, args=(chosen,), name="partlab-explorer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the current run at its next record; the last finished result stays."""
        if self.running:
            self._stop.set()
            self._say("stopping ...")

    def _job(self, chosen: dict) -> None:
        try:
            scores = self._finish(chosen, self._train(chosen))
            self._say(f"run {len(self.history)} done: " + ", ".join(f"{k} {scores[k]:.3f}" for k in
                                                                  self._metric_columns() if k in scores))
        except _Stopped as stopped:
            self._say(f"stopped at step {stopped.args[0]} of {self.steps}; the last finished result is kept")
        except Exception as exc:                         # one readable message in the widget, not a traceback
            self._say(f"the run failed: {type(exc).__name__}: {exc}", error=True)
        finally:
            self._set_running(False)

    def _set_running(self, running: bool) -> None:
        if self._widgets is None:
            return
        self._button.disabled = running
        self._button.description = "starting ..." if running else self._idle_label()
        self._stop_button.disabled = not running
        for widget in (*self._sliders.values(), *self._boxes.values(), *self._typed_boxes.values()):
            widget.disabled = running
        if running:
            self._progress.value = 0
            self._curve.layout.display = "none"                # the live curve is this run's, from its first record
            self._say("training ...")

    def _train(self, chosen: dict):
        from partlab.methods.registry import train_variants

        records: list = []

        def callback(step: int, record: dict) -> None:
            if self._stop.is_set():
                raise _Stopped(step)
            records.append(record)
            if self._widgets is not None:
                self._progress.value = step
                self._button.description = f"training {step}/{self.steps}"
                self._curve.value = loss_curve_png(records, self.terms, steps=self.steps)
                self._curve.layout.display = None

        return train_variants(self.entry.name, {"explorer": chosen}, self.train, self.info, max_steps=self.steps,
                              progress=False, callback=callback,
                              log_every=max(1, min(self.update_every, self.steps)))["explorer"]

    def _finish(self, chosen: dict, model) -> dict:
        device = self.info["fit"].get("device", "cpu")
        scores, pred = evaluation.score_model(model, self.train_eval or self.test, self.test,
                                              category=self.category, device=device)
        if self.train_eval is None:
            scores.pop("landmark_error", None)
        self.last_model, self.last_scores = model, scores
        self.history.append({"run": len(self.history) + 1, **{f"lambda_{t}": chosen[t] for t in self.terms},
                             **{k: float(v) for k, v in scores.items()}})
        if self.history_path is not None:
            try:
                self.save_history(self.history_path)
            except OSError as exc:
                self._say(f"the history could not be saved to {self.history_path}: {exc}", error=True)
        self._last_shown = (chosen, scores, pred)
        self._show_result(chosen, scores, pred)
        self._show_history()
        return scores

    # -- results and history ---------------------------------------------------------------------------
    def _show_result(self, chosen: dict, scores: dict, pred: dict) -> None:
        n = min(self.n_show, len(self.test["image"]))
        fig = viz.show_parts(self.test["image"][:n], pred["labels"][:n], ncols=n)
        if self._widgets is None:                                # headless: into the notebook
            import matplotlib.pyplot as plt
            from IPython.display import display

            print("weights:", {k: round(v, 4) for k, v in chosen.items()})
            print(evaluation.format_table({"explorer": scores}))
            display(fig)
            plt.close(fig)
            return
        import matplotlib.pyplot as plt

        png = figure_png(fig)
        plt.close(fig)
        rows = "".join(f"<td>{v:.3f}</td>" for v in scores.values())
        self._result.value = (f"<div>weights: {html.escape(str({k: round(v, 4) for k, v in chosen.items()}))}</div>"
                              f"<table class='partlab-scores'><tr>{''.join(f'<th>{html.escape(k)}</th>' for k in scores)}"
                              f"</tr><tr>{rows}</tr></table>")
        self._parts.value = png
        self._parts.layout.display = None

    def _metric_columns(self) -> list:
        seen = [k for row in self.history for k in row if not k.startswith("lambda_") and k != "run"]
        ordered = [m for m in HISTORY_METRICS if m in seen] + [m for m in dict.fromkeys(seen) if m not in HISTORY_METRICS]
        return ordered

    def history_table(self) -> str:
        """The history as an HTML table: weights and :data:`HISTORY_METRICS`, the best of each metric in bold."""
        if not self.history:
            return "<i>no runs yet</i>"
        metrics = [m for m in HISTORY_METRICS if any(m in row for row in self.history)]
        columns = ["run", *[f"lambda_{t}" for t in self.terms], *metrics]
        best = {}
        for m in metrics:
            values = [row[m] for row in self.history if isinstance(row.get(m), float) and math.isfinite(row[m])]
            if values:
                best[m] = (max if evaluation.HIGHER_IS_BETTER.get(m, True) else min)(values)
        head = "".join(f"<th>{html.escape(c)}{'' if c not in best else (' ↑' if evaluation.HIGHER_IS_BETTER.get(c, True) else ' ↓')}</th>"
                       for c in columns)
        body = []
        for row in self.history:
            cells = []
            for c in columns:
                value = row.get(c, float("nan"))
                text = str(int(value)) if c == "run" else f"{value:.3g}" if c.startswith("lambda_") else f"{value:.3f}"
                cells.append(f"<td><b>{text}</b></td>" if c in best and value == best[c] else f"<td>{text}</td>")
            body.append(f"<tr>{''.join(cells)}</tr>")
        return f"<table class='partlab-history'><tr>{head}</tr>{''.join(body)}</table>"

    def history_plot_png(self, metric: str, against: str) -> Optional[bytes]:
        """``metric`` against the weight ``against`` (``"lambda_<term>"``, log scale) over the runs, as PNG."""
        from matplotlib.figure import Figure

        points = [(row[against], row[metric]) for row in self.history if against in row and metric in row]
        if not points:
            return None
        fig = Figure(figsize=(4.2, 2.6))
        ax = fig.add_subplot()
        xs = [x if x > 0 else 1e-3 for x, _ in points]                   # a term switched off: at the axis' left
        ax.plot(xs, [y for _, y in points], "o")
        for i, (x, y) in enumerate(zip(xs, (y for _, y in points))):
            ax.annotate(str(i + 1), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xscale("log")
        ax.set(xlabel=f"{against} (0 drawn at 1e-3)", ylabel=metric)
        ax.grid(alpha=0.3)
        return figure_png(fig)

    def _show_history(self) -> None:
        if self._widgets is None:
            return
        self._table.value = self.history_table()
        columns = self._metric_columns()
        if columns and list(self._metric.options) != columns:
            current = self._metric.value
            self._metric.options = columns
            self._metric.value = current if current in columns else columns[0]
        png = self.history_plot_png(self._metric.value, self._against.value)
        if png is not None:
            self._plot.value = png
            self._plot.layout.display = None

    def save_history(self, path) -> Path:
        """Write the history as CSV (one row per run), atomically."""
        import csv

        from partlab.utils import atomic_write

        columns = list(dict.fromkeys(k for row in self.history for k in row))

        def write(handle) -> None:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.history)

        return atomic_write(path, write)

    def load_history(self, path) -> list:
        """Read a history CSV written by :meth:`save_history` (this method's weights); a file that does not
        parse raises ``ValueError`` saying why, and the history so far is kept."""
        import csv

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"no history file at {path}")
        try:
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            needed = {"run", *(f"lambda_{t}" for t in self.terms)}
            if not rows or not needed <= set(rows[0]):
                raise ValueError(f"its columns must include {sorted(needed)}")
            history = [{k: (int(float(v)) if k == "run" else float(v)) for k, v in row.items() if v not in ("", None)}
                       for row in rows]
        except (ValueError, csv.Error, UnicodeDecodeError) as exc:
            raise ValueError(f"the history file {path} does not parse ({exc}); the history so far is kept") from None
        self.history = history
        self._show_history()
        return history


def weight_explorer(train, info: dict, test: Mapping, *, category: Optional[str] = None, steps: int = 100,
                    train_eval: Optional[Mapping] = None, run_now: bool = True, live: bool = True,
                    history_path=None) -> WeightExplorer:
    """Build the loss-weight explorer (:class:`WeightExplorer`); ``run_now`` trains once with the default
    weights right away (a headless run thereby exercises exactly what the button does)."""
    explorer = WeightExplorer(train, info, test, category=category, steps=steps, train_eval=train_eval, live=live,
                              history_path=history_path)
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
