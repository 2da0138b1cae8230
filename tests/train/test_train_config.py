from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from train_helpers import CARS

from hpsearch.errors import ConfigError
from hpsearch.train import (
    OPTIMIZER_KNOBS,
    SCHEDULE_KNOBS,
    TRAIN_KNOBS,
    LrScaling,
    MlpConfig,
    ScheduleConfig,
    build_train_config,
    knob_names,
    models,
    optimizers,
    reported_metrics,
    schedules,
)


def build(knobs: dict[str, Any] | None = None, model: dict[str, Any] | None = None, **kw: Any):
    args: dict[str, Any] = {"task": "regression", "monitor": "val_rmse", "maximize": False, "seed": 0, **kw}
    return build_train_config(model if model is not None else {"kind": "mlp"}, knobs or {}, **args)


def test_defaults() -> None:
    cfg = build()
    assert (cfg.epochs, cfg.patience, cfg.min_delta, cfg.device, cfg.batch_size) == (
        20,
        None,
        0.0,
        "auto",
        32,
    )
    assert (cfg.optimizer.name, cfg.optimizer.lr, cfg.optimizer.weight_decay) == ("adam", 1e-3, 0.0)
    assert cfg.optimizer.options == (("beta1", 0.9), ("beta2", 0.999), ("eps", 1e-8))  # torch's defaults
    assert cfg.schedule == ScheduleConfig("constant", ())
    assert (cfg.lr_scaling, cfg.lr_multipliers, cfg.l1, cfg.grad_clip, cfg.precision) == (
        LrScaling("none", 32),
        (),
        0.0,
        None,
        "fp32",
    )
    assert cfg.base_lr == 1e-3
    assert cfg.model == MlpConfig(hidden=(64, 32), dropout=0.0)
    assert (cfg.task, cfg.monitor, cfg.maximize, cfg.seed) == ("regression", "val_rmse", False, 0)
    hash(cfg)  # frozen all the way down


def test_accepts_ints_and_numeric_strings() -> None:
    cfg = build({"lr": "1e-5", "weight_decay": 1, "batch_size": "16", "epochs": 3.0, "min_delta": "0"})
    assert cfg.optimizer.lr == 1e-5 and isinstance(cfg.optimizer.weight_decay, float)
    assert (cfg.batch_size, cfg.epochs) == (16, 3)


def test_momentum_knob_reaches_the_momentum_optimizer() -> None:
    assert build({"optimizer": "momentum"}).optimizer.option("momentum") == 0.9
    assert build({"optimizer": "momentum", "momentum": 0.5}).optimizer.option("momentum") == 0.5


def test_dropout_knob_overrides_model_section() -> None:
    assert build({}, {"kind": "mlp", "dropout": 0.1}).model.dropout == 0.1
    assert build({"dropout": 0.3}, {"kind": "mlp", "dropout": 0.1}).model.dropout == 0.3
    assert build({}, {"hidden": [8]}).model.hidden == (8,)


@pytest.mark.parametrize(
    ("knobs", "model", "key", "fragment"),
    [
        ({"weight_decy": 0.1}, None, "weight_decy", "unknown knob (did you mean 'weight_decay'?); allowed: "),
        ({"hidden": [4]}, None, "hidden", "unknown knob"),
        (
            {"optimizer": "adamm"},
            None,
            "optimizer",
            "unknown optimizer 'adamm' (did you mean 'adam'?); one of: adadelta, adagrad, adam, adamw, lbfgs, "
            "momentum, nesterov, rmsprop, sgd",
        ),
        (
            {"optimizer": "adam", "momentum": 0.9},
            None,
            "momentum",
            "applies only to optimizers momentum, nesterov, rmsprop (optimizer is 'adam', which takes beta1, "
            "beta2, eps)",
        ),
        ({"momentum": 1.5, "optimizer": "momentum"}, None, "momentum", "[0, 1)"),
        ({"lr": 0}, None, "lr", "must be > 0, got 0"),
        ({"lr": -1e-3}, None, "lr", "must be > 0"),
        ({"lr": "fast"}, None, "lr", "must be a number, got 'fast'"),
        ({"lr": True}, None, "lr", "must be a number"),
        ({"lr": float("nan")}, None, "lr", "finite"),
        ({"batch_size": 0}, None, "batch_size", "must be >= 1, got 0"),
        ({"batch_size": 2.5}, None, "batch_size", "must be an integer, got 2.5"),
        ({"epochs": 0}, None, "epochs", "must be >= 1"),
        ({"patience": 0}, None, "patience", "must be >= 1"),
        ({"min_delta": -1}, None, "min_delta", "must be >= 0"),
        ({"weight_decay": -0.1}, None, "weight_decay", "must be >= 0"),
        ({"dropout": 1.0}, None, "dropout", "must be in [0, 1), got 1.0"),
        ({"device": "gpu"}, None, "device", "must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ({}, {"kind": "mlp", "dropout": -0.1}, "model.dropout", "[0, 1)"),
        ({}, {"kind": "mlp", "hidden": 64}, "model.hidden", "must be a list"),
        ({}, {"kind": "mlp", "hidden": [64, 0]}, "model.hidden", ">= 1"),
        ({}, {"kind": "mlp", "hiden": [64]}, "model.hiden", "did you mean 'hidden'?"),
        ({}, {"kind": "mpl"}, "model.kind", "unknown model kind 'mpl' (did you mean 'mlp'?)"),
    ],
)
def test_rejects_bad_input_naming_the_key(knobs: dict, model: dict | None, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build(knobs, model)
    assert info.value.key == key
    assert fragment in info.value.message


def test_rejects_monitor_that_the_task_does_not_report() -> None:
    with pytest.raises(ConfigError) as info:
        build(monitor="val_accuracy")
    assert info.value.key == "monitor" and "val_rmse" in info.value.message
    assert build(task="classification", monitor="val_accuracy", maximize=True).maximize is True


def test_knob_names() -> None:
    names = knob_names()
    expected = {*TRAIN_KNOBS, *OPTIMIZER_KNOBS, *SCHEDULE_KNOBS, *models()["mlp"].scalar_knobs}
    assert set(names) == expected and len(names) == len(expected)
    core = {"epochs", "patience", "min_delta", "device", "precision", "lr", "batch_size", "optimizer"}
    core |= {"schedule", "lr_scaling", "lr_multipliers", "head_lr_ratio", "weight_decay", "l1", "grad_clip"}
    assert core <= set(TRAIN_KNOBS)
    assert set(OPTIMIZER_KNOBS) == {"momentum", "beta1", "beta2", "eps", "alpha", "rho"}
    assert set(SCHEDULE_KNOBS) == {
        "step_size",
        "gamma",
        "decay",
        "warmup_epochs",
        "min_lr_ratio",
        "cycle_epochs",
        "peak_ratio",
        "pct_start",
    }
    assert "dropout" in names
    with pytest.raises(ConfigError):
        knob_names("transformerr")


def test_every_optimizer_and_schedule_knob_is_a_knob_name() -> None:
    for spec in optimizers().values():
        assert set(spec.knobs) <= set(OPTIMIZER_KNOBS)
        assert {name for name, _ in spec.defaults} <= set(spec.knobs)
    for schedule in schedules().values():
        assert set(schedule.knobs) <= set(SCHEDULE_KNOBS)
    # every scoped knob has at least one owner, or no configuration could ever set it
    assert set(OPTIMIZER_KNOBS) == {k for spec in optimizers().values() for k in spec.knobs}
    assert set(SCHEDULE_KNOBS) == {k for spec in schedules().values() for k in spec.knobs}


def test_reported_metrics() -> None:
    assert dict(reported_metrics("regression")) == {
        "train_loss": "minimize",
        "val_mse": "minimize",
        "val_rmse": "minimize",
        "val_mae": "minimize",
        "val_r2": "maximize",
    }
    assert dict(reported_metrics("classification")) == {
        "train_loss": "minimize",
        "val_loss": "minimize",
        "val_accuracy": "maximize",
        "val_f1": "maximize",
    }
    with pytest.raises(ConfigError):
        reported_metrics("ranking")


def test_config_and_data_checks_do_not_import_torch() -> None:
    code = (
        "import sys, hpsearch.train.config, hpsearch.train.data, hpsearch.train;"
        "from hpsearch.train import build_train_config, parse_data_config, check_data;"
        "build_train_config({'kind': 'mlp'}, {'lr': 0.1}, task='regression', monitor='val_mse', maximize=False, seed=0);"
        "check_data(parse_data_config({'csv': sys.argv[1], 'target': 'Price', 'task': 'regression'}, seed=0));"
        "assert 'torch' not in sys.modules, 'torch imported';"
        "assert 'optuna' not in sys.modules and 'ray' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code, str(CARS)], check=True)


def test_the_command_line_and_the_fusion_key_do_not_import_torch() -> None:
    # status, best and export start in about a second; torch alone takes longer to import.
    code = (
        "import sys, hpsearch.cli, hpsearch.spec, hpsearch.executors, hpsearch.results, hpsearch.train.fused;"
        "from hpsearch.train import build_train_config;"
        "from hpsearch.train.fused import fusion_key;"
        "assert fusion_key(build_train_config({'kind': 'mlp'}, {'lr': 0.1}, task='regression', monitor='val_mse',"
        " maximize=False, seed=0)) is not None;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
