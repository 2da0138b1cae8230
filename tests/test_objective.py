"""TrialRecorder when another run has failed its trial as abandoned (this run was suspended past the grace period)."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from hpsearch.objective import TrialRecorder
from hpsearch.storage import open_storage, quiet_heartbeat_warnings
from hpsearch.train import StopReason, TrainResult


def _taken_away(tmp_path: Path) -> tuple[optuna.Study, TrialRecorder]:
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    with quiet_heartbeat_warnings():
        trial = study.ask()
    recorder = TrialRecorder(study, trial, "val_rmse")
    recorder.start()
    study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", "abandoned: ...")  # what another run does
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return study, recorder


def test_a_trial_failed_by_another_run_stops_and_keeps_its_failure(tmp_path: Path) -> None:
    study, recorder = _taken_away(tmp_path)
    recorder.placed({"worker_pid": 1})  # no UpdateFinishedTrialError
    assert recorder.report(1, {"val_rmse": 3.0}) is True  # stop training it
    result = TrainResult(best_metrics={"val_rmse": 2.5}, best_epoch=1, epochs_run=1, duration_s=0.1, device="cpu",
                         samples_per_s=1.0, stop_reason=StopReason.COMPLETED, message="")
    assert recorder.finish(result) is TrialState.FAIL
    recorder.fail("interrupted", lost=True)
    (trial,) = study.get_trials()
    assert trial.state is TrialState.FAIL and trial.user_attrs["fail_reason"] == "abandoned: ..."
    assert "worker_pid" not in trial.user_attrs and "lost" not in trial.user_attrs
