"""Slot claims on real databases: atomic under concurrent processes, freed by failures, adopted once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
import time
import uuid

import optuna
from optuna.trial import TrialState
import pytest

from hpsearch.coordination import Owner, StageClaims, ensure_tables
from hpsearch.storage import open_storage
from tests.servers import MARIADB, POSTGRES, require_server


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'claims.db'}"
    url = POSTGRES if request.param == "postgresql" else MARIADB
    require_server(url)
    return url


@pytest.fixture
def study(url: str) -> optuna.Study:
    storage = open_storage(url)
    ensure_tables(storage.engine)  # type: ignore[attr-defined]
    name = f"claims{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=storage)
    yield study
    optuna.delete_study(study_name=name, storage=storage)


def _claims(study: optuna.Study, pid: int = 1, host: str = "h", grace_s: float = 60) -> StageClaims:
    return StageClaims(study._storage.engine, study._study_id, Owner(host, pid), grace_s)  # type: ignore[attr-defined]


def _take_all(url: str, study_name: str, budget: int, pid: int, at_once: int,
              out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    storage = open_storage(url)
    study = optuna.load_study(study_name=study_name, storage=storage)
    claims = _claims(study, pid=pid)
    taken = []
    while batch := claims.take_many(budget, at_once):
        for claim in batch:
            trial_id = storage.create_new_trial(study._study_id)
            claims.bind(claim, trial_id)
            taken.append(claim.slot)
    out.put(taken)


def test_processes_claiming_at_once_take_each_slot_exactly_once(url: str, study: optuna.Study) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    # One slot at a time and several in one transaction (a fused executor's free slots), side by side.
    processes = [context.Process(target=_take_all, args=(url, study.study_name, 24, pid, at_once, queue))
                 for pid, at_once in enumerate([1, 3, 1, 5])]
    for p in processes:
        p.start()
    slots = [slot for _ in processes for slot in queue.get(timeout=120)]
    for p in processes:
        p.join(30)
    assert sorted(slots) == list(range(24))
    assert len(study.get_trials()) == 24


def test_taking_many_claims_fresh_slots_up_to_the_budget_then_failed_ones(study: optuna.Study) -> None:
    claims, storage = _claims(study), study._storage

    def take(n: int) -> list[tuple[int, int]]:
        taken = claims.take_many(5, n)
        for claim in taken:  # each gets its trial, as the stage loop does
            claims.bind(claim, storage.create_new_trial(study._study_id))  # type: ignore[attr-defined]
        return [(c.slot, c.attempt) for c in taken]

    assert take(3) == [(0, 0), (1, 0), (2, 0)]
    assert take(3) == [(3, 0), (4, 0)]  # the budget ends at slot 4
    assert take(3) == []
    storage.set_trial_state_values(study.trials[1]._trial_id, TrialState.FAIL)  # type: ignore[attr-defined]
    assert take(3) == [(1, 1)]  # a failed slot, once


def test_a_failed_trial_frees_its_slot_for_one_new_attempt(study: optuna.Study) -> None:
    claims, other = _claims(study, pid=1), _claims(study, pid=2)
    first = claims.take(2)
    assert first is not None and (first.slot, first.attempt) == (0, 0)
    trial = study.ask()
    claims.bind(first, trial._trial_id)
    second = claims.take(2)
    assert second is not None and second.slot == 1
    claims.bind(second, study.ask()._trial_id)
    assert claims.take(2) is None  # the budget is held
    study.tell(trial, state=TrialState.FAIL)
    again = other.take(2)
    assert again is not None and (again.slot, again.attempt, again.previous) == (0, 1, trial._trial_id)
    assert claims.take(2) is None  # the new attempt holds the slot now
    assert claims.finished(2) == 0


def test_a_claim_that_never_got_its_trial_is_freed_after_the_grace_period(study: optuna.Study) -> None:
    _claims(study, host="elsewhere", pid=7).take(1)  # its run died before creating the trial
    assert _claims(study, grace_s=60).take(1) is None  # a moment ago: its trial may be on its way
    time.sleep(1.1)
    freed = _claims(study, grace_s=1).take(1)
    assert freed is not None and (freed.slot, freed.attempt, freed.previous) == (0, 1, None)


def test_a_leftover_claim_of_this_process_is_its_own_to_take_again(study: optuna.Study) -> None:
    # A claim insert retried after a dropped connection may have committed the first time: the row is ours.
    claims = _claims(study, pid=1)
    assert claims.take(1) is not None
    again = claims.take(1)
    assert again is not None and (again.slot, again.attempt) == (0, 1)


def test_finished_trials_without_a_slot_are_adopted_once(study: optuna.Study) -> None:
    for value in (1.0, 2.0, 3.0):
        study.tell(study.ask(), value)  # plain Optuna, or an older hpsearch: no claims
    assert _claims(study, pid=1).adopt() == 3
    assert _claims(study, pid=2).adopt() == 0
    claims = _claims(study)
    assert claims.finished(3) == 3 and claims.take(3) is None
    assert claims.take(4) is not None
