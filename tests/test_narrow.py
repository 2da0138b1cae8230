"""Narrowing a space from ranked synthetic trials: ranges, steps, categoricals, conditionals, freeze."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest

from hpsearch.narrow import contains, narrow_space
from hpsearch.space import (
    CategoricalParam,
    Condition,
    FloatParam,
    IntParam,
    Space,
    parse_space,
    space_to_raw,
    suggest,
)

LR = FloatParam("lr", 1e-5, 1.0, log=True)
DROPOUT = FloatParam("dropout", 0.0, 0.5)
BATCH = IntParam("batch_size", 16, 256, step=16)
OPT = CategoricalParam("optimizer", ("sgd", "momentum", "adam", "rmsprop"))
MOMENTUM = FloatParam("momentum", 0.5, 0.99, when=(Condition("optimizer", ("momentum",)),))


def _one(space: Space, name: str) -> Any:
    return next(p for p in space if p.name == name)


def _narrow(space: Space, ranked: list[dict[str, Any]], top: int, margin: float = 0.1, **kw: Any) -> Space:
    return narrow_space(space, ranked, top, margin, **kw)


def test_log_range_shrinks_to_the_top_span_widened_in_log_space() -> None:
    ranked = [{"lr": 1e-3}, {"lr": 1e-2}, {"lr": 1e-5}, {"lr": 0.9}]
    lr = _one(_narrow((LR,), ranked, top=2), "lr")
    # span 1 decade, margin 0.1 of it on each side
    assert math.isclose(lr.low, 10 ** -3.1, rel_tol=1e-9) and math.isclose(lr.high, 10 ** -1.9, rel_tol=1e-9)
    assert lr.log


def test_linear_range_and_clipping_to_the_bounds_as_written() -> None:
    dropout = _one(_narrow((DROPOUT,), [{"dropout": 0.2}, {"dropout": 0.3}], top=2, margin=0.5), "dropout")
    assert math.isclose(dropout.low, 0.15) and math.isclose(dropout.high, 0.35)
    edge = _one(_narrow((DROPOUT,), [{"dropout": 0.45}, {"dropout": 0.5}], top=2, margin=2.0), "dropout")
    # 0.35..0.6 would leave the range as written: the 0.1 cut off at the top goes to the bottom
    assert math.isclose(edge.low, 0.25) and edge.high == 0.5


def test_int_with_step_stays_on_the_step_grid_and_widens_outwards() -> None:
    batch = _one(_narrow((BATCH,), [{"batch_size": 64}, {"batch_size": 96}], top=2), "batch_size")
    assert (batch.low, batch.high, batch.step) == (48, 112, 16)
    assert isinstance(batch.low, int) and isinstance(batch.high, int)


@pytest.mark.parametrize("margin", [0.0, 0.1])
@pytest.mark.parametrize("nudge", [0.0, 1e-4])
def test_equal_or_nearly_equal_values_keep_a_tenth_of_the_range(margin: float, nudge: float) -> None:
    ranked = [{"lr": 3e-3, "dropout": 0.25, "batch_size": 64},
              {"lr": 3e-3 * (1 + nudge), "dropout": 0.25 + nudge, "batch_size": 64}]
    space = _narrow((LR, DROPOUT, BATCH), ranked, top=2, margin=margin)
    for p in space:
        value = ranked[0][p.name]
        assert p.low < p.high and p.low <= value <= p.high, p
    lr, dropout = _one(space, "lr"), _one(space, "dropout")
    assert math.log10(lr.high / lr.low) == pytest.approx(0.5)  # a tenth of 5 decades
    assert dropout.high - dropout.low == pytest.approx(0.05)
    assert _one(space, "batch_size").high - _one(space, "batch_size").low >= 16


def test_a_single_top_trial() -> None:
    ranked = [{"lr": 1e-4, "dropout": 0.1}, {"lr": 1e-1, "dropout": 0.4}]
    space = _narrow((LR, DROPOUT), ranked, top=1)
    assert _one(space, "lr").low < 1e-4 < _one(space, "lr").high < 1e-3
    assert _one(space, "dropout").low < 0.1 < _one(space, "dropout").high < 0.2


def test_categoricals_keep_the_top_choices_and_keep_min_by_rank() -> None:
    ranked = [{"optimizer": "adam"}, {"optimizer": "adam"}, {"optimizer": "rmsprop"}, {"optimizer": "sgd"}]
    assert _one(_narrow((OPT,), ranked, top=2), "optimizer").choices == ("adam",)
    # rmsprop ranks next; the choices keep their written order
    assert _one(_narrow((OPT,), ranked, top=2, keep_min=2), "optimizer").choices == ("adam", "rmsprop")
    # more than the trials used: topped up from the choices as written
    assert _one(_narrow((OPT,), ranked, top=2, keep_min=4), "optimizer").choices == OPT.choices


def test_conditional_parameters_take_their_top_set_from_the_trials_that_have_them() -> None:
    ranked = [
        {"optimizer": "adam"},
        {"optimizer": "momentum", "momentum": 0.9},
        {"optimizer": "adam"},
        {"optimizer": "momentum", "momentum": 0.6},
        {"optimizer": "momentum", "momentum": 0.55},
    ]
    space = _narrow((OPT, MOMENTUM), ranked, top=0.5)
    assert _one(space, "optimizer").choices == ("momentum", "adam")  # the best 3 trials overall
    momentum = _one(space, "momentum")
    assert momentum.when == (Condition("optimizer", ("momentum",)),)
    # the best half of the 3 momentum trials (0.9 and 0.6), not the one momentum trial of the top 3
    assert momentum.low == pytest.approx(0.57) and momentum.high == pytest.approx(0.93)


def test_a_conditional_whose_parent_lost_its_choice_is_dropped() -> None:
    ranked = [{"optimizer": "adam"}, {"optimizer": "adam"}, {"optimizer": "momentum", "momentum": 0.9}]
    assert [p.name for p in _narrow((OPT, MOMENTUM), ranked, top=2)] == ["optimizer"]
    # keep_min brings momentum back, narrowed from the trials that have it
    kept = _one(_narrow((OPT, MOMENTUM), ranked, top=2, keep_min=2), "momentum")
    assert kept.low < 0.9 < kept.high and kept.high - kept.low == pytest.approx(0.1 * (0.99 - 0.5))
    # no complete trial has it: its range stays as written
    ranked = [{"optimizer": "adam"}, {"optimizer": "sgd"}]
    assert _one(_narrow((OPT, MOMENTUM), ranked, top=1, keep_min=4), "momentum") == MOMENTUM


def test_freeze_pins_the_best_value_and_margin_none_changes_nothing_else() -> None:
    ranked = [{"lr": 2e-3, "optimizer": "adam", "batch_size": 32}, {"lr": 1e-1, "optimizer": "sgd", "batch_size": 128}]
    space = narrow_space((LR, OPT, BATCH), ranked, top=1, margin=None, freeze=["optimizer", "lr"])
    assert _one(space, "optimizer").choices == ("adam",)
    assert (_one(space, "lr").low, _one(space, "lr").high) == (2e-3, 2e-3)
    assert _one(space, "batch_size") == BATCH


def test_narrowed_spaces_are_valid_optuna_spaces_and_round_trip() -> None:
    space = (LR, DROPOUT, BATCH, OPT, MOMENTUM, FloatParam("wd", 0.0, 0.1, step=0.01))
    ranked = [{"lr": 1e-3, "dropout": 0.1, "batch_size": 48, "optimizer": "momentum", "momentum": 0.93, "wd": 0.03},
              {"lr": 3e-3, "dropout": 0.3, "batch_size": 48, "optimizer": "adam", "wd": 0.03}]
    narrowed = _narrow(space, ranked, top=2)
    assert _one(narrowed, "wd").low == pytest.approx(0.02) and _one(narrowed, "wd").high == pytest.approx(0.04)
    assert {p.name: p for p in parse_space(space_to_raw(narrowed))} == {p.name: p for p in narrowed}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        params = suggest(trial, narrowed)
        assert contains(narrowed, params) and contains(space, params)
        study.tell(trial, 0.0)


def test_contains_checks_ranges_steps_choices_and_active_set() -> None:
    space = (OPT, MOMENTUM, BATCH)
    assert contains(space, {"optimizer": "momentum", "momentum": 0.9, "batch_size": 32})
    assert not contains(space, {"optimizer": "adam", "momentum": 0.9, "batch_size": 32})  # momentum inactive
    assert not contains(space, {"optimizer": "momentum", "batch_size": 32})  # momentum missing
    assert not contains(space, {"optimizer": "adamw", "batch_size": 32})
    assert not contains(space, {"optimizer": "sgd", "batch_size": 40})  # off the step grid
    assert not contains(space, {"optimizer": "sgd", "batch_size": 512})


def test_narrow_needs_a_trial() -> None:
    with pytest.raises(ValueError, match="at least one ranked trial"):
        narrow_space((LR,), [], top=1, margin=0.1)
