"""Edge cases of the training core: odd batch remainders, knob-name clashes, big validation splits, odd dtypes."""

from __future__ import annotations

from typing import Any

from loop_helpers import make_config, watch_steps
import numpy as np
import pytest
import torch
from torch import nn
from train_helpers import synthetic_classification, synthetic_regression

from hpsearch.errors import ConfigError
from hpsearch.train import StopReason, build_train_config, fit, loop, train
from hpsearch.train.data.tensors import from_arrays
from hpsearch.train.models.transformer import TransformerClassifier

USER_BUILD = "studies.user_example.models:build"


def test_batch_norm_trains_when_the_last_batch_would_hold_one_row() -> None:
    data = synthetic_regression(n=41)  # 32 training rows: batches of 31 leave one row over
    assert len(data.x_train) == 32
    cfg = build_train_config(
        {"kind": "mlp", "hidden": [8], "batch_norm": True}, {"device": "cpu", "epochs": 2, "batch_size": 31},
        task="regression", monitor="val_rmse", maximize=False, seed=0,
    )
    result = train(cfg, data)
    assert result.stop_reason is StopReason.COMPLETED and result.epochs_run == 2


@pytest.mark.parametrize("option", ["gamma", "decay", "step_size", "warmup_epochs", "peak_ratio"])
def test_a_user_model_option_may_not_reuse_a_schedule_knob(option: str) -> None:
    # The knob would feed both the builder and the schedule: an error (or a silent change of the
    # schedule) far from the model section.
    with pytest.raises(ConfigError) as info:
        build_train_config(
            {"python": USER_BUILD, option: 2}, {"device": "cpu"},
            task="classification", monitor="val_loss", maximize=False, seed=0,
        )
    assert info.value.key == f"model.{option}" and "training knob" in info.value.message


def test_lr_scaling_uses_the_batch_actually_trained_on() -> None:
    data = synthetic_regression()  # 160 training rows
    knobs = {"lr": 0.01, "epochs": 1, "batch_size": 640, "lr_scaling": {"rule": "linear", "reference_batch": 32}}
    with watch_steps() as steps:
        train(make_config(knobs), data)
    # every step sees all 160 rows, so the rate is scaled for 160, not for 640
    assert steps and all(lr == pytest.approx(0.01 * 160 / 32) for s in steps for lr in s["lrs"])


class _Widest(nn.Module):
    """A linear model that remembers the most rows it was given in one eval-mode call."""

    def __init__(self, n_features: int, n_outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, n_outputs)
        self.widest_eval = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.widest_eval = max(self.widest_eval, len(x))
        return self.linear(x)


def test_validation_is_evaluated_in_bounded_chunks() -> None:
    rows = getattr(loop, "EVAL_ROWS", 1024)  # the most validation rows evaluated at once
    data = synthetic_classification(n=6 * rows)
    assert len(data.x_val) > rows
    model = _Widest(4, 2)
    cfg = build_train_config({"kind": "mlp"}, {"device": "cpu", "epochs": 1, "batch_size": 64},
                             task="classification", monitor="val_loss", maximize=False, seed=0)
    result = fit(cfg, data, model)
    assert 0 < model.widest_eval <= rows
    # the chunked metrics are those of the whole validation set at once
    model.eval()
    with torch.no_grad():
        accuracy = (model(data.x_val).argmax(1) == data.y_val).double().mean().item()
    assert result.best_metrics["val_accuracy"] == pytest.approx(accuracy)


def test_bool_arrays_are_features_not_token_ids() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((40, 3)) > 0.5
    y = x[:, 0].astype(np.int64)
    data = from_arrays(x[:30], y[:30], x[30:], y[30:], "classification")
    assert data.vocab_size == 0 and data.x_train.dtype == torch.float32


@pytest.mark.parametrize(("init", "expected"), [("kaiming", np.sqrt(2 / 64)), ("xavier", np.sqrt(2 / (64 + 192)))])
def test_transformer_init_reaches_the_attention_projections(init: str, expected: float) -> None:
    torch.manual_seed(0)
    model = TransformerClassifier(8, 6, 2, d_model=64, heads=4, layers=1, activation="relu", init=init)
    attention: Any = model.blocks[0].attention
    gain = 1.0 if init == "kaiming" else np.sqrt(2)  # relu gain; kaiming's is inside `expected`
    std = attention.in_proj_weight.std().item()
    assert std == pytest.approx(gain * expected, rel=0.1)
