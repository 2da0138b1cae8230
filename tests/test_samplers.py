"""Sampler registry contract: every sampler seeds by trial number, so concurrent runs never draw alike."""

from __future__ import annotations

import optuna
import pytest

from hpsearch import samplers
from hpsearch.space import parse_space, suggest

SPACE = parse_space({
    "lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
    "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": ["sgd"]}},
}, "space")


def _draw(plan: samplers.SamplerPlan, number: int) -> dict[str, object]:
    """What trial ``number`` of a fresh study draws with the plan's sampler for that number."""
    study = optuna.create_study(sampler=plan.sampler_for(number))
    for _ in range(number):  # give the study that many earlier (empty) trials, so the number matches
        study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    trial = study.ask()
    assert trial.number == number
    return suggest(trial, SPACE)


@pytest.mark.parametrize("name", samplers.names())
def test_draws_depend_on_the_trial_number_and_the_seed_only(name: str) -> None:
    plan = samplers.make_plan(name, SPACE, {"lr": 3, "momentum": 2}, seed=7)
    if plan.configs is not None:
        return  # grid: its configurations are handed out by slot (tests/test_many_runs.py)
    again = samplers.make_plan(name, SPACE, {}, seed=7)
    assert _draw(plan, 3) == _draw(again, 3)  # reproducible
    draws = [_draw(plan, n) for n in range(6)]
    assert len({tuple(sorted(d.items())) for d in draws}) == 6  # two runs' trials never share a sequence
    assert _draw(samplers.make_plan(name, SPACE, {}, seed=8), 3) != _draw(plan, 3)


def test_grid_is_a_seeded_shuffle_of_every_distinct_configuration() -> None:
    plan = samplers.make_plan("grid", SPACE, {"lr": 3, "momentum": 2}, seed=1)
    assert plan.configs is not None and len(plan.configs) == 3 * (2 + 1)  # sgd × 2 momenta, adam without
    assert len({tuple(sorted(c.items())) for c in plan.configs}) == len(plan.configs)
    assert samplers.make_plan("grid", SPACE, {"lr": 3, "momentum": 2}, seed=1).configs == plan.configs
    assert samplers.make_plan("grid", SPACE, {"lr": 3, "momentum": 2}, seed=2).configs != plan.configs


def test_tpe_counts_the_trials_other_runs_are_running() -> None:
    sampler = samplers.make_plan("tpe", SPACE, {}, seed=0).sampler_for(0)
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._constant_liar
