"""How a stage derives from the stages before it: its searched space (narrowed, frozen, from an lr
range test), its warm starts, the earlier trials its sampler starts from, and whether a round of a
repeated stage runs at all.

Everything here reads finished stages and is deterministic, so runs racing to start a stage derive
the same and whichever writes last writes what the first wrote.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
import json
import math
from typing import Any

import optuna
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
import sqlalchemy as sa

from hpsearch import lr_range_stage
from hpsearch.errors import SpecError, StageFailedError
from hpsearch.narrow import contains, narrow_space
from hpsearch.space import (
    CategoricalParam,
    FloatParam,
    IntParam,
    Space,
    distribution,
    parse_space,
    space_to_raw,
)
from hpsearch.spec import StageSpec, StudySpec

ATTR_SPACE = "space"  # the space the stage searches, in the study file's format
ATTR_SPACE_AS_WRITTEN = "space_as_written"  # the study file's space when the stage started
ATTR_DERIVED = "derived_from"  # how the space was derived: previous stage, trials used
ATTR_WARM_STARTS = "warm_starts"  # [{"params", "of"}]: what the stage's first slots run
ATTR_PRIOR = "prior_trials"  # {"stage", "trials", "note"}: the earlier trials the sampler starts from
ATTR_PRIOR_OF = "prior_of"  # on a prior trial as the sampler sees it: "stage#number"
ATTR_ENDED = "ended"  # why a stage ended before its budget ("timeout"), with the budget it had


@dataclass(frozen=True)
class Ranked:
    """A complete trial as ranking needs it: no attributes, no intermediate values."""

    number: int
    value: float
    params: dict[str, Any]


def ranked_trials(study: optuna.Study) -> list[Ranked]:
    """The complete trials of ``study``, best first (ties: earlier first).

    Read in SQL, parameters only: a stage of 100,000 trials ranks in a second or two, not minutes.
    """
    storage = study._storage
    rows = storage.call_with_retries("rank the trials", _ranked_rows, storage.engine, study._study_id)  # type: ignore[attr-defined]
    sign = -1.0 if study.direction is optuna.study.StudyDirection.MAXIMIZE else 1.0
    return sorted(rows, key=lambda r: (sign * r.value, r.number))


def _ranked_rows(engine: sa.Engine, study_id: int) -> list[Ranked]:
    t, v = models.TrialModel.__table__, models.TrialValueModel.__table__
    complete = sa.and_(t.c.study_id == study_id, t.c.state == TrialState.COMPLETE)
    values = sa.select(t.c.trial_id, t.c.number, v.c.value, v.c.value_type).join(v, v.c.trial_id == t.c.trial_id).where(
        complete, v.c.objective == 0)
    with engine.connect() as conn:
        found = {i: (n, models.TrialValueModel.stored_repr_to_value(x, k)) for i, n, x, k in conn.execute(values)}
        params = _params(conn, complete, set(found))
    return [Ranked(n, x, params.get(i, {})) for i, (n, x) in found.items()]


def _params(conn: sa.Connection, where: sa.ColumnElement[bool], trial_ids: set[int]) -> dict[int, dict[str, Any]]:
    """The parameters of the trials ``where`` selects, in their external form, by trial id."""
    t, p = models.TrialModel.__table__, models.TrialParamModel.__table__
    rows = sa.select(p.c.trial_id, p.c.param_name, p.c.param_value, p.c.distribution_json).join(
        t, t.c.trial_id == p.c.trial_id).where(where).order_by(p.c.param_id)
    found: dict[int, dict[str, Any]] = {}
    dists: dict[str, optuna.distributions.BaseDistribution] = {}
    for trial_id, name, value, dist in conn.execute(rows):
        if trial_id in trial_ids:
            d = dists.get(dist) or dists.setdefault(dist, optuna.distributions.json_to_distribution(dist))
            found.setdefault(trial_id, {})[name] = d.to_external_repr(value)
    return found


def pruned_ranked(study: optuna.Study) -> list[Ranked]:
    """The pruned trials of ``study``, furthest trained first, then by the value they last reported (ties:
    earlier first); each carries that last value. A pruner's survivors (the trials Hyperband or successive
    halving promoted to a later rung) so rank above the trials it stopped at the first rung. This is what
    ranks after the complete trials when pruning left too few of them to narrow from.
    """
    storage = study._storage
    rows = storage.call_with_retries("rank the pruned trials", _pruned_rows, storage.engine,  # type: ignore[attr-defined]
                                     study._study_id)
    sign = -1.0 if study.direction is optuna.study.StudyDirection.MAXIMIZE else 1.0
    # A curve that ended on nan or inf (a diverged epoch) ranks last among trials trained as far.
    return [r for _, r in sorted(rows, key=lambda sr: (-sr[0], not math.isfinite(sr[1].value),
                                                         sign * sr[1].value if math.isfinite(sr[1].value) else 0.0,
                                                         sr[1].number))]


def ranked_for_narrowing(study: optuna.Study, needs: int) -> tuple[list[Ranked], int]:
    """The trials of ``study`` to narrow from, best first, and how many of them are complete: the complete
    ones, followed by the pruned ones (:func:`pruned_ranked`) where there are fewer than ``needs`` complete."""
    ranked = ranked_trials(study)
    complete = len(ranked)
    if complete < needs:  # pruning took too many: its furthest-trained trials rank after the complete ones
        ranked += pruned_ranked(study)
    return ranked, complete


def _pruned_rows(engine: sa.Engine, study_id: int) -> list[tuple[int, Ranked]]:
    t, iv = models.TrialModel.__table__, models.TrialIntermediateValueModel.__table__
    pruned = sa.and_(t.c.study_id == study_id, t.c.state == TrialState.PRUNED)
    values = sa.select(t.c.trial_id, t.c.number, iv.c.step, iv.c.intermediate_value, iv.c.intermediate_value_type).join(
        iv, iv.c.trial_id == t.c.trial_id).where(pruned)
    last: dict[int, tuple[int, int, float]] = {}  # trial id -> (number, step, value) at its last step
    with engine.connect() as conn:
        for trial_id, number, step, x, kind in conn.execute(values):
            if trial_id not in last or step > last[trial_id][1]:
                last[trial_id] = (number, step, models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(
                    x, kind))
        params = _params(conn, pruned, set(last))
    return [(step, Ranked(number, x, params.get(i, {}))) for i, (number, step, x) in last.items()]


def stage_space(spec: StudySpec, index: int, storage: optuna.storages.BaseStorage, study: optuna.Study) -> Space:
    """The space stage ``index`` searches: stored on its study, or derived now and stored.

    Runs racing to derive it compute the same space and warm starts (the previous stage is over
    and ranked deterministically), so whichever writes last writes what the first wrote.

    Raises:
        SpecError: the study file's space changed since the stage started.
        StageFailedError: the previous stage has too few complete trials to derive from.
    """
    stage = spec.stages[index]
    written = json.dumps(space_to_raw(spec.space), sort_keys=True)
    before = study.user_attrs.get(ATTR_SPACE_AS_WRITTEN)
    if before is not None and before != written:
        raise SpecError("space", f"changed since stage {stage.name} of study {spec.name} started; "
                                 "restore it, or give the changed study a new name")
    stored = study.user_attrs.get(ATTR_SPACE)
    if stored is not None:
        return parse_space(stored, f"{ATTR_SPACE} of study {study.study_name}")
    space = base = lr_range_stage.base_space(spec, index, storage)  # lr from an earlier range test, if any
    if stage.derived or stage.warm_start:
        previous = spec.stages[source_index(spec, index, storage)]
        before_study = optuna.load_study(study_name=spec.study_name(previous), storage=storage)
        needs = stage.narrow.needs() if stage.narrow else 1
        ranked, complete = ranked_for_narrowing(before_study, needs)
        if len(ranked) < needs:
            counts = Counter({state: storage.get_n_trials(before_study._study_id, state) for state in TrialState})
            raise StageFailedError(_too_few(spec, index, counts, needs, previous))
        if stage.derived:
            top = stage.narrow.top_count(len(ranked)) if stage.narrow else 1
            space = narrow_space(base, [t.params for t in ranked], stage.narrow.top if stage.narrow else 1,
                                 margin=stage.narrow.margin if stage.narrow else None,
                                 keep_min=stage.narrow.keep_min if stage.narrow else 1, freeze=stage.freeze)
            study.set_user_attr(ATTR_DERIVED, {"stage": previous.name, "complete": complete, "top": top,
                                               "pruned": len(ranked) - complete,
                                               "trials": [t.number for t in ranked[:top]]})
        study.set_user_attr(ATTR_WARM_STARTS, warm_starts(previous, ranked, space, min(stage.warm_start, stage.trials)))
    study.set_user_attr(ATTR_SPACE_AS_WRITTEN, written)
    study.set_user_attr(ATTR_SPACE, space_to_raw(space))  # set last: the stage's space is now fixed
    return space


def _too_few(spec: StudySpec, index: int, counts: Counter[TrialState], needs: int, previous: StageSpec) -> str:
    stage = spec.stages[index]
    what = f"narrow.top {stage.narrow.top}" if stage.narrow else "freeze and warm_start"
    return (f"stage {stage.name} cannot derive its space: stage {previous.name} has {counts[TrialState.COMPLETE]} "
            f"complete and {counts[TrialState.PRUNED]} pruned trial(s) ({counts[TrialState.FAIL]} failed) and {what} "
            f"needs at least {needs} to rank; raise stages.{_written_index(spec, previous)}.trials or loosen "
            f"stages.{_written_index(spec, stage)}")


def _written_index(spec: StudySpec, stage: StageSpec) -> int:
    """The stage's place in the study file's list (the rounds of a repeated stage share theirs)."""
    return sum(1 for s in spec.stages[: spec.stages.index(stage)] if s.round == 1) - (stage.round > 1)


def warm_starts(previous: StageSpec, ranked: list[Ranked], space: Space, count: int) -> list[dict[str, Any]]:
    """The previous stage's best ``count`` distinct configurations inside ``space``, best first."""
    chosen: list[dict[str, Any]] = []
    for trial in ranked:
        if len(chosen) >= count:
            break
        if contains(space, trial.params) and all(trial.params != c["params"] for c in chosen):
            chosen.append({"params": dict(trial.params), "of": f"{previous.name}#{trial.number}"})
    return chosen


def prior_trials(spec: StudySpec, index: int, storage: optuna.storages.BaseStorage,
                 space: Space) -> tuple[list[FrozenTrial], dict[str, Any] | None]:
    """The previous stage's complete trials inside ``space`` that stage ``index``'s sampler starts
    from (as history, not re-run), best first and at most ``history.recent``; and what to record of them.

    Only trials trained as this stage trains theirs count (the same ``train`` knobs after the stages'
    overrides), unless the stage says ``prior_trials: all``; a shorter coarse stage then only narrows.
    """
    stage = spec.stages[index]
    if index == 0 or stage.prior_trials == "none":
        return [], None
    previous = spec.stages[source_index(spec, index, storage)]
    if spec.stage_train(previous) != spec.stage_train(stage) and stage.prior_trials != "all":
        return [], {"stage": previous.name, "trials": 0,
                    "note": f"{previous.name} trained differently (train overrides): its trials only narrow the space"}
    before = optuna.load_study(study_name=spec.study_name(previous), storage=storage)
    inside = [r for r in ranked_trials(before) if contains(space, r.params)][: stage.history.recent]
    dists = {p.name: distribution(p) for p in space}
    now = datetime.now()
    trials = [FrozenTrial(number=i - len(inside), state=TrialState.COMPLETE, value=r.value, datetime_start=now,
                          datetime_complete=now, params=dict(r.params), distributions={k: dists[k] for k in r.params},
                          user_attrs={ATTR_PRIOR_OF: f"{previous.name}#{r.number}"}, system_attrs={},
                          intermediate_values={}, trial_id=i - len(inside))
              for i, r in enumerate(inside)]
    return trials, {"stage": previous.name, "trials": len(trials), "note": "inside this stage's space"}


CONVERGED = "converged"  # the reason of a round that did not run (ATTR_ENDED), and of those after it


def source_index(spec: StudySpec, index: int, storage: optuna.storages.BaseStorage) -> int:
    """The stage stage ``index`` derives from: the one before it, passing over the rounds of a repeated
    stage that did not run (an earlier round converged) or that has too few complete and pruned trials
    to narrow from (the round after it converged for that: its trials failed)."""
    stage = spec.stages[index]
    needs = stage.narrow.needs() if stage.narrow else 1
    i = index - 1
    while i > 0 and spec.stages[i].round > 1 and (
            _ended_reason(spec, spec.stages[i], storage).startswith(CONVERGED)
            or _rankable(spec, spec.stages[i], storage) < needs):
        i -= 1
    return i


def _rankable(spec: StudySpec, stage: StageSpec, storage: optuna.storages.BaseStorage) -> int:
    """The complete and pruned trials of ``stage``: what :func:`ranked_for_narrowing` can rank at most."""
    try:
        study_id = storage.get_study_id_from_name(spec.study_name(stage))
    except KeyError:
        return 0
    return sum(storage.get_n_trials(study_id, state) for state in (TrialState.COMPLETE, TrialState.PRUNED))


def _ended_reason(spec: StudySpec, stage: StageSpec, storage: optuna.storages.BaseStorage) -> str:
    try:
        study_id = storage.get_study_id_from_name(spec.study_name(stage))
    except KeyError:
        return ""
    ended = storage.get_study_user_attrs(study_id).get(ATTR_ENDED)
    return str(ended.get("reason", "")) if isinstance(ended, dict) else ""


def _best_value(spec: StudySpec, stages: Sequence[StageSpec], storage: optuna.storages.BaseStorage) -> float | None:
    values = []
    for stage in stages:
        try:
            values.append(storage.get_best_trial(storage.get_study_id_from_name(spec.study_name(stage))).value)
        except (KeyError, ValueError):  # not started, or no complete trial
            continue
    found = [v for v in values if v is not None]
    return (max(found) if spec.maximize else min(found)) if found else None


def round_verdict(spec: StudySpec, index: int, storage: optuna.storages.BaseStorage) -> str | None:
    """Why round ``index`` of a repeated stage does not run (it starts with :data:`CONVERGED`), or None to run it.

    It runs while the round before it improved the best of every stage before that round by at least
    ``repeat.min_improvement`` (relative), and narrowing from that round's trials still shrinks the space.
    """
    stage, previous = spec.stages[index], spec.stages[index - 1]
    assert stage.repeat is not None and stage.narrow is not None  # a round (spec._rounds)
    if _ended_reason(spec, previous, storage).startswith(CONVERGED):
        return f"{CONVERGED}: an earlier round of {previous.name.split('.')[0]} converged"
    latest = _best_value(spec, [previous], storage)
    if latest is None:  # every trial of it was pruned or failed
        return f"{CONVERGED}: round {previous.name} has no complete trial, so it improved nothing"
    earlier = _best_value(spec, spec.stages[: index - 1], storage)
    if earlier is not None and earlier != 0:
        gain = (latest - earlier if spec.maximize else earlier - latest) / abs(earlier)
        if gain < stage.repeat.min_improvement:
            return (f"{CONVERGED}: round {previous.name} improved the best by {gain:.2%}, less than "
                    f"repeat.min_improvement {stage.repeat.min_improvement:.2%}")
    study = optuna.load_study(study_name=spec.study_name(previous), storage=storage)
    searched = parse_space(study.user_attrs.get(ATTR_SPACE, space_to_raw(spec.space)))
    ranked, _ = ranked_for_narrowing(study, stage.narrow.needs())
    if len(ranked) < stage.narrow.needs():  # failures took most of them: iterating is optional, so end here
        return (f"{CONVERGED}: round {previous.name} has {len(ranked)} complete or pruned trial(s), too few to "
                f"narrow again (narrow.top {stage.narrow.top:g} needs {stage.narrow.needs()})")
    narrowed = narrow_space(spec.space, [t.params for t in ranked], stage.narrow.top, margin=stage.narrow.margin,
                            keep_min=stage.narrow.keep_min, freeze=stage.freeze)
    if not _shrinks(searched, narrowed):
        return f"{CONVERGED}: narrowing from round {previous.name} no longer shrinks the space"
    return None


def _shrinks(before: Space, after: Space) -> bool:
    """Whether ``after`` is narrower than ``before`` by more than 5 % in some numeric range, or drops a choice."""
    old = {p.name: p for p in before}
    for p in after:
        q = old.get(p.name)
        if isinstance(p, CategoricalParam) and isinstance(q, CategoricalParam):
            if len(p.choices) < len(q.choices):
                return True
        elif isinstance(p, (FloatParam, IntParam)) and isinstance(q, (FloatParam, IntParam)):
            width = (math.log(p.high) - math.log(p.low)) if p.log else p.high - p.low
            was = (math.log(q.high) - math.log(q.low)) if q.log else q.high - q.low
            if was > 0 and width < 0.95 * was:
                return True
    return len(after) < len(before)
