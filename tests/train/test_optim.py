"""Contract tests over the optimizer registry, and what each optimizer's knobs do."""

from __future__ import annotations

from loop_helpers import Recorder, make_config, watch_steps
import pytest
import torch
from train_helpers import synthetic_regression

from hpsearch.errors import ConfigError
from hpsearch.train import OPTIMIZER_KNOBS, StopReason, optimizers, train
from hpsearch.train.models import build_model
from hpsearch.train.optim import LBFGS_MAX_ITER, build_optimizer
from hpsearch.train.optim.groups import param_groups

# A rate each optimizer learns the toy problem with; adadelta's rate is a multiplier near 1 by design.
_LR = {"adadelta": 1.0, "adagrad": 0.1, "lbfgs": 1.0}


@pytest.mark.parametrize("name", sorted(optimizers()))
def test_every_optimizer_lowers_the_training_loss(name: str) -> None:
    rec = Recorder()
    cfg = make_config({"optimizer": name, "lr": _LR.get(name, 0.01), "epochs": 12, "batch_size": 16})
    result = train(cfg, synthetic_regression(), rec)
    losses = rec.losses()
    assert result.stop_reason is StopReason.COMPLETED and result.epochs_run == 12
    assert losses[-1] < 0.5 * losses[0], losses


def _torch_optimizer(knobs: dict) -> torch.optim.Optimizer:
    cfg = make_config(knobs)
    model = build_model(cfg.model, 3, 1)
    return build_optimizer(param_groups(model, cfg), cfg.optimizer)


@pytest.mark.parametrize(
    ("knobs", "kind", "expected"),
    [
        ({"optimizer": "sgd"}, torch.optim.SGD, {"momentum": 0, "nesterov": False}),
        ({"optimizer": "momentum", "momentum": 0.7}, torch.optim.SGD, {"momentum": 0.7, "nesterov": False}),
        ({"optimizer": "nesterov", "momentum": 0.8}, torch.optim.SGD, {"momentum": 0.8, "nesterov": True}),
        ({"optimizer": "adagrad"}, torch.optim.Adagrad, {"eps": 1e-10}),
        ({"optimizer": "adagrad", "eps": 1e-6}, torch.optim.Adagrad, {"eps": 1e-6}),
        ({"optimizer": "rmsprop"}, torch.optim.RMSprop, {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0}),
        (
            {"optimizer": "rmsprop", "alpha": 0.9, "momentum": 0.5, "eps": 1e-7},
            torch.optim.RMSprop,
            {"alpha": 0.9, "eps": 1e-7, "momentum": 0.5},
        ),
        ({"optimizer": "adam", "beta1": 0.8, "beta2": 0.99}, torch.optim.Adam, {"betas": (0.8, 0.99)}),
        ({"optimizer": "adamw", "eps": 1e-6}, torch.optim.AdamW, {"betas": (0.9, 0.999), "eps": 1e-6}),
        ({"optimizer": "adadelta", "rho": 0.95}, torch.optim.Adadelta, {"rho": 0.95, "eps": 1e-6}),
        ({"optimizer": "lbfgs"}, torch.optim.LBFGS, {"max_iter": LBFGS_MAX_ITER}),
    ],
)
def test_optimizer_knobs_reach_torch(knobs: dict, kind: type, expected: dict) -> None:
    optimizer = _torch_optimizer({**knobs, "lr": 0.05})
    assert type(optimizer) is kind
    for group in optimizer.param_groups:
        assert group["lr"] == 0.05
        for key, value in expected.items():
            assert group[key] == value, key


_INAPPLICABLE = [
    (knob, name)
    for knob in OPTIMIZER_KNOBS
    for name, spec in sorted(optimizers().items())
    if knob not in spec.knobs
]


@pytest.mark.parametrize(("knob", "name"), _INAPPLICABLE)
def test_a_knob_the_optimizer_lacks_is_an_error_naming_its_optimizers(knob: str, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config({"optimizer": name, knob: OPTIMIZER_KNOBS[knob].default})
    owners = sorted(n for n, spec in optimizers().items() if knob in spec.knobs)
    assert info.value.key == knob
    assert (
        f"applies only to optimizer{'s' if len(owners) > 1 else ''} {', '.join(owners)} "
        in info.value.message
    )
    assert f"(optimizer is {name!r}, which takes " in info.value.message


def test_momentum_error_message() -> None:
    with pytest.raises(ConfigError) as info:
        make_config({"optimizer": "sgd", "momentum": 0.9})
    assert str(info.value) == (
        "momentum: applies only to optimizers momentum, nesterov, rmsprop "
        "(optimizer is 'sgd', which takes no optimizer knobs)"
    )


def test_nesterov_needs_momentum() -> None:
    with pytest.raises(ConfigError) as info:
        make_config({"optimizer": "nesterov", "momentum": 0})
    assert info.value.key == "momentum" and "> 0 for optimizer nesterov" in info.value.message


@pytest.mark.parametrize("knob", ["beta1", "beta2", "rho", "alpha"])
def test_decay_rates_must_be_below_one(knob: str) -> None:
    owner = next(n for n, spec in optimizers().items() if knob in spec.knobs)
    with pytest.raises(ConfigError) as info:
        make_config({"optimizer": owner, knob: 1.0})
    assert info.value.key == knob and "[0, 1)" in info.value.message


def test_lbfgs_steps_once_per_epoch_on_the_full_batch_whatever_the_batch_size() -> None:
    data = synthetic_regression()
    runs = []
    for batch in (4, 64):
        rec = Recorder()
        with watch_steps() as steps:
            train(make_config({"optimizer": "lbfgs", "lr": 1.0, "epochs": 3, "batch_size": batch}), data, rec)
        runs.append(rec.history)
        assert len(steps) == 3  # one optimizer.step(closure) per epoch
    assert runs[0] == runs[1]
