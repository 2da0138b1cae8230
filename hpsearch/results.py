"""Reading a study's results back: per-stage status, the best trial, and a pandas export."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
import pandas as pd

from hpsearch.errors import HpsearchError
from hpsearch.spec import StageSpec, StudySpec
from hpsearch.stages import best_trial
from hpsearch.storage import existing_study_names

EXPORT_SUFFIXES = (".csv", ".parquet")


@dataclass(frozen=True)
class StageStatus:
    stage: StageSpec
    study_name: str
    started: bool
    counts: Counter[TrialState]
    best: FrozenTrial | None

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
        rows.append(StageStatus(stage, spec.study_name(stage), study is not None,
                                Counter(t.state for t in trials), best_trial(study) if study else None))
    return rows


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
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=False)) + "  " + line[-1] for line in lines)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
