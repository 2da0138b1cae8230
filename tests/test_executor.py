"""Every executor: trials in workers, reports answered in the caller's thread, dead workers replaced.

The executor tests are a contract run over every registered executor (the Ray one on an embedded
local Ray), so a new executor is tested the moment it is registered.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import io
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import optuna
import pytest

from hpsearch import executors
from hpsearch.executors import Executor, TrialJob, make_executor
from hpsearch.progress import ProgressListener
from hpsearch.spec import ExecutorSpec, parse_spec
from hpsearch.train import TrainResult, build_train_config, parse_data_config
from tests.helpers import BOOM_MODEL, CARS, ROOT, base_study


@pytest.fixture(params=executors.names())
def make(request: pytest.FixtureRequest) -> Iterator[object]:
    """A factory of executors of one registered kind; everything it made is closed afterwards."""
    made: list[Executor] = []

    def factory(workers: int) -> Executor:
        made.append(make_executor(ExecutorSpec(kind=request.param, workers=workers)))
        return made[-1]

    yield factory
    for executor in made:
        executor.close()


def _job(key: int, epochs: int) -> TrialJob:
    config = build_train_config({"kind": "mlp", "hidden": [8]}, {"epochs": epochs, "device": "cpu", "batch_size": 8},
                                task="regression", monitor="val_rmse", maximize=False, seed=key)
    data = parse_data_config({"csv": str(CARS), "target": "Price", "task": "regression",
                              "drop": ["Model", "Make", "Min.Price", "Max.Price"]}, seed=0)
    return TrialJob(key, config, data)


class Recorder:
    def __init__(self, stop_after: int | None = None, kill_at_report: bool = False) -> None:
        self.reports: dict[int, list[int]] = {}
        self.results: dict[int, TrainResult] = {}
        self.errors: dict[int, str] = {}
        self.lost: set[int] = set()
        self.placements: dict[int, Mapping[str, object]] = {}
        self._stop_after = stop_after
        self._kill = kill_at_report

    def on_report(self, key: int, epoch: int, metrics: Mapping[str, float]) -> bool:
        self.reports.setdefault(key, []).append(epoch)
        if self._kill:  # the worker process training this trial, killed as the OOM killer would
            os.kill(int(self.placements[key]["worker_pid"]), signal.SIGKILL)  # type: ignore[call-overload]
            self._kill = False
        return self._stop_after is not None and epoch >= self._stop_after

    def on_result(self, key: int, result: TrainResult) -> None:
        self.results[key] = result

    def on_error(self, key: int, message: str, detail: str, lost: bool = False) -> None:
        self.errors[key] = message
        if lost:
            self.lost.add(key)

    def on_start(self, key: int, placement: Mapping[str, object]) -> None:
        self.placements[key] = placement


def _drain(executor: Executor, handler: Recorder, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while executor.running() and time.monotonic() < deadline:
        executor.poll(handler, timeout=1.0)
    assert executor.running() == 0


def test_two_workers_run_trials_and_answer_every_report(make) -> None:  # type: ignore[no-untyped-def]
    handler = Recorder(stop_after=2)
    executor = make(2)
    assert executor.capacity == 2
    executor.submit(_job(0, epochs=5))
    executor.submit(_job(1, epochs=5))
    assert executor.free_slots() == 0
    _drain(executor, handler)
    assert set(handler.results) == {0, 1}
    for key in (0, 1):
        assert handler.reports[key] == [1, 2]  # stopped by the handler's answer after epoch 2
        assert handler.results[key].stop_reason.name == "PRUNED"
        assert handler.results[key].epochs_run == 2
        assert handler.placements[key]["worker_pid"] != os.getpid()  # placed in a worker process
    assert handler.placements[0]["worker_pid"] != handler.placements[1]["worker_pid"]  # side by side


def test_a_dead_worker_fails_its_trial_and_is_replaced(make) -> None:  # type: ignore[no-untyped-def]
    handler = Recorder(kill_at_report=True)
    executor = make(1)
    executor.submit(_job(0, epochs=50))
    _drain(executor, handler)
    assert "died" in handler.errors[0]
    assert handler.lost == {0}  # not the trial's fault: the stage may retry it
    executor.submit(_job(1, epochs=2))
    _drain(executor, handler)
    assert handler.results[1].epochs_run == 2
    assert handler.placements[1]["worker_pid"] != handler.placements[0]["worker_pid"]  # a new worker


def test_a_worker_killed_while_idle_is_replaced_and_the_next_trial_runs(make) -> None:  # type: ignore[no-untyped-def]
    handler = Recorder()
    executor = make(1)
    executor.submit(_job(0, epochs=1))
    _drain(executor, handler)
    pid = int(handler.placements[0]["worker_pid"])  # type: ignore[call-overload]
    os.kill(pid, signal.SIGKILL)  # between two trials, as the OOM killer would
    deadline = time.monotonic() + 30
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    executor.submit(_job(1, epochs=2))
    _drain(executor, handler)
    assert handler.results[1].epochs_run == 2 and not handler.errors
    assert handler.placements[1]["worker_pid"] != pid


def _alive(pid: int) -> bool:
    # A killed child of ours stays a zombie until reaped: dead all the same.
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_failing_trial_fails_alone_and_its_worker_goes_on(make, workdir: Path) -> None:  # type: ignore[no-untyped-def]
    (workdir / "boom.py").write_text(BOOM_MODEL)  # a user module in the run's directory, imported by the worker
    handler = Recorder()
    executor = make(1)
    job = _job(0, epochs=2)
    boom = build_train_config({"python": "boom:build"}, {"epochs": 2, "device": "cpu"}, task="regression",
                              monitor="val_rmse", maximize=False, seed=0)
    executor.submit(TrialJob(0, boom, job.data))
    _drain(executor, handler)
    assert handler.errors[0] == "RuntimeError: boom in forward" and not handler.lost  # its own fault: no retry
    executor.submit(_job(1, epochs=2))
    _drain(executor, handler)
    assert handler.results[1].epochs_run == 2
    assert handler.placements[1]["worker_pid"] == handler.placements[0]["worker_pid"]  # the same worker


def test_progress_bar_on_a_terminal_and_lines_elsewhere() -> None:
    spec = parse_spec(base_study())
    stage = spec.stages[0]
    study = optuna.create_study(study_name="cars/coarse", direction="minimize")
    study.optimize(lambda t: t.suggest_float("lr", 0.1, 1.0), n_trials=2)
    for live in (True, False):
        stream = io.StringIO()
        listener = ProgressListener(stream, live=live)
        listener.on_stage_start(spec, stage, study, done=2)
        listener.on_trial_end(stage, study.trials[1], 3, study.best_trial)
        listener.on_stage_end(stage, study)
        text = stream.getvalue()
        assert "cars/coarse" in text and f"best {study.best_value:.6g}" in text
        assert ("3/4" in text) if live else ("trial 1 complete" in text and "[3/4]" in text)


def test_executors_do_not_import_the_study_file_parser() -> None:
    # spec imports the executor registry to check executor.kind; the executors need no spec (no import circle).
    code = "import sys, hpsearch.executors, hpsearch.executors.packs; assert 'hpsearch.spec' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_an_error_of_the_handler_is_the_callers_not_a_dead_worker(make) -> None:  # type: ignore[no-untyped-def]
    """A full disk while the caller records a result must stop the caller, not pass for a worker that died
    (which would forget the trial: left RUNNING, and waited on for ever)."""

    class DiskFull(Recorder):
        def on_result(self, key: int, result: TrainResult) -> None:
            raise OSError(28, "No space left on device")

    handler = DiskFull()
    executor = make(1)
    executor.submit(_job(0, epochs=1))
    with pytest.raises(OSError, match="No space left on device"):
        _drain(executor, handler)
    assert not handler.errors and not handler.lost
