"""Coarse-to-fine stages end to end: derived spaces stored and reused, warm starts, resumption, timeouts."""

from __future__ import annotations

import json
from pathlib import Path
import signal
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch.narrow import contains
from hpsearch.space import parse_space
from hpsearch.stages import ATTR_DERIVED, ATTR_SPACE, ATTR_WARM_START
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


def test_a_stage_with_nothing_to_narrow_from_stops_with_a_clear_message(workdir: Path) -> None:
    study = _two_stages()
    study["stages"][0]["pruner"] = {"kind": "threshold", "upper": 1e-9}  # every coarse trial is pruned
    path = write_study(workdir, study)
    code, out, err = cli("run", str(path))
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("hpsearch: error")]
    assert len(errors) == 1 and err.endswith(errors[0] + "\n") and "Traceback" not in err, err
    assert errors[0] == ("hpsearch: error: stage fine cannot derive its space: stage coarse has 0 complete trial(s) "
                         "(8 pruned, 0 failed) and narrow.top 0.5 needs at least 2; raise stages.0.trials or loosen stages.1")
    assert _finished("coarse") == 8 and not _study("fine").trials


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
    assert _finished("fine") == 4
    code, out, err = cli("run", str(path))
    assert code == 0 and f"study cars is done (coarse {coarse_done}/500 (ended by its timeout), fine 4/4)" in err
    assert _finished("coarse") == coarse_done
    # A longer fine stage: the ended coarse stage is skipped, and fine runs the rest of its budget.
    code, out, err = cli("run", str(path), "--set", "stages.1.trials=5")
    assert code == 0 and "stage coarse: skipped, ended by its timeout (3 s)" in err
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
