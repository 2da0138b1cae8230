"""Runs a study's stages in order, each an Optuna study filled up to its budget of finished trials.

The orchestrating process alone asks, reports and tells; executors only train. A stage resumes where
it stopped: finished trials are kept, trials left RUNNING by a run that is gone are failed first,
and only the rest of the budget runs.

A stage with ``narrow`` or ``freeze`` searches a space derived from the previous stage's best
trials. It is derived once, when the stage starts, and stored on the stage's study; later runs read
it back, so a running stage never changes its space under the sampler.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
import dataclasses
from dataclasses import dataclass
import json
import os
import socket
import threading
import time

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import objective, pruners, samplers
from hpsearch.errors import HpsearchError, SpecError, StageFailedError
from hpsearch.executors import Executor, TrialJob, make_executor
from hpsearch.narrow import contains, narrow_space
from hpsearch.space import IntParam, Space, parse_space, space_to_raw, suggest
from hpsearch.spec import StageSpec, StudySpec
from hpsearch.storage import HEARTBEAT_S, quiet_heartbeat_warnings
from hpsearch.train import TrainResult
from hpsearch.train.config import TrainConfig

# Study user attributes of a stage.
ATTR_SPACE = "space"  # the space the stage searches, in the study file's format
ATTR_SPACE_AS_WRITTEN = "space_as_written"  # the study file's space when the stage started
ATTR_DERIVED = "derived_from"  # how the space was derived: previous stage, trials used
ATTR_ENDED = "ended"  # why a stage ended before its budget ("timeout"), with the budget it had
# Trial user attributes set by the stage runner.
ATTR_RETRY_OF = "retry_of"  # the number of the lost trial this one repeats
ATTR_WARM_START = "warm_start_of"  # "stage#number" of the previous stage's trial this one repeats

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# How long the loop waits for trial events before it looks at the stop flag again.
_POLL_S = 0.5


class RunListener:
    """Hooks for progress output; each does nothing unless overridden."""

    def on_stage_start(self, spec: StudySpec, stage: StageSpec, study: optuna.Study, done: int) -> None: ...

    def on_trial_end(self, stage: StageSpec, trial: FrozenTrial, done: int, best: FrozenTrial | None) -> None: ...

    def on_stage_end(self, stage: StageSpec, study: optuna.Study) -> None: ...

    def on_stage_skipped(self, stage: StageSpec, reason: str) -> None: ...


@dataclass
class _Failure:
    count: int = 0
    last: str = ""


def run_study(spec: StudySpec, storage: optuna.storages.BaseStorage, listener: RunListener | None = None,
              stop: threading.Event | None = None, executor: Executor | None = None) -> None:
    """Run every stage of ``spec`` in order, on ``executor`` (default: the one the study file names).

    Setting ``stop`` (a signal handler does) fails the running trials as interrupted and raises
    KeyboardInterrupt between two storage writes, never in the middle of one.

    Raises:
        StageFailedError: a stage's trials failed ``max_failures`` times, or it had nothing to narrow from.
    """
    listener = listener or RunListener()
    stop = stop or threading.Event()
    with executor or make_executor(spec.executor) as running_on:
        for index, stage in enumerate(spec.stages):
            StageRun(spec, stage, index, storage, running_on, listener, stop).run()


def open_stage_study(spec: StudySpec, stage: StageSpec, storage: optuna.storages.BaseStorage,
                     sampler: optuna.samplers.BaseSampler | None = None,
                     pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Create or load the Optuna study of ``stage``; its direction must match the study file."""
    study = optuna.create_study(
        storage=storage, study_name=spec.study_name(stage), direction=spec.direction,
        load_if_exists=True, sampler=sampler, pruner=pruner or optuna.pruners.NopPruner(),
    )
    if study.direction.name.lower() != spec.direction:
        raise SpecError("direction", f"study {study.study_name} in this storage was created to {study.direction.name.lower()}; "
                                     f"use another name to {spec.direction}")
    return study


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The complete trials of ``study``, best first (ties: earlier first)."""
    sign = -1.0 if study.direction is optuna.study.StudyDirection.MAXIMIZE else 1.0
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(complete, key=lambda t: (sign * t.value, t.number))  # type: ignore[operator]


def stage_space(spec: StudySpec, index: int, storage: optuna.storages.BaseStorage, study: optuna.Study) -> Space:
    """The space stage ``index`` searches: stored on its study, or derived now and stored.

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
    space = spec.space
    if stage.derived or stage.warm_start:
        previous = spec.stages[index - 1]
        before = optuna.load_study(study_name=spec.study_name(previous), storage=storage)
        ranked = ranked_trials(before)
        needs = stage.narrow.needs() if stage.narrow else 1
        if len(ranked) < needs:
            counts = Counter(t.state for t in before.get_trials(deepcopy=False))
            raise StageFailedError(_too_few(spec, index, counts, needs))
        if stage.derived:
            top = stage.narrow.top_count(len(ranked)) if stage.narrow else 1
            space = narrow_space(spec.space, [t.params for t in ranked], stage.narrow.top if stage.narrow else 1,
                                 margin=stage.narrow.margin if stage.narrow else None,
                                 keep_min=stage.narrow.keep_min if stage.narrow else 1, freeze=stage.freeze)
            study.set_user_attr(ATTR_DERIVED, {"stage": previous.name, "complete": len(ranked), "top": top,
                                               "trials": [t.number for t in ranked[:top]]})
        _enqueue_warm_start(study, previous, ranked, space, min(stage.warm_start, stage.trials))
    study.set_user_attr(ATTR_SPACE_AS_WRITTEN, written)
    study.set_user_attr(ATTR_SPACE, space_to_raw(space))  # set last: the stage's space is now fixed
    return space


def _too_few(spec: StudySpec, index: int, counts: Counter[TrialState], needs: int) -> str:
    stage, previous = spec.stages[index], spec.stages[index - 1]
    what = f"narrow.top {stage.narrow.top}" if stage.narrow else "freeze and warm_start"
    return (f"stage {stage.name} cannot derive its space: stage {previous.name} has {counts[TrialState.COMPLETE]} "
            f"complete trial(s) ({counts[TrialState.PRUNED]} pruned, {counts[TrialState.FAIL]} failed) and {what} "
            f"needs at least {needs}; raise stages.{index - 1}.trials or loosen stages.{index}")


def _enqueue_warm_start(study: optuna.Study, previous: StageSpec, ranked: list[FrozenTrial], space: Space, count: int) -> None:
    """Queue the previous stage's best ``count`` configurations that lie inside ``space``, best first."""
    if count <= 0 or study.get_trials(deepcopy=False):
        return  # queued already by an earlier run of this stage (it then had trials)
    seen: list[dict[str, object]] = []
    for trial in ranked:
        if len(seen) >= count:
            break
        if contains(space, trial.params) and trial.params not in seen:
            seen.append(dict(trial.params))
            study.enqueue_trial(trial.params, user_attrs={**objective.owner_attrs(),
                                                          ATTR_WARM_START: f"{previous.name}#{trial.number}"})


def max_epochs(spec: StudySpec) -> int:
    """The most epochs a trial of ``spec`` may train: what hyperband takes as a full trial."""
    searched = [p.high for p in spec.space if p.name == "epochs" and isinstance(p, IntParam)]
    return int(max(searched, default=spec.train.get("epochs", TrainConfig.epochs)))


class StageRun:
    """One stage's run: keeps ``executor`` busy until the budget is met, handling its trials' events."""

    def __init__(self, spec: StudySpec, stage: StageSpec, index: int, storage: optuna.storages.BaseStorage,
                 executor: Executor, listener: RunListener, stop: threading.Event) -> None:
        self.spec, self.stage, self.executor, self.listener, self.stop = spec, stage, executor, listener, stop
        self.written_budget = stage.trials
        study = open_stage_study(spec, stage, storage)
        fail_abandoned(study)
        ended = study.user_attrs.get(ATTR_ENDED)
        # A stage that ran out of time is over, unless its budget was raised since.
        self.skip = isinstance(ended, dict) and ended.get("budget") == stage.trials
        self.space = spec.space if self.skip else stage_space(spec, index, storage, study)
        # Seeded by the history too: a resumed run must not replay the draws of the first one.
        seed = spec.seed + 1_000_003 * index + len(study.get_trials(deepcopy=False))
        self.plan = samplers.make_plan(stage.sampler, self.space, stage.grid, seed)
        if self.plan.configs is not None and len(self.plan.configs) < stage.trials:
            # A grid over a narrowed space can hold fewer points than the grid as written.
            self.stage = stage = dataclasses.replace(stage, trials=len(self.plan.configs))
        pruner = pruners.make_pruner(spec.stage_pruner(stage), max_epochs(spec))
        self.study = open_stage_study(spec, stage, storage, self.plan.sampler, pruner)
        for key, value in {"hpsearch_stage": stage.name, "stage_index": index, "sampler": stage.sampler,
                           "pruner": spec.stage_pruner(stage).kind, "metric": spec.metric, "budget": stage.trials}.items():
            if self.study.user_attrs.get(key) != value:
                self.study.set_user_attr(key, value)
        self.running: dict[int, objective.TrialRecorder] = {}
        self.failures = _Failure()
        self._may_ask = True
        self._deadline = None if stage.timeout is None else time.monotonic() + stage.timeout

    def run(self) -> None:
        if self.skip:
            self.listener.on_stage_skipped(self.stage, f"ended by its timeout ({self.stage.timeout:g} s) in an earlier run")
            return
        counts = self._counts()
        self.listener.on_stage_start(self.spec, self.stage, self.study, counts[TrialState.COMPLETE] + counts[TrialState.PRUNED])
        last_beat = time.monotonic()
        try:
            while True:
                if self.stop.is_set():
                    raise KeyboardInterrupt
                if self._deadline is not None and time.monotonic() > self._deadline:
                    self._deadline = None  # no new trial starts; running ones finish
                    self.study.set_user_attr(ATTR_ENDED, {"reason": "timeout", "budget": self.written_budget})
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
        timed_out = self.stage.timeout is not None and self._deadline is None
        while self._may_ask and not timed_out and self.executor.free_slots() > 0:
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
                params = suggest(trial, self.space)
                config = objective.trial_config(self.spec, params, trial.number)
            except HpsearchError as exc:
                self._failed(trial.number, str(exc), "", recorder)
                continue
            self.running[trial.number] = recorder
            self.executor.submit(TrialJob(trial.number, config, self.spec.data, params))

    # TrialHandler: called by the executor in this thread.
    def on_start(self, key: int, placement: Mapping[str, object]) -> None:
        self.running[key].placed(placement)

    def on_report(self, key: int, epoch: int, metrics: Mapping[str, float]) -> bool:
        return self.running[key].report(epoch, metrics)

    def on_result(self, key: int, result: TrainResult) -> None:
        self.running.pop(key).finish(result)
        self._trial_ended(key)

    def on_error(self, key: int, message: str, detail: str, lost: bool = False) -> None:
        recorder = self.running.pop(key)
        self._failed(key, message, detail, recorder)
        if lost and ATTR_RETRY_OF not in recorder.trial.user_attrs:
            # The trial did nothing wrong (its worker was killed, its node lost): run it once more.
            self.study.enqueue_trial(recorder.trial.params, user_attrs={**objective.owner_attrs(), ATTR_RETRY_OF: key})

    def _failed(self, key: int, message: str, detail: str, recorder: objective.TrialRecorder) -> None:
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
