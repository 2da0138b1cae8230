"""The stage loop at scale: its storage work per trial does not grow with the stage, and what samplers,
pruners and progress see of a stage (hpsearch.history) is bounded yet exact where it counts."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest
import sqlalchemy as sa

from hpsearch.history import StageHistory
from hpsearch.spec import HistoryLimits, StudySpec, parse_spec
from hpsearch.stages import RunListener, run_study
from hpsearch.storage import open_storage
from tests.bulk import InstantExecutor, bulk_add, set_budget
from tests.helpers import base_study

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _spec(url: str, sampler: str, trials: int, **stage: Any) -> StudySpec:
    raw = base_study(storage=url, stages=[{"name": "s", "sampler": sampler, "trials": trials, **stage}])
    raw["space"].pop("momentum")  # no conditional parameter: a grid of lr x batch_size x optimizer
    if sampler == "grid":
        raw["stages"][0]["grid"] = {"lr": 1000}
    return parse_spec(raw)


def _stage_of(url: str, sampler: str, existing: int, **stage: Any) -> tuple[optuna.Study, int]:
    """A stage run for one trial, then grown by bulk inserts; returns the study and the slots it fills."""
    spec = _spec(url, sampler, 1, **stage)
    storage = open_storage(url)
    run_study(spec, storage, executor=InstantExecutor())
    study = optuna.load_study(study_name=spec.study_name(spec.stages[0]), storage=storage)
    slots = 1 + bulk_add(storage.engine, study, spec.space, existing - 1, epochs=3)  # type: ignore[attr-defined]
    set_budget(study, slots)
    return study, slots


class _Count(RunListener):
    """Counts the SQL statements of each trial after the first ``skip`` (start-up is not per trial)."""

    def __init__(self, engine: sa.Engine, skip: int = 5) -> None:
        self.statements, self.ended, self._skip, self._mark = 0, 0, skip, 0
        sa.event.listen(engine, "before_cursor_execute", self._on_statement)

    def _on_statement(self, *args: Any) -> None:
        self.statements += 1

    def on_trial_end(self, stage: Any, trial: Any, done: int, best: Any) -> None:
        self.ended += 1
        if self.ended == self._skip:
            self._mark = self.statements

    def per_trial(self) -> float:
        return (self.statements - self._mark) / (self.ended - self._skip)


@pytest.mark.parametrize("sampler", ["random", "grid", "tpe"])
def test_statements_per_trial_do_not_grow_with_the_stage(tmp_path: Path, sampler: str) -> None:
    per_trial = {}
    for existing in (100, 2000):
        url = f"sqlite:///{tmp_path / f'{sampler}{existing}.db'}"
        study, slots = _stage_of(url, sampler, existing, pruner={"kind": "median"})
        spec = _spec(url, sampler, slots + 25, pruner={"kind": "median"})
        storage = open_storage(url)
        count = _Count(storage.engine)  # type: ignore[attr-defined]
        run_study(spec, storage, listener=count, executor=InstantExecutor(epochs=3))
        assert count.ended >= 25
        per_trial[existing] = count.per_trial()
        assert sum(t.state in FINISHED for t in study.get_trials()) == slots + 25
    # The same statements for every trial (periodic reads land on a trial or two: a small margin).
    assert per_trial[2000] <= per_trial[100] + 1.0, per_trial
    # And few of them: writes are batched per step of a trial (3 epochs here; 90+ before they were).
    assert per_trial[100] < 45, per_trial


def test_the_history_is_bounded_and_counts_what_the_database_holds(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    study, _ = _stage_of(url, "random", 1500)
    storage = open_storage(url)
    history = StageHistory(storage, study._study_id, study.direction, HistoryLimits(recent=40, best=7))
    history.load()
    trials = study.get_trials()
    counts = Counter(t.state for t in trials)
    assert history.finished == counts[TrialState.COMPLETE] + counts[TrialState.PRUNED]
    assert history.count(TrialState.FAIL) == counts[TrialState.FAIL]
    assert history.best is not None and history.best.number == study.best_trial.number
    ranked = sorted((t for t in trials if t.state is TrialState.COMPLETE), key=lambda t: (t.value, t.number))
    finished = [t for t in trials if t.state in FINISHED]
    seen = {t.number for t in history.trials()}
    assert {t.number for t in ranked[:7]} <= seen and {t.number for t in finished[-40:]} <= seen
    assert len(seen) <= 47
    # Another process (plain Optuna here) adds trials: a refresh reads those and nothing else.
    other = optuna.load_study(study_name=study.study_name, storage=url)
    running = other.ask()
    other.tell(other.ask(), -1.0)  # a new best
    ended = history.refresh()
    assert [t.number for t in ended] == [len(trials) + 1]
    assert history.best is not None and history.best.value == -1.0
    assert history.count(TrialState.RUNNING) == 1 and running.number in {t.number for t in history.trials()}
    other.tell(running, state=TrialState.PRUNED)
    assert [t.number for t in history.refresh()] == [running.number]
    assert history.finished == counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] + 2
    assert history.count(TrialState.RUNNING) == 0
    history.recount()
    assert history.finished == counts[TrialState.COMPLETE] + counts[TrialState.PRUNED] + 2


def test_tpe_models_only_the_history_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 't.db'}"
    _, slots = _stage_of(url, "tpe", 600, history={"recent": 30, "best": 5})
    seen: list[int] = []
    real = StageHistory.trials

    def trials(self: StageHistory, *args: Any, **kwargs: Any) -> list[optuna.trial.FrozenTrial]:
        found = real(self, *args, **kwargs)
        seen.append(len(found))
        return found

    monkeypatch.setattr(StageHistory, "trials", trials)
    spec = _spec(url, "tpe", slots + 10, history={"recent": 30, "best": 5})
    run_study(spec, open_storage(url), executor=InstantExecutor())
    assert seen and max(seen) <= 30 + 5 + 1  # + the trial being sampled
    assert min(seen) >= 30  # it did see the history: the recent trials at least
