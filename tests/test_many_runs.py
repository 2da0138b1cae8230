"""Many ``hpsearch run`` processes on one study: exact budgets, no duplicate configurations, nothing RUNNING.

Real processes on real SQLite, PostgreSQL and MariaDB; one of them SIGKILLed mid-stage in the second test.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
import signal
import socket
import subprocess
import time
from typing import Any
import uuid

import optuna
from optuna.trial import FrozenTrial, TrialState
import pytest
import sqlalchemy as sa

from tests.helpers import base_study, cli, running_trial, start_run, write_study
from tests.servers import MARIADB, POSTGRES, require_server

URLS = {"sqlite": "sqlite:///runs/many.db", "postgresql": POSTGRES, "mariadb": MARIADB}
RUNS = 4
BUDGET = {"coarse": 10, "fine": 6, "polish": 4}


def _study(name: str, url: str) -> dict[str, Any]:
    """Three stages: random, then TPE narrowed with warm starts, then a grid over a narrowed, frozen space."""
    return base_study(
        name=name, storage=url,
        train={"epochs": 3, "device": "cpu"},
        stages=[
            {"name": "coarse", "sampler": "random", "trials": BUDGET["coarse"]},
            {"name": "fine", "sampler": "tpe", "trials": BUDGET["fine"], "narrow": {"top": 0.3}, "warm_start": 2},
            {"name": "polish", "sampler": "grid", "trials": BUDGET["polish"], "narrow": {"top": 3},
             "freeze": ["optimizer", "batch_size"], "grid": {"lr": 4, "momentum": 2}},
        ],
        executor={"kind": "local", "workers": 1},
    )


def _trials(name: str, url: str, stage: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=f"{name}/{stage}", storage=url).get_trials(deepcopy=False)


def _check_study(name: str, url: str) -> None:
    """Every stage: exactly its budget finished, nothing RUNNING or WAITING, no configuration twice."""
    for stage, budget in BUDGET.items():
        trials = _trials(name, url, stage)
        states = Counter(t.state for t in trials)
        assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == budget, (stage, states)
        assert states[TrialState.RUNNING] == states[TrialState.WAITING] == 0, (stage, states)
        kept = [tuple(sorted(t.params.items())) for t in trials if t.state is not TrialState.FAIL]
        assert len(kept) == len(set(kept)), f"{stage}: duplicate configurations {Counter(kept).most_common(2)}"
        failed = {t.number: t.params for t in trials if t.state is TrialState.FAIL}
        for t in trials:  # a lost trial's slot runs it once more, with its parameters
            if "retry_of" in t.user_attrs:
                assert failed[t.user_attrs["retry_of"]] == t.params
    warm = [t.user_attrs["warm_start_of"] for t in _trials(name, url, "fine") if "warm_start_of" in t.user_attrs]
    assert len(warm) == len(set(warm)) == 2, f"warm starts queued once each: {warm}"


def _cleanup(name: str, url: str) -> None:
    for stage in BUDGET:
        try:
            optuna.delete_study(study_name=f"{name}/{stage}", storage=url)
        except KeyError:
            pass


def _wait(runs: list[subprocess.Popen[str]], timeout: float = 400) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    results = []
    for run in runs:
        try:
            _, err = run.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for r in runs:
                r.kill()
            raise
        results.append((run.returncode, err))
    return results


@pytest.fixture(params=list(URLS), ids=list(URLS))
def url(request: pytest.FixtureRequest) -> str:
    url = URLS[request.param]
    if request.param != "sqlite":
        require_server(url)
    return url


def test_four_runs_of_one_study_behave_as_one(workdir: Path, url: str) -> None:
    name = f"many{uuid.uuid4().hex[:8]}"
    path = write_study(workdir, _study(name, url))
    try:
        runs = [start_run(path, workdir) for _ in range(RUNS)]
        for code, err in _wait(runs):
            assert code == 0, err
            assert "Traceback" not in err
        _check_study(name, url)
        # Each run really worked: trials came from more than one process.
        owners = {t.user_attrs["pid"] for stage in BUDGET for t in _trials(name, url, stage)}
        assert len(owners) > 1
        # A run that arrives after the study is done says so, runs nothing, and exits 0.
        code, out, err = cli("run", str(path))
        assert code == 0 and f"study {name} is done (coarse 10/10, fine 6/6, polish 4/4)" in err
    finally:
        _cleanup(name, url)


def test_one_of_four_runs_killed_mid_stage_the_others_finish_exact_budgets(workdir: Path, url: str) -> None:
    name = f"kill{uuid.uuid4().hex[:8]}"
    path = write_study(workdir, _study(name, url))
    try:
        runs = [start_run(path, workdir) for _ in range(RUNS)]
        victim = running_trial(runs[0], study_name=f"{name}/coarse", storage=url, timeout=120)
        victim_run = next(r for r in runs if r.pid == victim.user_attrs["pid"])
        victim_run.kill()  # SIGKILL: no chance to clean up
        assert victim_run.wait(10) == -signal.SIGKILL  # reaped, as a shell or SLURM would: no zombie pid left
        others = [r for r in runs if r is not victim_run]
        for code, err in _wait(others):
            assert code == 0, err
        _check_study(name, url)
        coarse = _trials(name, url, "coarse")
        lost = next(t for t in coarse if t.number == victim.number)
        assert lost.state is TrialState.FAIL and "abandoned: its run" in lost.user_attrs["fail_reason"]
        assert "ended before it finished" in lost.user_attrs["fail_reason"]  # found dead at once, not after 60 s
        assert any(t.user_attrs.get("retry_of") == victim.number and t.state is not TrialState.FAIL for t in coarse)
    finally:
        _cleanup(name, url)


def test_the_trials_of_a_run_that_stops_heartbeating_on_another_host_are_failed_and_retried(workdir: Path) -> None:
    """A trial left RUNNING by a run on another host (faked: its host name) whose heartbeat goes silent."""
    url = "sqlite:///runs/cars.db"
    study_file = base_study(stages=[{"name": "coarse", "sampler": "random", "trials": 3}],
                            executor={"kind": "local", "workers": 1})
    path = write_study(workdir, study_file)
    assert cli("run", str(path), "--set", "stages.0.trials=1")[0] == 0
    foreign = _foreign_running_trial(url, silent_for=50.0)  # the grace period is 60 s: stale 10 s from now
    run = start_run(path, workdir)
    # The run finishes the other slots, then waits for the foreign trial; status lists both runs.
    deadline = time.monotonic() + 60
    while _finished(url) < 2:
        assert run.poll() is None and time.monotonic() < deadline
        time.sleep(0.3)
    rows = [line.split() for line in _status(path).split("runs working on it now:\n")[1].splitlines()]
    assert rows[0] == ["host", "pid", "stage", "running", "last", "heartbeat"]
    host, pid, stage, running, age, unit, ago = rows[1]  # this run, registered: it beats every few seconds
    assert (host, pid, stage, running, unit, ago) == (socket.gethostname(), str(run.pid), "coarse", "0", "s", "ago")
    assert float(age) < 10
    assert rows[2] == ["elsewhere-node", str(foreign.user_attrs["pid"]), "coarse", "1", "-"]  # known from its trial
    code, err = _wait([run], timeout=120)[0]
    assert code == 0, err
    trials = optuna.load_study(study_name="cars/coarse", storage=url).get_trials()
    failed = next(t for t in trials if t.number == foreign.number)
    assert failed.state is TrialState.FAIL and "sent no heartbeat for 60 s" in failed.user_attrs["fail_reason"]
    retry = [t for t in trials if t.user_attrs.get("retry_of") == foreign.number]
    assert len(retry) == 1 and retry[0].params == foreign.params and retry[0].state is not TrialState.FAIL
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3
    assert f"trial {foreign.number} failed: abandoned" in err
    # The run wrote heartbeats for its own trials (Optuna's trial_heartbeats table), not only the fake one.
    from optuna.storages._rdb.models import TrialHeartbeatModel

    from hpsearch.storage import open_storage

    table = TrialHeartbeatModel.__table__
    with open_storage(url).engine.connect() as conn:  # type: ignore[attr-defined]
        beating = {row[0] for row in conn.execute(sa.select(table.c.trial_id))}
    assert {t._trial_id for t in trials if t.user_attrs["host"] == socket.gethostname()} <= beating


def _finished(url: str) -> int:
    trials = optuna.load_study(study_name="cars/coarse", storage=url).get_trials(deepcopy=False)
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)


def _status(path: Path) -> str:
    code, out, _ = cli("status", str(path))
    assert code == 0
    return out


def _foreign_running_trial(url: str, silent_for: float) -> FrozenTrial:
    """A RUNNING trial with a claimed slot, owned by a run on another host whose last heartbeat is ``silent_for`` s old."""
    from datetime import timedelta

    from optuna.storages._rdb.models import TrialHeartbeatModel

    from hpsearch.coordination import Owner, StageClaims
    from hpsearch.storage import GRACE_S, open_storage, quiet_heartbeat_warnings

    storage = open_storage(url)
    study = optuna.load_study(study_name="cars/coarse", storage=storage)
    owner = Owner("elsewhere-node", 4242)
    claims = StageClaims(storage.engine, study._study_id, owner, GRACE_S)  # type: ignore[attr-defined]
    claim = claims.take(3)
    assert claim is not None
    study.enqueue_trial({"lr": 0.01, "batch_size": 16, "optimizer": "adam"},
                        user_attrs={"host": owner.host, "pid": owner.pid})
    with quiet_heartbeat_warnings():
        trial = study.ask()
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)  # the fixed values, recorded as the space's parameters
    trial.suggest_categorical("batch_size", [16, 32])
    trial.suggest_categorical("optimizer", ["sgd", "momentum", "adam"])
    claims.bind(claim, trial._trial_id)
    storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    table = TrialHeartbeatModel.__table__
    with storage.engine.begin() as conn:  # type: ignore[attr-defined]
        now = conn.execute(sa.select(sa.func.now())).scalar()
        conn.execute(sa.update(table).where(table.c.trial_id == trial._trial_id)
                     .values(heartbeat=now - timedelta(seconds=silent_for)))
    return study.get_trials()[-1]
