"""Nothing is lost: a run stopped by Ctrl-C or killed outright resumes, and no trial stays RUNNING."""

from __future__ import annotations

import os
from pathlib import Path
import signal
import socket
import subprocess
import sys
import threading

import optuna
from optuna.trial import TrialState
import pytest

from hpsearch import cli
from hpsearch.objective import owner_attrs
from hpsearch.stages import fail_abandoned
from hpsearch.storage import open_storage, quiet_heartbeat_warnings
from tests.helpers import base_study, cli_process, process_env, running_trial, start_run, write_study

STORAGE = "sqlite:///runs/cars.db"


def _slow_study(workdir: Path) -> Path:
    study = base_study()
    study["stages"][0]["trials"] = 6
    study["train"] = {"epochs": 400, "patience": None, "device": "cpu"}  # a few seconds per trial
    study["space"]["batch_size"]["choices"] = [8]
    return write_study(workdir, study)


def _states() -> list[TrialState]:
    # open_storage, as `hpsearch status` does: a plain Optuna client racing the run to create the
    # tables of the new file can lose (Optuna's own race, which open_storage serializes).
    try:
        return [t.state for t in optuna.load_study(study_name="cars/coarse", storage=open_storage(STORAGE)).get_trials()]
    except KeyError:  # the study does not exist yet
        return []


def _resume_and_check(path: Path, workdir: Path) -> list[optuna.trial.FrozenTrial]:
    done = cli_process("run", str(path), "--set", "train.epochs=3", "--force-resume", cwd=workdir)  # finish quickly
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="cars/coarse", storage=STORAGE).get_trials()
    assert not [t for t in trials if t.state is TrialState.RUNNING]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 6
    assert len({t.number for t in trials}) == len(trials)
    return trials


def test_ctrl_c_fails_running_trials_and_the_run_resumes(workdir: Path) -> None:
    path = _slow_study(workdir)
    process = start_run(path, workdir)
    running_trial(process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    states = _states()
    assert TrialState.RUNNING not in states and TrialState.FAIL in states
    trials = _resume_and_check(path, workdir)
    interrupted = [t for t in trials if t.state is TrialState.FAIL]
    assert interrupted and all("interrupted" in t.user_attrs["fail_reason"] for t in interrupted)


def test_sigterm_is_handled_like_ctrl_c(workdir: Path) -> None:
    path = _slow_study(workdir)
    process = start_run(path, workdir)
    running_trial(process)
    process.terminate()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert TrialState.RUNNING not in _states()


@pytest.mark.timeout(60)
def test_a_signal_that_lands_while_the_run_holds_the_stop_lock_still_stops_it() -> None:
    # The handler runs in the main thread between two bytecodes, possibly inside stop.wait() while
    # that thread holds stop's own lock; setting the Event right there would deadlock the run.
    stop = threading.Event()
    with cli._stop_on_signals(stop):
        with stop._cond:  # type: ignore[attr-defined]  # where Event.wait holds it
            signal.raise_signal(signal.SIGTERM)  # the handler runs here, in this thread
        assert stop.wait(10)


def test_a_reader_that_leaves_early_is_not_an_error(workdir: Path) -> None:
    # `hpsearch validate study.yaml | head -0`: the reader is gone before the first write.
    path = write_study(workdir, base_study())
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run([sys.executable, "-m", "hpsearch", "validate", str(path)], cwd=workdir,
                              env=process_env(), stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_sigkill_leaves_running_trials_that_the_next_run_fails_then_completes(workdir: Path) -> None:
    path = _slow_study(workdir)
    process = start_run(path, workdir)
    running_trial(process)
    process.kill()
    process.communicate(timeout=30)
    assert TrialState.RUNNING in _states()  # nobody could clean up after SIGKILL
    trials = _resume_and_check(path, workdir)
    abandoned = [t for t in trials if t.state is TrialState.FAIL]
    assert abandoned and all("abandoned" in t.user_attrs["fail_reason"] for t in abandoned)


def test_a_trial_left_queued_or_ownerless_by_a_dead_run_is_not_lost(workdir: Path) -> None:
    # What a run killed between enqueue_trial() and ask(), or right after ask(), leaves behind.
    path = write_study(workdir, base_study(stages=[{"name": "coarse", "sampler": "random", "trials": 3}]))
    assert cli_process("validate", str(path), cwd=workdir).returncode == 0
    storage = open_storage(STORAGE)
    study = optuna.create_study(study_name="cars/coarse", storage=storage, direction="minimize")
    dead = {"host": socket.gethostname(), "pid": _dead_pid()}
    study.enqueue_trial({}, user_attrs=dead)
    with quiet_heartbeat_warnings():
        study.ask()  # RUNNING, owned by a dead process
    study.enqueue_trial({}, user_attrs=dead)  # still WAITING
    done = cli_process("run", str(path), cwd=workdir)
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="cars/coarse", storage=STORAGE).get_trials()
    assert [t.state for t in trials].count(TrialState.FAIL) == 1
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len(trials) == 4  # the queued trial was run, not left behind a new one


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(child.stdout)


def test_a_worker_killed_under_its_trial_fails_it_and_the_trial_runs_once_more(workdir: Path) -> None:
    path = _slow_study(workdir)
    process = start_run(path, workdir)
    victim = running_trial(process)
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
    _, err = process.communicate(timeout=240)
    assert process.returncode == 0, err  # the same run absorbs the loss and completes the budget
    trials = optuna.load_study(study_name="cars/coarse", storage=STORAGE).get_trials()
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 6
    lost = trials[victim.number]
    assert lost.state is TrialState.FAIL and "worker process died" in lost.user_attrs["fail_reason"]
    retries = [t for t in trials if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].params == victim.params
    assert retries[0].state is TrialState.COMPLETE


def test_a_trial_an_earlier_run_in_this_process_left_running_is_failed_not_waited_on(workdir: Path) -> None:
    """hpsearch.run twice in one process (a notebook): the second run must not wait for ever on a trial the
    first left RUNNING, although this process owns it."""
    storage = open_storage("sqlite:///runs/left.db")
    study = optuna.create_study(study_name="left/coarse", storage=storage)
    left = study.ask()
    for key, value in owner_attrs().items():
        left.set_user_attr(key, value)
    assert fail_abandoned(study) == []  # this process's own, as far as it can tell alone
    assert fail_abandoned(study, mine={left._trial_id}) == []  # still running here
    failed = fail_abandoned(study, mine=set())  # the run going on here does not hold it: abandoned
    assert [t.number for t in failed] == [left.number]
    after = study.trials[0]
    assert after.state is TrialState.FAIL and after.user_attrs["lost"] is True
    assert "an earlier run in this process" in after.user_attrs["fail_reason"]
