"""A monitored metric that runs away (diverge_factor) ends the trial as diverged, alone and in a fused pack alike;
the runaway epoch is never reported, and the trial keeps its best epoch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loop_helpers import Recorder, make_config
import optuna
from optuna.trial import TrialState
import pytest

from hpsearch.errors import ConfigError
from hpsearch.objective import TrialRecorder
from hpsearch.storage import open_storage, quiet_heartbeat_warnings
from hpsearch.train import Dataset, StopReason, TrainConfig, train
from hpsearch.train.divergence import DEFAULT_FACTOR, RunawayWatch
from hpsearch.train.fused import fusion_key, train_pack

# A linear model under SGD whose cyclic schedule lifts the lr past what it can take: on cars93,
# val_rmse goes about 5.5, 5.8, 100 and then 11,000 at epoch 4, finite all along.
RUNAWAY = {"optimizer": "sgd", "lr": 0.05, "epochs": 8, "batch_size": 16, "schedule": "cyclic",
           "cycle_epochs": 8, "peak_ratio": 4}
CALM = {**RUNAWAY, "lr": 0.01}


def _config(knobs: dict[str, Any], seed: int = 1) -> TrainConfig:
    return make_config(knobs, hidden=(), seed=seed)


def _watch(monitor: str, values: list[float], factor: float | None = DEFAULT_FACTOR) -> list[str | None]:
    watch = RunawayWatch(monitor, factor)
    return [watch.check(epoch, value) for epoch, value in enumerate(values, start=1)]


def test_a_minimized_metric_runs_away_past_factor_times_its_first_value() -> None:
    assert _watch("val_rmse", [5.0, 400.0, 500.0, 500.1]) == [None, None, None,
                                                              "val_rmse ran away to 500.1 at epoch 4 "
                                                              "(epoch 1: 5; diverge_factor 100)"]
    assert _watch("val_loss", [2.0, 1.0, 21.0], factor=10.0)[-1] is not None
    assert _watch("val_mae", [0.0, 1e9]) == [None, None]  # a perfect first epoch leaves nothing to compare with
    assert _watch("val_rmse", [5.0, 1e12], factor=None) == [None, None]  # null turns the rule off


def test_r2_runs_away_as_its_distance_to_one_and_bounded_metrics_never_do() -> None:
    # 1 - r2 is 0.5 at epoch 1: r2 runs away below 1 - 100 * 0.5 = -49.
    assert _watch("val_r2", [0.5, -40.0, -49.0]) == [None, None, None]
    assert _watch("val_r2", [0.5, -49.5])[-1] == "val_r2 ran away to -49.5 at epoch 2 (epoch 1: 0.5; diverge_factor 100)"
    assert _watch("val_accuracy", [0.999, 0.0]) == [None, None]
    assert _watch("val_f1", [0.999, 0.0]) == [None, None]


def test_diverge_factor_is_a_knob() -> None:
    assert _config({}).diverge_factor == DEFAULT_FACTOR == 100.0
    assert _config({"diverge_factor": 20}).diverge_factor == 20.0
    assert _config({"diverge_factor": None}).diverge_factor is None
    for bad in (1, 0.5):
        with pytest.raises(ConfigError, match=r"^diverge_factor: must be > 1 .*, or null to turn it off"):
            _config({"diverge_factor": bad})
    with pytest.raises(ConfigError, match=r"^diverge_factor: must be a number"):
        _config({"diverge_factor": "big"})


def test_the_runaway_epoch_ends_the_trial_unreported_with_its_best_epoch_kept(cars: Dataset) -> None:
    seen = Recorder()
    result = train(_config(RUNAWAY), cars, seen)
    assert result.stop_reason is StopReason.DIVERGED and result.epochs_run == 4
    assert result.message.startswith("val_rmse ran away to ") and " at epoch 4 (epoch 1: " in result.message
    assert [epoch for epoch, _ in seen.history] == [1, 2, 3]  # epoch 4 never reported
    best = min(seen.history, key=lambda h: h[1]["val_rmse"])
    assert result.best_epoch == best[0] and result.best_metrics == best[1]

    # Without the rule the same trial trains on, and its runaway values would be reported.
    off = Recorder()
    alone = train(_config({**RUNAWAY, "diverge_factor": None}), cars, off)
    assert alone.stop_reason is StopReason.COMPLETED and alone.epochs_run == 8
    assert off.history[3][1]["val_rmse"] > 100 * off.history[0][1]["val_rmse"]


def test_a_fused_pack_stops_a_runaway_member_as_its_solo_run_does(cars: Dataset) -> None:
    configs = [_config(RUNAWAY, seed=1), _config(CALM, seed=2), _config({**RUNAWAY, "diverge_factor": 1e12}, seed=3)]
    assert len({fusion_key(c) for c in configs}) == 1
    solo = [Recorder() for _ in configs]
    solo_results = [train(c, cars, r) for c, r in zip(configs, solo, strict=True)]
    fused = [Recorder() for _ in configs]
    fused_results = train_pack(configs, cars, fused)
    assert [r.stop_reason for r in fused_results] == [StopReason.DIVERGED, StopReason.COMPLETED, StopReason.COMPLETED]
    for alone, together, a, b in zip(solo_results, fused_results, solo, fused, strict=True):
        assert (together.stop_reason, together.epochs_run, together.best_epoch) == (
            alone.stop_reason, alone.epochs_run, alone.best_epoch)
        assert [e for e, _ in b.history] == [e for e, _ in a.history]
        assert together.best_metrics["val_rmse"] == pytest.approx(alone.best_metrics["val_rmse"], rel=1e-4)
    assert fused_results[0].message.startswith("val_rmse ran away to ") and " at epoch 4 (" in fused_results[0].message


def test_a_diverged_trial_is_complete_with_its_best_value_and_no_runaway_step(cars: Dataset, tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    with quiet_heartbeat_warnings():
        trial = study.ask()
    recorder = TrialRecorder(study, trial, "val_rmse")
    recorder.start()
    result = train(_config(RUNAWAY), cars, recorder)
    assert recorder.finish(result) is TrialState.COMPLETE
    (stored,) = study.get_trials()
    assert stored.state is TrialState.COMPLETE and stored.user_attrs["stop_reason"] == "diverged"
    assert sorted(stored.intermediate_values) == [1, 2, 3]
    assert stored.value == pytest.approx(min(stored.intermediate_values.values()))
    assert max(stored.intermediate_values.values()) < 100 * stored.intermediate_values[1]
