"""A stage's trials as the stage loop sees them: bounded in memory, read incrementally.

Samplers and pruners are handed this view instead of the whole study (Optuna would read every trial
of the stage into memory, and TPE and the median pruner would then model all of them). It holds:

- the ``recent`` most recently finished trials (COMPLETE or PRUNED),
- the ``best`` best COMPLETE trials seen, however old,
- the trials running now (in any process),

and the counts of finished trials; and, for a later stage's sampler, the earlier stage's trials it
starts from (:meth:`StageHistory.set_prior`: in view, never counted, never the best). Each :meth:`StageHistory.refresh` reads only what changed: trials
created since the last read, and the trials that were running then. Its cost does not depend on how
many trials the stage holds, so a stage of 100,000 trials runs as fast as a fresh one.

Optuna's tables stay the only record; this is a cache of one process, rebuilt when a stage starts.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Container, Iterable, Iterator, Sequence
import contextlib
import copy
from typing import Any

from optuna.storages._rdb import models
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
import sqlalchemy as sa

from hpsearch.spec import HistoryLimits

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
_UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)
_T = models.TrialModel.__table__
_V = models.TrialValueModel.__table__
# Trial ids per query: well under every database's limit on bound parameters.
_IDS_PER_QUERY = 500


class StageHistory:
    """The bounded, incrementally read view of one stage's trials (see the module docstring).

    Args:
        storage: hpsearch's storage (:class:`~hpsearch.retrying.RetryingStorage`).
        study_id: Optuna's id of the stage's study.
        direction: The study's direction, to rank the best trials.
        limits: How many recent and best trials to keep.
    """

    def __init__(self, storage: Any, study_id: int, direction: StudyDirection, limits: HistoryLimits) -> None:
        self._storage, self._study_id, self._limits = storage, study_id, limits
        self._sign = -1.0 if direction is StudyDirection.MAXIMIZE else 1.0
        self._recent: OrderedDict[int, FrozenTrial] = OrderedDict()  # trial id -> trial, oldest first
        self._best: list[tuple[float, int, FrozenTrial]] = []  # (signed value, number, trial), best first
        self._running: dict[int, FrozenTrial] = {}  # RUNNING or WAITING, by trial id
        self._counts: dict[TrialState, int] = {}
        self._last_id = -1  # every trial with a larger id is new to us
        self._mine: set[int] = set()  # trials add() counted whose id the database reads have not passed yet
        self._merged: list[FrozenTrial] | None = None
        self._prior: list[FrozenTrial] = []
        self._hide_prior = False

    def set_prior(self, trials: Sequence[FrozenTrial]) -> None:
        """Trials of an earlier stage that samplers see as this stage's own history (numbered below 0,
        so they never meet the stage's trials); they are not counted and never the stage's best."""
        self._prior = list(trials)
        self._merged = None

    @contextlib.contextmanager
    def own_trials(self) -> Iterator[None]:
        """Within it, the view leaves the prior trials out: pruners judge a trial against the stage's own.

        The prior trials are the previous stage's best inside this stage's space: against them a median
        pruner would stop nearly every new trial, and its start-up count would be met before the stage
        had finished a trial of its own.
        """
        self._hide_prior = True
        try:
            yield
        finally:
            self._hide_prior = False

    # Reading.
    def load(self) -> None:
        """Read the counts, the best, the recent and the running trials; a few indexed queries."""
        engine, retry = self._storage.engine, self._storage.call_with_retries
        self._last_id = retry("read the stage", _scalar, engine, sa.select(sa.func.max(_T.c.trial_id))
                              .where(_T.c.study_id == self._study_id)) or -1
        order = _V.c.value.desc() if self._sign < 0 else _V.c.value.asc()
        best = (sa.select(_T.c.trial_id).join(_V, _V.c.trial_id == _T.c.trial_id)
                .where(_T.c.study_id == self._study_id, _T.c.state == TrialState.COMPLETE, _V.c.objective == 0,
                       _T.c.trial_id <= self._last_id)
                .order_by(order, _T.c.number).limit(self._limits.best))
        recent = (sa.select(_T.c.trial_id).where(_T.c.study_id == self._study_id, _T.c.state.in_(FINISHED),
                                                 _T.c.trial_id <= self._last_id)
                  .order_by(_T.c.trial_id.desc()).limit(self._limits.recent))
        running = sa.select(_T.c.trial_id).where(_T.c.study_id == self._study_id, _T.c.state.in_(_UNFINISHED),
                                                 _T.c.trial_id <= self._last_id)
        ids: set[int] = set()
        for query in (best, recent, running):
            ids.update(int(i) for (i,) in retry("read the stage", _rows, engine, query))
        self._take(self._read(ids), counted=True)
        self._counts = self._count()  # last: trials read as new above are counted here too

    def add(self, trial: FrozenTrial) -> None:
        """Fold in a trial this process just ended, as written (no read); the next refresh does not count it again."""
        before = self._running.pop(trial._trial_id, None)
        if before is not None:  # a read saw it running: it will not read it again
            self._counts[before.state] = self._counts.get(before.state, 1) - 1
        elif trial._trial_id > self._last_id:  # no read passed it yet: the next one sees it, as new
            self._mine.add(trial._trial_id)
        self._counts[trial.state] = self._counts.get(trial.state, 0) + 1
        if trial.state in FINISHED:
            self._keep(trial)
        self._merged = None

    def refresh(self) -> list[FrozenTrial]:
        """Read what changed since the last read; returns the trials that finished or failed meanwhile."""
        return self._take(self._read(set(self._running)), counted=False)

    def _read(self, ids: set[int]) -> list[FrozenTrial]:
        """The trials with these ids (at most ``_last_id``) and every trial newer than ``_last_id``."""
        rdb, retry = self._storage.rdb, self._storage.call_with_retries
        found: dict[int, FrozenTrial] = {}
        chunks = [sorted(ids)[i:i + _IDS_PER_QUERY] for i in range(0, len(ids), _IDS_PER_QUERY)] or [[]]
        for chunk in chunks:
            for trial in retry("read the trials", rdb._get_trials, self._study_id, None, set(chunk), self._last_id):
                found[trial._trial_id] = trial
        return [found[i] for i in sorted(found)]

    def _take(self, trials: Iterable[FrozenTrial], counted: bool) -> list[FrozenTrial]:
        """Fold ``trials`` (read just now) in; ``counted``: their states are in the counts already."""
        ended = []
        for trial in trials:
            before = self._running.pop(trial._trial_id, None)
            new = trial._trial_id > self._last_id
            if trial._trial_id in self._mine:  # added by add() since the last read: counted there
                self._mine.discard(trial._trial_id)
                before, new = None, False
            self._last_id = max(self._last_id, trial._trial_id)
            if not counted and (new or before is not None):
                if before is not None:
                    self._counts[before.state] = self._counts.get(before.state, 1) - 1
                self._counts[trial.state] = self._counts.get(trial.state, 0) + 1
                if trial.state not in _UNFINISHED:
                    ended.append(trial)  # finished or failed since the last read
            if trial.state in _UNFINISHED:
                self._running[trial._trial_id] = trial
            elif trial.state in FINISHED:
                self._keep(trial)
        self._merged = None
        return ended

    def recount(self) -> None:
        """Count the stage's trials by state again, in SQL (other processes' trials change state too)."""
        self._counts = self._count()

    def _count(self) -> dict[TrialState, int]:
        query = sa.select(_T.c.state, sa.func.count()).where(_T.c.study_id == self._study_id).group_by(_T.c.state)
        rows = self._storage.call_with_retries("count the trials", _rows, self._storage.engine, query)
        return {TrialState[str(getattr(s, "name", s))]: int(n) for s, n in rows}

    def _keep(self, trial: FrozenTrial) -> None:
        self._recent[trial._trial_id] = trial
        self._recent.move_to_end(trial._trial_id)
        while len(self._recent) > self._limits.recent:
            self._recent.popitem(last=False)
        if trial.state is TrialState.COMPLETE and trial.value is not None:
            entry = (self._sign * trial.value, trial.number, trial)
            if len(self._best) < self._limits.best or entry[:2] < self._best[-1][:2]:
                bisect.insort(self._best, entry, key=lambda e: e[:2])
                del self._best[self._limits.best:]

    # What the stage loop asks.
    @property
    def finished(self) -> int:
        """COMPLETE and PRUNED trials of the stage, in every process, as of the last read."""
        return sum(self._counts.get(s, 0) for s in FINISHED)

    def count(self, state: TrialState) -> int:
        return self._counts.get(state, 0)

    @property
    def best(self) -> FrozenTrial | None:
        """The best COMPLETE trial seen (ties: the earlier); None before the first."""
        return self._best[0][2] if self._best else None

    def trials(self, states: Container[TrialState] | None = None, deepcopy: bool = False) -> list[FrozenTrial]:
        """The trials in view (recent, best and running), in order of number."""
        if self._merged is None:
            merged = {t._trial_id: t for t in self._recent.values()}
            merged.update((e[2]._trial_id, e[2]) for e in self._best)
            merged.update(self._running)
            self._merged = [*self._prior, *sorted(merged.values(), key=lambda t: t.number)]
        chosen: Sequence[FrozenTrial] = self._merged[len(self._prior):] if self._hide_prior else self._merged
        if states is not None:
            chosen = [t for t in chosen if t.state in states]
        return copy.deepcopy(list(chosen)) if deepcopy else list(chosen)


def _scalar(engine: sa.Engine, query: sa.Select[Any]) -> Any:
    with engine.connect() as conn:
        return conn.execute(query).scalar()


def _rows(engine: sa.Engine, query: sa.Select[Any]) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(query).all())
