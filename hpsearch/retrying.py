"""The storage hpsearch hands to Optuna: its cached RDB storage, with every call retried on a transient fault."""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
import copy
from dataclasses import dataclass, field
import datetime
import functools
import json
import logging
import time
from typing import Any, Protocol, TypeVar, cast
import uuid

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.study import StudyDirection
from optuna.study._frozen import FrozenStudy
from optuna.trial import FrozenTrial, TrialState
import sqlalchemy as sa
from sqlalchemy.dialects.mysql import insert as mysql_insert
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
import sqlalchemy.event

from hpsearch.errors import StorageUnavailableError
from hpsearch.faults import retry_budget_s, retrying

T = TypeVar("T")
_logger = logging.getLogger("hpsearch.storage")
_IN_CHUNK = 500  # ids in one IN (...): well under every database's limit on parameters

# A trial system attribute written with each trial creation and claim, so that a retry after an
# ambiguous failure (the commit may have happened) can tell whether the first attempt took effect.
WRITE_ID_ATTR = "hpsearch:write_id"


@dataclass(frozen=True)
class TrialWrite:
    """One trial's part of :meth:`RetryingStorage.write_trials`; the fields are :meth:`~RetryingStorage.write_trial`'s."""

    trial_id: int
    user_attrs: Mapping[str, Any] = field(default_factory=dict)
    heartbeat: bool = False
    statements: Sequence[sa.Executable] = ()
    state: TrialState | None = None
    values: Sequence[float] | None = None


class RetryingStorage(BaseStorage, BaseHeartbeat):
    """An Optuna storage whose calls survive transient database faults.

    It wraps ``_CachedStorage(RDBStorage)`` (what Optuna itself makes of a URL) and passes every call
    through :meth:`call_with_retries`. Use it wherever Optuna takes a storage: ``optuna.create_study``,
    ``optuna.load_study``, ``optuna.storages.fail_stale_trials``.

    Repeating a call after a fault is safe only if a first attempt that did commit (the connection
    dropped after the COMMIT was sent) leaves nothing to undo:

    - reads, and writes that are upserts (attributes, intermediate values, parameters, heartbeats)
      are simply repeated;
    - creating a trial and claiming a queued one (WAITING -> RUNNING) write a fresh id into the
      trial's system attribute ``hpsearch:write_id`` in the same transaction; a repeat first looks
      for that id, so a trial is never created twice (an orphan RUNNING trial) nor claimed by two runs.
      Trials are created without RDBStorage's own retry loop, which would insert again blindly;
    - finishing a trial: a repeat that finds the trial already in the state (and with the values) it
      was given takes the first attempt as done;
    - creating a study looks it up first (no write when it exists: a read-only file can be opened by
      ``create_study(load_if_exists=True)``), and deleting one that is gone on a repeat is done.

    Attributes:
        url: The URL as configured (show it through :func:`mask_url`).
        read_only: True for a SQLite file opened read-only; every write fails with StorageUnavailableError.
    """

    def __init__(self, backend: optuna.storages.RDBStorage, url: str, *, read_only: bool = False) -> None:
        self._rdb = backend
        self._cached = optuna.storages._CachedStorage(backend)
        self.url = url
        self.read_only = read_only
        from hpsearch.storage import mask_url  # here: storage imports this module

        self._masked = mask_url(url)
        # Set once the storage was given up on: later calls (failing the running trials, the summary)
        # try once instead of waiting out the retry budget again.
        self._unavailable = False
        self._outage_since: float | None = None
        # Connections handed out (after their pre-ping): a call that got one reached the database,
        # one that did not was answered from the cache and says nothing about an outage.
        self._checkouts = 0
        sqlalchemy.event.listen(backend.engine, "checkout", self._count_checkout)
        self._histories: dict[int, TrialSource] = {}
        self._param_distributions: dict[tuple[int, str], optuna.distributions.BaseDistribution] = {}
        self._created: tuple[int, FrozenTrial] | None = None  # the trial this process created last
        # trial id -> {name: (internal value, distribution)}: parameters waiting for write_trial.
        self._deferred: dict[int, dict[str, tuple[float, optuna.distributions.BaseDistribution]]] = {}
        self._deferred_steps: dict[int, dict[int, float]] = {}  # trial id -> {step: intermediate value}
        # Trial system attributes this process set (a pruner's rungs), until the trial's recorder takes them.
        self._set_system_attrs: dict[int, dict[str, Any]] = {}

    def _count_checkout(self, *args: Any) -> None:
        self._checkouts += 1

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)  # the unpickled RDBStorage made a new engine: count its checkouts
        sqlalchemy.event.listen(self._rdb.engine, "checkout", self._count_checkout)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine, for SQL of one's own (run it through :meth:`call_with_retries`)."""
        return self._rdb.engine

    @property
    def rdb(self) -> optuna.storages.RDBStorage:
        """Optuna's storage underneath, uncached: for reads that must bypass the cache of all trials."""
        return self._rdb

    # What the stage loop changes about Optuna's view of a running stage.
    def show_history(self, study_id: int, history: TrialSource | None) -> None:
        """Answer ``get_all_trials`` of ``study_id`` from ``history`` (None: from the database again).

        Samplers and pruners read a study's trials through ``get_all_trials``; the stage loop gives
        them a bounded view (see :mod:`hpsearch.history`) instead of every trial of the stage.
        """
        if history is None:
            self._histories.pop(study_id, None)
        else:
            self._histories[study_id] = history

    def defer_writes(self, trial_id: int) -> None:
        """Keep the parameters and intermediate values written to ``trial_id`` until :meth:`write_trial`.

        Optuna's ``Trial`` keeps what it wrote in memory too, so its sampler and pruner see them at once.
        """
        self._deferred.setdefault(trial_id, {})
        self._deferred_steps.setdefault(trial_id, {})

    def write_trial(self, trial_id: int, *, user_attrs: Mapping[str, Any] | None = None, heartbeat: bool = False,
                    statements: Sequence[sa.Executable] = (), state: TrialState | None = None,
                    values: Sequence[float] | None = None) -> None:
        """Write to a RUNNING trial in one transaction: its deferred parameters, ``user_attrs``, a heartbeat,
        and last (``state``: COMPLETE, PRUNED or FAIL) its values and final state.

        ``statements`` run in the same transaction (hpsearch's own bookkeeping). Optuna writes each
        attribute and parameter, and the end of a trial, in a transaction of its own, reading the
        trial back around each: a trial's ~20 of them cost as many commits.
        Safe to repeat: attributes and heartbeats are upserts, parameters found written are skipped,
        and a trial found already in ``state`` was ended by the first attempt.

        Raises:
            optuna.exceptions.UpdateFinishedTrialError: the trial finished (another run failed it).
        """
        write = TrialWrite(trial_id, user_attrs or {}, heartbeat, statements, state, values)
        if self.write_trials([write], skip_finished=False):
            raise AssertionError("unreachable: a finished trial raises")

    def write_trials(self, writes: Sequence[TrialWrite], *, skip_finished: bool = True) -> set[int]:
        """Make several :meth:`write_trial` writes in one transaction; returns the ids of the trials skipped.

        A trial found finished (another run failed it as abandoned) is skipped, and the others written;
        with ``skip_finished`` False it raises ``UpdateFinishedTrialError`` instead.
        """
        for w in writes:
            if w.state is not None and not w.state.is_finished():
                raise ValueError(f"write_trial ends a trial as COMPLETE, PRUNED or FAIL, not {w.state.name}")
        pending = []
        for w in writes:
            deferring = w.trial_id in self._deferred
            params = self._deferred.pop(w.trial_id, {})
            steps = self._deferred_steps.pop(w.trial_id, {})
            if deferring and w.state is None:
                self.defer_writes(w.trial_id)  # still running: keep deferring what comes next
            pending.append((w, params, steps))
        attempts = 0
        skipped: set[int] = set()

        def write() -> None:
            nonlocal attempts
            attempts += 1
            skipped.clear()
            rdb = self._rdb
            todo = list(pending)
            if attempts > 1:  # read before the session below: get_trial closes the thread's session
                todo = []
                for w, params, steps in pending:
                    written = rdb.get_trial(w.trial_id)
                    if w.state is not None and written.state is w.state:
                        continue  # the first attempt did commit
                    todo.append((w, {k: v for k, v in params.items() if k not in written.params}, steps))
            with _create_scoped_session(rdb.scoped_session, True) as session:
                trials = _trials_by_id(session, [w.trial_id for w, _, _ in todo],
                                       for_update=any(w.state is not None for w, _, _ in todo))
                param_rows: list[dict[str, Any]] = []
                attr_rows: list[dict[str, Any]] = []
                step_rows: list[dict[str, Any]] = []
                value_rows: list[dict[str, Any]] = []
                beats: list[int] = []
                for w, params, steps in todo:
                    trial = trials.get(w.trial_id) or models.TrialModel.find_or_raise_by_id(w.trial_id, session)
                    if skip_finished and cast(TrialState, trial.state).is_finished():
                        skipped.add(w.trial_id)
                        continue
                    rdb.check_trial_is_updatable(w.trial_id, cast(TrialState, trial.state))
                    if params:
                        param_rows += self._param_rows(session, cast(int, trial.study_id), w.trial_id, params)
                    attr_rows += _attr_rows(w.trial_id, w.user_attrs)
                    step_rows += _step_rows(w.trial_id, steps)
                    if w.heartbeat:
                        beats.append(w.trial_id)
                    for statement in w.statements:
                        session.execute(statement)
                    if w.state is not None:  # RDBStorage.set_trial_state_values, in this transaction
                        value_rows += _value_rows(w.trial_id, w.values or ())
                        trial.state = w.state
                        trial.datetime_complete = datetime.datetime.now()
                # One statement a table for all the trials written.
                if param_rows:
                    session.execute(sa.insert(models.TrialParamModel.__table__), param_rows)
                _upsert(session, models.TrialUserAttributeModel, attr_rows, ("trial_id", "key"), ("value_json",))
                _upsert(session, models.TrialIntermediateValueModel, step_rows, ("trial_id", "step"),
                        ("intermediate_value", "intermediate_value_type"))
                _upsert(session, models.TrialValueModel, value_rows, ("trial_id", "objective"), ("value", "value_type"))
                _beat_all(session, beats)

        try:
            self.call_with_retries("write a trial" if len(writes) == 1 else f"write {len(writes)} trials", write)
        except BaseException:
            for w in writes:  # failed, or ended elsewhere: nothing more to keep for them
                self._deferred.pop(w.trial_id, None)
                self._deferred_steps.pop(w.trial_id, None)
            raise
        for trial_id in skipped:
            self._deferred.pop(trial_id, None)
            self._deferred_steps.pop(trial_id, None)
        return set(skipped)

    def beat(self, trial_ids: Sequence[int]) -> None:
        """Record a heartbeat of every trial of ``trial_ids`` in one transaction (their rows exist:
        a trial's first heartbeat is written when it starts, see :meth:`write_trial`)."""

        def write() -> None:
            with _create_scoped_session(self._rdb.scoped_session, True) as session:
                _beat_all(session, trial_ids)

        if trial_ids:
            self.call_with_retries("record heartbeats", write)

    def call_with_retries(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, repeated on a transient storage fault for up to :func:`retry_budget_s`.

        ``fn`` must be safe to repeat after a failure whose transaction may have committed (see the
        class docstring). ``what`` says what it does, for messages: ``"claim a trial slot"``.

        Raises:
            StorageUnavailableError: a persistent fault, or a transient one that outlasted the budget.
        """
        budget = 0.0 if self._unavailable else retry_budget_s()
        checkouts = self._checkouts
        try:
            result = retrying(self._masked, what, fn, *args, budget_s=budget, on_fault=self._outage, **kwargs)
        except StorageUnavailableError:
            self._unavailable = True
            raise
        if self._checkouts != checkouts:  # the database answered
            self._unavailable = False
            if self._outage_since is not None:
                _logger.warning("storage %s answers again after %.0f s", self._masked,
                                time.monotonic() - self._outage_since)
                self._outage_since = None
        return result

    def _outage(self, reason: str) -> None:
        # One line for an outage, however many calls meet it.
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            _logger.warning("storage %s: %s; retrying for up to %g s", self._masked, reason, retry_budget_s())

    def _param_rows(self, session: Any, study_id: int, trial_id: int,
                    params: Mapping[str, tuple[float, optuna.distributions.BaseDistribution]]) -> list[dict[str, Any]]:
        """The rows RDBStorage.set_trial_param would insert for several parameters, each name's distribution
        checked against the study's once per process (Optuna queries for it on every write)."""
        p = models.TrialParamModel
        rows = []
        for name, (value, distribution) in params.items():
            known = self._param_distributions.get((study_id, name))
            if known is None:
                previous = (session.query(p.distribution_json).join(models.TrialModel)
                            .filter(models.TrialModel.study_id == study_id, p.param_name == name).first())
                known = distribution if previous is None else optuna.distributions.json_to_distribution(previous[0])
            optuna.distributions.check_distribution_compatibility(known, distribution)
            self._param_distributions[(study_id, name)] = known
            rows.append({"trial_id": trial_id, "param_name": name, "param_value": value,
                         "distribution_json": optuna.distributions.distribution_to_json(distribution)})
        return rows

    # Studies.
    def create_new_study(self, directions: Sequence[StudyDirection], study_name: str | None = None) -> int:
        if study_name is not None and self._study_id(study_name) is not None:
            raise optuna.exceptions.DuplicatedStudyError(f"Another study with name '{study_name}' already exists.")
        attempts = 0

        def create() -> int:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and study_name is not None:
                existing = self._study_id(study_name)
                if existing is not None:  # the first attempt did create it
                    return existing
            return self._cached.create_new_study(directions, study_name)

        return self.call_with_retries("create a study", create)

    def _study_id(self, study_name: str) -> int | None:
        try:
            return self.call_with_retries("read a study", self._cached.get_study_id_from_name, study_name)
        except KeyError:
            return None

    def delete_study(self, study_id: int) -> None:
        attempts = 0

        def delete() -> None:
            nonlocal attempts
            attempts += 1
            try:
                self._cached.delete_study(study_id)
            except KeyError:
                if attempts == 1:
                    raise  # gone before we came: Optuna's error

        self.call_with_retries("delete a study", delete)

    def set_study_user_attr(self, study_id: int, key: str, value: Any) -> None:
        self.call_with_retries("write a study attribute", self._cached.set_study_user_attr, study_id, key, value)

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        self.call_with_retries("write a study attribute", self._cached.set_study_system_attr, study_id, key, value)

    def get_study_id_from_name(self, study_name: str) -> int:
        return self.call_with_retries("read a study", self._cached.get_study_id_from_name, study_name)

    def get_study_name_from_id(self, study_id: int) -> str:
        return self.call_with_retries("read a study", self._cached.get_study_name_from_id, study_id)

    def get_study_directions(self, study_id: int) -> list[StudyDirection]:
        return self.call_with_retries("read a study", self._cached.get_study_directions, study_id)

    def get_study_user_attrs(self, study_id: int) -> dict[str, Any]:
        return self.call_with_retries("read a study", self._cached.get_study_user_attrs, study_id)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return self.call_with_retries("read a study", self._cached.get_study_system_attrs, study_id)

    def get_all_studies(self) -> list[FrozenStudy]:
        return self.call_with_retries("list the studies", self._cached.get_all_studies)

    # Trials.
    def create_new_trial(self, study_id: int, template_trial: FrozenTrial | None = None) -> int:
        write_id = uuid.uuid4().hex
        template = _with_write_id(template_trial, write_id)
        attempts = 0

        def create() -> int:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                existing = self._trial_with_write_id(study_id, write_id)
                if existing is not None:  # the first attempt did create it: take that trial
                    self._created = (existing, self._rdb.get_trial(existing))
                    return existing
            return self._create_trial_once(study_id, template)

        return self.call_with_retries("create a trial", create)

    def _create_trial_once(self, study_id: int, template: FrozenTrial) -> int:
        # RDBStorage._create_new_trial without its own retry loop: after a commit whose answer was
        # lost, that loop would insert the trial again; ours looks for the write id first.
        with _create_scoped_session(self._rdb.scoped_session) as session:
            models.StudyModel.find_or_raise_by_id(study_id, session, for_update=True)  # numbers trials in turn
            bare = copy.copy(template)
            bare.user_attrs, bare.system_attrs = {}, {}  # written below in one statement each, not one per key
            if bare.params or bare.intermediate_values or bare.values is not None or bare.state is not TrialState.RUNNING:
                model = self._rdb._get_prepared_new_trial(study_id, bare, session)
            else:
                model = _new_running_trial(session, study_id, template.datetime_start)
            for table, attrs in ((models.TrialUserAttributeModel, template.user_attrs),
                                 (models.TrialSystemAttributeModel, template.system_attrs)):
                if attrs:
                    _write_attrs(session, table, int(model.trial_id), attrs)
            if template.state is TrialState.RUNNING and self.get_heartbeat_interval() is not None:
                # Beating from its first commit: a RUNNING trial whose run dies before its next write is
                # still found stale (Optuna ignores a trial that never beat).
                session.add(models.TrialHeartbeatModel(trial_id=int(model.trial_id)))
            trial = copy.deepcopy(template)
            trial.number, trial._trial_id = int(model.number), int(model.trial_id)
            trial.datetime_start = cast(datetime.datetime, model.datetime_start)
        # Trial() reads the trial it is given at once; that read is answered with what we wrote.
        self._created = (trial._trial_id, trial)
        return trial._trial_id

    def set_trial_param(self, trial_id: int, param_name: str, param_value_internal: float,
                        distribution: optuna.distributions.BaseDistribution) -> None:
        deferred = self._deferred.get(trial_id)
        if deferred is not None:
            deferred[param_name] = (param_value_internal, distribution)
            return
        self.call_with_retries("write a trial parameter", self._cached.set_trial_param,
                               trial_id, param_name, param_value_internal, distribution)

    def get_trial_id_from_study_id_trial_number(self, study_id: int, trial_number: int) -> int:
        return self.call_with_retries("read a trial", self._cached.get_trial_id_from_study_id_trial_number,
                                      study_id, trial_number)

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        return self.call_with_retries("read the best trial", self._cached.get_best_trial, study_id)

    def set_trial_state_values(self, trial_id: int, state: TrialState, values: Sequence[float] | None = None) -> bool:
        if state is TrialState.RUNNING:
            return self._claim(trial_id)
        attempts = 0

        def finish() -> bool:
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                trial = self._rdb.get_trial(trial_id)
                if trial.state is state and (values is None or trial.values == list(values)):
                    return True  # the first attempt did commit
            return self._cached.set_trial_state_values(trial_id, state, values)

        return self.call_with_retries("record a trial's state", finish)

    def _claim(self, trial_id: int) -> bool:
        """Move a queued trial to RUNNING; False if another process took it first."""
        write_id = uuid.uuid4().hex
        attempts = 0

        def claim() -> bool:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and self._rdb.get_trial(trial_id).system_attrs.get(WRITE_ID_ATTR) == write_id:
                return True  # the first attempt did commit
            return self._claim_once(trial_id, write_id)

        return self.call_with_retries("claim a queued trial", claim)

    def _claim_once(self, trial_id: int, write_id: str) -> bool:
        # RDBStorage.set_trial_state_values(RUNNING), with the write id in the same transaction.
        with _create_scoped_session(self._rdb.scoped_session) as session:
            trial = models.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
            state = cast(TrialState, trial.state)
            self._rdb.check_trial_is_updatable(trial_id, state)  # a finished trial: UpdateFinishedTrialError
            if state != TrialState.WAITING:
                return False
            trial.state = TrialState.RUNNING
            trial.datetime_start = datetime.datetime.now()
            self._rdb._set_trial_attr_without_commit(session, models.TrialSystemAttributeModel, trial_id,
                                                     WRITE_ID_ATTR, write_id)
        return True

    def _trial_with_write_id(self, study_id: int, write_id: str) -> int | None:
        attr = models.TrialSystemAttributeModel
        with _create_scoped_session(self._rdb.scoped_session) as session:
            row = (
                session.query(attr.trial_id).join(models.TrialModel, models.TrialModel.trial_id == attr.trial_id)
                .filter(models.TrialModel.study_id == study_id, attr.key == WRITE_ID_ATTR,
                        attr.value_json == json.dumps(write_id))
                .first()
            )
        return None if row is None else cast(int, row[0])

    def set_trial_intermediate_value(self, trial_id: int, step: int, intermediate_value: float) -> None:
        deferred = self._deferred_steps.get(trial_id)
        if deferred is not None:
            deferred[step] = intermediate_value
            return
        self.call_with_retries("write an intermediate value", self._cached.set_trial_intermediate_value,
                               trial_id, step, intermediate_value)

    def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.call_with_retries("write a trial attribute", self._cached.set_trial_user_attr, trial_id, key, value)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        self.call_with_retries("write a trial attribute", self._cached.set_trial_system_attr, trial_id, key, value)
        self._set_system_attrs.setdefault(trial_id, {})[key] = value

    def take_system_attrs(self, trial_id: int) -> dict[str, Any]:
        """The system attributes set on ``trial_id`` through this storage since the last call, and forget them.

        The stage loop keeps ended trials as written instead of reading them back, and successive
        halving and Hyperband rank a trial against the rungs (``completed_rung_N``) other trials
        reached, which they store as system attributes: the kept trials must hold them.
        """
        return self._set_system_attrs.pop(trial_id, {})

    def get_trial(self, trial_id: int) -> FrozenTrial:
        created, self._created = self._created, None
        if created is not None and created[0] == trial_id:
            return copy.deepcopy(created[1])
        return self.call_with_retries("read a trial", self._cached.get_trial, trial_id)

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        history = self._histories.get(study_id)
        if history is not None:
            return history.trials(states, deepcopy)
        return self.call_with_retries("read the trials", self._cached.get_all_trials, study_id, deepcopy, states)

    def get_n_trials(self, study_id: int, state: tuple[TrialState, ...] | TrialState | None = None) -> int:
        # One COUNT in SQL; Optuna's default reads every trial of the study to count them.
        t = models.TrialModel.__table__
        query = sa.select(sa.func.count()).select_from(t).where(t.c.study_id == study_id)
        if state is not None:
            query = query.where(t.c.state.in_((state,) if isinstance(state, TrialState) else state))

        def count() -> int:
            with self._rdb.engine.connect() as conn:
                return int(conn.execute(query).scalar() or 0)

        return self.call_with_retries("count the trials", count)

    def remove_session(self) -> None:
        self._rdb.remove_session()

    # Heartbeats.
    def record_heartbeat(self, trial_id: int) -> None:
        self.call_with_retries("record a heartbeat", self._cached.record_heartbeat, trial_id)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return self.call_with_retries("look for stale trials", self._cached._get_stale_trial_ids, study_id)

    def get_heartbeat_interval(self) -> int | None:
        return self._cached.get_heartbeat_interval()

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return self._cached.get_heartbeat_stale_trial_callback()


def _new_running_trial(session: Any, study_id: int, start: datetime.datetime | None) -> models.TrialModel:
    """RDBStorage._get_prepared_new_trial for a bare RUNNING trial, numbered by a lookup, not a count.

    Optuna numbers a trial by counting the study's earlier trials, which grows with the study. Under
    the study's row lock (taken by the caller), the earlier trial with the highest id holds the
    number before ours: an index lookup.
    """
    trial = models.TrialModel(study_id=study_id, number=None, state=TrialState.RUNNING,
                              datetime_start=start or datetime.datetime.now())
    session.add(trial)
    session.flush()  # assigns trial_id
    t = models.TrialModel
    before = (session.query(t.number).filter(t.study_id == study_id, t.trial_id < trial.trial_id)
              .order_by(t.trial_id.desc()).limit(1).scalar())
    trial.number = 0 if before is None else int(before) + 1
    return trial


def _write_attrs(session: Any, model: Any, trial_id: int, attrs: Mapping[str, Any]) -> None:
    """Upsert trial attributes in one statement (Optuna writes one per statement and transaction)."""
    _upsert(session, model, _attr_rows(trial_id, attrs), ("trial_id", "key"), ("value_json",))


def _attr_rows(trial_id: int, attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)} for key, value in attrs.items()]


def _step_rows(trial_id: int, steps: Mapping[int, float]) -> list[dict[str, Any]]:
    """Rows of intermediate values (RDBStorage.set_trial_intermediate_value, several at once)."""
    model = models.TrialIntermediateValueModel
    rows = []
    for step, value in steps.items():
        stored, kind = model.intermediate_value_to_stored_repr(value)
        rows.append({"trial_id": trial_id, "step": step, "intermediate_value": stored, "intermediate_value_type": kind})
    return rows


def _value_rows(trial_id: int, values: Sequence[float]) -> list[dict[str, Any]]:
    """Rows of a trial's objective values (RDBStorage._set_trial_value_without_commit, without its lookups)."""
    rows = []
    for objective, value in enumerate(values):
        stored, kind = models.TrialValueModel.value_to_stored_repr(value)
        rows.append({"trial_id": trial_id, "objective": objective, "value": stored, "value_type": kind})
    return rows


def _trials_by_id(session: Any, trial_ids: Sequence[int], for_update: bool) -> dict[int, models.TrialModel]:
    """The trials of ``trial_ids`` in one query (a few for thousands), locked when ``for_update``."""
    t = models.TrialModel
    found: dict[int, models.TrialModel] = {}
    for start in range(0, len(trial_ids), _IN_CHUNK):
        query = session.query(t).filter(t.trial_id.in_(trial_ids[start:start + _IN_CHUNK]))
        for trial in (query.with_for_update() if for_update else query):
            found[int(trial.trial_id)] = trial
    return found


def _beat_all(session: Any, trial_ids: Sequence[int]) -> None:
    """RDBStorage.record_heartbeat of several trials, inside a transaction of ours."""
    beats = models.TrialHeartbeatModel.__table__
    for start in range(0, len(trial_ids), _IN_CHUNK):
        chunk = trial_ids[start:start + _IN_CHUNK]
        session.execute(sa.update(beats).where(beats.c.trial_id.in_(chunk)).values(heartbeat=sa.func.now()))
        have = {row[0] for row in session.execute(sa.select(beats.c.trial_id).where(beats.c.trial_id.in_(chunk)))}
        if len(have) < len(chunk):  # their first heartbeat (a trial created without one, e.g. enqueued)
            session.execute(sa.insert(beats), [{"trial_id": i} for i in chunk if i not in have])  # the column's default: now


def _upsert(session: Any, model: Any, rows: Sequence[dict[str, Any]], keys: Sequence[str], updated: Sequence[str]) -> None:
    """Insert ``rows``, or update their ``updated`` columns where a row with the same ``keys`` exists.

    One statement on SQLite, PostgreSQL and MySQL (executed for each row), as Optuna upserts a single
    attribute on each.
    """
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    # The rows go as parameters of one statement (executemany), so the statement compiles once per
    # process instead of once for each number of rows.
    if dialect in ("sqlite", "postgresql", "mysql"):
        session.execute(_upsert_statement(dialect, model.__table__, tuple(keys), tuple(updated)), list(rows))
    else:  # what Optuna does elsewhere: look each row up
        for row in rows:
            found = session.query(model).filter_by(**{k: row[k] for k in keys}).one_or_none()
            if found is None:
                session.add(model(**row))
            else:
                for c in updated:
                    setattr(found, c, row[c])


@functools.cache  # a pure function of its arguments; building the statement costs more than running it
def _upsert_statement(dialect: str, table: sa.Table, keys: tuple[str, ...], updated: tuple[str, ...]) -> sa.Executable:
    if dialect == "mysql":
        mysql = mysql_insert(table)
        return mysql.on_duplicate_key_update({c: mysql.inserted[c] for c in updated})
    insert = (sqlite_insert if dialect == "sqlite" else postgresql_insert)(table)
    return insert.on_conflict_do_update(index_elements=[table.c[k] for k in keys],
                                        set_={c: insert.excluded[c] for c in updated})


class TrialSource(Protocol):
    """What answers ``get_all_trials`` for a study instead of the database (a :class:`~hpsearch.history.StageHistory`)."""

    def trials(self, states: Container[TrialState] | None = None, deepcopy: bool = False) -> list[FrozenTrial]: ...


def _with_write_id(template: FrozenTrial | None, write_id: str) -> FrozenTrial:
    """A copy of ``template`` (a new RUNNING trial when None) carrying ``write_id``."""
    if template is None:
        template = FrozenTrial(
            number=-1, state=TrialState.RUNNING, value=None, datetime_start=datetime.datetime.now(),
            datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
            intermediate_values={}, trial_id=-1,
        )
    else:
        template = copy.deepcopy(template)
    template.system_attrs = {**template.system_attrs, WRITE_ID_ATTR: write_id}
    return template
