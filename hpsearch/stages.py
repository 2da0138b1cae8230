"""Runs a study's stages in order, each an Optuna study filled up to its budget of finished trials.

The orchestrating process alone asks, reports and tells; executors only train. A stage resumes where
it stopped: finished trials are kept, trials left RUNNING by a run that is gone are failed first,
and only the rest of the budget runs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
import os
import socket
import threading
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import objective, samplers
from hpsearch.errors import HpsearchError, SpecError, StageFailedError
from hpsearch.executors import Executor, TrialJob, make_executor
from hpsearch.space import suggest
from hpsearch.spec import StageSpec, StudySpec
from hpsearch.storage import HEARTBEAT_S, quiet_heartbeat_warnings
from hpsearch.train import TrainResult

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# How long the loop waits for trial events before it looks at the stop flag again.
_POLL_S = 0.5


class RunListener:
    """Hooks for progress output; each does nothing unless overridden."""

    def on_stage_start(self, spec: StudySpec, stage: StageSpec, study: optuna.Study, done: int) -> None: ...

    def on_trial_end(self, stage: StageSpec, trial: FrozenTrial, done: int, best: FrozenTrial | None) -> None: ...

    def on_stage_end(self, stage: StageSpec, study: optuna.Study) -> None: ...


@dataclass
class _Failure:
    count: int = 0
    last: str = ""


def run_study(spec: StudySpec, storage: optuna.storages.BaseStorage, listener: RunListener | None = None,
              stop: threading.Event | None = None) -> None:
    """Run every stage of ``spec`` in order.

    Setting ``stop`` (a signal handler does) fails the running trials as interrupted and raises
    KeyboardInterrupt between two storage writes, never in the middle of one.

    Raises:
        StageFailedError: a stage's trials failed ``max_failures`` times.
    """
    listener = listener or RunListener()
    stop = stop or threading.Event()
    with make_executor(spec.executor.kind, spec.executor.workers) as executor:
        for index, stage in enumerate(spec.stages):
            StageRun(spec, stage, index, storage, executor, listener, stop).run()


def open_stage_study(spec: StudySpec, stage: StageSpec, storage: optuna.storages.BaseStorage,
                     sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """Create or load the Optuna study of ``stage``; its direction must match the study file."""
    study = optuna.create_study(
        storage=storage, study_name=spec.study_name(stage), direction=spec.direction,
        load_if_exists=True, sampler=sampler, pruner=optuna.pruners.NopPruner(),
    )
    if study.direction.name.lower() != spec.direction:
        raise SpecError("direction", f"study {study.study_name} in this storage was created to {study.direction.name.lower()}; "
                                     f"use another name to {spec.direction}")
    return study


class StageRun:
    """One stage's run: keeps ``executor`` busy until the budget is met, handling its trials' events."""

    def __init__(self, spec: StudySpec, stage: StageSpec, index: int, storage: optuna.storages.BaseStorage,
                 executor: Executor, listener: RunListener, stop: threading.Event) -> None:
        self.spec, self.stage, self.executor, self.listener, self.stop = spec, stage, executor, listener, stop
        study = open_stage_study(spec, stage, storage)
        fail_abandoned(study)
        # Seeded by the history too: a resumed run must not replay the draws of the first one.
        seed = spec.seed + 1_000_003 * index + len(study.get_trials(deepcopy=False))
        self.plan = samplers.make_plan(stage.sampler, spec.space, stage.grid, seed)
        self.study = open_stage_study(spec, stage, storage, self.plan.sampler)
        for key, value in {"hpsearch_stage": stage.name, "stage_index": index, "sampler": stage.sampler,
                           "metric": spec.metric, "budget": stage.trials}.items():
            self.study.set_user_attr(key, value)
        self.running: dict[int, objective.TrialRecorder] = {}
        self.failures = _Failure()
        self._may_ask = True

    def run(self) -> None:
        counts = self._counts()
        self.listener.on_stage_start(self.spec, self.stage, self.study, counts[TrialState.COMPLETE] + counts[TrialState.PRUNED])
        last_beat = time.monotonic()
        try:
            while True:
                if self.stop.is_set():
                    raise KeyboardInterrupt
                self._fill()
                if not self.running:
                    break
                self.executor.poll(self, timeout=_POLL_S)
                if time.monotonic() - last_beat > HEARTBEAT_S / 2:
                    for recorder in self.running.values():
                        recorder.heartbeat()
                    last_beat = time.monotonic()
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM) or broken: no trial of ours may stay RUNNING.
            self.executor.close()
            for recorder in self.running.values():
                recorder.fail("interrupted: the run was stopped before this trial finished")
            self.running.clear()
            raise
        self.listener.on_stage_end(self.stage, self.study)
        if self.failures.count >= self.stage.max_failures:
            raise StageFailedError(
                f"stage {self.stage.name} stopped after {self.failures.count} failed trials "
                f"(max_failures={self.stage.max_failures}); last failure: {self.failures.last}"
            )

    def _counts(self) -> Counter[TrialState]:
        return Counter(t.state for t in self.study.get_trials(deepcopy=False))

    def _left(self) -> int:
        counts = self._counts()
        left = self.stage.trials - counts[TrialState.COMPLETE] - counts[TrialState.PRUNED] - counts[TrialState.RUNNING]
        planned = self.plan.remaining(self.study)
        return left if planned is None else min(left, planned)

    def _fill(self) -> None:
        # The budget is looked up again only after a trial ended: the loop comes here twice a second.
        while self._may_ask and self.executor.free_slots() > 0:
            if self.failures.count >= self.stage.max_failures or self._left() <= 0:
                self._may_ask = False
                return
            # Queued with its owner, a trial is never RUNNING without one, even if this process
            # is killed right after ask(): a later run can always tell it was abandoned. A trial
            # still queued (its run died between the two calls) is taken first.
            if not self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                self.study.enqueue_trial(self.plan.next_params(self.study), user_attrs=objective.owner_attrs())
            with quiet_heartbeat_warnings():
                trial = self.study.ask()
            recorder = objective.TrialRecorder(self.study, trial, self.spec.metric)
            recorder.start()
            try:
                params = suggest(trial, self.spec.space)
                config = objective.trial_config(self.spec, params, trial.number)
            except HpsearchError as exc:
                self.on_error(trial.number, str(exc), "", recorder)
                continue
            self.running[trial.number] = recorder
            self.executor.submit(TrialJob(trial.number, config, self.spec.data))

    # TrialHandler: called by the executor in this thread.
    def on_report(self, key: int, epoch: int, metrics: Mapping[str, float]) -> bool:
        return self.running[key].report(epoch, metrics)

    def on_result(self, key: int, result: TrainResult) -> None:
        self.running.pop(key).finish(result)
        self._trial_ended(key)

    def on_error(self, key: int, message: str, detail: str, recorder: objective.TrialRecorder | None = None) -> None:
        recorder = recorder or self.running.pop(key)
        recorder.fail(message if not detail else f"{message}\n{detail}")
        self.failures.count += 1
        self.failures.last = (message.strip().splitlines() or ["(no message)"])[0]  # the CLI prints one line
        self._trial_ended(key)

    def _trial_ended(self, key: int) -> None:
        self._may_ask = True
        trials = self.study.get_trials(deepcopy=False)
        done = sum(t.state in FINISHED for t in trials)
        best = best_trial(self.study)
        self.listener.on_trial_end(self.stage, next(t for t in trials if t.number == key), done, best)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial, or ``None`` when there is none (Optuna raises instead)."""
    try:
        return study.best_trial
    except ValueError:
        return None


def fail_abandoned(study: optuna.Study) -> list[int]:
    """Fail RUNNING trials whose run is gone: its process is dead here, or its heartbeat went silent.

    Returns the numbers of the trials it failed.
    """
    with quiet_heartbeat_warnings():
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    failed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get(objective.ATTR_HOST) == host and not _alive(attrs.get(objective.ATTR_PID)):
            study._storage.set_trial_user_attr(  # the trial belongs to no live process: fail it here
                trial._trial_id, objective.ATTR_FAIL, "abandoned: the run that started it ended before it finished"
            )
            try:
                study.tell(trial.number, state=TrialState.FAIL)
                failed.append(trial.number)
            except (ValueError, RuntimeError):
                pass  # another process finished it in the meantime
    return failed


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
