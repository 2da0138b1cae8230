"""Nothing is lost: a run stopped by Ctrl-C or killed outright resumes, and no trial stays RUNNING."""

from __future__ import annotations

import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import optuna
from optuna.trial import TrialState

from tests.helpers import ROOT, base_study, cli_process, write_study

STORAGE = "sqlite:///runs/cars.db"


def _slow_study(workdir: Path) -> Path:
    study = base_study()
    study["stages"][0]["trials"] = 6
    study["train"] = {"epochs": 400, "patience": None, "device": "cpu"}  # a few seconds per trial
    study["space"]["batch_size"]["choices"] = [8]
    return write_study(workdir, study)


def _states() -> list[TrialState]:
    try:
        return [t.state for t in optuna.load_study(study_name="cars/coarse", storage=STORAGE).get_trials()]
    except KeyError:  # the study does not exist yet
        return []


def _start(path: Path, workdir: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HPSEARCH_STORAGE", None)
    return subprocess.Popen([sys.executable, "-m", "hpsearch", "run", str(path)], cwd=workdir, env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_running(process: subprocess.Popen[str], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"run ended early: {process.communicate()}")
        if Path("runs/cars.db").exists() and TrialState.RUNNING in _states():
            return
        time.sleep(0.3)
    process.kill()
    raise AssertionError("no trial started running")


def _resume_and_check(path: Path, workdir: Path) -> list[optuna.trial.FrozenTrial]:
    done = cli_process("run", str(path), "--set", "train.epochs=3", cwd=workdir)
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="cars/coarse", storage=STORAGE).get_trials()
    assert not [t for t in trials if t.state is TrialState.RUNNING]
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 6
    assert len({t.number for t in trials}) == len(trials)
    return trials


def test_ctrl_c_fails_running_trials_and_the_run_resumes(workdir: Path) -> None:
    path = _slow_study(workdir)
    process = _start(path, workdir)
    _wait_for_running(process)
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
    process = _start(path, workdir)
    _wait_for_running(process)
    process.terminate()
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert TrialState.RUNNING not in _states()


def test_sigkill_leaves_running_trials_that_the_next_run_fails_then_completes(workdir: Path) -> None:
    path = _slow_study(workdir)
    process = _start(path, workdir)
    _wait_for_running(process)
    process.kill()
    process.communicate(timeout=30)
    assert TrialState.RUNNING in _states()  # nobody could clean up after SIGKILL
    trials = _resume_and_check(path, workdir)
    abandoned = [t for t in trials if t.state is TrialState.FAIL]
    assert abandoned and all("abandoned" in t.user_attrs["fail_reason"] for t in abandoned)
