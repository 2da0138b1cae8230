"""The figures of ``hpsearch report``: plotly figures of one stage's trials, or a note saying why there is none.

Each function takes trials already read (it never touches the storage) and returns a
``plotly.graph_objects.Figure``, or a :class:`Note` when the data cannot make the figure (no complete
trial yet, a single parameter to compare ...). Optuna's own plots are used where they fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import math
from typing import TYPE_CHECKING, Any
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.space import FloatParam, IntParam, Param, Space

if TYPE_CHECKING:
    import plotly.graph_objects as go


@dataclass(frozen=True)
class Note:
    """Why a figure is missing, shown in its place."""

    text: str


# How each way a trial ended is drawn among the learning curves.
CURVE_STYLES: dict[str, dict[str, Any]] = {
    "completed": {"color": "#1f77b4", "dash": "solid", "width": 1.5},
    "early_stopped": {"color": "#2ca02c", "dash": "solid", "width": 1.5},
    "pruned": {"color": "#7f7f7f", "dash": "dot", "width": 1.0},
    "diverged": {"color": "#d62728", "dash": "dash", "width": 1.5},
    "failed": {"color": "#000000", "dash": "dashdot", "width": 1.0},
    "running": {"color": "#ff7f0e", "dash": "solid", "width": 2.0},
}
# Tukey's "far out" fence: values further than this many interquartile ranges outside the middle half
# are runaways, left outside the learning curves' initial y range.
FENCE = 3.0


def complete(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state is TrialState.COMPLETE and t.value is not None]


def ending(trial: FrozenTrial) -> str:
    """How the trial ended, for the learning curves: its stop reason, else its state."""
    reason = trial.user_attrs.get("stop_reason")
    if isinstance(reason, str) and reason in CURVE_STYLES:
        return reason
    if trial.state is TrialState.FAIL:
        return "failed"
    if trial.state is TrialState.PRUNED:
        return "pruned"
    return "running" if trial.state in (TrialState.RUNNING, TrialState.WAITING) else "completed"


def history(study: optuna.Study, trials: Sequence[FrozenTrial], stage: str, metric: str) -> go.Figure | Note:
    """The metric of each complete trial in order, with the best so far (Optuna's plot)."""
    return _optuna_plot(optuna.visualization.plot_optimization_history, study, trials, stage, metric,
                        f"{stage}: {metric} per trial and best so far", 380)


def _optuna_plot(plot: Any, study: optuna.Study, trials: Sequence[FrozenTrial], stage: str, metric: str,
                 title: str, height: int) -> go.Figure | Note:
    """One of Optuna's plots of ``study`` (its experimental warnings quiet), titled; a note before any complete trial."""
    if not complete(trials):
        return Note(f"{stage}: no complete trial yet.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = plot(study, target_name=metric)
    fig.update_layout(title=title, height=height)
    return fig


def importances(study: optuna.Study, trials: Sequence[FrozenTrial], stage: str) -> dict[str, float] | Note:
    """fANOVA importances of the parameters that varied among the complete trials (seeded, so a report
    is the same when made again), or why they cannot be told."""
    done = complete(trials)
    if len(done) < 2:
        return Note(f"{stage}: importances need at least 2 complete trials, it has {len(done)}.")
    varied = [name for name in done[0].params
              if all(name in t.params for t in done) and len({repr(t.params[name]) for t in done}) > 1]
    if len(varied) < 2:
        which = f" ({varied[0]})" if varied else ""
        return Note(f"{stage}: {len(varied)} parameter{which} varied among its complete trials; "
                    "importances compare two or more.")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varied)
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # Optuna's refusals on degenerate trials
        return Note(f"{stage}: importances could not be computed: {exc}")
    return {name: float(value) for name, value in found.items()}


def importance_bars(found: Mapping[str, float], stage: str) -> go.Figure:
    import plotly.graph_objects as go

    names = list(found)[::-1]  # the most important on top
    fig = go.Figure(go.Bar(x=[found[n] for n in names], y=names, orientation="h",
                           text=[f"{found[n]:.2f}" for n in names], textposition="auto"))
    fig.update_layout(title=f"{stage}: parameter importances (fANOVA)", xaxis_title="importance",
                      height=160 + 28 * len(names), margin={"l": 140})
    return fig


def parallel(study: optuna.Study, trials: Sequence[FrozenTrial], stage: str, metric: str) -> go.Figure | Note:
    return _optuna_plot(optuna.visualization.plot_parallel_coordinate, study, trials, stage, metric,
                        f"{stage}: parallel coordinates", 420)


def slices(study: optuna.Study, trials: Sequence[FrozenTrial], stage: str, metric: str,
           params: Sequence[str]) -> go.Figure | Note:
    if not complete(trials):
        return Note(f"{stage}: no complete trial yet.")
    if not params:
        return Note(f"{stage}: no parameter to slice.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fig = optuna.visualization.plot_slice(study, params=list(params), target_name=metric)
    fig.update_layout(title=f"{stage}: {metric} against {', '.join(params)}", height=400)
    return fig


def narrowing(param: FloatParam | IntParam, rows: Sequence[tuple[str, Param | str | None]],
              trials: Mapping[str, Sequence[FrozenTrial]]) -> go.Figure:
    """The range of ``param`` per row (the written space, then each stage's stored one), over the
    written range, with each stage's trials as points on its row (complete coloured by value).

    ``rows``: (label, the parameter in that row's space, or a string saying why there is no range).
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    labels = [label for label, _ in rows]
    for y, (label, found) in enumerate(rows):
        if isinstance(found, (FloatParam, IntParam)):
            text = f"{label}: {found.low:.4g} .. {found.high:.4g}"
            fig.add_trace(go.Scatter(x=[found.low, found.high], y=[y, y], mode="lines+markers", showlegend=False,
                                     line={"width": 12, "color": "rgba(31,119,180,0.35)" if y else "rgba(0,0,0,0.2)"},
                                     marker={"symbol": "line-ns-open", "size": 18, "color": "#1f77b4"},
                                     hoverinfo="text", text=[text, text]))
        elif found is not None:
            why = found if isinstance(found, str) else f"not numeric here: {found}"
            fig.add_annotation(x=1.0, xref="paper", y=y, text=why, showarrow=False, xanchor="right",
                               font={"color": "#7f7f7f"})
        points = [t for t in trials.get(label, ()) if isinstance(t.params.get(param.name), (int, float))]
        if points:
            _trial_points(fig, param.name, points, y)
    fig.update_layout(title=f"{param.name}: searched range per stage", height=120 + 60 * len(rows),
                      yaxis={"tickvals": list(range(len(rows))), "ticktext": labels, "autorange": "reversed",
                             "range": [len(rows) - 0.5, -0.5]},
                      xaxis={"type": "log" if param.log else "linear", "title": param.name},
                      margin={"l": 110})
    return fig


def _trial_points(fig: go.Figure, name: str, points: Sequence[FrozenTrial], y: int) -> None:
    import plotly.graph_objects as go

    # A fixed spread around the row (golden-ratio steps, no randomness) keeps equal values apart.
    jitter = [0.25 * (((t.number * 0.618034) % 1.0) - 0.5) for t in points]
    done = [(t, j) for t, j in zip(points, jitter, strict=True) if t.state is TrialState.COMPLETE and t.value is not None]
    other = [(t, j) for t, j in zip(points, jitter, strict=True) if not (t.state is TrialState.COMPLETE and t.value is not None)]
    if done:
        fig.add_trace(go.Scatter(
            x=[t.params[name] for t, _ in done], y=[y + j for _, j in done], mode="markers", showlegend=False,
            marker={"size": 8, "color": [t.value for t, _ in done], "colorscale": "Viridis", "showscale": False},
            hoverinfo="text", text=[f"trial {t.number}: {t.value:.6g}" for t, _ in done]))
    if other:
        fig.add_trace(go.Scatter(
            x=[t.params[name] for t, _ in other], y=[y + j for _, j in other], mode="markers", showlegend=False,
            marker={"size": 7, "symbol": "x", "color": "#9e9e9e"},
            hoverinfo="text", text=[f"trial {t.number}: {ending(t)}" for t, _ in other]))


def curves(frame: Any, endings: Mapping[int, str], stage: str, metric: str) -> go.Figure | Note:
    """The learning curves of a stage (rows of ``results.curves_frame``), one colour and dash per way
    the trials ended (``endings``: trial number -> :func:`ending`)."""
    import plotly.graph_objects as go

    if frame.empty:
        return Note(f"{stage}: no trial has reported an epoch yet.")
    # One trace per way of ending, its trials separated by None (a break in the line): a figure of
    # thousands of trials stays a handful of traces.
    lines: dict[str, tuple[list[float | None], list[float | None], list[str]]] = {k: ([], [], []) for k in CURVE_STYLES}
    kept: list[float] = []
    for number, rows in frame.groupby("trial", sort=True):
        kind = endings.get(int(number), "completed")
        xs, ys, text = lines[kind if kind in lines else "completed"]
        values = [float(v) for v in rows[metric]]
        xs += [*map(float, rows["epoch"]), None]
        ys += [*(v if math.isfinite(v) else None for v in values), None]
        text += [f"trial {number}"] * len(values) + [""]
        if kind != "diverged":
            kept += [v for v in values if math.isfinite(v)]
    fig = go.Figure()
    for kind, (xs, ys, text) in lines.items():
        if xs:
            style = CURVE_STYLES[kind]
            # Markers too: a trial stopped after its first epoch is a single point, no line.
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=kind.replace("_", " "), line=style,
                                     marker={"size": 4, "color": style["color"]},
                                     connectgaps=False, hoverinfo="x+y+text", text=text))
    everything = [float(v) for v in frame[metric] if math.isfinite(float(v))]
    fig.update_layout(title=f"{stage}: {metric} per epoch, every trial", xaxis_title="epoch", yaxis_title=metric,
                      height=420, legend_title_text="ended")
    shown = y_range(kept or everything)
    if shown is not None:
        fig.update_yaxes(range=list(shown))
        if any(not shown[0] <= v <= shown[1] for v in everything):
            fig.add_annotation(text="y range cut to the curves that did not run away; double-click to see all",
                               xref="paper", yref="paper", x=1, y=1.08, showarrow=False, xanchor="right",
                               font={"size": 11, "color": "#7f7f7f"})
    return fig


def y_range(values: Sequence[float]) -> tuple[float, float] | None:
    """The learning curves' initial y range: the finite ``values`` (those of the trials that did not
    diverge) within Tukey's far-out fences, padded by 5%.

    Why a cut range and not a log y axis: a runaway curve reaches 1e10 and more, and a log axis
    would still spend most of its height on decades no other curve visits (and cannot show a metric
    that goes negative, such as r2). The diverged trials' values are left out of the range, and so are
    other runaway values beyond the fences; plotly's double-click still shows everything.
    """
    finite = sorted(v for v in values if math.isfinite(v))
    if not finite:
        return None
    q1, q3 = _quantile(finite, 0.25), _quantile(finite, 0.75)
    spread = q3 - q1
    low, high = max(finite[0], q1 - FENCE * spread), min(finite[-1], q3 + FENCE * spread)
    pad = 0.05 * (high - low) or 0.05 * abs(high) or 1.0
    return low - pad, high + pad


def _quantile(ordered: Sequence[float], q: float) -> float:
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def numeric_params(space: Space) -> list[FloatParam | IntParam]:
    """The ranges of ``space`` (typed as such, unlike :func:`hpsearch.space.numeric_params`)."""
    return [p for p in space if isinstance(p, (FloatParam, IntParam))]
