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


def test_tpe_options_are_set_here_not_by_the_installed_optunas_defaults() -> None:
    sampler = samplers.make_plan("tpe", SPACE, {}, seed=0, trials=30).sampler_for(0)
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._multivariate and sampler._group and sampler._constant_liar
    assert sampler._n_startup_trials == 10  # a third of 30, at most 10
    assert samplers.make_plan("tpe", SPACE, {}, seed=0, trials=9).sampler_for(0)._n_startup_trials == 3
    assert samplers.make_plan("tpe", SPACE, {}, seed=0, trials=3).sampler_for(0)._n_startup_trials == 2
    assert samplers.make_plan("tpe", SPACE, {}, seed=0, trials=30, startup_trials=0).sampler_for(0)._n_startup_trials == 0


@pytest.mark.parametrize("name", samplers.MODELLING)
def test_modelling_samplers_model_after_their_startup_trials(name: str) -> None:
    """After the start-up trials, draws concentrate where the good trials are (a 1-d bowl at 0.3)."""
    space = parse_space({"x": {"type": "float", "low": 0.0, "high": 1.0}}, "space")
    plan = samplers.make_plan(name, space, {}, seed=3, trials=40, startup_trials=8)
    study = optuna.create_study()
    for number in range(40):
        study.sampler = plan.sampler_for(number)
        trial = study.ask()
        x = suggest(trial, space)["x"]
        study.tell(trial, (x - 0.3) ** 2)
    late = [t.params["x"] for t in study.trials[-10:]]
    assert sum(abs(x - 0.3) < 0.15 for x in late) >= 7  # random would put 3 of 10 there


def test_qmc_fills_the_space_more_evenly_than_random() -> None:
    from scipy.stats import qmc

    space = parse_space({f"x{i}": {"type": "float", "low": 0.0, "high": 1.0} for i in range(3)}, "space")

    def points(name: str, seed: int) -> list[list[float]]:
        plan = samplers.make_plan(name, space, {}, seed=seed)
        study = optuna.create_study()
        drawn = []
        for number in range(64):
            study.sampler = plan.sampler_for(number)
            trial = study.ask()
            drawn.append(list(suggest(trial, space).values()))
            study.tell(trial, 0.0)
        return drawn

    for seed in range(3):
        assert qmc.discrepancy(points("qmc", seed)) < qmc.discrepancy(points("random", seed)) / 2


def test_qmc_maps_its_points_onto_every_kind_of_parameter() -> None:
    space = parse_space({
        "lr": {"type": "float", "low": 1e-5, "high": 1.0, "log": True},
        "units": {"type": "int", "low": 8, "high": 64, "step": 8},
        "drop": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
        "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop"]},
    }, "space")
    plan = samplers.make_plan("qmc", space, {}, seed=0)
    study = optuna.create_study()
    drawn = []
    for number in range(32):
        study.sampler = plan.sampler_for(number)
        drawn.append(suggest(study.ask(), space))
    lrs = sorted(d["lr"] for d in drawn)
    assert 1e-5 <= lrs[0] and lrs[-1] <= 1.0 and sum(lr < 1e-3 for lr in lrs) >= 10  # log-uniform: 3 of 5 decades
    assert {d["units"] for d in drawn} == set(range(8, 65, 8))  # 8 values, 32 points: every one
    assert {round(d["drop"], 10) for d in drawn} == {0.0, 0.1, 0.2, 0.3, 0.4, 0.5}
    assert {d["optimizer"] for d in drawn} == {"sgd", "adam", "rmsprop"}
