from __future__ import annotations

from collections.abc import Mapping
import math
from typing import Any

import pytest
import torch
from torch import nn
from train_helpers import CARS_DROP, cars_config, synthetic_classification, synthetic_regression

from hpsearch.errors import ConfigError
from hpsearch.train import (
    Dataset,
    StopReason,
    build_train_config,
    fit,
    load_dataset,
    reported_metrics,
    train,
)
from hpsearch.train.loop import evaluate, resolve_device
from hpsearch.train.models import build_model


class Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.history: list[tuple[int, dict[str, float]]] = []
        self.stop_at = stop_at

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        self.history.append((epoch, dict(metrics)))
        return epoch == self.stop_at


def config(
    knobs: dict[str, Any],
    *,
    task: str = "regression",
    monitor: str = "val_rmse",
    maximize: bool = False,
    seed: int = 0,
    model: dict[str, Any] | None = None,
):
    knobs = {"device": "cpu", **knobs}
    return build_train_config(
        model or {"kind": "mlp", "hidden": [16]},
        knobs,
        task=task,
        monitor=monitor,
        maximize=maximize,
        seed=seed,
    )


def test_reports_every_metric_every_epoch_in_original_units(cars: Dataset) -> None:
    rec = Recorder()
    result = train(config({"epochs": 3, "lr": 0.01}), cars, rec)
    assert [e for e, _ in rec.history] == [1, 2, 3]
    assert all(set(m) == set(reported_metrics("regression")) for _, m in rec.history)
    m = result.best_metrics
    assert m["val_rmse"] == pytest.approx(math.sqrt(m["val_mse"]))
    # metrics are in original units: a model that predicts the training mean scores the raw-price errors
    model = build_model(config({}).model, cars.n_features, 1)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    baseline = evaluate(model, cars.x_val, cars)  # predicts exactly the training mean
    y_val = cars.y_val.double() * cars.target_std + cars.target_mean
    assert baseline["val_mse"] == pytest.approx(((y_val - cars.target_mean) ** 2).mean().item())
    assert baseline["val_mae"] == pytest.approx((y_val - cars.target_mean).abs().mean().item())
    assert result.device == "cpu" and result.samples_per_s > 0 and result.duration_s > 0


def test_early_stopping_restores_the_best_weights(cars: Dataset) -> None:
    cfg = config(
        {"optimizer": "adam", "lr": 0.03, "epochs": 300, "patience": 3, "batch_size": 8},
        model={"kind": "mlp", "hidden": [64, 64]},
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, cars.n_features, cars.n_outputs)
    rec = Recorder()
    result = fit(cfg, cars, model, rec)
    assert result.stop_reason is StopReason.EARLY_STOPPED
    assert result.best_epoch is not None and result.epochs_run == result.best_epoch + 3
    last = rec.history[-1][1]
    assert last["val_rmse"] > result.best_metrics["val_rmse"]
    assert result.best_metrics == rec.history[result.best_epoch - 1][1]
    again = evaluate(model, cars.x_val, cars)
    for name, value in again.items():
        assert value == pytest.approx(result.best_metrics[name], rel=1e-9), name


def test_min_delta_counts_small_gains_as_no_improvement() -> None:
    data = synthetic_regression()
    result = train(config({"epochs": 50, "patience": 2, "min_delta": 1e9, "lr": 0.01}), data)
    assert result.stop_reason is StopReason.EARLY_STOPPED
    assert (result.best_epoch, result.epochs_run) == (1, 3)


def test_maximized_monitor_keeps_the_highest_value(cars: Dataset) -> None:
    rec = Recorder()
    result = train(config({"epochs": 10, "lr": 0.01}, monitor="val_r2", maximize=True), cars, rec)
    assert result.best_metrics["val_r2"] == max(m["val_r2"] for _, m in rec.history)


def test_huge_learning_rate_diverges(cars: Dataset) -> None:
    rec = Recorder()
    result = train(config({"optimizer": "sgd", "lr": 1e6, "epochs": 20}), cars, rec)
    assert result.stop_reason is StopReason.DIVERGED
    assert result.epochs_run < 20
    assert "train loss became" in result.message and f"at epoch {result.epochs_run}" in result.message
    assert any(word in result.message for word in ("nan", "inf"))
    assert result.best_epoch is None or result.best_epoch < result.epochs_run


class _InfiniteInEval(nn.Module):
    """Trains normally but predicts inf when evaluated, so the monitored metric is inf."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return out if self.training else out + math.inf


def test_non_finite_monitored_metric_diverges() -> None:
    data = synthetic_regression()
    result = fit(config({"epochs": 5}), data, _InfiniteInEval(data.n_features))
    assert result.stop_reason is StopReason.DIVERGED
    assert result.message == "val_rmse became inf at epoch 1"
    assert (result.best_epoch, dict(result.best_metrics), result.epochs_run) == (None, {}, 1)


def test_reporter_returning_true_prunes() -> None:
    rec = Recorder(stop_at=3)
    result = train(config({"epochs": 10}), synthetic_regression(), rec)
    assert result.stop_reason is StopReason.PRUNED and result.epochs_run == 3
    assert [e for e, _ in rec.history] == [1, 2, 3] and "epoch 3" in result.message


def _run(seed: int, data: Dataset) -> tuple[list, dict]:
    rec = Recorder()
    cfg = config(
        {"epochs": 5, "dropout": 0.2, "batch_size": 8}, seed=seed, model={"kind": "mlp", "hidden": [32, 16]}
    )
    result = train(cfg, data, rec)
    return rec.history, dict(result.best_metrics)


def test_same_seed_is_bit_identical_on_cpu(cars: Dataset) -> None:
    first, second, other = _run(1, cars), _run(1, cars), _run(2, cars)
    assert first == second  # exact float equality, every epoch
    assert first != other


def test_train_leaves_the_global_rng_untouched(cars: Dataset) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(config({"epochs": 1, "dropout": 0.5}), cars)
    assert torch.equal(torch.rand(3), expected)


def test_classification_reports_accuracy() -> None:
    data = synthetic_classification()
    rec = Recorder()
    cfg = config({"epochs": 10, "lr": 0.01}, task="classification", monitor="val_accuracy", maximize=True)
    result = train(cfg, data, rec)
    assert set(rec.history[0][1]) == set(reported_metrics("classification"))
    assert result.best_metrics["val_accuracy"] >= 0.95
    assert rec.history[-1][1]["val_loss"] < rec.history[0][1]["val_loss"]


def test_classification_on_a_csv_column() -> None:
    data = load_dataset(cars_config(target="DriveTrain", task="classification", drop=CARS_DROP))
    cfg = config({"epochs": 30, "lr": 0.01}, task="classification", monitor="val_loss")
    torch.manual_seed(0)
    model = build_model(cfg.model, data.n_features, data.n_outputs)
    rec = Recorder()
    result = fit(cfg, data, model, rec)
    assert rec.history[-1][1]["train_loss"] < rec.history[0][1]["train_loss"]
    model.eval()
    with torch.no_grad():
        logits = model(data.x_val)
    accuracy = (logits.argmax(dim=1) == data.y_val).double().mean().item()
    assert result.best_metrics["val_accuracy"] == pytest.approx(accuracy)
    assert result.best_metrics["val_loss"] == pytest.approx(
        nn.functional.cross_entropy(logits, data.y_val).item()
    )


def test_device_resolution() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError) as info:
        resolve_device("cuda:99")
    assert info.value.key == "device"
