"""The only glue between Optuna and the training core.

It turns a trial's sampled parameters into a :class:`~hpsearch.train.TrainConfig`, passes the
training core's epoch reports to Optuna (intermediate values, pruning), and records how the trial
ended: its value, its state, and user attributes with every metric of its best epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import copy
import dataclasses
from dataclasses import dataclass
import datetime
import math
import os
import socket
import time
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.sql import Executable

from hpsearch.retrying import TrialWrite
from hpsearch.spec import StageSpec, StudySpec
from hpsearch.train import StopReason, TrainConfig, TrainResult, build_train_config
from hpsearch.train.cv_metrics import fold_std

# User attributes every finished trial carries besides its metrics.
ATTR_METRICS = "metrics"
ATTR_REASON = "stop_reason"
ATTR_MESSAGE = "message"
ATTR_FAIL = "fail_reason"
ATTR_HOST = "host"
ATTR_PID = "pid"
ATTR_LOST = "lost"  # failed through no fault of its own (worker or run gone): run once more
ATTR_SLOT = "slot"  # the budget slot the trial fills (see hpsearch.coordination)
ATTR_ATTEMPT = "attempt"  # how many trials of that slot failed before this one
SUFFIX_FOLDS = "_folds"  # a k-fold trial's metric on each fold, as "val_rmse_folds"
SUFFIX_STD = "_std"  # and its spread over the folds, as "val_rmse_std"


def owner_attrs() -> dict[str, Any]:
    """Host and pid of this process: they let a later run tell a trial whose run is gone from a live one."""
    return {ATTR_HOST: socket.gethostname(), ATTR_PID: os.getpid()}


def trial_seed(seed: int, number: int) -> int:
    """The seed of trial ``number``: the study's plus the number, wrapped to 32 bits as NumPy's seeds are."""
    return (seed + number) % 2**32


def trial_config(spec: StudySpec, params: Mapping[str, Any], number: int, stage: StageSpec | None = None) -> TrainConfig:
    """The training config of trial ``number`` (of ``stage``): fixed ``train`` knobs with the stage's
    overrides, overridden by the sampled ``params``."""
    train = spec.train if stage is None else spec.stage_train(stage)
    return build_train_config(
        spec.model, {**train, **params}, task=spec.task, monitor=spec.metric,
        maximize=spec.maximize, seed=trial_seed(spec.seed, number), keep_model=spec.keep != "none",
    )


def result_attrs(result: TrainResult) -> dict[str, Any]:
    """The user attributes a finished trial carries: every metric of its best epoch, and how training went."""
    return {
        **{k: float(v) for k, v in result.best_metrics.items()},
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "duration_s": round(result.duration_s, 3),
        "device": result.device,
        "samples_per_s": round(result.samples_per_s, 1),
        ATTR_METRICS: sorted(result.best_metrics),
        ATTR_REASON: result.stop_reason.name.lower(),
        ATTR_MESSAGE: result.message,
        **fold_attrs(result),
    }


def fold_attrs(result: TrainResult) -> dict[str, Any]:
    """A k-fold trial's (``data.cv_folds``) every metric on each fold at the best epoch (``val_rmse_folds``)
    and their spread (``val_rmse_std``); the metric itself (``val_rmse``) is their mean. None otherwise."""
    attrs: dict[str, Any] = {}
    for name in result.best_metrics if result.folds else ():
        values = [float(fold[name]) for fold in result.folds]
        attrs[f"{name}{SUFFIX_FOLDS}"], attrs[f"{name}{SUFFIX_STD}"] = values, fold_std(values)
    return attrs


# A running trial's epochs and placement are written at most this often (and always when it ends).
WRITE_EVERY_S = 1.0


class WriteBatch:
    """The epochs and placements of every running trial, written together in one transaction at most
    every :data:`WRITE_EVERY_S`: a pack of fused trials reports dozens of epochs at once, and a
    transaction for each would keep the database, not the training, busy."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage
        self._dirty: dict[int, TrialRecorder] = {}
        self._written_at = time.monotonic()

    def add(self, recorder: TrialRecorder) -> None:
        self._dirty[recorder.number] = recorder

    def drop(self, recorder: TrialRecorder) -> None:
        self._dirty.pop(recorder.number, None)

    def flush_if_due(self) -> None:
        if self._dirty and time.monotonic() - self._written_at >= WRITE_EVERY_S:
            self.flush()

    def flush(self) -> None:
        recorders, self._dirty = list(self._dirty.values()), {}
        write_together(self._storage, recorders, [r.take_write() for r in recorders])
        self._written_at = time.monotonic()


def start_all(storage: Any, recorders: Sequence[TrialRecorder]) -> None:
    """:meth:`TrialRecorder.start` of every one of ``recorders``, in one transaction."""
    write_together(storage, recorders, [r.starting() for r in recorders])


def write_together(storage: Any, recorders: Sequence[TrialRecorder], writes: Sequence[TrialWrite]) -> None:
    """Make ``writes`` (one for each of ``recorders``) in one transaction; nothing when there are none."""
    if not writes:
        return
    gone = storage.write_trials(writes)
    for recorder in recorders:
        # Another run failed it as abandoned (this run was suspended past the grace period).
        recorder.gone = recorder.trial._trial_id in gone


class TrialRecorder:
    """Records one running trial in its study; every method is called by the orchestrating process.

    Writes go through :meth:`RetryingStorage.write_trial <hpsearch.retrying.RetryingStorage.write_trial>`,
    a transaction for each step of the trial (start, placement, epochs, the end) rather than one for
    every attribute; with a :class:`WriteBatch`, its placement and epochs go with the other running
    trials'. :attr:`frozen` is the trial as written so far, kept here so that nothing has
    to read it back.
    """

    def __init__(self, study: optuna.Study, trial: optuna.Trial, metric: str,
                 first_write: Sequence[Executable] = (), batch: WriteBatch | None = None) -> None:
        self.study = study
        self.trial = trial
        self._batch = batch  # None: each recorder writes its epochs itself
        self.gone = False  # failed by another run: stop training it
        self._metric = metric
        self._first_write = list(first_write)  # statements of the caller's, run with the first write
        self._pending: dict[str, Any] = {}  # attributes not written yet
        self._written_at = time.monotonic()
        self.frozen: FrozenTrial = copy.copy(trial._cached_frozen_trial)
        self.frozen.user_attrs = dict(self.frozen.user_attrs)
        self.frozen.intermediate_values = dict(self.frozen.intermediate_values)

    @property
    def number(self) -> int:
        return self.trial.number

    def start(self) -> None:
        """Write the sampled parameters, a heartbeat and ``first_write`` in one transaction."""
        self._write({}, heartbeat=True)

    def starting(self) -> TrialWrite:
        """What :meth:`start` writes, as a write for ``RetryingStorage.write_trials`` to make with others'."""
        return dataclasses.replace(self.take_write(), heartbeat=True)

    def _write(self, attrs: Mapping[str, Any], heartbeat: bool = False) -> None:
        """Write ``attrs`` with everything pending (parameters, intermediate values, attributes) in one transaction."""
        self._pending.update(attrs)
        write = self.take_write()
        self.study._storage.write_trial(  # type: ignore[attr-defined]
            write.trial_id, user_attrs=write.user_attrs, heartbeat=heartbeat, statements=write.statements)

    def _write_soon(self, attrs: Mapping[str, Any]) -> None:
        """Write now if the last write is WRITE_EVERY_S old, else with the next write (at the latest, the end);
        with a :class:`WriteBatch`, with the batch's next write.

        Epochs of seconds or more are each written as they end; a trial of many fast epochs is not
        a transaction per epoch (the pruner decides on what the trial object holds, written or not).
        """
        self._pending.update(attrs)
        if self._batch is not None:
            self._batch.add(self)
        elif time.monotonic() - self._written_at >= WRITE_EVERY_S:
            self._write({})

    def take_write(self) -> TrialWrite:
        """What is pending (attributes, the first statements) as one write, made by :meth:`_write` or a :class:`WriteBatch`."""
        statements, self._first_write = self._first_write, []
        attrs, self._pending = self._pending, {}
        self.frozen.user_attrs.update(attrs)
        self._written_at = time.monotonic()
        return TrialWrite(self.trial._trial_id, attrs, statements=statements)

    def placed(self, placement: Mapping[str, Any]) -> None:
        """Record where the trial runs: ``worker_host``, ``worker_pid``, ``node_id``, ``gpus`` ..."""
        try:
            self._write_soon(placement)
        except UpdateFinishedTrialError:
            pass  # another run failed it as abandoned (this run was suspended past the grace period)

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Record the monitored metric of an epoch; True when the pruner says stop."""
        if self.gone:
            return True
        value = metrics.get(self._metric)
        if value is None or not math.isfinite(value):
            return False
        try:
            self.trial.report(float(value), epoch)  # held by the storage until the next write
            self.frozen.intermediate_values[epoch] = float(value)
            self._write_soon({})
        except UpdateFinishedTrialError:
            return True  # another run took this trial for abandoned and failed it: stop training it
        return self.trial.should_prune()

    def finish(self, result: TrainResult) -> TrialState:
        """Record how training ended (see :meth:`finishing`) in a transaction of its own."""
        return self.end(self.finishing(result))

    def fail(self, reason: str, lost: bool = False) -> None:
        """Fail the trial with ``reason``; ``lost``: through no fault of its own, so its slot reruns it."""
        self.end(self.failing(reason, lost))

    def finishing(self, result: TrainResult) -> Ending:
        """The end of training as a write, not made yet. A trial with no finite best epoch ends PRUNED, with its reason.

        The attributes, the value and the state are one write. A pruned trial's value is its last
        reported one, as ``Study.tell`` records it.
        """
        value = result.best_metrics.get(self._metric)
        state = TrialState.PRUNED
        if result.stop_reason is not StopReason.PRUNED and value is not None and math.isfinite(value):
            state = TrialState.COMPLETE
        else:
            steps = self.frozen.intermediate_values
            value = steps[max(steps)] if steps else None
        return self._ending(result_attrs(result), state, None if value is None else float(value))

    def failing(self, reason: str, lost: bool = False) -> Ending:
        """The failure as a write, not made yet (see :meth:`fail`)."""
        return self._ending({ATTR_FAIL: reason, **({ATTR_LOST: True} if lost else {})}, TrialState.FAIL, None)

    def _ending(self, attrs: Mapping[str, Any], state: TrialState, value: float | None) -> Ending:
        if self._batch is not None:
            self._batch.drop(self)  # what it holds is written now, with the end
        self._pending.update(attrs)
        write = dataclasses.replace(self.take_write(), state=state, values=None if value is None else [value])
        return Ending(self, write, state, value)

    def end(self, ending: Ending) -> TrialState:
        """Make ``ending``'s write alone; :func:`end_all` makes several in one transaction."""
        if self.gone:
            return self.ended(ending, gone=True)
        w = ending.write
        try:
            self.study._storage.write_trial(  # type: ignore[attr-defined]
                w.trial_id, user_attrs=w.user_attrs, statements=w.statements, state=w.state, values=w.values)
        except UpdateFinishedTrialError:
            return self.ended(ending, gone=True)
        return self.ended(ending, gone=False)

    def ended(self, ending: Ending, gone: bool) -> TrialState:
        """After ``ending`` was written (or skipped, ``gone``: another run failed the trial as abandoned,
        and its slot runs again): :attr:`frozen` as written, and the sampler told."""
        set_attrs = self.study._storage.take_system_attrs(self.trial._trial_id)  # type: ignore[attr-defined]
        if gone or self.gone:
            self.gone = True
            return TrialState.FAIL
        frozen, state, value = self.frozen, ending.state, ending.value
        frozen.system_attrs = {**frozen.system_attrs, **set_attrs}  # the pruner's rungs, for the next trials' pruning
        frozen.state, frozen.datetime_complete = state, datetime.datetime.now()
        frozen.values = None if value is None else [value]
        frozen.params, frozen.distributions = dict(self.trial.params), dict(self.trial.distributions)
        # What Study.tell does besides writing: the sampler's hook (a no-op for hpsearch's samplers).
        self.study.sampler.after_trial(self.study, frozen, state, frozen.values)
        return state


@dataclass(frozen=True)
class Ending:
    """How a trial ends, as a write not made yet: :meth:`TrialRecorder.end` or :func:`end_all` make it."""

    recorder: TrialRecorder
    write: TrialWrite
    state: TrialState
    value: float | None


def end_all(storage: Any, endings: Sequence[Ending]) -> None:
    """Make the writes of ``endings`` in one transaction (a pack's members often end together)."""
    if not endings:
        return
    live = [e for e in endings if not e.recorder.gone]
    gone = storage.write_trials([e.write for e in live]) if live else set()
    for e in endings:
        e.recorder.ended(e, gone=e.write.trial_id in gone)
