"""Reading a study's results back: per-stage status, the best trial, and the export of every trial.

Each answer is a few SQL queries whatever the number of trials: counts by state with GROUP BY, the
best trial as Optuna finds it (ORDER BY value LIMIT 1), the owners of RUNNING trials, and the export
in chunks (:mod:`hpsearch.export`). None of them writes: a read-only database file serves them all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
import copy
from dataclasses import dataclass
import json
from pathlib import Path
import time
from typing import TYPE_CHECKING, Any

from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
import sqlalchemy as sa

from hpsearch import artifacts
from hpsearch.artifacts import KeptModel
from hpsearch.coordination import live_runs
from hpsearch.errors import HpsearchError
from hpsearch.objective import ATTR_HOST, ATTR_PID, trial_seed
from hpsearch.outputs import writing
from hpsearch.retrying import RetryingStorage
from hpsearch.space import Space, describe, parse_space
from hpsearch.spec import StageSpec, StudySpec
from hpsearch.stages import ATTR_ENDED, ATTR_PRIOR, ATTR_SPACE
from hpsearch.storage import GRACE_S

if TYPE_CHECKING:
    import pandas as pd

EXPORT_SUFFIXES = (".csv", ".parquet")
_TRIALS = models.TrialModel.__table__
_USER_ATTRS = models.TrialUserAttributeModel.__table__


@dataclass(frozen=True)
class StageStatus:
    stage: StageSpec
    study_name: str
    started: bool
    counts: Counter[TrialState]
    best: FrozenTrial | None
    space: Mapping[str, Any] | None = None  # the space the stage searched, as stored (study-file format)
    ended: str | None = None  # why it ended before its budget, if it did
    prior: Mapping[str, Any] | None = None  # the earlier trials its sampler started from (stages.ATTR_PRIOR)

    @property
    def finished(self) -> int:
        return self.counts[TrialState.COMPLETE] + self.counts[TrialState.PRUNED]


def stage_study_ids(spec: StudySpec, storage: RetryingStorage) -> list[tuple[StageSpec, int | None]]:
    """Each stage with its Optuna study's id, or ``None`` for a stage that has not started."""
    found: list[tuple[StageSpec, int | None]] = []
    for stage in spec.stages:
        try:
            found.append((stage, storage.get_study_id_from_name(spec.study_name(stage))))
        except KeyError:  # no such study
            found.append((stage, None))
    return found


def status(spec: StudySpec, storage: RetryingStorage) -> list[StageStatus]:
    rows = []
    for stage, study_id in stage_study_ids(spec, storage):
        if study_id is None:
            rows.append(StageStatus(stage, spec.study_name(stage), False, Counter(), None))
            continue
        attrs = storage.get_study_user_attrs(study_id)
        ended = attrs.get(ATTR_ENDED)
        rows.append(StageStatus(stage, spec.study_name(stage), True, count_states(storage, study_id),
                                best_of(storage, study_id), attrs.get(ATTR_SPACE),
                                ended.get("reason") if isinstance(ended, dict) else None, attrs.get(ATTR_PRIOR)))
    return rows


def count_states(storage: RetryingStorage, study_id: int) -> Counter[TrialState]:
    """The study's trials by state: one GROUP BY on hpsearch's (study_id, state) index."""
    t = _TRIALS.c
    query = sa.select(t.state, sa.func.count()).where(t.study_id == study_id).group_by(t.state)

    def count() -> Counter[TrialState]:
        with storage.engine.connect() as conn:
            return Counter({state: n for state, n in conn.execute(query)})

    return storage.call_with_retries("count the trials", count)


def best_of(storage: RetryingStorage, study_id: int) -> FrozenTrial | None:
    """The best complete trial, as Optuna finds it in SQL; ``None`` when there is none."""
    try:
        return storage.get_best_trial(study_id)
    except ValueError:  # Optuna: no complete trial
        return None


@dataclass(frozen=True)
class LiveProcess:
    """A process working on the study now: a registered run, or the owner of RUNNING trials."""

    host: str
    pid: int
    stage: str
    running: int  # its RUNNING trials
    heartbeat_age_s: float | None  # since its last heartbeat; None: not a registered run (an older hpsearch)


def live_processes(spec: StudySpec, storage: RetryingStorage) -> list[LiveProcess]:
    """The runs working on ``spec`` now, with their RUNNING trials, registered runs first."""
    running: Counter[tuple[str, int]] = Counter()
    stage_of: dict[tuple[str, int], str] = {}
    for stage, study_id in stage_study_ids(spec, storage):
        for owner in running_owners(storage, study_id) if study_id is not None else []:
            running[owner] += 1
            stage_of[owner] = stage.name
    now = time.time()
    found = []
    for run in storage.call_with_retries("list the runs", live_runs, storage.engine, spec.name, GRACE_S):
        owner = (run.host, run.pid)
        found.append(LiveProcess(run.host, run.pid, run.stage or "-", running.pop(owner, 0), max(0.0, now - run.seen_at)))
    found.extend(LiveProcess(host, pid, stage_of[(host, pid)], n, None) for (host, pid), n in sorted(running.items()))
    return found


def running_owners(storage: RetryingStorage, study_id: int) -> list[tuple[str, int]]:
    """``(host, pid)`` of each RUNNING trial of the study (``("?", -1)`` where the trial does not say)."""
    t, a = _TRIALS.c, _USER_ATTRS.c
    owner_attr = sa.and_(a.trial_id == t.trial_id, a.key.in_((ATTR_HOST, ATTR_PID)))
    query = (sa.select(t.trial_id, a.key, a.value_json).select_from(_TRIALS.outerjoin(_USER_ATTRS, owner_attr))
             .where(t.study_id == study_id, t.state == TrialState.RUNNING))

    def read() -> list[tuple[str, int]]:
        attrs: dict[int, dict[str, Any]] = {}
        with storage.engine.connect() as conn:
            for trial_id, key, value_json in conn.execute(query):
                found = attrs.setdefault(trial_id, {})
                if key is not None:  # None: the trial has neither attribute (outer join)
                    found[key] = json.loads(value_json)
        return [(str(found.get(ATTR_HOST, "?")), int(found.get(ATTR_PID, -1))) for found in attrs.values()]

    return storage.call_with_retries("read the running trials", read)


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
        if isinstance(r.prior, Mapping):
            lines.append(f"sampler of {r.stage.name} started from {r.prior.get('trials', 0)} trial(s) of "
                         f"{r.prior.get('stage')} as history ({r.prior.get('note', '')})")
        changes = space_changes(spec.space, r.space) if r.space is not None else []
        if changes:
            # An lr_range stage searches nothing: what it stores is the space it hands on.
            what = "handed on" if r.stage.kind == "lr_range" else "searched"
            lines.append(f"space of {r.stage.name} (as written -> {what}):")
            lines.extend(f"  {c}" for c in changes)
    return "\n".join(lines)


def format_overrides(spec: StudySpec) -> str:
    """One line per stage that overrides ``train`` knobs: each one, and the study's value it replaces."""
    lines = []
    for stage in spec.stages:
        if stage.train:
            knobs = ", ".join(f"{k}={_short(v)} (study: {_short(spec.train.get(k, 'default'))})"
                              for k, v in stage.train.items())
            lines.append(f"train of {stage.name}: {knobs}")
    return "\n".join(lines)


def overall_best(spec: StudySpec, storage: RetryingStorage) -> tuple[StageSpec, FrozenTrial]:
    """The best complete trial over all stages."""
    candidates = []
    for stage, study_id in stage_study_ids(spec, storage):
        best = best_of(storage, study_id) if study_id is not None else None
        if best is not None:
            candidates.append((stage, best))
    if not candidates:
        raise HpsearchError(f"study {spec.name} has no complete trial yet; run: hpsearch run STUDY.yaml")
    sign = -1.0 if spec.maximize else 1.0
    return min(candidates, key=lambda c: sign * c[1].value)  # type: ignore[operator]


def best_record(spec: StudySpec, storage: RetryingStorage) -> dict[str, Any]:
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


# Keys of a study file that choose trials rather than train one: `best --config` leaves them out.
_SEARCH_KEYS = ("space", "stages", "sampler", "trials", "grid", "max_failures", "timeout", "pruner", "executor")


def best_config(spec: StudySpec, storage: RetryingStorage) -> dict[str, Any]:
    """A study file that trains exactly the best trial again: its parameters and training seed fixed
    under ``train:``, one stage of one trial, in a study of its own (``<name>-best``)."""
    stage, trial = overall_best(spec, storage)
    raw = {k: copy.deepcopy(v) for k, v in spec.resolved.items() if k not in _SEARCH_KEYS}
    train = dict(spec.stage_train(stage))  # the stage's overrides included
    seed = train.get("seed", trial_seed(spec.seed, trial.number))  # as objective.trial_config seeds the trial
    raw["name"] = f"{spec.name}-best"
    raw["train"] = {**train, **trial.params, "seed": seed}
    raw["stages"] = [{"name": "best", "sampler": "random", "trials": 1}]
    raw["executor"] = {"kind": "local", "workers": 1}
    return {"_comment": f"trains trial {trial.number} of stage {stage.name} of study {spec.name} "
                        f"({spec.metric} {trial.value:.6g}) again", **raw}


def find_model(spec: StudySpec, storage: RetryingStorage, trial: int | None = None,
               stage: str | None = None) -> KeptModel:
    """The kept model of trial ``trial`` (of ``stage``, if named), or of the study's best trial."""
    started = _started(spec, storage)
    if stage is not None:
        names = [s.name for s in spec.stages]
        if stage not in names:
            raise HpsearchError(f"--stage {stage}: no such stage; the stages are: {', '.join(names)}")
        started = [(name, study_id) for name, study_id in started if name == stage]
    kept = artifacts.kept_models(storage, started)
    if trial is None:
        best_stage, best = overall_best(spec, storage)
        if stage is None or stage == best_stage.name:
            trial, stage = best.number, best_stage.name
        else:
            stage_best = best_of(storage, started[0][1]) if started else None
            if stage_best is None:
                raise HpsearchError(f"stage {stage} has no complete trial yet")
            trial = stage_best.number
    found = [k for k in kept if k.trial == trial and (stage is None or k.stage == stage)]
    if len(found) > 1:
        raise HpsearchError(f"trial {trial} has a kept model in stages {', '.join(k.stage for k in found)}; "
                            "name one with --stage")
    if not found:
        where = f"trial {trial}" + (f" of stage {stage}" if stage else "")
        have = ", ".join(f"{k.stage} #{k.trial}" for k in kept) or "none"
        raise HpsearchError(f"{where} has no kept model (keep: {spec.keep}; keep: best keeps each stage's best "
                            f"trial's, keep: all every complete trial's); kept models: {have}")
    return found[0]


def trials_frame(spec: StudySpec, storage: RetryingStorage) -> pd.DataFrame:
    """One row per trial of every started stage, with a ``stage`` column first (see :mod:`hpsearch.export`)."""
    from hpsearch import export as exporting  # here: pyarrow is a slow import that status and best do without

    return exporting.trials_frame(storage, _started(spec, storage))


def curves_frame(spec: StudySpec, storage: RetryingStorage) -> pd.DataFrame:
    """The learning curves of every trial of every started stage in long form: one row per trial and
    epoch, columns ``stage``, ``trial``, ``state``, ``epoch`` and the study's metric (one query a stage)."""
    import pandas as pd

    t, v = _TRIALS, models.TrialIntermediateValueModel.__table__
    to_value = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
    rows: list[tuple[str, int, str, int, float]] = []
    for stage, study_id in _started(spec, storage):
        query = (sa.select(t.c.number, t.c.state, v.c.step, v.c.intermediate_value, v.c.intermediate_value_type)
                 .join(v, v.c.trial_id == t.c.trial_id).where(t.c.study_id == study_id).order_by(t.c.number, v.c.step))
        read = storage.call_with_retries("read the learning curves", _rows, storage.engine, query)
        rows += [(stage, number, state.name, step, to_value(value, kind)) for number, state, step, value, kind in read]
    return pd.DataFrame(rows, columns=["stage", "trial", "state", "epoch", spec.metric])


def _rows(engine: sa.engine.Engine, query: sa.Select[Any]) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(query).all())


def export(spec: StudySpec, storage: RetryingStorage, out: str | Path) -> int:
    """Write every trial to ``out`` (.csv or .parquet), a chunk of trials at a time; returns the number of rows."""
    from hpsearch import export as exporting

    out = Path(out)
    if out.suffix not in EXPORT_SUFFIXES:
        raise HpsearchError(f"--out {out}: unknown file type {out.suffix or '(none)'!r}; use one of: {', '.join(EXPORT_SUFFIXES)}")
    stages = _started(spec, storage)
    return writing(out, "--out", lambda: exporting.export(storage, stages, out))


def _started(spec: StudySpec, storage: RetryingStorage) -> list[tuple[str, int]]:
    return [(stage.name, study_id) for stage, study_id in stage_study_ids(spec, storage) if study_id is not None]


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
