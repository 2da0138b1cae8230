"""lr scaling, per-group learning rates, bf16 autocast and divergence within an epoch."""

from __future__ import annotations

import math

from loop_helpers import Recorder, make_config, watch_steps
import pytest
import torch
from torch import nn
from train_helpers import synthetic_regression

from hpsearch.errors import ConfigError
from hpsearch.train import LrScaling, StopReason, fit, train
from hpsearch.train.models import build_model
from hpsearch.train.optim.groups import lr_groups, param_groups


@pytest.mark.parametrize(
    ("rule", "batch", "expected"),
    [
        ("none", 128, 0.01),
        ("linear", 128, 0.04),
        ("linear", 8, 0.0025),
        ("sqrt", 128, 0.02),
        ("sqrt", 8, 0.005),
    ],
)
def test_lr_scaling_follows_its_rule(rule: str, batch: int, expected: float) -> None:
    assert LrScaling(rule, 32).scale(0.01, batch) == pytest.approx(expected)
    cfg = make_config({"lr": 0.01, "batch_size": batch, "lr_scaling": {"rule": rule, "reference_batch": 32}})
    assert cfg.base_lr == pytest.approx(expected)
    with watch_steps() as steps:
        train(
            make_config({"lr": 0.01, "batch_size": batch, "epochs": 1, "lr_scaling": rule}),
            synthetic_regression(),
        )
    assert steps and all(lr == pytest.approx(expected) for s in steps for lr in s["lrs"])


def test_lr_scaling_reference_batch_and_full_batch() -> None:
    assert make_config(
        {"lr": 0.1, "batch_size": 16, "lr_scaling": {"rule": "linear", "reference_batch": 64}}
    ).base_lr == (pytest.approx(0.025))
    # lbfgs uses the whole training set whatever batch_size says, so there is nothing to scale for
    lbfgs = {"optimizer": "lbfgs", "lr": 0.1, "batch_size": 256, "lr_scaling": "linear"}
    assert make_config(lbfgs).base_lr == 0.1


@pytest.mark.parametrize(
    ("value", "key", "fragment"),
    [
        ("cubic", "lr_scaling", "unknown rule 'cubic'; one of: linear, none, sqrt"),
        ({"rule": "sqrt", "reference": 32}, "lr_scaling.reference", "unknown key"),
        ({"rule": "sqrt", "reference_batch": 0}, "lr_scaling.reference_batch", ">= 1"),
        (3, "lr_scaling", "must be a mapping such as {rule: sqrt, reference_batch: 32}"),
    ],
)
def test_bad_lr_scaling(value: object, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config({"lr_scaling": value})
    assert info.value.key == key and fragment in info.value.message


def _lrs_by_group(knobs: dict) -> dict[str, float]:
    cfg = make_config({"lr": 0.01, **knobs}, hidden=(8, 8))
    model = build_model(cfg.model, 3, 1)
    return {g["name"]: g["lr"] for g in param_groups(model, cfg)}


def test_head_lr_ratio_gives_the_last_layer_k_times_the_base_rate() -> None:
    lrs = _lrs_by_group({"head_lr_ratio": 3.0, "weight_decay": 0.1})
    assert lrs == pytest.approx(
        {"body/decay": 0.01, "body/no_decay": 0.01, "head/decay": 0.03, "head/no_decay": 0.03}
    )
    assert _lrs_by_group({"lr_multipliers": {"head": 0.5, "body": 2.0}}) == pytest.approx(
        {"body/decay": 0.02, "body/no_decay": 0.02, "head/decay": 0.005, "head/no_decay": 0.005}
    )


def test_head_is_the_last_module_with_parameters() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.Dropout(0.1))
    groups = lr_groups(model)
    assert groups["head"] == [model[2].weight, model[2].bias]
    assert groups["body"] == [model[0].weight, model[0].bias]


def test_the_head_group_really_trains_at_its_ratio() -> None:
    data = synthetic_regression()
    cfg = make_config({"optimizer": "sgd", "lr": 0.05, "epochs": 3, "batch_size": 16, "head_lr_ratio": 1e-6})
    torch.manual_seed(0)
    model = build_model(cfg.model, data.n_features, data.n_outputs)
    before = [p.detach().clone() for p in model.parameters()]
    fit(cfg, data, model)
    moved = [(p.detach() - b).abs().max().item() for p, b in zip(model.parameters(), before, strict=True)]
    assert moved[-1] < 1e-5 and moved[-2] < 1e-5  # head weight and bias: almost frozen
    assert moved[0] > 1e-3  # body trained at the base rate


class _TwoTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(5, 4)
        self.out = nn.Linear(4, 1)
        self.extra = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.encoder(x))) + self.extra

    def lr_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"encoder": list(self.encoder.parameters()), "decoder": list(self.out.parameters())}


def test_a_model_may_name_its_own_groups() -> None:
    model = _TwoTower()
    groups = lr_groups(model)
    assert set(groups) == {"encoder", "decoder", "rest"} and groups["rest"] == [model.extra]
    data = synthetic_regression()
    with watch_steps() as steps:
        fit(make_config({"lr": 0.01, "epochs": 1, "lr_multipliers": {"encoder": 4.0}}), data, model)
    assert sorted(steps[0]["lrs"]) == pytest.approx([0.01, 0.01, 0.01, 0.04, 0.04])


def test_an_unknown_group_is_an_error_listing_the_models_groups() -> None:
    with pytest.raises(ConfigError) as info:
        fit(
            make_config({"epochs": 1, "lr_multipliers": {"encodr": 2.0}}), synthetic_regression(), _TwoTower()
        )
    assert info.value.key == "lr_multipliers"
    assert "unknown parameter group 'encodr' (did you mean 'encoder'?)" in info.value.message
    assert "this model's groups: decoder, encoder, rest" in info.value.message


@pytest.mark.parametrize(
    ("knobs", "key", "fragment"),
    [
        (
            {"head_lr_ratio": 2.0, "lr_multipliers": {"head": 3.0}},
            "head_lr_ratio",
            "also set as lr_multipliers.head",
        ),
        ({"head_lr_ratio": 0}, "head_lr_ratio", "must be > 0"),
        ({"lr_multipliers": {"head": -1}}, "lr_multipliers.head", "must be > 0"),
        ({"lr_multipliers": [2.0]}, "lr_multipliers", "must be a mapping"),
        (
            {"optimizer": "lbfgs", "head_lr_ratio": 2.0},
            "head_lr_ratio",
            "applies only to optimizers adadelta, adagrad, adam, adamw, momentum, nesterov, rmsprop, sgd "
            "(optimizer is 'lbfgs', which trains all parameters as one group)",
        ),
        (
            {"precision": "fp16"},
            "precision",
            "unknown precision 'fp16' (did you mean 'bf16'?); one of: bf16, fp32",
        ),
        ({"grad_clip": 0}, "grad_clip", "must be > 0"),
        ({"l1": -0.1}, "l1", "must be >= 0"),
    ],
)
def test_bad_group_and_misc_knobs(knobs: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(knobs)
    assert info.value.key == key and fragment in info.value.message


def test_bf16_autocast_trains_on_cpu() -> None:
    data = synthetic_regression()
    cfg = make_config({"precision": "bf16", "lr": 0.01, "epochs": 8, "batch_size": 16})
    torch.manual_seed(0)
    model = build_model(cfg.model, data.n_features, data.n_outputs)
    dtypes: set[torch.dtype] = set()
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    first.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype))
    rec = Recorder()
    result = fit(cfg, data, model, rec)
    assert dtypes == {torch.bfloat16}  # training and evaluation ran under autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
    losses = rec.losses()
    assert result.stop_reason is StopReason.COMPLETED and losses[-1] < 0.5 * losses[0]
    assert math.isfinite(result.best_metrics["val_rmse"])


class _NanAfter(nn.Module):
    """Predicts nan from its ``after``-th training forward on."""

    def __init__(self, n_features: int, after: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)
        self.calls, self.after = 0, after

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.calls += 1
        out = self.linear(x)
        return out * math.nan if self.training and self.calls >= self.after else out


def test_a_nan_loss_ends_the_epoch_at_once_on_cpu() -> None:
    data = synthetic_regression()  # 160 training rows: 10 batches of 16
    model = _NanAfter(data.n_features, after=13)
    rec = Recorder()
    result = fit(make_config({"epochs": 5, "batch_size": 16}), data, model, rec)
    assert result.stop_reason is StopReason.DIVERGED
    assert result.message == "train loss became nan at epoch 2 (batch 3 of 10)"
    assert model.calls == 13  # no batch ran after the nan
    assert result.best_epoch == 1 and len(rec.history) == 1
