"""Fused trials: a pack trains each member as it would train alone.

Every optimizer and schedule that fuses is trained both ways on the real cars93 data, the members of
a pack differing in every per-member knob (lr, weight decay, L1, dropout, momentum, betas, eps, the
schedule's knobs, lr scaling, head lr ratio, gradient clipping, seed), and the per-epoch metrics of
each member are compared with its solo run's.
"""

from __future__ import annotations

from collections.abc import Mapping
import math
from typing import Any

from loop_helpers import Recorder, make_config
import pytest
import torch

from hpsearch.train import Dataset, StopReason, TrainConfig, build_train_config, train
from hpsearch.train.fused import FUSABLE_OPTIMIZERS, fusion_key, train_pack, unfused_reason
from hpsearch.train.optim import optimizers
from hpsearch.train.optim.schedules import schedules
from hpsearch.train.optim.stacked import UPDATES

EPOCHS = 6

# Each optimizer's own knobs, a value per member.
OPTIONS: dict[str, list[dict[str, Any]]] = {
    "sgd": [{}, {}, {}],
    "momentum": [{"momentum": 0.9}, {"momentum": 0.5}, {"momentum": 0.0}],
    "nesterov": [{"momentum": 0.9}, {"momentum": 0.6}, {"momentum": 0.3}],
    "adam": [{"beta1": 0.9, "beta2": 0.999}, {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6}, {"beta1": 0.5}],
    "adamw": [{"beta1": 0.9}, {"beta2": 0.95}, {"eps": 1e-4}],
    "rmsprop": [{"alpha": 0.99}, {"alpha": 0.9, "momentum": 0.5}, {"eps": 1e-6}],
    "adagrad": [{"eps": 1e-10}, {"eps": 1e-6}, {}],
    "adadelta": [{"rho": 0.9}, {"rho": 0.95, "eps": 1e-5}, {}],
}
LRS = {"sgd": 0.02, "momentum": 0.01, "nesterov": 0.01, "adam": 3e-3, "adamw": 3e-3, "rmsprop": 1e-3,
       "adagrad": 0.05, "adadelta": 1.0}
SCHEDULES: dict[str, list[dict[str, Any]]] = {
    "constant": [{}, {}, {}],
    "step": [{"step_size": 2, "gamma": 0.5}, {"step_size": 3, "gamma": 0.1}, {"step_size": 1, "gamma": 0.9}],
    "exponential": [{"decay": 0.1}, {"gamma": 0.8}, {"decay": 0.5}],
    "inverse_time": [{"decay": 0.5}, {"decay": 1.0}, {"decay": 0.1}],
    "cosine": [{"warmup_epochs": 1, "min_lr_ratio": 0.1}, {"warmup_epochs": 2}, {"min_lr_ratio": 0.0}],
    "cyclic": [{"cycle_epochs": 2, "peak_ratio": 3}, {"cycle_epochs": 3, "peak_ratio": 2}, {"peak_ratio": 5}],
    "one_cycle": [{"peak_ratio": 5, "pct_start": 0.3}, {"peak_ratio": 2}, {"pct_start": 0.5, "min_lr_ratio": 0.01}],
}
# Knobs every optimizer takes, a value per member.
COMMON: list[dict[str, Any]] = [
    {"seed": 1, "dropout": 0.0, "weight_decay": 0.0},
    {"seed": 2, "dropout": 0.2, "weight_decay": 1e-3, "l1": 1e-4, "head_lr_ratio": 0.5, "grad_clip": 1.0},
    {"seed": 3, "dropout": 0.4, "weight_decay": 1e-2, "lr_scaling": "sqrt", "lr_factor": 2.0},
]


def member_configs(optimizer: str, schedule: str = "constant", **shared: Any) -> list[TrainConfig]:
    configs = []
    for common, options, knobs in zip(COMMON, OPTIONS[optimizer], SCHEDULES[schedule], strict=True):
        common = dict(common)
        seed = common.pop("seed")
        lr = LRS[optimizer] * common.pop("lr_factor", 1.0)
        configs.append(make_config({"optimizer": optimizer, "lr": lr, "schedule": schedule, "epochs": EPOCHS,
                                    "batch_size": 16, **common, **options, **knobs, **shared},
                                   hidden=(16, 8), seed=seed))
    return configs


def solo_and_fused(configs: list[TrainConfig], data: Dataset) -> tuple[list[Recorder], list[Recorder], list[Any], list[Any]]:
    solo = [Recorder() for _ in configs]
    solo_results = [train(c, data, r) for c, r in zip(configs, solo, strict=True)]
    fused = [Recorder() for _ in configs]
    fused_results = train_pack(configs, data, fused)
    return solo, fused, solo_results, fused_results


def assert_same_curves(solo: Recorder, fused: Recorder, rel: float = 1e-4) -> None:
    assert [e for e, _ in fused.history] == [e for e, _ in solo.history]
    for (epoch, alone), (_, together) in zip(solo.history, fused.history, strict=True):
        for name, value in alone.items():
            assert together[name] == pytest.approx(value, rel=rel, abs=1e-6), (epoch, name)


@pytest.mark.parametrize("optimizer", sorted(UPDATES))
def test_every_fusable_optimizer_trains_each_member_as_alone(cars: Dataset, optimizer: str) -> None:
    configs = member_configs(optimizer)
    assert len({fusion_key(c) for c in configs}) == 1
    solo, fused, solo_results, fused_results = solo_and_fused(configs, cars)
    for alone, together in zip(solo, fused, strict=True):
        assert_same_curves(alone, together)
    # The members really differ: a pack of copies would pass the comparison above only by accident.
    assert len({round(r.history[-1][1]["val_rmse"], 6) for r in fused}) == len(configs)
    for a, b in zip(solo_results, fused_results, strict=True):
        assert (b.best_epoch, b.epochs_run, b.stop_reason) == (a.best_epoch, a.epochs_run, a.stop_reason)


@pytest.mark.parametrize("schedule", sorted(schedules()))
def test_every_schedule_fuses_with_its_own_knobs_per_member(cars: Dataset, schedule: str) -> None:
    configs = member_configs("momentum", schedule)
    solo, fused, _, _ = solo_and_fused(configs, cars)
    for alone, together in zip(solo, fused, strict=True):
        assert_same_curves(alone, together)


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_batch_norm_and_another_activation_fuse(cars: Dataset, optimizer: str) -> None:
    lr = {"momentum": 0.01, "adam": 3e-3}[optimizer]
    configs = [build_train_config(
        {"kind": "mlp", "hidden": [16, 8], "batch_norm": True, "activation": "tanh"},
        {"device": "cpu", "optimizer": optimizer, "lr": lr * f, "epochs": EPOCHS, "batch_size": 16, "dropout": p},
        task="regression", monitor="val_rmse", maximize=False, seed=seed) for seed, f, p in ((1, 1.0, 0.0), (2, 0.5, 0.3))]
    solo, fused, _, _ = solo_and_fused(configs, cars)
    for alone, together in zip(solo, fused, strict=True):
        if optimizer == "momentum":
            assert_same_curves(alone, together)
            continue
        # The bias of a layer followed by batch norm has a gradient that is zero up to rounding, and
        # Adam turns any rounding into a full step; that bias only reaches the validation outputs
        # through the running mean. So with Adam the training losses agree as closely as ever and the
        # validation metrics to 1 % (0.1 % seen): any other summation order, solo included, does the same.
        assert [m["train_loss"] for _, m in together.history] == pytest.approx(alone.losses(), rel=1e-5)
        for (_, a), (_, b) in zip(alone.history, together.history, strict=True):
            assert b["val_rmse"] == pytest.approx(a["val_rmse"], rel=1e-2)


class StopAt:
    """A reporter that prunes at a given epoch and records what it saw."""

    def __init__(self, epoch: int | None) -> None:
        self.epoch, self.seen = epoch, []  # type: ignore[var-annotated]

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        self.seen.append(epoch)
        return epoch == self.epoch


def test_members_stop_on_their_own_and_the_rest_go_on(cars: Dataset) -> None:
    base = {"optimizer": "sgd", "epochs": 8, "batch_size": 16}
    configs = [
        make_config({**base, "lr": 0.01}, hidden=(16, 8), seed=1),  # completes
        make_config({**base, "lr": 0.01}, hidden=(16, 8), seed=2),  # pruned at epoch 3
        make_config({**base, "lr": 1e6}, hidden=(16, 8), seed=3),  # diverges in its first epoch
        make_config({**base, "lr": 1e-9, "patience": 2}, hidden=(16, 8), seed=4),  # early-stops
    ]
    ended: list[int] = []
    reporters = [StopAt(None), StopAt(3), StopAt(None), StopAt(None)]
    results = train_pack(configs, cars, reporters, on_end=lambda i, r: ended.append(i))
    reasons = [r.stop_reason for r in results]
    assert reasons == [StopReason.COMPLETED, StopReason.PRUNED, StopReason.DIVERGED, StopReason.EARLY_STOPPED]
    assert results[1].epochs_run == 3 and reporters[1].seen == [1, 2, 3]
    assert results[2].epochs_run == 1 and "train loss became" in results[2].message and reporters[2].seen == []
    assert results[0].epochs_run == 8 and reporters[0].seen == list(range(1, 9))
    assert ended == [2, 1, 3, 0]  # each result as soon as its member stops: the diverged one after epoch 1
    # Each ends as it would alone: the same epochs, reasons and best epochs.
    for config, result, reporter in zip(configs, results, (StopAt(None), StopAt(3), StopAt(None), StopAt(None)),
                                        strict=True):
        alone = train(config, cars, reporter)
        assert (alone.stop_reason, alone.epochs_run, alone.best_epoch) == (
            result.stop_reason, result.epochs_run, result.best_epoch)
        if result.best_epoch is not None:
            assert math.isclose(alone.best_metrics["val_rmse"], result.best_metrics["val_rmse"], rel_tol=1e-4)


def test_what_does_not_fuse_says_why(cars: Dataset) -> None:
    assert set(UPDATES) == FUSABLE_OPTIMIZERS == set(optimizers()) - {"lbfgs"}
    lbfgs = make_config({"optimizer": "lbfgs", "lr": 1.0})
    assert fusion_key(lbfgs) is None and "lbfgs" in (unfused_reason(lbfgs) or "")
    a = make_config({"optimizer": "adam", "lr": 1e-3, "batch_size": 16})
    assert fusion_key(a) != fusion_key(make_config({"optimizer": "adam", "lr": 1e-3, "batch_size": 32}))
    assert fusion_key(a) == fusion_key(make_config({"optimizer": "adam", "lr": 0.1, "batch_size": 16,
                                                    "dropout": 0.3, "weight_decay": 0.1}, seed=9))
    with pytest.raises(ValueError, match="one fusion key"):
        train_pack([a, make_config({"optimizer": "sgd", "lr": 1e-3})], cars)
    torch.manual_seed(0)  # the pack leaves the global RNG as it found it
    before = torch.get_rng_state()
    train_pack([a], cars)
    assert torch.equal(torch.get_rng_state(), before)
