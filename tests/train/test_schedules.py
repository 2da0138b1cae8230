"""Contract tests over the schedule registry: each trains, matches its formula, and applies per epoch/batch."""

from __future__ import annotations

import math

from loop_helpers import Recorder, make_config, watch_steps
import pytest
from train_helpers import synthetic_regression

from hpsearch.errors import ConfigError
from hpsearch.train import SCHEDULE_KNOBS, ScheduleConfig, StopReason, schedules, train


def factor(name: str, t: float, total: float = 10.0, **options: float) -> float:
    return ScheduleConfig(name, tuple(sorted(options.items()))).factor(t, total)


@pytest.mark.parametrize("name", sorted(schedules()))
def test_every_schedule_lowers_the_training_loss(name: str) -> None:
    rec = Recorder()
    cfg = make_config({"optimizer": "adam", "lr": 0.02, "epochs": 10, "batch_size": 16, "schedule": name})
    result = train(cfg, synthetic_regression(), rec)
    losses = rec.losses()
    assert result.stop_reason is StopReason.COMPLETED
    assert losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize(
    ("name", "options", "t", "expected"),
    [
        ("constant", {}, 7.5, 1.0),
        ("step", {"step_size": 3, "gamma": 0.5}, 2.99, 1.0),
        ("step", {"step_size": 3, "gamma": 0.5}, 3.0, 0.5),
        ("step", {"step_size": 3, "gamma": 0.5}, 7.0, 0.25),
        ("exponential", {"decay": 0.2}, 0.0, 1.0),
        ("exponential", {"decay": 0.2}, 5.0, math.exp(-1.0)),
        ("inverse_time", {"decay": 0.5}, 4.0, 1.0 / 3.0),
        ("cosine", {"warmup_epochs": 0.0, "min_lr_ratio": 0.0}, 5.0, 0.5),
        ("cosine", {"warmup_epochs": 0.0, "min_lr_ratio": 0.1}, 10.0, 0.1),
        ("cosine", {"warmup_epochs": 2.0, "min_lr_ratio": 0.0}, 1.0, 0.5),
        ("cosine", {"warmup_epochs": 2.0, "min_lr_ratio": 0.0}, 2.0, 1.0),
        ("cosine", {"warmup_epochs": 2.0, "min_lr_ratio": 0.0}, 6.0, 0.5),  # half way through 2..10
        ("cyclic", {"cycle_epochs": 4.0, "peak_ratio": 5.0}, 0.0, 1.0),
        ("cyclic", {"cycle_epochs": 4.0, "peak_ratio": 5.0}, 1.0, 3.0),
        ("cyclic", {"cycle_epochs": 4.0, "peak_ratio": 5.0}, 2.0, 5.0),
        ("cyclic", {"cycle_epochs": 4.0, "peak_ratio": 5.0}, 3.0, 3.0),
        ("cyclic", {"cycle_epochs": 4.0, "peak_ratio": 5.0}, 6.0, 5.0),
        ("one_cycle", {"peak_ratio": 10.0, "pct_start": 0.2, "min_lr_ratio": 0.0}, 0.0, 1.0),
        ("one_cycle", {"peak_ratio": 10.0, "pct_start": 0.2, "min_lr_ratio": 0.0}, 1.0, 5.5),
        ("one_cycle", {"peak_ratio": 10.0, "pct_start": 0.2, "min_lr_ratio": 0.0}, 2.0, 10.0),
        ("one_cycle", {"peak_ratio": 10.0, "pct_start": 0.2, "min_lr_ratio": 0.0}, 6.0, 5.0),
        ("one_cycle", {"peak_ratio": 10.0, "pct_start": 0.2, "min_lr_ratio": 0.01}, 10.0, 0.01),
    ],
)
def test_schedules_match_their_formulas(name: str, options: dict, t: float, expected: float) -> None:
    assert factor(name, t, **options) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_defaults_come_from_the_knob_table() -> None:
    cfg = make_config({"schedule": "step", "epochs": 30})
    assert dict(cfg.schedule.options) == {"step_size": 10, "gamma": 0.1}
    assert cfg.schedule.factor(10, 30) == pytest.approx(0.1)


def _step_lrs(knobs: dict, n_train: int = 160) -> list[float]:
    with watch_steps() as steps:
        train(make_config({"optimizer": "sgd", "lr": 0.1, **knobs}), synthetic_regression(n=n_train * 5 // 4))
    return [s["lrs"][0] for s in steps]


def test_per_epoch_schedules_change_the_lr_at_epoch_boundaries() -> None:
    # 160 training rows in batches of 40: 4 steps per epoch, all at the epoch's rate
    lrs = _step_lrs({"schedule": "exponential", "decay": 0.5, "epochs": 3, "batch_size": 40})
    expected = [0.1 * math.exp(-0.5 * epoch) for epoch in range(3) for _ in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_per_batch_schedules_change_the_lr_every_step() -> None:
    lrs = _step_lrs({"schedule": "cosine", "warmup_epochs": 1, "epochs": 3, "batch_size": 40})
    cfg = make_config({"schedule": "cosine", "warmup_epochs": 1, "epochs": 3})
    expected = [0.1 * cfg.schedule.factor(e + (b + 1) / 4, 3) for e in range(3) for b in range(4)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])  # linear warmup over the first epoch
    assert lrs[-1] == pytest.approx(0.0, abs=1e-12)  # cosine reaches min_lr_ratio * lr at the end


_INAPPLICABLE = [
    (knob, name)
    for knob in SCHEDULE_KNOBS
    for name, spec in sorted(schedules().items())
    if knob not in spec.knobs
]


@pytest.mark.parametrize(("knob", "name"), _INAPPLICABLE)
def test_a_knob_the_schedule_lacks_is_an_error_naming_its_schedules(knob: str, name: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config({"schedule": name, knob: SCHEDULE_KNOBS[knob].default})
    owners = sorted(n for n, spec in schedules().items() if knob in spec.knobs)
    assert info.value.key == knob
    assert (
        f"applies only to schedule{'s' if len(owners) > 1 else ''} {', '.join(owners)} " in info.value.message
    )


def test_exponential_takes_the_rate_decay_or_the_factor_gamma() -> None:
    by_gamma = make_config({"schedule": "exponential", "gamma": 0.5}).schedule
    assert by_gamma.factor(3.0, 10) == pytest.approx(0.125)  # 0.5 ** 3
    by_decay = make_config({"schedule": "exponential", "decay": math.log(2.0)}).schedule
    assert by_decay.factor(3.0, 10) == pytest.approx(0.125)
    assert make_config({"schedule": "exponential"}).schedule.factor(1.0, 10) == pytest.approx(math.exp(-0.1))
    with pytest.raises(ConfigError) as info:
        make_config({"schedule": "exponential", "gamma": 0.5, "decay": 0.1})
    assert info.value.key == "gamma" and "set one" in info.value.message
    with pytest.raises(ConfigError) as info:
        make_config({"schedule": "exponential", "gamma": 1.5})
    assert info.value.key == "gamma" and "(0, 1]" in info.value.message
    with pytest.raises(ConfigError) as info:
        make_config({"schedule": "inverse_time", "gamma": 0.5})
    assert str(info.value).startswith("gamma: applies only to schedules exponential, step (schedule is 'inverse_time'")


@pytest.mark.parametrize(
    ("knobs", "key", "fragment"),
    [
        (
            {"schedule": "cosine", "warmup_epochs": 5, "epochs": 5},
            "warmup_epochs",
            "must be < epochs (5), got 5",
        ),
        ({"schedule": "step", "gamma": 0}, "gamma", "(0, 1]"),
        ({"schedule": "step", "step_size": 0}, "step_size", ">= 1"),
        ({"schedule": "cyclic", "peak_ratio": 0.5}, "peak_ratio", "must be >= 1"),
        ({"schedule": "one_cycle", "pct_start": 1.0}, "pct_start", "(0, 1)"),
        ({"schedule": "cosine", "min_lr_ratio": 1.0}, "min_lr_ratio", "[0, 1)"),
        ({"schedule": "exponential", "decay": -1}, "decay", ">= 0"),
        ({"schedule": "linear"}, "schedule", "unknown schedule 'linear'"),
    ],
)
def test_bad_schedule_values(knobs: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_config(knobs)
    assert info.value.key == key and fragment in info.value.message
