"""Pruners: the registry's contract, the study file's pruner section, and pruning in a real run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest

from hpsearch import pruners
from hpsearch.errors import SpecError
from hpsearch.spec import parse_spec
from tests.helpers import base_study, cli, write_study

REQUIRED: dict[str, dict[str, Any]] = {"threshold": {"upper": 100.0}}


@pytest.mark.parametrize("kind", pruners.names())
@pytest.mark.parametrize("patient", [None, 2])
def test_every_pruner_builds_and_answers_a_real_study(kind: str, patient: int | None) -> None:
    raw = {"kind": kind, **REQUIRED.get(kind, {}), **({"patient": patient} if patient is not None else {})}
    spec = parse_spec(base_study(pruner=raw))
    assert spec.pruner.kind == kind and set(spec.pruner.options) == set(pruners.OPTIONS[kind])
    pruner = pruners.make_pruner(spec.pruner, epochs=6)
    assert isinstance(pruner, optuna.pruners.PatientPruner if patient is not None else optuna.pruners.BasePruner)
    study = optuna.create_study(pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    for number in range(8):
        trial = study.ask()
        for epoch in range(1, 7):
            trial.report(float(number * epoch), epoch)  # later trials are worse
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                break
        else:
            study.tell(trial, float(number))
    assert len(study.trials) == 8


def test_median_prunes_bad_trials_and_keeps_their_curves(workdir: Path) -> None:
    study = base_study(pruner={"kind": "median", "startup_trials": 2})
    study["space"]["lr"] = {"type": "float", "low": 1e-6, "high": 1e-1, "log": True}  # the low end learns nothing
    study["space"]["optimizer"]["choices"] = ["sgd", "adam"]
    del study["space"]["momentum"]
    study["train"] = {"epochs": 8, "patience": None, "device": "cpu"}
    study["stages"][0]["trials"] = 12
    code, out, err = cli("run", str(write_study(workdir, study)))
    assert code == 0, err
    trials = optuna.load_study(study_name="cars/coarse", storage="sqlite:///runs/cars.db").trials
    pruned = [t for t in trials if t.state is TrialState.PRUNED]
    complete = [t for t in trials if t.state is TrialState.COMPLETE]
    assert pruned and complete and len(pruned) + len(complete) == 12
    for t in pruned:
        assert t.user_attrs["stop_reason"] == "pruned"
        steps = sorted(t.intermediate_values)
        assert steps == list(range(1, len(steps) + 1)) and len(steps) < 8  # stopped within the epoch it was told
        assert t.user_attrs["epochs_run"] == len(steps)
    assert all(sorted(t.intermediate_values) == list(range(1, 9)) for t in complete)


@pytest.mark.parametrize("kind", ["successive_halving", "hyperband"])
def test_rung_pruners_decide_as_in_plain_optuna(workdir: Path, kind: str) -> None:
    """Successive halving and Hyperband rank a trial against the rungs earlier trials reached, which
    they store as system attributes. The stage loop keeps ended trials as written, not read back: those
    must carry the rungs, or a trial meets fewer rivals than it should and is pruned too rarely.
    Replaying the run's curves, in order, through a plain Optuna study with the same pruner (and the
    same study name: Hyperband's brackets hash it) must make the same decisions."""
    options = {"min_resource": 1, "reduction_factor": 3}
    study = base_study(pruner={"kind": kind, **options}, executor={"kind": "local", "workers": 1})
    study["space"]["lr"] = {"type": "float", "low": 1e-6, "high": 1e-1, "log": True}
    study["train"] = {"epochs": 9, "patience": None, "device": "cpu"}
    study["stages"][0]["trials"] = 16
    code, out, err = cli("run", str(write_study(workdir, study)))
    assert code == 0, err
    trials = optuna.load_study(study_name="cars/coarse", storage="sqlite:///runs/cars.db").trials
    assert {t.state for t in trials} == {TrialState.PRUNED, TrialState.COMPLETE} and len(trials) == 16
    pruner = (optuna.pruners.SuccessiveHalvingPruner(**options) if kind == "successive_halving"
              else optuna.pruners.HyperbandPruner(max_resource=9, **options))
    replay = optuna.create_study(study_name="cars/coarse", pruner=pruner)
    for t in sorted(trials, key=lambda t: t.number):
        trial = replay.ask()
        assert trial.number == t.number
        steps = sorted(t.intermediate_values)
        for step in steps:
            trial.report(t.intermediate_values[step], step)
            if trial.should_prune():
                assert t.state is TrialState.PRUNED and step == steps[-1], (t.number, step, steps)
                replay.tell(trial, state=TrialState.PRUNED)
                break
        else:
            assert t.state is TrialState.COMPLETE, (t.number, steps)
            replay.tell(trial, t.value)


def test_a_stage_pruner_overrides_the_study_pruner(workdir: Path) -> None:
    study = base_study(pruner={"kind": "median"})
    study["stages"] = [{"name": "coarse", "sampler": "random", "trials": 2},
                       {"name": "fine", "sampler": "random", "trials": 2, "pruner": "none"}]
    code, out, err = cli("run", str(write_study(workdir, study)))
    assert code == 0, err
    kinds = {s.study_name: s.user_attrs["pruner"] for s in optuna.get_all_study_summaries("sqlite:///runs/cars.db")}
    assert kinds == {"cars/coarse": "median", "cars/fine": "none"}


@pytest.mark.parametrize(("raw", "message"), [
    ({"kind": "meadian"}, "pruner.kind: unknown pruner 'meadian' (did you mean 'median'?)"),
    ({"kind": "median", "warmup": 2}, "pruner.warmup: unknown key for pruner median (did you mean 'warmup_epochs'?)"),
    ({"kind": "threshold"}, "pruner: pruner threshold needs lower, upper or both"),
    ({"kind": "percentile", "percentile": 150}, "pruner.percentile: must be in [0, 100], got 150"),
    ({"kind": "hyperband", "reduction_factor": 1}, "pruner.reduction_factor: must be >= 2, got 1"),
    ({"kind": "median", "min_delta": 0.1}, "pruner.min_delta: only applies with patient: N"),
    ({"warmup_epochs": 2}, "pruner.kind: is required"),
])
def test_bad_pruner_sections_name_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(base_study(pruner=raw))
    assert message in str(caught.value)


def test_hyperband_takes_train_epochs_as_a_full_trial() -> None:
    spec = parse_spec(base_study(pruner={"kind": "hyperband"}))
    pruner = pruners.make_pruner(spec.pruner, epochs=6)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner) and pruner._max_resource == 6
