"""Fused trials through the executor and the whole run: packs of one fusion key, members that report,
stop and fail on their own, and a fused study that records the trials an unfused one records."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import logging
from pathlib import Path
import time
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest

from hpsearch import executors
from hpsearch.executors import Executor, TrialJob, make_executor
from hpsearch.executors.packs import PackQueue, next_pack
from hpsearch.spec import ExecutorSpec, SpecError, parse_spec
from hpsearch.train import build_train_config, parse_data_config
from tests.helpers import CARS, base_study, cli, write_study
from tests.test_executor import Recorder

DATA = parse_data_config({"csv": str(CARS), "target": "Price", "task": "regression",
                          "drop": ["Model", "Make", "Min.Price", "Max.Price"]}, seed=0)


def _job(key: int, epochs: int, batch_size: int = 8, optimizer: str = "adam") -> TrialJob:
    config = build_train_config({"kind": "mlp", "hidden": [8]},
                                {"epochs": epochs, "device": "cpu", "batch_size": batch_size, "optimizer": optimizer,
                                 "lr": 1e-3 * (key + 1)},
                                task="regression", monitor="val_rmse", maximize=False, seed=key)
    return TrialJob(key, config, DATA)


@pytest.fixture(params=executors.names())
def make(request: pytest.FixtureRequest) -> Iterator[Callable[[int, int], Executor]]:
    """A factory of fusing executors of one registered kind; everything it made is closed afterwards."""
    made: list[Executor] = []

    def factory(workers: int, fuse: int) -> Executor:
        made.append(make_executor(ExecutorSpec(kind=request.param, workers=workers, fuse=fuse)))
        return made[-1]

    yield factory
    for executor in made:
        executor.close()


def _drain(executor: Executor, handler: Recorder, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while executor.running() and time.monotonic() < deadline:
        executor.poll(handler, timeout=1.0)
    assert executor.running() == 0


def test_packs_group_trials_by_fusion_key() -> None:
    jobs = [_job(0, 2), _job(1, 2, batch_size=16), _job(2, 2), _job(3, 2, optimizer="lbfgs"), _job(4, 2)]
    assert [j.key for j in next_pack(jobs, 4)] == [0, 2, 4]  # the largest group of one key
    assert [j.key for j in next_pack(jobs, 2)] == [0, 2]
    assert [j.key for j in next_pack(jobs[1:2] + jobs[3:4], 4)] == [1]  # equal groups: the oldest first
    assert [j.key for j in next_pack(jobs[3:4], 4)] == [3]  # lbfgs trains alone
    assert [j.key for j in next_pack(jobs, 1)] == [0]


def test_a_trial_that_cannot_fuse_trains_alone_and_says_why_once(caplog: pytest.LogCaptureFixture) -> None:
    queue = PackQueue(fuse=4)
    for job in (_job(0, 2, optimizer="lbfgs"), _job(1, 2, optimizer="lbfgs"), _job(2, 2), _job(3, 2)):
        queue.add(job)
    with caplog.at_level(logging.WARNING):
        packs = [[job.key for job in queue.take()] for _ in range(3)]
    assert packs == [[2, 3], [0], [1]] and len(queue) == 0
    assert [r.getMessage() for r in caplog.records] == [
        "optimizer lbfgs trains unfused: it has no batched form (full-batch line search)"]
    assert PackQueue(fuse=1).take() == []


def test_a_worker_trains_a_pack_whose_members_report_and_end_on_their_own(make: Any) -> None:
    handler = Recorder(stop_after=None)
    executor = make(1, 4)
    assert executor.capacity == 4
    for key in range(4):
        executor.submit(_job(key, epochs=3 + key))
    assert executor.free_slots() == 0
    _drain(executor, handler)
    assert set(handler.results) == {0, 1, 2, 3}
    assert len({p["worker_pid"] for p in handler.placements.values()}) == 1  # one worker, one pack
    for key in range(4):
        assert handler.reports[key] == list(range(1, 4 + key))  # each its own number of epochs
        assert handler.results[key].epochs_run == 3 + key


def test_the_answers_prune_members_one_by_one(make: Any) -> None:
    handler = Recorder(stop_after=2)
    executor = make(2, 3)
    for key in range(6):
        executor.submit(_job(key, epochs=6, batch_size=8 if key % 2 else 16))
    _drain(executor, handler)
    assert {k: r.stop_reason.name for k, r in handler.results.items()} == {k: "PRUNED" for k in range(6)}
    assert all(handler.reports[k] == [1, 2] for k in range(6))
    # Two keys (batch 8 and 16), three trials each: two packs of three (one worker may train both in turn).
    assert all(handler.placements[k]["pack"] == 3 for k in range(6))


def test_a_dead_worker_loses_every_member_of_its_pack(make: Any) -> None:
    handler = Recorder(kill_at_report=True)
    executor = make(1, 3)
    for key in range(3):
        executor.submit(_job(key, epochs=50))
    _drain(executor, handler)
    assert handler.lost == {0, 1, 2} and all("died" in handler.errors[k] for k in range(3))
    executor.submit(_job(7, epochs=2))
    _drain(executor, handler)
    assert handler.results[7].epochs_run == 2


def test_fuse_is_validated() -> None:
    for raw, match in (({"kind": "local", "fuse": 0}, "executor.fuse"), ({"kind": "local", "fuse": 10**6}, "at most"),
                       ({"kind": "ray", "fuse": 1.5}, "executor.fuse")):
        with pytest.raises(SpecError, match=match):
            parse_spec(base_study(executor=raw))
    assert parse_spec(base_study(executor={"kind": "local", "fuse": 16})).executor.fuse == 16
    assert parse_spec(base_study()).executor.fuse == 1


def _trials(path: Path, stage: str) -> list[optuna.trial.FrozenTrial]:
    spec = parse_spec(base_study())
    return optuna.load_study(study_name=f"{spec.name}/{stage}", storage=f"sqlite:///{path}").get_trials()


def test_a_fused_run_records_the_trials_an_unfused_run_records(workdir: Path) -> None:
    # The same study, random search with a median pruner, run unfused and with packs of 4 on 2 workers.
    stages = [{"name": "coarse", "sampler": "random", "trials": 12}]
    space = {"lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
             "dropout": {"type": "float", "low": 0.0, "high": 0.4},
             "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True}}
    train = {"epochs": 6, "device": "cpu", "batch_size": 16, "optimizer": "adam"}
    runs, packs = {}, {}
    for fuse in (1, 4):
        folder = workdir / f"fuse{fuse}"
        folder.mkdir()
        study = base_study(storage=f"sqlite:///{folder / 'db.sqlite'}", stages=stages, space=space, train=train,
                           executor={"kind": "local", "workers": 2, "fuse": fuse})
        code, _, err = cli("run", str(write_study(folder, study)))
        assert code == 0, err
        trials = _trials(folder / "db.sqlite", "coarse")
        runs[fuse] = {t.number: (t.state, t.value, t.params) for t in trials}
        packs[fuse] = [t.user_attrs.get("pack", 1) for t in trials]
    assert len(runs[1]) == len(runs[4]) == 12
    assert set(packs[1]) == {1} and max(packs[4]) == 4  # the fused run really trained packs
    for number, (state, value, params) in runs[1].items():
        fused_state, fused_value, fused_params = runs[4][number]
        assert fused_params == params  # trial n samples the same point either way
        if state is TrialState.COMPLETE and fused_state is TrialState.COMPLETE:
            assert fused_value == pytest.approx(value, rel=1e-3)
    # Pruning decisions depend on which trials finished first, so a few states may differ; most agree.
    assert sum(runs[1][n][0] == runs[4][n][0] for n in runs[1]) >= 8
