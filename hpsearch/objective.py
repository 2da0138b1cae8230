"""The only glue between Optuna and the training core.

It turns a trial's sampled parameters into a :class:`~hpsearch.train.TrainConfig`, passes the
training core's epoch reports to Optuna (intermediate values, pruning), and records how the trial
ended: its value, its state, and user attributes with every metric of its best epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
import math
import os
import socket
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from hpsearch.spec import StudySpec
from hpsearch.train import StopReason, TrainConfig, TrainResult, build_train_config

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


def owner_attrs() -> dict[str, Any]:
    """Host and pid of this process: they let a later run tell a trial whose run is gone from a live one."""
    return {ATTR_HOST: socket.gethostname(), ATTR_PID: os.getpid()}


def trial_config(spec: StudySpec, params: Mapping[str, Any], number: int) -> TrainConfig:
    """The training config of trial ``number``: fixed ``train`` knobs, overridden by the sampled ``params``."""
    return build_train_config(
        spec.model, {**spec.train, **params}, task=spec.task, monitor=spec.metric,
        maximize=spec.maximize, seed=spec.seed + number,
    )


class TrialRecorder:
    """Records one running trial in its study; every method is called by the orchestrating process."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, metric: str) -> None:
        self.study = study
        self.trial = trial
        self._metric = metric

    @property
    def number(self) -> int:
        return self.trial.number

    def start(self) -> None:
        self.heartbeat()

    def heartbeat(self) -> None:
        """Tell other runs this trial is alive; one silent for the grace period is failed by them."""
        storage = self.study._storage  # Optuna wraps the RDBStorage; the wrapper records heartbeats too
        if is_heartbeat_enabled(storage):
            storage.record_heartbeat(self.trial._trial_id)  # type: ignore[attr-defined]

    def placed(self, placement: Mapping[str, Any]) -> None:
        """Record where the trial runs: ``worker_host``, ``worker_pid``, ``node_id``, ``gpus`` ..."""
        try:
            for key, value in placement.items():
                self.trial.set_user_attr(key, value)
        except UpdateFinishedTrialError:
            pass  # another run failed it as abandoned (this run was suspended past the grace period)

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Record the monitored metric of an epoch; True when the pruner says stop."""
        value = metrics.get(self._metric)
        if value is None or not math.isfinite(value):
            return False
        try:
            self.trial.report(float(value), epoch)
        except UpdateFinishedTrialError:
            return True  # another run took this trial for abandoned and failed it: stop training it
        return self.trial.should_prune()

    def finish(self, result: TrainResult) -> TrialState:
        """Tell Optuna how training ended. A trial with no finite best epoch ends PRUNED, with its reason."""
        attrs = {
            **{k: float(v) for k, v in result.best_metrics.items()},
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "duration_s": round(result.duration_s, 3),
            "device": result.device,
            "samples_per_s": round(result.samples_per_s, 1),
            ATTR_METRICS: sorted(result.best_metrics),
            ATTR_REASON: result.stop_reason.name.lower(),
            ATTR_MESSAGE: result.message,
        }
        value = result.best_metrics.get(self._metric)
        state = TrialState.PRUNED
        if result.stop_reason is not StopReason.PRUNED and value is not None and math.isfinite(value):
            state = TrialState.COMPLETE
        try:
            for key, value_ in attrs.items():
                self.trial.set_user_attr(key, value_)
        except UpdateFinishedTrialError:
            return TrialState.FAIL  # another run failed it as abandoned; its slot runs again
        told = self.study.tell(self.trial, float(value) if state is TrialState.COMPLETE else None,  # type: ignore[arg-type]
                               state=state, skip_if_finished=True)
        return told.state

    def fail(self, reason: str, lost: bool = False) -> None:
        """Fail the trial with ``reason``; ``lost``: through no fault of its own, so its slot reruns it."""
        try:
            self.trial.set_user_attr(ATTR_FAIL, reason)
            if lost:
                self.trial.set_user_attr(ATTR_LOST, True)
        except UpdateFinishedTrialError:
            return  # another run failed it already
        self.study.tell(self.trial, state=TrialState.FAIL, skip_if_finished=True)
