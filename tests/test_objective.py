"""TrialRecorder: when another run has failed its trial as abandoned (this run was suspended past the grace
period), and the batch that writes every running trial's epochs together."""

from __future__ import annotations

import datetime
from pathlib import Path

import optuna
from optuna.storages._rdb import models
from optuna.trial import TrialState
import sqlalchemy as sa

from hpsearch.objective import TrialRecorder, WriteBatch, end_all
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


def _running(study: optuna.Study, batch: WriteBatch) -> TrialRecorder:
    with quiet_heartbeat_warnings():
        trial = study.ask()
    study._storage.defer_writes(trial._trial_id)  # as the stage loop does
    recorder = TrialRecorder(study, trial, "val_rmse", batch=batch)
    recorder.start()
    return recorder


def test_a_write_batch_writes_every_running_trials_epochs_in_one_transaction(tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    batch = WriteBatch(study._storage)
    recorders = [_running(study, batch) for _ in range(3)]
    commits: list[object] = []
    writes: list[str] = []

    def commit(conn: object) -> None:
        commits.append(conn)

    def statement(conn: object, cursor: object, sql: str, *args: object) -> None:
        if sql.lstrip().upper().startswith(("INSERT", "UPDATE")):
            writes.append(sql)

    sa.event.listen(sa.engine.Engine, "commit", commit)
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", statement)
    try:
        for epoch in (1, 2):
            for i, recorder in enumerate(recorders):
                assert recorder.report(epoch, {"val_rmse": 10.0 * i + epoch}) is False
        recorders[0].placed({"worker_pid": 7})
        assert not writes  # nothing written until the batch is flushed
        commits.clear()
        batch.flush()
    finally:
        sa.event.remove(sa.engine.Engine, "commit", commit)
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", statement)
    assert writes
    assert len(commits) == 1
    trials = study.get_trials()
    assert [t.intermediate_values for t in trials] == [{1: 10.0 * i + 1, 2: 10.0 * i + 2} for i in range(3)]
    assert trials[0].user_attrs["worker_pid"] == 7

    # A trial another run failed meanwhile is skipped, the others written, and it is told to stop.
    study._storage.set_trial_state_values(recorders[1].trial._trial_id, TrialState.FAIL)
    for recorder in recorders:
        recorder.report(3, {"val_rmse": 1.0})
    batch.flush()
    assert recorders[1].gone and not recorders[0].gone
    assert recorders[1].report(4, {"val_rmse": 1.0}) is True
    assert [3 in t.intermediate_values for t in study.get_trials()] == [True, False, True]


def test_heartbeats_of_all_running_trials_in_one_statement(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    recorders = [_running(study, WriteBatch(storage)) for _ in range(3)]
    beats = models.TrialHeartbeatModel.__table__
    old = datetime.datetime(2000, 1, 1)
    with storage.engine.begin() as conn:
        conn.execute(sa.update(beats).values(heartbeat=old))
    storage.beat([r.trial._trial_id for r in recorders[:2]])
    with storage.engine.connect() as conn:
        after = dict(conn.execute(sa.select(beats.c.trial_id, beats.c.heartbeat)).all())
    assert [after[r.trial._trial_id] > old for r in recorders] == [True, True, False]


def _result(value: float, reason: StopReason = StopReason.COMPLETED) -> TrainResult:
    return TrainResult(best_metrics={"val_rmse": value}, best_epoch=1, epochs_run=1, duration_s=0.1, device="cpu",
                       samples_per_s=1.0, stop_reason=reason, message="")


def test_trials_that_end_together_are_written_in_one_transaction(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    batch = WriteBatch(storage)
    recorders = [_running(study, batch) for _ in range(4)]
    for i, recorder in enumerate(recorders):
        recorder.report(1, {"val_rmse": 5.0 + i})
    storage.set_trial_state_values(recorders[3].trial._trial_id, TrialState.FAIL)  # another run failed it
    endings = [recorders[0].finishing(_result(1.5)), recorders[1].finishing(_result(9.0, StopReason.PRUNED)),
               recorders[2].failing("boom", lost=True), recorders[3].finishing(_result(0.5))]
    commits: list[object] = []

    def commit(conn: object) -> None:
        commits.append(conn)

    sa.event.listen(sa.engine.Engine, "commit", commit)
    try:
        end_all(storage, endings)
    finally:
        sa.event.remove(sa.engine.Engine, "commit", commit)
    assert len(commits) == 1
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.FAIL]
    assert trials[0].value == 1.5 and trials[0].user_attrs["best_epoch"] == 1
    assert trials[1].value == 6.0  # a pruned trial's value is its last report
    assert trials[2].user_attrs["fail_reason"] == "boom" and trials[2].user_attrs["lost"] is True
    assert trials[0].intermediate_values == {1: 5.0} and trials[2].intermediate_values == {1: 7.0}
    assert trials[3].value is None and "best_epoch" not in trials[3].user_attrs  # skipped: not ours any more
    assert recorders[3].gone and recorders[3].frozen.state is TrialState.RUNNING  # the stage reads what was written
    assert [r.frozen.state for r in recorders[:3]] == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]


def test_a_created_trial_has_a_heartbeat_from_its_first_commit(tmp_path: Path) -> None:
    # A run that dies right after creating a trial leaves it to be found stale, not RUNNING for ever.
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(storage=storage)
    template = optuna.trial.create_trial(state=TrialState.RUNNING)
    trial_id = storage.create_new_trial(study._study_id, template)
    beats = models.TrialHeartbeatModel.__table__
    with storage.engine.connect() as conn:
        assert conn.execute(sa.select(beats.c.trial_id)).scalars().all() == [trial_id]
