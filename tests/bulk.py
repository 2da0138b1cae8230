"""Large stage studies built in seconds, for the scale tests and ``scripts/bench_storage.py``.

A real run creates the stage (its study, attributes, first trial and claim); the other trials are
then bulk-inserted into Optuna's own tables, shaped like the trials hpsearch writes (parameters of
the study's space, an intermediate value per epoch, the same user attributes), with a claim each.
Bulk inserts are only for building: everything that reads them goes through the normal code.
"""

from __future__ import annotations

import datetime
import json
import math
import random
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    distribution_to_json,
)
from optuna.storages._rdb import models
from optuna.trial import TrialState
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from hpsearch import objective
from hpsearch.coordination import CLAIMS
from hpsearch.executors import Executor, TrialJob
from hpsearch.executors.base import TrialHandler
from hpsearch.space import CategoricalParam, FloatParam, Space, is_active
from hpsearch.stages import ATTR_BUDGET, ATTR_TRIALS
from hpsearch.train import StopReason, TrainResult

# What a bulk-built trial ended as: mostly complete, some pruned, a few failed (as in real stages).
_STATES = ((TrialState.COMPLETE, 0.80), (TrialState.PRUNED, 0.15), (TrialState.FAIL, 0.05))
_CHUNK = 2_000  # trials per transaction


def distribution(param: Any) -> BaseDistribution:
    """The Optuna distribution ``suggest`` uses for ``param``."""
    if isinstance(param, FloatParam):
        return FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    if isinstance(param, CategoricalParam):
        return CategoricalDistribution(param.choices)
    return IntDistribution(param.low, param.high, log=param.log, step=param.step)


def _draw(param: Any, rng: random.Random) -> Any:
    if isinstance(param, CategoricalParam):
        return rng.choice(param.choices)
    if isinstance(param, FloatParam):
        if param.log:
            return math.exp(rng.uniform(math.log(param.low), math.log(param.high)))
        return rng.uniform(param.low, param.high)
    return rng.randint(param.low, param.high)


def trial_rows(space: Space, epochs: int, rng: random.Random) -> tuple[TrialState, dict[str, Any], list[float], dict[str, Any]]:
    """One synthetic trial: its state, parameters, intermediate values and user attributes."""
    state = rng.choices([s for s, _ in _STATES], [w for _, w in _STATES])[0]
    params: dict[str, Any] = {}
    for p in space:
        if is_active(p, params):
            params[p.name] = _draw(p, rng)
    run = epochs if state is TrialState.COMPLETE else rng.randint(1, epochs)
    curve = [10.0 * rng.random() / (1 + e) + rng.random() for e in range(run)]
    best = min(range(run), key=curve.__getitem__)
    result = TrainResult(best_epoch=best + 1, best_metrics={"val_rmse": curve[best], "val_mae": 0.8 * curve[best],
                                                           "val_r2": 1 - curve[best] / 10, "train_loss": curve[best] ** 2},
                         epochs_run=run, stop_reason=StopReason.PRUNED if state is TrialState.PRUNED else StopReason.COMPLETED,
                         duration_s=rng.random(), samples_per_s=1e4 * rng.random())
    attrs = {**objective.owner_attrs(), "worker_host": "bulk", "worker_pid": 1, **objective.result_attrs(result)}
    if state is TrialState.FAIL:
        attrs = {**objective.owner_attrs(), objective.ATTR_FAIL: "bulk-built failure"}
        curve = curve[: rng.randint(0, len(curve))]
    return state, params, curve, attrs


def bulk_add(engine: Engine, study: optuna.Study, space: Space, count: int, *, epochs: int = 20, seed: int = 0) -> int:
    """Append ``count`` finished trials (with claims, slots after the existing ones) to ``study``.

    About 5% fail; each failed trial's slot is filled by the next trial, so the trials fill ``count``
    slots, ending on a finished one. Returns the number of slots they fill.
    """
    rng = random.Random(seed)
    dists = {p.name: distribution(p) for p in space}
    dist_json = {name: distribution_to_json(d) for name, d in dists.items()}
    t = models.TrialModel.__table__
    with engine.connect() as conn:
        top_id = conn.execute(sa.select(sa.func.max(t.c.trial_id))).scalar() or 0
        number = conn.execute(sa.select(sa.func.count()).where(t.c.study_id == study._study_id)).scalar() or 0
        slot = conn.execute(sa.select(sa.func.max(CLAIMS.c.slot)).where(CLAIMS.c.study_id == study._study_id)).scalar()
    slot = -1 if slot is None else slot
    first = slot + 1
    start = datetime.datetime(2026, 1, 1)
    done, attempt, retry = 0, 0, False
    while done < count or retry:
        rows: dict[str, list[dict[str, Any]]] = {k: [] for k in ("trials", "values", "steps", "params", "attrs", "claims")}
        for _ in range(_CHUNK):
            if done >= count and not retry:
                break
            state, params, curve, attrs = trial_rows(space, epochs, rng)
            # A failed trial's slot runs again: the next trial is its next attempt.
            top_id, number, done = top_id + 1, number + 1, done + 1
            slot, attempt = (slot, attempt + 1) if retry else (slot + 1, 0)
            retry = state is TrialState.FAIL
            began = start + datetime.timedelta(seconds=number)
            rows["trials"].append({"trial_id": top_id, "number": number - 1, "study_id": study._study_id, "state": state,
                                   "datetime_start": began, "datetime_complete": began + datetime.timedelta(seconds=1)})
            if state is TrialState.COMPLETE:
                rows["values"].append({"trial_id": top_id, "objective": 0, "value": min(curve), "value_type": "FINITE"})
            rows["steps"] += [{"trial_id": top_id, "step": e + 1, "intermediate_value": v, "intermediate_value_type": "FINITE"}
                              for e, v in enumerate(curve)]
            rows["params"] += [{"trial_id": top_id, "param_name": k, "param_value": dists[k].to_internal_repr(v),
                                "distribution_json": dist_json[k]} for k, v in params.items()]
            rows["attrs"] += [{"trial_id": top_id, "key": k, "value_json": json.dumps(v)}
                              for k, v in attrs.items()]
            rows["claims"].append({"study_id": study._study_id, "slot": slot, "attempt": attempt, "trial_id": top_id,
                                   "host": "bulk", "pid": 1, "claimed_at": 0.0})
        with engine.begin() as conn:
            conn.execute(sa.insert(t), rows["trials"])
            for table, key in ((models.TrialValueModel, "values"), (models.TrialIntermediateValueModel, "steps"),
                               (models.TrialParamModel, "params"), (models.TrialUserAttributeModel, "attrs")):
                if rows[key]:
                    conn.execute(sa.insert(table.__table__), rows[key])
            conn.execute(sa.insert(CLAIMS), rows["claims"])
    if engine.dialect.name == "postgresql":  # the trial ids were given: move the id sequence past them
        with engine.begin() as conn:
            conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('trials', 'trial_id'), "
                                 "(SELECT max(trial_id) FROM trials))"))
    return slot + 1 - first


def set_budget(study: optuna.Study, trials: int) -> None:
    """Make ``trials`` the budget the stage was run with, as if the study file had said so."""
    study.set_user_attr(ATTR_BUDGET, trials)
    study.set_user_attr(ATTR_TRIALS, trials)


class InstantExecutor(Executor):
    """Trains nothing: each trial reports ``epochs`` epochs and finishes at once.

    It leaves only the orchestration (claims, sampling, storage writes, pruning) to measure and count.
    """

    def __init__(self, workers: int = 1, epochs: int = 1, seed: int = 0) -> None:
        self.capacity, self._epochs, self._rng = workers, epochs, random.Random(seed)
        self._jobs: list[TrialJob] = []

    def running(self) -> int:
        return len(self._jobs)

    def submit(self, job: TrialJob) -> None:
        self._jobs.append(job)

    def poll(self, handler: TrialHandler, timeout: float) -> None:
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            handler.on_start(job.key, {"worker_host": "instant", "worker_pid": 0})
            value, epoch = 1.0 + self._rng.random(), 0
            for epoch in range(1, self._epochs + 1):
                if handler.on_report(job.key, epoch, {"val_rmse": value / epoch}):
                    break
            handler.on_result(job.key, TrainResult(best_epoch=epoch, best_metrics={"val_rmse": value / max(epoch, 1)},
                                                   epochs_run=epoch))

    def close(self) -> None:
        self._jobs = []

