"""Coarse-to-fine stages end to end: derived spaces stored and reused, warm starts, resumption, timeouts."""

from __future__ import annotations

import json
from pathlib import Path
import signal
import time
from typing import Any

import optuna
from optuna.trial import TrialState
import pytest

from hpsearch.derive import pruned_ranked, ranked_for_narrowing
from hpsearch.narrow import contains
from hpsearch.space import parse_space
from hpsearch.spec import load_spec
from hpsearch.stages import ATTR_DERIVED, ATTR_SPACE, ATTR_WARM_START, max_epochs
from hpsearch.storage import open_storage
from tests.helpers import base_study, cli, start_run, write_study

STORAGE = "sqlite:///runs/cars.db"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _study(name: str) -> optuna.Study:
    return optuna.load_study(study_name=f"cars/{name}", storage=STORAGE)


def _two_stages(fine: dict[str, Any] | None = None, coarse_trials: int = 8) -> dict[str, Any]:
    return base_study(stages=[
        {"name": "coarse", "sampler": "random", "trials": coarse_trials},
        {"name": "fine", "sampler": "tpe", "trials": 4, "narrow": {"top": 0.5, "margin": 0.1}, "warm_start": 2,
         **(fine or {})},
    ])


def _finished(name: str) -> int:
    return sum(t.state in FINISHED for t in _study(name).get_trials())


def test_fine_stage_searches_the_stored_narrowed_space_after_its_warm_starts(workdir: Path) -> None:
    path = write_study(workdir, _two_stages())
    code, out, err = cli("run", str(path))
    assert code == 0, err
    coarse, fine = _study("coarse"), _study("fine")
    ranked = sorted((t for t in coarse.trials if t.state is TrialState.COMPLETE), key=lambda t: t.value)
    derived = fine.user_attrs[ATTR_DERIVED]
    assert derived["stage"] == "coarse" and derived["complete"] == len(ranked)
    assert derived["trials"] == [t.number for t in ranked[: derived["top"]]]
    space = parse_space(fine.user_attrs[ATTR_SPACE])
    lr = next(p for p in space if p.name == "lr")
    top_lr = [t.params["lr"] for t in ranked[: derived["top"]]]
    assert lr.low <= min(top_lr) and max(top_lr) <= lr.high and lr.high / lr.low < 1e-1 / 1e-4
    # warm starts come first, best first, and are the best coarse configurations inside the new space
    inside = [t for t in ranked if contains(space, t.params)][:2]
    warm = [t for t in fine.trials if ATTR_WARM_START in t.user_attrs]
    assert [t.number for t in warm] == list(range(len(inside)))
    assert [t.user_attrs[ATTR_WARM_START] for t in warm] == [f"coarse#{t.number}" for t in inside]
    assert [t.params for t in warm] == [t.params for t in inside]
    assert all(contains(space, t.params) for t in fine.trials)
    assert _finished("fine") == 4
    # status shows the ranges before and after; best answers across both stages
    code, out, err = cli("status", str(path))
    assert code == 0 and "space of fine (as written -> searched):" in out and "  lr 0.0001..0.1 log -> " in out
    code, out, err = cli("best", str(path))
    best = json.loads(out)
    everything = [t for s in (coarse, fine) for t in s.trials if t.state is TrialState.COMPLETE]
    assert best["value"] == min(t.value for t in everything)


def test_a_derived_space_is_computed_once_and_read_back(workdir: Path) -> None:
    path = write_study(workdir, _two_stages())
    assert cli("run", str(path))[0] == 0
    stored = _study("fine").user_attrs[ATTR_SPACE]
    # A far better coarse trial appears later, outside the fine space: the fine stage must not move.
    coarse = _study("coarse")
    distributions = {k: v for t in coarse.trials for k, v in t.distributions.items() if k != "momentum"}
    coarse.add_trial(optuna.trial.create_trial(params={"lr": 1e-4, "batch_size": 16, "optimizer": "sgd"},
                                               distributions=distributions, value=0.001))
    code, out, err = cli("run", str(path), "--set", "stages.1.trials=6")
    assert code == 0, err
    fine = _study("fine")
    assert fine.user_attrs[ATTR_SPACE] == stored
    assert _finished("fine") == 6 and all(contains(parse_space(stored), t.params) for t in fine.trials)


def test_a_stage_with_too_few_trials_to_narrow_from_stops_with_a_clear_message(workdir: Path) -> None:
    study = _two_stages({"narrow": {"top": 10}})
    study["stages"][0]["pruner"] = {"kind": "threshold", "upper": 1e-9}  # every coarse trial is pruned
    path = write_study(workdir, study)
    code, out, err = cli("run", str(path))
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("hpsearch: error")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err, err
    assert errors[0] == ("hpsearch: error: stage fine cannot derive its space: stage coarse has 0 complete and 8 "
                         "pruned trial(s) (0 failed) and narrow.top 10 needs at least 10 to rank; raise stages.0.trials "
                         "or loosen stages.1")
    assert _finished("coarse") == 8 and not _study("fine").trials


def test_when_pruning_leaves_too_few_complete_trials_the_pruned_ones_rank_after_them(workdir: Path) -> None:
    # A first-epoch threshold prunes every coarse trial: the fine stage narrows on how far they got and what
    # they last reported, rather than stopping the run.
    study = _two_stages()
    study["stages"][0]["pruner"] = {"kind": "threshold", "upper": 1e-9}
    path = write_study(workdir, study)
    code, out, err = cli("run", str(path))
    assert code == 0, err
    coarse, fine = _study("coarse"), _study("fine")
    assert all(t.state is TrialState.PRUNED for t in coarse.trials) and _finished("fine") == 4
    derived = fine.user_attrs[ATTR_DERIVED]
    assert derived["complete"] == 0 and derived["pruned"] == 8 and derived["top"] == 4
    by_last = sorted(coarse.trials, key=lambda t: (-max(t.intermediate_values), t.intermediate_values[
        max(t.intermediate_values)], t.number))
    assert derived["trials"] == [t.number for t in by_last[:4]]
    assert "space from the best 4 of 0 complete and 8 pruned (too few complete) trials of coarse" in err
    space = parse_space(fine.user_attrs[ATTR_SPACE])
    assert all(contains(space, t.params) for t in fine.trials)


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_pruned_trials_rank_furthest_trained_first_then_by_their_last_value(workdir: Path, direction: str) -> None:
    study = optuna.create_study(study_name="s", storage=open_storage(STORAGE), direction=direction)
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    curves = {0: {1: 5.0}, 1: {1: 9.0, 3: 2.0}, 2: {1: 1.0}, 3: {1: 4.0, 3: 3.0, 9: 8.0}, 4: {1: 2.0, 3: float("nan")},
              5: {1: 5.0}}
    for number, curve in curves.items():
        study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={"lr": 1e-3 * (number + 1)},
                                                  distributions={"lr": lr}, intermediate_values=curve))
    study.add_trial(optuna.trial.create_trial(value=0.5, params={"lr": 0.05}, distributions={"lr": lr}))
    ranked = pruned_ranked(study)
    # Trial 3 reached epoch 9 (a rung's survivor), then the epoch-3 ones (nan last), then the epoch-1 ones.
    third = [2, 0, 5] if direction == "minimize" else [0, 5, 2]
    assert [r.number for r in ranked] == [3, 1, 4, *third]
    assert ranked[0].value == 8.0 and ranked[0].params == {"lr": 1e-3 * 4}
    both, complete = ranked_for_narrowing(study, needs=4)
    assert complete == 1 and [r.number for r in both] == [6, 3, 1, 4, *third]
    assert ranked_for_narrowing(study, needs=1) == ([both[0]], 1)  # enough complete: pruned ones stay out


def test_killed_mid_stage_every_stage_ends_with_exactly_its_budget(workdir: Path) -> None:
    study = _two_stages({"narrow": {"top": 2}}, coarse_trials=4)
    study["train"] = {"epochs": 300, "patience": None, "device": "cpu"}  # seconds per trial
    study["space"]["batch_size"]["choices"] = [8]
    path = write_study(workdir, study)
    process = start_run(path, workdir)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        # Through open_storage: it waits for the run to finish creating the tables (a plain
        # Optuna storage opened meanwhile creates them too and can fail with "already exists").
        storage = open_storage(STORAGE, create=False) if Path("runs/cars.db").exists() else None
        names = {s.study_name for s in optuna.get_all_study_summaries(storage)} if storage else set()
        if "cars/fine" in names and any(t.state is TrialState.RUNNING for t in _study("fine").get_trials()):
            break
        time.sleep(0.3)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    stored = _study("fine").user_attrs[ATTR_SPACE]
    code, out, err = cli("run", str(path), "--set", "train.epochs=3", "--force-resume")  # finish quickly
    assert code == 0, err
    assert _finished("coarse") == 4 and _finished("fine") == 4
    assert _study("fine").user_attrs[ATTR_SPACE] == stored
    for name in ("coarse", "fine"):
        assert not [t for t in _study(name).trials if t.state is TrialState.RUNNING]


def test_a_timed_out_stage_is_over_and_the_next_narrows_from_it(workdir: Path) -> None:
    study = _two_stages({"narrow": {"top": 1}, "warm_start": 0}, coarse_trials=500)
    study["stages"][0]["timeout"] = 3
    path = write_study(workdir, study)
    code, out, err = cli("run", str(path))
    assert code == 0, err
    coarse_done = _finished("coarse")
    assert 0 < coarse_done < 500 and _study("coarse").user_attrs["ended"] == {"reason": "timeout", "budget": 500}
    assert "stage coarse: its timeout (3 s) is reached: no new trial starts (" in err  # said, not silent
    assert _finished("fine") == 4
    code, out, err = cli("run", str(path))
    assert code == 0 and f"study cars is done (coarse {coarse_done}/500 (ended by its timeout), fine 4/4)" in err
    assert _finished("coarse") == coarse_done
    # A longer fine stage: the ended coarse stage is skipped, and fine runs the rest of its budget.
    code, out, err = cli("run", str(path), "--set", "stages.1.trials=5")
    assert code == 0 and "stage coarse: skipped, ended by its timeout (3 s)" in err and "cars/coarse: " not in err
    assert _finished("coarse") == coarse_done and _finished("fine") == 5


def test_a_changed_space_on_resume_is_refused(workdir: Path) -> None:
    study = _two_stages()
    path = write_study(workdir, study)
    assert cli("run", str(path))[0] == 0
    study["space"]["lr"]["high"] = 0.5
    write_study(workdir, study)
    code, out, err = cli("run", str(path))
    assert code == 2
    assert err.splitlines()[-1] == ("hpsearch: error: space: changed since stage coarse of study cars started; "
                                    "restore it, or give the changed study a new name")
    assert "Traceback" not in err


def test_a_stage_trains_with_its_own_train_overrides(workdir: Path) -> None:
    """A cheap coarse stage (2 epochs) before a fine one at the study's 6: trials, pruner, status and identity see it."""
    study = _two_stages({"pruner": {"kind": "hyperband", "min_resource": 1}}, coarse_trials=4)
    study["stages"][0]["train"] = {"epochs": 2, "patience": None}
    path = write_study(workdir, study)
    code, out, err = cli("run", str(path))
    assert code == 0, err
    coarse, fine = _study("coarse"), _study("fine")
    assert {t.user_attrs["epochs_run"] for t in coarse.trials} == {2}
    assert max(max(t.intermediate_values, default=0) for t in coarse.trials) == 2
    assert max(t.user_attrs["epochs_run"] for t in fine.trials if t.state is TrialState.COMPLETE) > 2
    # Each stage's pruner takes its own epochs as a full trial (hyperband's max_resource).
    spec = load_spec(path)
    assert [max_epochs(spec, stage) for stage in spec.stages] == [2, 6]
    code, out, _ = cli("status", str(path))
    assert code == 0 and "train of coarse: epochs=2 (study: 6), patience=None (study: 3)" in out
    # The override is part of what the stage trained with: changing it is refused like train.
    study["stages"][0]["train"] = {"epochs": 3, "patience": None}
    code, _, err = cli("status", str(write_study(workdir, study)))
    assert code == 2 and "stage_train.epochs: changed since stage coarse" in err and "(2 → 3)" in err


def test_stage_train_overrides_are_checked_and_name_the_stage(workdir: Path) -> None:
    cases = [
        ({"epochs": 0}, "stages.0.train.epochs: must be >= 1"),
        ({"lr": 0.01}, "stages.0.train.lr: is searched in space.lr; a stage overrides fixed knobs only"),
        ({"epoch": 3}, "stages.0.train.epoch"),
        ([1, 2], "stages.0.train: must be a mapping"),
    ]
    for train, message in cases:
        study = _two_stages()
        study["stages"][0]["train"] = train
        code, _, err = cli("validate", str(write_study(workdir, study)))
        assert code == 2 and message in err and err.count("\n") == 1, (train, err)


def _fine_first_params(workdir: Path, prior: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    study = _two_stages({"prior_trials": prior, "warm_start": 0, "startup_trials": 3})
    study["name"] = name
    path = write_study(workdir, study, f"{name}.yaml")
    code, out, err = cli("run", str(path))
    assert code == 0, err
    fine = optuna.load_study(study_name=f"{name}/fine", storage=STORAGE)
    return fine.trials[0].params, fine.user_attrs


def test_a_later_stage_samples_from_the_earlier_trials_inside_its_space(workdir: Path) -> None:
    """TPE starts from the coarse trials inside the narrowed space: its first trial is modelled, not a
    start-up draw (which is what the same seeds give without them)."""
    with_prior, attrs = _fine_first_params(workdir, "same", "cars")
    without, attrs_none = _fine_first_params(workdir, "none", "cars2")
    coarse = _study("coarse")
    space = parse_space(_study("fine").user_attrs[ATTR_SPACE])
    inside = [t for t in coarse.trials if t.state is TrialState.COMPLETE and contains(space, t.params)]
    assert attrs["prior_trials"] == {"stage": "coarse", "trials": len(inside), "note": "inside this stage's space"}
    assert len(inside) >= 3 and "prior_trials" not in attrs_none
    assert with_prior != without
    # The prior trials are not the stage's: its budget, counts and best are its own.
    assert _finished("fine") == 4 and all(t.number >= 0 for t in _study("fine").trials)
    code, out, _ = cli("status", str(workdir / "cars.yaml"))
    assert code == 0 and f"sampler of fine started from {len(inside)} trial(s) of coarse as history" in out


def test_the_pruner_judges_a_stage_by_its_own_trials_not_the_prior_ones(workdir: Path) -> None:
    """Prior trials have no curves, but a pruner that counted them would start pruning before the stage
    had its own start-up trials: here the second trial, against the first alone (anything worse than the
    best 1 % at any epoch once two trials are complete)."""
    pruner = {"kind": "percentile", "percentile": 1.0, "startup_trials": 2, "warmup_epochs": 0}
    study = _two_stages({"prior_trials": "same", "warm_start": 0, "pruner": pruner})
    study["executor"] = {"kind": "local", "workers": 1}
    code, out, err = cli("run", str(write_study(workdir, study)))
    assert code == 0, err
    assert _study("fine").user_attrs["prior_trials"]["trials"] >= 2
    first, second = sorted(_study("fine").trials, key=lambda t: t.number)[:2]
    assert first.state is TrialState.COMPLETE and second.state is TrialState.COMPLETE


def test_trials_trained_differently_only_narrow(workdir: Path) -> None:
    from hpsearch.spec import load_spec
    from hpsearch.stages import prior_trials

    study = _two_stages()
    study["stages"][0]["train"] = {"epochs": 2}
    path = write_study(workdir, study)
    assert cli("run", str(path))[0] == 0
    assert _study("fine").user_attrs["prior_trials"]["trials"] == 0
    spec = load_spec(path)
    storage = open_storage(STORAGE)
    space = parse_space(_study("fine").user_attrs[ATTR_SPACE])
    assert prior_trials(spec, 1, storage, space)[0] == []
    study["stages"][1]["prior_trials"] = "all"
    trials, record = prior_trials(load_spec(write_study(workdir, study)), 1, storage, space)
    assert trials and record is not None and record["trials"] == len(trials)
    assert all(contains(space, t.params) and t.number < 0 and t.user_attrs["prior_of"].startswith("coarse#")
               for t in trials)
    assert [t.value for t in trials] == sorted(t.value for t in trials)  # best first


def _best(name: str) -> float | None:
    study = _study(name)
    complete = [t.value for t in study.trials if t.state is TrialState.COMPLETE]
    return min(complete) if complete else None


def test_a_repeated_stage_runs_rounds_while_they_improve(workdir: Path) -> None:
    study = _two_stages({"repeat": {"max": 3, "min_improvement": 0.0}, "warm_start": 0, "trials": 3})
    study["stages"].append({"name": "last", "sampler": "random", "trials": 2, "narrow": {"top": 1}})
    path = write_study(workdir, study)
    code, out, err = cli("run", str(path))
    assert code == 0, err
    rounds = ["fine", "fine.2", "fine.3", "fine.4"]
    best_before = _best("coarse")
    stopped = False
    for previous, name in zip(rounds, rounds[1:], strict=False):
        ended = _study(name).user_attrs.get("ended")
        latest = _best(previous)
        if stopped:
            assert ended["reason"].startswith("converged: an earlier round"), ended
            continue
        improved = latest is not None and best_before is not None and latest <= best_before
        if ended is None:  # it ran: the round before improved on everything before it, and it narrowed again
            assert improved and _finished(name) == 3
            assert _study(name).user_attrs["derived_from"]["stage"] == previous
        else:
            assert ended["reason"].startswith("converged") and _finished(name) == 0
            assert not improved or "no longer shrinks" in ended["reason"]
            stopped = True
            assert f"stage {name}: skipped, converged" in err and f"cars/{name}: 0/" not in err
        best_before = min(v for v in (best_before, latest) if v is not None)
    # The stage after the rounds derives from the last round that ran.
    ran = [name for name in rounds if "ended" not in _study(name).user_attrs]
    assert _study("last").user_attrs["derived_from"]["stage"] == ran[-1]
    # Done: a second run runs nothing and says so.
    code, out, err = cli("run", str(path))
    assert code == 0, err
    if len(ran) < len(rounds):
        assert f"{rounds[len(ran)]} 0/3 (converged)" in err


def test_rounds_stop_when_they_no_longer_improve_enough(workdir: Path) -> None:
    study = _two_stages({"repeat": {"max": 2, "min_improvement": 0.99}, "warm_start": 0, "trials": 3})
    path = write_study(workdir, study)
    code, out, err = cli("run", str(path))
    assert code == 0, err
    # fine would have to beat coarse by 99 %: fine.2 never runs, nor fine.3 after it.
    reason = _study("fine.2").user_attrs["ended"]["reason"]
    assert reason.startswith("converged: round fine improved the best by") and "less than repeat.min_improvement 99.00%" in reason
    assert _study("fine.3").user_attrs["ended"]["reason"] == "converged: an earlier round of fine converged"
    assert _finished("fine.2") == 0 and _finished("fine.3") == 0
    code, out, _ = cli("status", str(path))
    assert code == 0 and "fine.2" in out and "fine.3" in out


def test_a_round_whose_trials_were_all_pruned_ends_the_rounds(workdir: Path) -> None:
    # Its trials could rank for narrowing (pruned ones rank when complete ones are too few), but it
    # improved nothing, so the rounds stop; the stage after them narrows from its pruned trials.
    study = _two_stages({"repeat": {"max": 2, "min_improvement": 0.0}, "warm_start": 0, "trials": 3,
                         "pruner": {"kind": "threshold", "upper": 1e-9}})
    study["stages"].append({"name": "last", "sampler": "random", "trials": 2, "narrow": {"top": 1}})
    path = write_study(workdir, study)
    code, out, err = cli("run", str(path))
    assert code == 0, err
    assert all(t.state is TrialState.PRUNED for t in _study("fine").trials) and _finished("fine") == 3
    assert _study("fine.2").user_attrs["ended"]["reason"] == "converged: round fine has no complete trial, so it improved nothing"
    assert _finished("fine.2") == 0 and "stage fine.2: skipped, converged" in err
    last = _study("last").user_attrs["derived_from"]
    assert last["stage"] == "fine" and last["complete"] == 0 and last["pruned"] == 3


def test_repeat_is_checked(workdir: Path) -> None:
    for repeat, message in [({"max": 0}, "stages.1.repeat.max: must be >= 1"),
                            ({"min_improvement": 0.1}, "stages.1.repeat.max: is required"),
                            ({"max": 2, "min_improvement": 1.5}, "stages.1.repeat.min_improvement: must be a fraction in [0, 1)"),
                            ({"max": 2, "every": 1}, "stages.1.repeat")]:
        code, _, err = cli("validate", str(write_study(workdir, _two_stages({"repeat": repeat}))))
        assert code == 2 and message in err and err.count("\n") == 1, (repeat, err)
    study = _two_stages({"repeat": {"max": 2}})
    study["stages"].append({"name": "fine.2", "sampler": "random", "trials": 2})
    code, _, err = cli("validate", str(write_study(workdir, study)))
    assert code == 2 and "'fine.2' is used by stage" in err
