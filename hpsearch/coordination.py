"""Many runs, one study: atomic trial claims and the registry of live runs.

Any number of ``hpsearch run`` processes, on any machines, may work on one study in one database.
They agree through two small tables of hpsearch's own, next to Optuna's in the same database
(Optuna's tables stay the single source of truth for trials; the dashboard and ``optuna.load_study``
never read these):

``hpsearch_claims``
    A stage's budget is a number of *slots*. A process starts a trial only after it claimed a slot by
    inserting the row ``(study, slot, attempt)``; the primary key makes that insert atomic in SQLite,
    PostgreSQL and MySQL alike, so two processes can never hold one slot, and a stage can never run
    more trials than its budget. A slot whose trial failed is free again: its next attempt is a new
    row. A slot is done when its trial is COMPLETE or PRUNED, so a stage is done when every slot is.
``hpsearch_runs``
    One row per live ``hpsearch run`` process, refreshed with its heartbeat, for ``hpsearch status``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
import os
import socket
import time
from typing import Any, TypeVar

from optuna.storages._rdb import models
from optuna.trial import TrialState
import sqlalchemy as sa
from sqlalchemy.engine import Engine
import sqlalchemy.exc

_T = TypeVar("_T")
_METADATA = sa.MetaData()
_TRIALS = models.TrialModel.__table__

CLAIMS = sa.Table(
    "hpsearch_claims", _METADATA,
    sa.Column("study_id", sa.Integer, primary_key=True, autoincrement=False),  # Optuna's study id of the stage
    sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("attempt", sa.Integer, primary_key=True, autoincrement=False),
    # Unique: a trial fills at most one slot, even when two processes adopt it at once.
    sa.Column("trial_id", sa.Integer, nullable=True, unique=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("claimed_at", sa.Double, nullable=False),
)

RUNS = sa.Table(
    "hpsearch_runs", _METADATA,
    sa.Column("run_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study", sa.String(512), nullable=False, index=True),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("stage", sa.String(512), nullable=True),
    sa.Column("started_at", sa.Double, nullable=False),
    sa.Column("seen_at", sa.Double, nullable=False),
)

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_CREATE_RACE = ("already exists", "Duplicate", "duplicate key", "UNIQUE constraint failed")
_CLAIM_TRIES = 20
# Rows of runs silent for this long are deleted when another run of the study starts.
_FORGET_RUNS_S = 24 * 3600.0

Retry = Callable[[str, Callable[[], _T]], _T]


def _no_retry(what: str, fn: Callable[[], _T]) -> _T:
    return fn()


@dataclass(frozen=True)
class Owner:
    """The process that claims: its host and pid."""

    host: str
    pid: int

    @classmethod
    def this_process(cls) -> Owner:
        return cls(socket.gethostname()[:255], os.getpid())

    def is_alive_here(self) -> bool | None:
        """Whether this process runs: ``None`` when it runs on another host (not knowable from here)."""
        if self.host != socket.gethostname()[:255]:
            return None
        return pid_alive(self.pid)


def pid_alive(pid: object) -> bool:
    """Whether a process with this pid runs on this host."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Claim:
    """The right to run one trial in ``slot``. ``previous``: the failed trial this attempt replaces."""

    slot: int
    attempt: int
    previous: int | None = None


# hpsearch's index on Optuna's trials table: the trials of a study in one state (RUNNING, WAITING,
# FAIL) and counts by state are found without reading the whole study. Optuna indexes study_id alone.
# Declared on a stand-in of the table, in metadata of our own, so that Optuna's models stay untouched.
_TRIALS_DDL = sa.Table("trials", sa.MetaData(), sa.Column("study_id", sa.Integer), sa.Column("state", sa.String(8)))
TRIALS_BY_STATE = sa.Index("ix_hpsearch_trials_study_state", _TRIALS_DDL.c.study_id, _TRIALS_DDL.c.state)


def ensure_tables(engine: Engine) -> None:
    """Create hpsearch's tables and index where they are missing; processes may race to do it."""
    for attempt in range(5):
        try:
            _METADATA.create_all(engine, checkfirst=True)
            TRIALS_BY_STATE.create(engine, checkfirst=True)
            return
        except sqlalchemy.exc.SQLAlchemyError as exc:
            if not any(m in str(exc) for m in _CREATE_RACE) or attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))


class StageClaims:
    """The claims of one stage (an Optuna study, by its id).

    Args:
        engine: The database of the study.
        study_id: Optuna's id of the stage's study.
        owner: The claiming process.
        grace_s: A claim that never got its trial (its process died in between) is free after this.
        retry: Runs each database call, retrying transient faults.
    """

    def __init__(self, engine: Engine, study_id: int, owner: Owner, grace_s: float, retry: Retry = _no_retry) -> None:
        self._engine, self._study_id, self._owner, self._grace_s, self._retry = engine, study_id, owner, grace_s, retry

    def take(self, budget: int) -> Claim | None:
        """Claim a free slot below ``budget``: a fresh one, else one whose trial failed; ``None`` if all are held.

        Fresh slots first: finding one is a lookup of the highest slot, while finding a failed slot
        searches the stage's failed trials; that search runs only once no fresh slot is left.
        """
        for _ in range(_CLAIM_TRIES):
            claim = self._fresh(budget) or self._free(budget)
            if claim is None:
                return None
            if self._retry("claim a trial slot", lambda c=claim: self._insert(c, None)):  # type: ignore[misc]
                return claim
            # Another process inserted that row first: look again.
        return None

    def take_many(self, budget: int, n: int) -> list[Claim]:
        """Claim up to ``n`` free slots below ``budget``: fresh ones in one transaction when there are
        enough, else one (see :meth:`take`); empty if all are held."""
        first = self._next_slot()
        count = min(n, budget - first)
        if count > 1:
            claims = [Claim(first + i, 0) for i in range(count)]
            rows = [self._row(claim, None) for claim in claims]
            if self._retry("claim trial slots", lambda: self._insert_rows(rows)):
                return claims
            # Another process took some of them first: one at a time.
        claim = self.take(budget)
        return [] if claim is None else [claim]

    def bind(self, claim: Claim, trial_id: int) -> None:
        """Record the trial that fills ``claim``."""
        statement = self.bind_statement(claim, trial_id)
        self._retry("record a trial's slot", lambda: self._execute(statement))

    def bind_statement(self, claim: Claim, trial_id: int) -> sa.Update:
        """The UPDATE that records the trial filling ``claim``, to run in a transaction of one's own."""
        c = CLAIMS.c
        return (sa.update(CLAIMS).where(c.study_id == self._study_id, c.slot == claim.slot, c.attempt == claim.attempt)
                .values(trial_id=trial_id))

    def finished(self, budget: int) -> int:
        """How many slots below ``budget`` hold a COMPLETE or PRUNED trial."""
        c, t = CLAIMS.c, _TRIALS.c
        query = (sa.select(sa.func.count()).select_from(CLAIMS.join(_TRIALS, t.trial_id == c.trial_id))
                 .where(c.study_id == self._study_id, c.slot < budget, t.state.in_(_FINISHED)))
        return int(self._retry("count finished trials", lambda: self._scalar(query)) or 0)

    def adopt(self) -> int:
        """Give a slot to every finished trial of the stage that has none (an older hpsearch, plain Optuna).

        Returns how many trials it adopted. They count against the budget like any other.
        """
        c, t = CLAIMS.c, _TRIALS.c
        claimed = sa.select(c.trial_id).where(c.study_id == self._study_id, c.trial_id == t.trial_id)
        query = (sa.select(t.trial_id).where(t.study_id == self._study_id, t.state.in_(_FINISHED), ~claimed.exists())
                 .order_by(t.number))
        orphans = self._retry("find unclaimed trials", lambda: self._rows(query))
        if not orphans:
            return 0
        first = self._next_slot()
        rows = [self._row(Claim(first + i, 0), trial_id) for i, (trial_id,) in enumerate(orphans)]
        if self._retry("adopt trials", lambda: self._insert_rows(rows)):
            return len(rows)  # all at once; else another process adopted some at the same time: one by one
        adopted = 0
        for (trial_id,) in orphans:
            for _ in range(_CLAIM_TRIES):
                claim = Claim(self._next_slot(), 0)
                if self._retry("adopt a trial", lambda c=claim, i=trial_id: self._insert(c, i)):  # type: ignore[misc]
                    adopted += 1
                    break
                if self._is_claimed(trial_id):
                    break  # another process adopted it
        return adopted

    # Queries.
    def _free(self, budget: int) -> Claim | None:
        # The latest claims of slots whose trial failed (found through the failed trials, by the
        # state index), and claims that never got their trial.
        c, t = CLAIMS.c, _TRIALS.c
        later = CLAIMS.alias("later")
        superseded = sa.select(later.c.slot).where(later.c.study_id == c.study_id, later.c.slot == c.slot,
                                                   later.c.attempt == c.attempt + 1)
        columns = (c.slot, c.attempt, c.trial_id, c.host, c.pid, c.claimed_at)
        failed = (sa.select(*columns).select_from(_TRIALS.join(CLAIMS, c.trial_id == t.trial_id))
                  .where(t.study_id == self._study_id, t.state == TrialState.FAIL, c.slot < budget, ~superseded.exists()))
        unbound = sa.select(*columns).where(c.trial_id.is_(None), c.study_id == self._study_id, c.slot < budget,
                                            ~superseded.exists())
        rows = [row for query in (failed, unbound) for row in self._retry("find a free slot", partial(self._rows, query))]
        now = time.time()
        for slot, attempt, trial_id, host, pid, claimed_at in sorted(rows):
            if trial_id is None and not self._abandoned_claim(Owner(host, pid), claimed_at, now):
                continue  # claimed a moment ago: its trial is being created
            return Claim(slot, attempt + 1, trial_id)
        return None

    def _abandoned_claim(self, owner: Owner, claimed_at: float, now: float) -> bool:
        if owner == self._owner:
            return True  # take() is never called with a claim of ours in flight: a leftover (a retried insert)
        alive = owner.is_alive_here()
        return alive is False or now - claimed_at > self._grace_s

    def _fresh(self, budget: int) -> Claim | None:
        slot = self._next_slot()
        return Claim(slot, 0) if slot < budget else None

    def _next_slot(self) -> int:
        query = sa.select(sa.func.max(CLAIMS.c.slot)).where(CLAIMS.c.study_id == self._study_id)
        top = self._retry("find the next slot", lambda: self._scalar(query))
        return 0 if top is None else int(top) + 1

    def _is_claimed(self, trial_id: int) -> bool:
        query = sa.select(sa.func.count()).where(CLAIMS.c.trial_id == trial_id)
        return bool(self._retry("look up a claim", lambda: self._scalar(query)))

    def _insert(self, claim: Claim, trial_id: int | None) -> bool:
        """Insert the claim's row; False when the row (or the trial's claim) exists already."""
        return self._insert_rows([self._row(claim, trial_id)])

    def _row(self, claim: Claim, trial_id: int | None) -> dict[str, Any]:
        return {"study_id": self._study_id, "slot": claim.slot, "attempt": claim.attempt, "trial_id": trial_id,
                "host": self._owner.host, "pid": self._owner.pid, "claimed_at": time.time()}

    def _insert_rows(self, rows: list[dict[str, Any]]) -> bool:
        """Insert claim rows in one transaction; False (and none inserted) when one exists already."""
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.insert(CLAIMS), rows)
        except sqlalchemy.exc.IntegrityError:
            return False
        return True

    def _execute(self, statement: sa.Executable) -> None:
        with self._engine.begin() as conn:
            conn.execute(statement)

    def _scalar(self, query: sa.Select[Any]) -> object:
        with self._engine.connect() as conn:
            return conn.execute(query).scalar()

    def _rows(self, query: sa.Select[Any]) -> list[sa.Row[Any]]:
        with self._engine.connect() as conn:
            return list(conn.execute(query).all())


@dataclass(frozen=True)
class LiveRun:
    """A process working on a study, as ``hpsearch status`` shows it."""

    host: str
    pid: int
    stage: str | None
    started_at: float
    seen_at: float


class RunRegistry:
    """This process's row in ``hpsearch_runs``: written when it starts, refreshed, deleted when it ends."""

    def __init__(self, engine: Engine, study: str, owner: Owner, retry: Retry = _no_retry) -> None:
        self._engine, self._study, self._owner, self._retry = engine, study, owner, retry
        self._run_id: int | None = None

    def start(self) -> None:
        now = time.time()
        r = RUNS.c

        def write() -> int:
            with self._engine.begin() as conn:
                conn.execute(sa.delete(RUNS).where(r.study == self._study, r.seen_at < now - _FORGET_RUNS_S))
                result = conn.execute(sa.insert(RUNS).values(study=self._study, host=self._owner.host,
                                                             pid=self._owner.pid, started_at=now, seen_at=now))
                return int(result.inserted_primary_key[0])  # type: ignore[index]

        self._run_id = self._retry("register this run", write)

    def beat(self, stage: str | None = None) -> None:
        if self._run_id is None:
            return
        values: dict[str, object] = {"seen_at": time.time()}
        if stage is not None:
            values["stage"] = stage
        statement = sa.update(RUNS).where(RUNS.c.run_id == self._run_id).values(**values)

        def write() -> None:
            with self._engine.begin() as conn:
                conn.execute(statement)

        self._retry("refresh this run's heartbeat", write)

    def end(self) -> None:
        """Delete this run's row; best effort (a gone database must not hide the run's real outcome)."""
        if self._run_id is None:
            return
        run_id, self._run_id = self._run_id, None
        try:
            with self._engine.begin() as conn:
                conn.execute(sa.delete(RUNS).where(RUNS.c.run_id == run_id))
        except sqlalchemy.exc.SQLAlchemyError:
            pass  # the row goes stale and status stops listing it after the grace period


def live_runs(engine: Engine, study: str, grace_s: float) -> list[LiveRun]:
    """The runs of ``study`` whose heartbeat is younger than ``grace_s``, oldest first.

    A database where no run ever registered has no such table: that is no run, not an error,
    and nothing is created (the readers that call this must not write).
    """
    if not sa.inspect(engine).has_table(RUNS.name):
        return []
    r = RUNS.c
    query = (sa.select(r.host, r.pid, r.stage, r.started_at, r.seen_at)
             .where(r.study == study, r.seen_at >= time.time() - grace_s).order_by(r.started_at))
    with engine.connect() as conn:
        return [LiveRun(*row) for row in conn.execute(query).all()]
