"""``hpsearch report``: a study's results as one self-contained HTML file, readable with no server
and no internet.

plotly.js is inlined once in the page's head and every figure is a ``<div>`` with its data, so the
file opens from disk anywhere. It holds, per stage: trials by state and stop reason, the optimization
history, the searched range of each numeric parameter (as written, then as each stage narrowed it),
parameter importances, parallel coordinates, slices of the most important parameters, and the
learning curves of every trial; and the top trials over all stages with their metrics.

It only reads: the storage is opened as ``hpsearch status`` opens it, and a stage not started or
with no complete trial gets a note in place of its figures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
import datetime
import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import __version__, lr_range_stage, results
from hpsearch import report_figures as figures
from hpsearch.errors import HpsearchError
from hpsearch.retrying import RetryingStorage
from hpsearch.space import Param, parse_space
from hpsearch.spec import StudySpec
from hpsearch.storage import mask_url, resolve_url

if TYPE_CHECKING:
    import plotly.graph_objects as go

PLOTLY_MISSING = "hpsearch report needs plotly: pip install 'hpsearch[report]'"
TOP = 10  # rows of the top-trials table
SLICED = 3  # parameters in a stage's slice plot, the most important first
STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
REASONS = ("completed", "early_stopped", "pruned", "diverged")


class ReportError(HpsearchError):
    """The report cannot be made: plotly is missing, or its folder cannot be written."""


@dataclass(frozen=True)
class StageData:
    """One stage as the report reads it: its status, its Optuna study and trials (none if not started)."""

    status: results.StageStatus
    study: optuna.Study | None
    trials: tuple[FrozenTrial, ...]

    @property
    def name(self) -> str:
        return self.status.stage.name


def require_plotly() -> None:
    try:
        import plotly  # noqa: F401
    except ImportError:
        raise ReportError(PLOTLY_MISSING) from None


def write_report(spec: StudySpec, storage: RetryingStorage, out_dir: str | Path) -> Path:
    """Write ``out_dir/index.html`` (creating the folder) and return its path."""
    page = render(spec, storage)
    path = Path(out_dir) / "index.html"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"--out {out_dir}: cannot write the report: {exc.strerror or exc}") from None
    return path


def render(spec: StudySpec, storage: RetryingStorage) -> str:
    """The report of ``spec`` as one HTML page."""
    require_plotly()
    from plotly.offline import get_plotlyjs

    # An lr_range stage has no trials: its own section, not empty figures and rows of zeros.
    ranges = {s.name for s in spec.stages if s.kind == lr_range_stage.KIND}
    stages = [s for s in gather(spec, storage) if s.name not in ranges]
    curves = results.curves_frame(spec, storage)
    started = [s for s in stages if s.study is not None]
    sections = [
        ("counts", "Trials by state and stop reason", _counts(stages)),
        ("top", f"Top {TOP} trials", _top(spec, stages)),
        ("history", "Optimization history", _per_stage("history", stages, lambda s, study: [figures.history(
            study, s.trials, s.name, spec.metric)])),
        ("narrowing", "Coarse to fine: the searched range of each parameter", _narrowing(spec, stages)),
        *([("lr-range", "Learning-rate range test", "\n".join(
            _note(line) for line in lr_range_stage.format_status(spec, storage).splitlines()))]
          if ranges else []),
        ("importance", "Parameter importances, parallel coordinates and slices", _per_stage(
            "analysis", stages, lambda s, study: _analysis(s, study, spec.metric))),
        ("curves", "Learning curves", _per_stage("curves", stages, lambda s, study: [figures.curves(
            curves[curves["stage"] == s.name], {t.number: figures.ending(t) for t in s.trials}, s.name, spec.metric)])),
    ]
    note = "" if started else _note("No stage has started yet: run hpsearch run STUDY.yaml, then make the report again.")
    return _page(spec, note, sections, get_plotlyjs())


def gather(spec: StudySpec, storage: RetryingStorage) -> list[StageData]:
    found = []
    for status in results.status(spec, storage):
        if not status.started:
            found.append(StageData(status, None, ()))
            continue
        study = optuna.load_study(study_name=status.study_name, storage=storage)
        found.append(StageData(status, study, tuple(study.get_trials(deepcopy=False))))
    return found


Shown = list["go.Figure | figures.Note"]


def _per_stage(key: str, stages: Sequence[StageData], make: Callable[[StageData, optuna.Study], Shown]) -> str:
    """The figures ``make`` draws of each started stage; a note for each stage not started."""
    parts = []
    for n, s in enumerate(stages):
        if s.study is None:
            parts.append(_note(f"{s.name}: not started."))
            continue
        parts += [_figure(f, f"{key}-{n}-{i}") for i, f in enumerate(make(s, s.study))]
    return "\n".join(parts)


def _analysis(stage: StageData, study: optuna.Study, metric: str) -> Shown:
    found = figures.importances(study, stage.trials, stage.name)
    if isinstance(found, figures.Note):
        shown: Shown = [found]
        # Without importances, slice the parameters as the stage's trials have them.
        top = list(dict.fromkeys(name for t in figures.complete(stage.trials) for name in t.params))[:SLICED]
    else:
        shown = [figures.importance_bars(found, stage.name)]
        top = list(found)[:SLICED]
    return [*shown, figures.parallel(study, stage.trials, stage.name, metric),
            figures.slices(study, stage.trials, stage.name, metric, top)]


def _narrowing(spec: StudySpec, stages: Sequence[StageData]) -> str:
    params = figures.numeric_params(spec.space)
    if not params:
        return _note("The space has no numeric parameter.")
    trials = {s.name: s.trials for s in stages}
    parts = []
    for n, param in enumerate(params):
        rows: list[tuple[str, Param | str | None]] = [("as written", param)]
        rows += [(s.name, _stored(s, param.name)) for s in stages]
        parts.append(_figure(figures.narrowing(param, rows, trials), f"narrowing-{n}"))
    return "\n".join(parts)


def _stored(stage: StageData, name: str) -> Param | str:
    """``name`` in the space the stage searched, or why it has none."""
    if stage.study is None:
        return "not started"
    if stage.status.space is None:
        return "space not recorded"
    found = next((p for p in parse_space(stage.status.space, f"{stage.name} stored space") if p.name == name), None)
    return found if found is not None else "never active"


def _counts(stages: Sequence[StageData]) -> str:
    head = ["stage", "study", "trials", *(s.name.lower() for s in STATES), *REASONS, "ended early"]
    rows = []
    for s in stages:
        if s.study is None:
            rows.append([s.name, s.status.study_name, "not started", *[""] * (len(head) - 3)])
            continue
        states = Counter(t.state for t in s.trials)
        reasons = Counter(t.user_attrs.get("stop_reason") for t in s.trials)
        rows.append([s.name, s.status.study_name, str(len(s.trials)), *(str(states[x]) for x in STATES),
                     *(str(reasons[r]) for r in REASONS), s.status.ended or ""])
    return _table(head, rows)


def _top(spec: StudySpec, stages: Sequence[StageData]) -> str:
    sign = -1.0 if spec.maximize else 1.0
    # Stable: equal values keep stage order, then trial order (the order hpsearch best breaks ties in).
    ranked = sorted(((s.name, t) for s in stages for t in figures.complete(s.trials)),
                    key=lambda pair: sign * float(pair[1].value or 0.0))[:TOP]
    if not ranked:
        return _note("No complete trial yet.")
    params = [p.name for p in spec.space if any(p.name in t.params for _, t in ranked)]
    metrics = sorted({m for _, t in ranked for m in t.user_attrs.get("metrics", [])})
    head = ["rank", "stage", "trial", spec.metric, *params, *(f"best-epoch {m}" for m in metrics),
            "stop reason", "epochs"]
    rows = [[str(i), stage, str(t.number), t.value, *(t.params.get(p, "") for p in params),
             *(t.user_attrs.get(m, "") for m in metrics), t.user_attrs.get("stop_reason", ""),
             t.user_attrs.get("epochs_run", "")] for i, (stage, t) in enumerate(ranked, 1)]
    best_stage, best = ranked[0]
    summary = (f"<p>Best: stage <b>{_esc(best_stage)}</b>, trial #{best.number}, {_esc(spec.metric)} = "
               f"{_cell(best.value)} ({spec.direction}).</p>")
    return summary + _table(head, rows)


def _figure(item: go.Figure | figures.Note, div_id: str) -> str:
    if isinstance(item, figures.Note):
        return _note(item.text)
    body: str = item.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                             default_width="100%", config={"displaylogo": False, "responsive": True})
    return f'<div class="figure">{body}</div>'


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    header = "".join(f"<th>{_esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f'<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def _cell(value: Any) -> str:
    # Floats in short form, the full value in the tooltip (and in the page, for whoever checks it).
    if isinstance(value, float):
        return f'<td class="num" title="{value!r}">{value:.6g}</td>'
    return f"<td>{_esc(str(value))}</td>"


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def _page(spec: StudySpec, note: str, sections: Sequence[tuple[str, str, str]], plotlyjs: str) -> str:
    made = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    where = mask_url(resolve_url(spec.storage))
    nav = " · ".join(f'<a href="#{key}">{_esc(title)}</a>' for key, title, _ in sections)
    body = "\n".join(f'<section id="{key}"><h2>{_esc(title)}</h2>\n{content}\n</section>'
                     for key, title, content in sections)
    stages = ", ".join(s.name for s in spec.stages)
    return _TEMPLATE.format(
        title=_esc(f"hpsearch report: {spec.name}"), name=_esc(spec.name), plotlyjs=plotlyjs, nav=nav, note=note,
        body=body, meta=_esc(f"{spec.direction} {spec.metric} · stages {stages} · {where} · made {made} "
                             f"by hpsearch {__version__}"))


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 0 1.5em 3em; color: #222; }}
h1 {{ margin-bottom: 0.2em; }}
.meta {{ color: #666; margin-top: 0; }}
nav {{ margin: 1em 0; }}
section {{ margin-top: 2.5em; }}
table {{ border-collapse: collapse; font-size: 0.9em; }}
th, td {{ border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.note {{ color: #8a6d3b; background: #fcf8e3; padding: 0.5em 0.8em; border-radius: 4px; }}
.figure {{ margin: 1em 0; }}
</style>
<script type="text/javascript">{plotlyjs}</script>
</head>
<body>
<h1>{name}</h1>
<p class="meta">{meta}</p>
<nav>{nav}</nav>
{note}
{body}
</body>
</html>
"""
