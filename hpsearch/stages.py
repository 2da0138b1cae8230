"""Runs a study's stages in order, each an Optuna study filled up to its budget of finished trials.

Any number of ``hpsearch run`` processes may run one study at once, on any machines sharing its
database: they behave as one run. A process starts a trial only after claiming one of the stage's
budget slots in the database (see :mod:`hpsearch.coordination`), so each stage ends with exactly its
budget of finished trials; a slot whose trial failed is claimed again. Each process asks, reports
and tells for its own trials; executors only train.

A stage with ``narrow`` or ``freeze`` searches a space derived from the previous stage's best
trials. It is derived once, when every trial of the previous stage has finished in every process,
and stored on the stage's study; every process and every later run reads it back, so a running
stage never changes its space under the sampler (:mod:`hpsearch.derive`: the space, warm starts,
the earlier trials a sampler starts from, and whether a round of a repeated stage runs).
"""

from __future__ import annotations

from collections.abc import Container, Mapping
import dataclasses
from dataclasses import dataclass
from datetime import datetime
import json
import threading
import time
from typing import Any
import warnings

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from hpsearch import __version__, identity, lr_range_stage, objective, pruners, samplers
from hpsearch.artifacts import KeptModels
from hpsearch.coordination import Claim, Owner, RunRegistry, StageClaims, ensure_tables
from hpsearch.derive import (  # noqa: F401 - ATTR_* are read from here by results, report and tests too
    ATTR_DERIVED,
    ATTR_ENDED,
    ATTR_PRIOR,
    ATTR_PRIOR_OF,
    ATTR_SPACE,
    ATTR_SPACE_AS_WRITTEN,
    ATTR_WARM_STARTS,
    CONVERGED,
    Ranked,
    prior_trials,
    ranked_trials,
    round_verdict,
    source_index,
    stage_space,
    warm_starts,
)
from hpsearch.errors import HpsearchError, SpecError, StageFailedError, StorageUnavailableError
from hpsearch.executors import Executor, TrialJob, make_executor
from hpsearch.history import StageHistory
from hpsearch.space import (
    IntParam,
    space_to_raw,
    suggest,
)
from hpsearch.spec import StageSpec, StudySpec
from hpsearch.storage import GRACE_S, HEARTBEAT_S, quiet_heartbeat_warnings
from hpsearch.train import TrainResult
from hpsearch.train.config import TrainConfig

# Study user attributes of a stage.
ATTR_BUDGET = "budget"  # finished trials the stage runs (a grid may hold fewer than written)
ATTR_TRIALS = "trials"  # the stage's trials as the study file wrote them when the budget was set
# Trial user attributes set by the stage runner.
ATTR_RETRY_OF = "retry_of"  # the number of the lost trial this one repeats
ATTR_WARM_START = "warm_start_of"  # "stage#number" of the previous stage's trial this one repeats

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# How long the loop waits for trial events before it looks at the stop flag again.
_POLL_S = 0.5
# How often a run looks for slots freed by other runs, and for trials of runs that are gone.
_RECLAIM_S = 2.0
_REAP_S = 5.0


class RunListener:
    """Hooks for progress output; each does nothing unless overridden."""

    def on_stage_start(self, spec: StudySpec, stage: StageSpec, study: optuna.Study, done: int) -> None: ...

    def on_trial_end(self, stage: StageSpec, trial: FrozenTrial, done: int, best: FrozenTrial | None) -> None: ...

    def on_stage_end(self, stage: StageSpec, study: optuna.Study) -> None: ...

    def on_stage_skipped(self, stage: StageSpec, reason: str) -> None: ...

    def on_waiting(self, stage: StageSpec, running: int) -> None:
        """This run has nothing left to start in ``stage`` while other runs still run ``running`` trials."""

    def on_abandoned(self, stage: StageSpec, trials: list[FrozenTrial]) -> None:
        """These trials of runs that are gone were failed; their slots run again."""

    def on_study_done(self, spec: StudySpec, summary: str) -> None:
        """Every stage had finished its budget before this run started."""

    def on_note(self, stage: StageSpec, line: str) -> None:
        """A line about ``stage`` worth showing: an lr range test's result."""


@dataclass
class _Failure:
    count: int = 0
    last: str = ""


def run_study(spec: StudySpec, storage: optuna.storages.BaseStorage, listener: RunListener | None = None,
              stop: threading.Event | None = None, executor: Executor | None = None,
              force_resume: bool = False) -> None:
    """Run every stage of ``spec`` in order, on ``executor`` (default: the one the study file names).

    Other processes may run the same study at the same time; together they run each stage's budget.
    Setting ``stop`` (a signal handler does) fails the running trials as interrupted and raises
    KeyboardInterrupt between two storage writes, never in the middle of one.

    Raises:
        StageFailedError: a stage's trials failed ``max_failures`` times, or it had nothing to narrow from.
        SpecError: the study file changed what a started stage's trials train or rank by
            (:mod:`hpsearch.identity`), and not ``force_resume``.
    """
    listener = listener or RunListener()
    stop = stop or threading.Event()
    identity.check(spec, storage, force=force_resume)
    done = study_done(spec, storage)
    if done is not None:
        listener.on_study_done(spec, done)  # nothing to run: and nothing written (the file may be read-only)
        return
    engine, retry = storage.engine, storage.call_with_retries  # type: ignore[attr-defined]
    retry("create hpsearch's tables", ensure_tables, engine)
    owner = Owner.this_process()
    registry = RunRegistry(engine, spec.name, owner, retry)
    registry.start()
    try:
        with executor or make_executor(spec.executor) as running_on:
            for index, stage in enumerate(spec.stages):
                if stage.kind == lr_range_stage.KIND:
                    registry.beat(stage.name)
                    lr_range_stage.run_range_stage(spec, index, storage, listener, stop)
                    continue
                StageRun(spec, stage, index, storage, running_on, listener, stop, registry, owner).run()
    finally:
        registry.end()


def study_done(spec: StudySpec, storage: optuna.storages.BaseStorage) -> str | None:
    """``"coarse 20/20, fine 10/10"`` when every stage has finished its budget and runs nothing; else ``None``.

    Reads only: a study that is done must not need a writable database.
    """
    names = {s.study_name: s._study_id for s in storage.get_all_studies()}
    written = json.dumps(space_to_raw(spec.space), sort_keys=True)
    parts = []
    for stage in spec.stages:
        study_id = names.get(spec.study_name(stage))
        if study_id is None:
            return None
        attrs = storage.get_study_user_attrs(study_id)
        if stage.kind == lr_range_stage.KIND:
            if lr_range_stage.ATTR_LR_RANGE not in attrs:
                return None
            parts.append(f"{stage.name} lr range test done")
            continue
        if attrs.get(ATTR_TRIALS) != stage.trials or storage.get_n_trials(study_id, TrialState.RUNNING):
            return None
        if attrs.get(ATTR_SPACE_AS_WRITTEN) != written:
            return None  # a changed study file: the run says what is wrong
        finished = storage.get_n_trials(study_id, FINISHED)
        ended = attrs.get(ATTR_ENDED)
        if isinstance(ended, dict) and ended.get("budget") == stage.trials:
            why = "converged" if str(ended.get("reason", "")).startswith(CONVERGED) else "ended by its timeout"
            parts.append(f"{stage.name} {finished}/{attrs.get(ATTR_BUDGET)} ({why})")
            continue
        if finished < attrs.get(ATTR_BUDGET, stage.trials):
            return None
        parts.append(f"{stage.name} {finished}/{attrs.get(ATTR_BUDGET)}")
    return ", ".join(parts)


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
    name_metric(study, spec.metric)
    return study


def name_metric(study: optuna.Study, metric: str) -> None:
    """Name the study's objective ``metric``, so that optuna-dashboard shows ``val_rmse``, not "Objective 0".

    Also names it on stages created before hpsearch named them, when they are resumed; written only
    when it changes.
    """
    if study.metric_names != [metric]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric])


def max_epochs(spec: StudySpec, stage: StageSpec) -> int:
    """The most epochs a trial of ``stage`` may train: what hyperband takes as a full trial."""
    searched = [p.high for p in spec.space if p.name == "epochs" and isinstance(p, IntParam)]
    return int(max(searched, default=spec.stage_train(stage).get("epochs", TrainConfig.epochs)))


class StageRun:
    """This process's share of one stage: claims slots and keeps ``executor`` busy until the stage is over.

    The stage is over when every slot holds a finished trial (or its timeout ended it) and no process
    runs any trial of it any more; until then a process with nothing to start waits, fails the trials
    of runs that are gone, and claims the slots they free.
    """

    def __init__(self, spec: StudySpec, stage: StageSpec, index: int, storage: optuna.storages.BaseStorage,
                 executor: Executor, listener: RunListener, stop: threading.Event,
                 registry: RunRegistry, owner: Owner) -> None:
        self.spec, self.stage, self.executor, self.listener, self.stop = spec, stage, executor, listener, stop
        self.registry = registry
        pruner = pruners.make_pruner(spec.stage_pruner(stage), max_epochs(spec, stage))
        self.study = open_stage_study(spec, stage, storage, pruner=pruner)
        self.claims = StageClaims(storage.engine, self.study._study_id, owner, GRACE_S,  # type: ignore[attr-defined]
                                  storage.call_with_retries)  # type: ignore[attr-defined]
        self.claims.adopt()
        if stage.round > 1 and ATTR_ENDED not in self.study.user_attrs and not storage.get_n_trials(self.study._study_id):
            verdict = round_verdict(spec, index, storage)  # every run decides alike: the round before is over
            if verdict is not None:
                self.study.set_user_attr(ATTR_SPACE_AS_WRITTEN, json.dumps(space_to_raw(spec.space), sort_keys=True))
                self.study.set_user_attr(ATTR_ENDED, {"reason": verdict, "budget": stage.trials})
        self._ended = self._ended_now()
        self.space = spec.space if self._ended else stage_space(spec, index, storage, self.study)
        self.plan = samplers.make_plan(stage.sampler, self.space, stage.grid, spec.seed + 1_000_003 * index,
                                       trials=stage.trials, startup_trials=stage.startup_trials)
        self.prior: list[FrozenTrial] = []
        if self.plan.reads_history and not self._ended:
            self.prior, record = prior_trials(spec, index, storage, self.space)
            if record is not None and self.study.user_attrs.get(ATTR_PRIOR) != record:
                self.study.set_user_attr(ATTR_PRIOR, record)
        warm = self.study.user_attrs.get(ATTR_WARM_STARTS) or []
        self.warm: list[str] = [w["of"] for w in warm]
        # What slot n runs: warm starts first, then (grid) the grid points not among them.
        self.planned: list[dict[str, Any]] = [w["params"] for w in warm]
        if self.plan.configs is not None:
            self.planned += [c for c in self.plan.configs if c not in self.planned]
        self.budget = stage.trials if self.plan.configs is None else min(stage.trials, len(self.planned))
        self.shown = dataclasses.replace(stage, trials=self.budget)  # the stage as progress output shows it
        identity.record(self.study, spec, stage)
        for key, value in {"hpsearch_stage": stage.name, "stage_index": index, "sampler": stage.sampler,
                           "pruner": spec.stage_pruner(stage).kind, "metric": spec.metric,
                           ATTR_BUDGET: self.budget, ATTR_TRIALS: stage.trials}.items():
            if self.study.user_attrs.get(key) != value:
                self.study.set_user_attr(key, value)
        self.running: dict[int, objective.TrialRecorder] = {}
        self.batch = objective.WriteBatch(storage)  # the running trials' epochs, written together
        self._ending: list[objective.Ending] = []  # trials ended during this poll, not written yet
        self._no_queue_until = 0.0  # no trial queued with enqueue_trial: look again then
        # What samplers, pruners and progress see of the stage: bounded, read incrementally.
        self.history = StageHistory(storage, self.study._study_id, self.study.direction, stage.history)
        self.failures = _Failure()
        self.kept = KeptModels(spec, storage, self.study._study_id,  # type: ignore[arg-type]
                               self.study.direction is StudyDirection.MAXIMIZE)
        self._may_ask = True
        self._deadline = None if stage.timeout is None else time.monotonic() + stage.timeout
        self._waiting = False

    def run(self) -> None:
        storage = self.study._storage
        self.history.load()
        self.history.set_prior(self.prior)
        storage.show_history(self.study._study_id, self.history)  # type: ignore[attr-defined]
        try:
            self._run()
        finally:
            storage.show_history(self.study._study_id, None)  # type: ignore[attr-defined]

    def _run(self) -> None:
        if self._ended:
            reason = str(self.study.user_attrs[ATTR_ENDED].get("reason", ""))
            self.listener.on_stage_skipped(self.stage, reason if reason.startswith(CONVERGED) else
                                           f"ended by its timeout ({self.stage.timeout or 0:g} s) in an earlier run")
        self.listener.on_stage_start(self.spec, self.shown, self.study, self.claims.finished(self.budget))
        self.registry.beat(self.stage.name)
        self._reap()
        now = time.monotonic()
        last_beat = last_check = last_reap = now
        try:
            while True:
                if self.stop.is_set():
                    raise KeyboardInterrupt
                if self._deadline is not None and time.monotonic() > self._deadline:
                    self._deadline = None  # no new trial starts; running ones finish
                    self._ended = True
                    self.study.set_user_attr(ATTR_ENDED, {"reason": "timeout", "budget": self.stage.trials})
                    self.listener.on_note(self.stage, f"its timeout ({self.stage.timeout:g} s) is reached: no new trial "
                                                      f"starts ({self.claims.finished(self.budget)} of {self.budget} "
                                                      f"finished, {len(self.running)} running)")
                self._fill()
                if not self.running and self._over():
                    break
                if self.running:
                    self.executor.poll(self, timeout=_POLL_S)
                    self._end_trials()
                else:
                    self._wait()
                now = time.monotonic()
                self.batch.flush_if_due()
                if now - last_beat > HEARTBEAT_S / 2:
                    self._beat()
                    self.registry.beat()
                    last_beat = now
                if now - last_check > _RECLAIM_S:
                    # Other runs may have freed slots (a failed trial) or ended the stage (its timeout),
                    # and finished trials that pruners and progress should count.
                    self._may_ask, self._ended, last_check = True, self._ended or self._ended_now(), now
                    self.history.refresh()
                    self.history.recount()
                if now - last_reap > _REAP_S:
                    self._reap()
                    last_reap = now
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM) or broken: no trial of ours may stay RUNNING. Lost, not
            # failed: whichever run claims their slots next runs them again.
            self.executor.close()
            try:
                self._end_trials()  # trials that did end are kept
            except StorageUnavailableError:
                pass
            for recorder in self.running.values():
                try:
                    recorder.fail("interrupted: the run was stopped before this trial finished", lost=True)
                except StorageUnavailableError:
                    pass  # the storage is gone: the next run, or another one, fails it as abandoned
            self.running.clear()
            raise
        self.listener.on_stage_end(self.shown, self.study)
        if self.failures.count >= self.stage.max_failures:
            raise StageFailedError(
                f"stage {self.stage.name} stopped after {self.failures.count} failed trials "
                f"(max_failures={self.stage.max_failures}); last failure: {self.failures.last}"
            )

    def _beat(self) -> None:
        """Tell other runs our trials are alive (one transaction for all); one silent for the grace period is failed."""
        storage = self.study._storage
        if is_heartbeat_enabled(storage):
            storage.beat([recorder.trial._trial_id for recorder in self.running.values()])  # type: ignore[attr-defined]

    def _over(self) -> bool:
        """Nothing of ours runs: is the stage over for this process?"""
        if self.failures.count >= self.stage.max_failures:
            return True  # this run gives up on the stage; others may go on
        if self.study._storage.get_n_trials(self.study._study_id, TrialState.RUNNING):
            return False  # other runs' trials: the next stage must wait for their results
        return self._ended or self.claims.finished(self.budget) >= self.budget

    def _wait(self) -> None:
        if not self._waiting:
            running = self.study._storage.get_n_trials(self.study._study_id, TrialState.RUNNING)
            if running:  # else another run is creating its trial: a moment, not worth a line
                self._waiting = True
                self.listener.on_waiting(self.shown, running)
        self.stop.wait(_POLL_S)

    def _ended_now(self) -> bool:
        ended = self.study.user_attrs.get(ATTR_ENDED)
        # A stage that ran out of time is over, unless its budget was raised since.
        return isinstance(ended, dict) and ended.get("budget") == self.stage.trials

    def _reap(self) -> None:
        failed = fail_abandoned(self.study, mine={r.trial._trial_id for r in self.running.values()})
        if failed:
            self._may_ask = True
            self.listener.on_abandoned(self.shown, failed)

    def _fill(self) -> None:
        while self._may_ask and self.executor.free_slots() > 0:
            if self.failures.count >= self.stage.max_failures or self._ended:
                self._may_ask = False
                return
            claims = self.claims.take_many(self.budget, self.executor.free_slots())
            if not claims:
                self._may_ask = False  # every slot is held: look again when a trial ends, or in a while
                return
            starting: list[tuple[objective.TrialRecorder, TrialJob]] = []
            for claim in claims:
                recorder = self._start(claim)
                try:
                    params = suggest(recorder.trial, self.space)
                    config = objective.trial_config(self.spec, params, recorder.number, self.stage)
                except HpsearchError as exc:
                    self._failed(recorder.number, str(exc), "", recorder)
                    continue
                if self.plan.reads_history:
                    recorder.start()  # the sampler's next ask must see this trial's parameters
                starting.append((recorder, TrialJob(recorder.number, config, self.spec.data, params)))
            if not self.plan.reads_history:
                # One transaction for all: the parameters, a heartbeat, the claim's trial of each.
                objective.start_all(self.study._storage, [recorder for recorder, _ in starting])
            for recorder, job in starting:
                self.running[recorder.number] = recorder
                self.executor.submit(job)
            if starting:
                self._waiting = False

    def _start(self, claim: Claim) -> objective.TrialRecorder:
        """Create the trial that fills ``claim``, RUNNING and owned by this process from its first write.

        A free draw takes a trial queued with Optuna's ``enqueue_trial`` first, if there is one.
        """
        fixed, attrs = self._assignment(claim)
        storage = self.study._storage
        attrs = {**objective.owner_attrs(), objective.ATTR_SLOT: claim.slot, objective.ATTR_ATTEMPT: claim.attempt, **attrs}
        trial_id = None if fixed else self._pop_waiting()
        if trial_id is None:
            template = FrozenTrial(
                number=0, state=TrialState.RUNNING, value=None, datetime_start=datetime.now(), datetime_complete=None,
                params={}, distributions={}, intermediate_values={}, trial_id=0, user_attrs=attrs,
                system_attrs={"fixed_params": fixed} if fixed else {},
            )
            trial_id = storage.create_new_trial(self.study._study_id, template)
        else:
            storage.write_trial(trial_id, user_attrs=attrs)  # type: ignore[attr-defined]
        storage.defer_writes(trial_id)  # type: ignore[attr-defined]  # the recorder writes them in batches
        if self.plan.reads_history:
            self.history.refresh()  # the sampler models the trials running and finished by now
        self.study._thread_local.cached_all_trials = None  # as Study.ask does: samplers must see fresh trials
        trial = optuna.Trial(self.study, trial_id)
        # Seeded by the trial's number: no two runs (or a run and its resumption) draw alike.
        self.study.sampler = self.plan.sampler_for(trial.number)
        return objective.TrialRecorder(self.study, trial, self.spec.metric, batch=self.batch,
                                       first_write=[self.claims.bind_statement(claim, trial_id)])

    def _pop_waiting(self) -> int | None:
        """A trial queued with ``enqueue_trial``; while none is queued, looked for every _RECLAIM_S, not per trial."""
        now = time.monotonic()
        if now < self._no_queue_until:
            return None
        trial_id = pop_waiting(self.study)
        if trial_id is None:
            self._no_queue_until = now + _RECLAIM_S
        return trial_id

    def _assignment(self, claim: Claim) -> tuple[dict[str, Any], dict[str, Any]]:
        """The fixed parameters and extra attributes of the trial that fills ``claim``."""
        if claim.previous is not None:
            before = self.study._storage.get_trial(claim.previous)
            if before.user_attrs.get(objective.ATTR_LOST) and ATTR_RETRY_OF not in before.user_attrs:
                # It did nothing wrong (its worker or its run died): run it once more.
                return dict(before.params), {ATTR_RETRY_OF: before.number}
        planned = claim.slot < len(self.planned) and (claim.attempt == 0 or self.plan.configs is not None)
        if not planned:
            return {}, {}
        attrs = {ATTR_WARM_START: self.warm[claim.slot]} if claim.slot < len(self.warm) else {}
        return dict(self.planned[claim.slot]), attrs

    # TrialHandler: called by the executor in this thread.
    def on_start(self, key: int, placement: Mapping[str, object]) -> None:
        self.running[key].placed(placement)

    def on_report(self, key: int, epoch: int, metrics: Mapping[str, float]) -> bool:
        with self.history.own_trials():  # the pruner asks here: not against the previous stage's trials
            return self.running[key].report(epoch, metrics)

    # Trials that end during a poll are written together when it returns (_end_trials): the members
    # of a pack often end in the same epoch, and one transaction each would keep the database busy.
    def on_result(self, key: int, result: TrainResult) -> None:
        recorder = self.running.pop(key)
        ending = recorder.finishing(result)
        best = self.history.best
        meta = {"study": self.spec.name, "stage": self.stage.name, "trial": recorder.number, "metric": self.spec.metric,
                "value": ending.value, "params": dict(recorder.trial.params), "hpsearch": __version__}
        self._ending.append(self.kept.attach(ending, result, None if best is None else best.value, meta))

    def on_error(self, key: int, message: str, detail: str, lost: bool = False) -> None:
        recorder = self.running.pop(key)
        self._ending.append(recorder.failing(self._failure(message, detail), lost=lost))

    def _end_trials(self) -> None:
        endings = self._ending
        objective.end_all(self.study._storage, endings)
        self._ending = []  # only once written: if the write failed, the clean-up tries them again
        self.kept.settle()
        for ending in endings:
            self._trial_ended(ending.recorder)

    def _failed(self, key: int, message: str, detail: str, recorder: objective.TrialRecorder, lost: bool = False) -> None:
        recorder.fail(self._failure(message, detail), lost=lost)
        self._trial_ended(recorder)

    def _failure(self, message: str, detail: str) -> str:
        """Count a failed trial; its fail reason. A lost trial (its worker killed, its node lost) counts too."""
        self.failures.count += 1
        self.failures.last = (message.strip().splitlines() or ["(no message)"])[0]  # the CLI prints one line
        return message if not detail else f"{message}\n{detail}"

    def _trial_ended(self, recorder: objective.TrialRecorder) -> None:
        self._may_ask = True
        # The recorder knows the trial as written: no read. Other runs' trials come with the next refresh.
        trial = recorder.frozen
        if trial.state is TrialState.RUNNING:  # another run failed it as abandoned: read what it wrote
            trial = self.study._storage.get_trial(trial._trial_id)
        self.history.add(trial)
        self.listener.on_trial_end(self.shown, trial, self.history.finished, self.history.best)


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best complete trial, or ``None`` when there is none (Optuna raises instead)."""
    try:
        return study.best_trial
    except ValueError:
        return None


def fail_abandoned(study: optuna.Study, mine: Container[int] | None = None) -> list[FrozenTrial]:
    """Fail RUNNING trials whose run is gone: its process is dead on this host, or its heartbeat went silent.

    ``mine``: the trial ids this process is running now. Given, a trial owned by this process but not
    among them is abandoned too (an earlier run in this process ended without it: a notebook's
    interrupted ``hpsearch.run``); not given, every trial of this process counts as alive.
    They are marked lost, so the runs that claim their slots run them again. Returns the trials it failed.
    """
    storage = study._storage
    with quiet_heartbeat_warnings():
        stale = set(storage._get_stale_trial_ids(study._study_id)) if is_heartbeat_enabled(storage) else set()  # type: ignore[attr-defined]
    me = Owner.this_process()
    failed = []
    for trial in _trials_in(study, TrialState.RUNNING):
        owner = Owner(str(trial.user_attrs.get(objective.ATTR_HOST)), trial.user_attrs.get(objective.ATTR_PID, -1))
        if owner == me and (mine is None or trial._trial_id in mine):
            continue  # ours, and we are alive
        if owner == me:
            why = "abandoned: an earlier run in this process ended before it finished"
        elif owner.is_alive_here() is False:
            why = f"abandoned: its run (pid {owner.pid} on {owner.host}) ended before it finished"
        elif trial._trial_id in stale:
            why = f"abandoned: its run (pid {owner.pid} on {owner.host}) sent no heartbeat for {GRACE_S} s"
        else:
            continue
        try:
            storage.set_trial_user_attr(trial._trial_id, objective.ATTR_FAIL, why)
            storage.set_trial_user_attr(trial._trial_id, objective.ATTR_LOST, True)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished, or another run failed it, in the meantime
        try:
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        failed.append(storage.get_trial(trial._trial_id))
    return failed


def _trials_in(study: optuna.Study, state: TrialState) -> list[FrozenTrial]:
    """The trials of ``study`` in ``state``, read from the database by hpsearch's index (not the whole study)."""
    storage = study._storage
    return storage.call_with_retries("read the trials", storage.rdb.get_all_trials,  # type: ignore[attr-defined, no-any-return]
                                     study._study_id, False, (state,))


def pop_waiting(study: optuna.Study) -> int | None:
    """Move the oldest trial queued with ``enqueue_trial`` to RUNNING and return its id; None if none is queued.

    Optuna's own ``_pop_waiting_trial_id`` reads every trial of the study; this reads the queued ones.
    Moving one to RUNNING is atomic, so each queued trial is popped by one process only.
    """
    for trial in _trials_in(study, TrialState.WAITING):
        if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
            return trial._trial_id
    return None
