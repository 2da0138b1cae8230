"""Reading a study's results back: per-stage status, the best trial, and a pandas export."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import math
from pathlib import Path
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
import pandas as pd

from hpsearch.coordination import live_runs
from hpsearch.errors import HpsearchError
from hpsearch.objective import ATTR_HOST, ATTR_PID
from hpsearch.space import Space, describe, parse_space
from hpsearch.spec import StageSpec, StudySpec
from hpsearch.stages import ATTR_ENDED, ATTR_SPACE, best_trial
from hpsearch.storage import GRACE_S, existing_study_names

EXPORT_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class StageStatus:
    stage: StageSpec
    study_name: str
    started: bool
    counts: Counter[TrialState]
    best: FrozenTrial | None
    space: Mapping[str, Any] | None = None  # the space the stage searched, as stored (study-file format)
    ended: str | None = None  # why it ended before its budget, if it did

    @property
    def finished(self) -> int:
        return self.counts[TrialState.COMPLETE] + self.counts[TrialState.PRUNED]


def stage_studies(spec: StudySpec, storage: optuna.storages.BaseStorage) -> list[tuple[StageSpec, optuna.Study | None]]:
    """Each stage with its Optuna study, or ``None`` for a stage that has not started."""
    names = existing_study_names(storage)
    return [
        (stage, optuna.load_study(study_name=spec.study_name(stage), storage=storage)
         if spec.study_name(stage) in names else None)
        for stage in spec.stages
    ]


def status(spec: StudySpec, storage: optuna.storages.BaseStorage) -> list[StageStatus]:
    rows = []
    for stage, study in stage_studies(spec, storage):
        trials = study.get_trials(deepcopy=False) if study else []
        attrs = study.user_attrs if study else {}
        ended = attrs.get(ATTR_ENDED)
        rows.append(StageStatus(stage, spec.study_name(stage), study is not None,
                                Counter(t.state for t in trials), best_trial(study) if study else None,
                                attrs.get(ATTR_SPACE), ended.get("reason") if isinstance(ended, dict) else None))
    return rows


@dataclass(frozen=True)
class LiveProcess:
    """A process working on the study now: a registered run, or the owner of RUNNING trials."""

    host: str
    pid: int
    stage: str
    running: int  # its RUNNING trials
    heartbeat_age_s: float | None  # since its last heartbeat; None: not a registered run (an older hpsearch)


def live_processes(spec: StudySpec, storage: optuna.storages.BaseStorage) -> list[LiveProcess]:
    """The runs working on ``spec`` now, with their RUNNING trials, registered runs first."""
    running: Counter[tuple[str, int]] = Counter()
    stage_of: dict[tuple[str, int], str] = {}
    for stage, study in stage_studies(spec, storage):
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if study else []:
            owner = (str(trial.user_attrs.get(ATTR_HOST, "?")), int(trial.user_attrs.get(ATTR_PID, -1)))
            running[owner] += 1
            stage_of[owner] = stage.name
    now = time.time()
    found = []
    for run in live_runs(storage.engine, spec.name, GRACE_S):  # type: ignore[attr-defined]
        owner = (run.host, run.pid)
        found.append(LiveProcess(run.host, run.pid, run.stage or "-", running.pop(owner, 0), max(0.0, now - run.seen_at)))
    found.extend(LiveProcess(host, pid, stage_of[(host, pid)], n, None) for (host, pid), n in sorted(running.items()))
    return found


def format_processes(processes: Sequence[LiveProcess]) -> str:
    """A plain-text table of ``processes``; one line saying there are none when there are none."""
    if not processes:
        return "runs working on it now: none"
    rows = [("host", "pid", "stage", "running", "last heartbeat")]
    rows += [(p.host, str(p.pid), p.stage, str(p.running),
              "-" if p.heartbeat_age_s is None else f"{p.heartbeat_age_s:.0f} s ago") for p in processes]
    return "runs working on it now:\n" + _table(rows)


def space_changes(original: Space, stored: Mapping[str, Any]) -> list[str]:
    """``name before -> after`` for every parameter a stage's stored space changed or dropped."""
    derived = {p.name: p for p in parse_space(stored, "stored space")}
    changes = []
    for p in original:
        after = derived.get(p.name)
        if after is None:
            changes.append(f"{p.name} {describe(p)} -> (never active)")
        elif after != p:
            changes.append(f"{p.name} {describe(p)} -> {describe(after)}")
    return changes


def format_spaces(spec: StudySpec, rows: Sequence[StageStatus]) -> str:
    """Per started stage, its parameters before (as written) and after narrowing; empty if no stage narrowed."""
    lines = []
    for r in rows:
        changes = space_changes(spec.space, r.space) if r.space is not None else []
        if changes:
            lines.append(f"space of {r.stage.name} (as written -> searched):")
            lines.extend(f"  {c}" for c in changes)
    return "\n".join(lines)


def overall_best(spec: StudySpec, storage: optuna.storages.BaseStorage) -> tuple[StageSpec, FrozenTrial]:
    """The best complete trial over all stages."""
    candidates = [(s.stage, s.best) for s in status(spec, storage) if s.best is not None]
    if not candidates:
        raise HpsearchError(f"study {spec.name} has no complete trial yet; run: hpsearch run STUDY.yaml")
    sign = -1.0 if spec.maximize else 1.0
    return min(candidates, key=lambda c: sign * c[1].value)  # type: ignore[operator]


def best_record(spec: StudySpec, storage: optuna.storages.BaseStorage) -> dict[str, Any]:
    """``{"stage", "trial", "value", "params", "metrics"}`` of the best trial, ready for JSON."""
    stage, trial = overall_best(spec, storage)
    names = trial.user_attrs.get("metrics", [])
    return {
        "stage": stage.name,
        "trial": trial.number,
        "value": trial.value,
        "params": trial.params,
        "metrics": {k: trial.user_attrs[k] for k in names if k in trial.user_attrs},
    }


def trials_frame(spec: StudySpec, storage: optuna.storages.BaseStorage) -> pd.DataFrame:
    """One row per trial of every started stage, with a ``stage`` column first."""
    frames = []
    for stage, study in stage_studies(spec, storage):
        if study is None:
            continue
        frame = study.trials_dataframe(multi_index=False)
        frame.insert(0, "stage", stage.name)
        frames.append(frame)
    if not frames:
        return pd.DataFrame({"stage": []})
    return pd.concat(frames, ignore_index=True)


def export(spec: StudySpec, storage: optuna.storages.BaseStorage, out: str | Path) -> int:
    """Write every trial to ``out`` (.csv or .parquet); returns the number of rows."""
    out = Path(out)
    if out.suffix not in EXPORT_SUFFIXES:
        raise HpsearchError(f"--out {out}: unknown file type {out.suffix or '(none)'!r}; use one of: {', '.join(EXPORT_SUFFIXES)}")
    frame = trials_frame(spec, storage)
    for column in frame.columns:
        if frame[column].map(lambda v: isinstance(v, (list, dict))).any():
            frame[column] = frame[column].map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
    return len(frame)


def format_status(rows: Sequence[StageStatus], direction: str) -> str:
    """A plain-text table: one line per stage with trial counts, best value and best parameters."""
    header = ("stage", "study", "complete", "pruned", "failed", "running", "best " + direction[:3], "best params")
    lines: list[tuple[str, ...]] = [header]
    for r in rows:
        best = "-" if r.best is None else f"{r.best.value:.6g} (#{r.best.number})"
        params = "-" if r.best is None else ", ".join(f"{k}={_short(v)}" for k, v in r.best.params.items())
        if not r.started:
            lines.append((r.stage.name, r.study_name, "-", "-", "-", "-", "not started", "-"))
            continue
        lines.append((r.stage.name, r.study_name, *(str(r.counts[s]) for s in
                      (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)), best, params))
    return _table(lines)


def _table(lines: Sequence[tuple[str, ...]]) -> str:
    """Columns padded to their widest cell; the last one is not padded."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + "  " + line[-1] for line in lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
