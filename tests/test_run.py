"""End to end: the real CLI runs studies into real SQLite files that plain Optuna and pandas read back."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import TrialState
import pandas as pd
import pytest

from tests.helpers import BOOM_MODEL, base_study, cli, write_study

STORAGE = "sqlite:///runs/cars.db"


def _trials(study_name: str = "cars/coarse", storage: str = STORAGE) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study_name, storage=storage).get_trials()


def test_run_records_every_trial_for_optuna_and_pandas(workdir: Path) -> None:
    path = write_study(workdir, base_study())
    code, out, err = cli("run", str(path))
    assert code == 0, err
    assert "coarse" in out and "cars/coarse" in out

    trials = _trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    for t in trials:
        attrs = t.user_attrs
        for key in ("host", "device", "epochs_run", "duration_s", "best_epoch", "val_rmse", "val_mae", "val_r2"):
            assert key in attrs, key
        assert attrs["device"] == "cpu"
        assert 1 <= attrs["epochs_run"] <= 6
        assert ("momentum" in t.params) == (t.params["optimizer"] == "momentum")
        if t.state is TrialState.COMPLETE:
            assert t.value == pytest.approx(attrs["val_rmse"])
            # one intermediate value per epoch run, keyed by 1-based epoch
            assert min(t.intermediate_values) == 1
            assert t.intermediate_values[attrs["best_epoch"]] == pytest.approx(t.value)
            assert t.value == pytest.approx(min(t.intermediate_values.values()))

    code, out, _ = cli("status", str(path))
    assert code == 0
    line = next(row for row in out.splitlines() if row.startswith("coarse"))
    complete = sum(t.state is TrialState.COMPLETE for t in trials)
    assert line.split()[2] == str(complete)

    code, out, _ = cli("best", str(path))
    best = json.loads(out)
    assert set(best) == {"stage", "trial", "value", "params", "metrics"}
    complete_values = [t.value for t in trials if t.state is TrialState.COMPLETE]
    assert best["value"] == pytest.approx(min(complete_values))
    assert best["metrics"]["val_rmse"] == pytest.approx(best["value"])
    assert best["stage"] == "coarse"

    for out_file in ("trials.csv", "trials.parquet"):
        code, _, err = cli("export", str(path), "--out", out_file)
        assert code == 0, err
        frame = pd.read_csv(out_file) if out_file.endswith(".csv") else pd.read_parquet(out_file)
        assert len(frame) == 4
        assert set(frame["stage"]) == {"coarse"}
        assert {"params_lr", "value", "state", "user_attrs_val_rmse"} <= set(frame.columns)
    code, _, err = cli("export", str(path), "--out", "trials.xlsx")
    assert code == 2 and ".csv" in err


def test_resume_keeps_finished_trials_and_runs_only_the_rest(workdir: Path) -> None:
    path = write_study(workdir, base_study(executor={"kind": "local", "workers": 1}))
    assert cli("run", str(path), "--set", "stages.0.trials=3")[0] == 0
    first = {t.number: (t.params, t.value, t.state) for t in _trials()}
    assert len(first) == 3

    assert cli("run", str(path), "--set", "stages.0.trials=5")[0] == 0
    trials = _trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3, 4]
    for t in trials[:3]:
        assert (t.params, t.value, t.state) == first[t.number]
    # The resumed sampler does not replay the first run's draws.
    assert trials[3].params != trials[0].params

    code, out, err = cli("run", str(path), "--set", "stages.0.trials=5")
    assert code == 0, err
    assert len(_trials()) == 5  # the budget is met: nothing runs twice


def test_four_workers_share_one_sqlite_file_without_lost_or_duplicated_trials(workdir: Path) -> None:
    study = base_study(executor={"kind": "local", "workers": 4})
    study["stages"][0]["trials"] = 12
    study["train"]["epochs"] = 8
    path = write_study(workdir, study)
    code, _, err = cli("run", str(path))
    assert code == 0, err
    assert "locked" not in err
    trials = _trials()
    assert sorted(t.number for t in trials) == list(range(12))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), [t.user_attrs for t in trials]
    assert len({t.params["lr"] for t in trials}) == 12
    # The trials really ran side by side: some interval overlaps another.
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


def test_grid_runs_each_distinct_configuration_once_including_conditional_ones(workdir: Path) -> None:
    study = base_study(stages=[{"name": "grid", "sampler": "grid", "grid": {"lr": 2, "momentum": 2}}])
    study["space"]["batch_size"]["choices"] = [32]
    study["train"]["epochs"] = 2
    path = write_study(workdir, study)
    code, _, err = cli("run", str(path))
    assert code == 0, err
    trials = _trials("cars/grid")
    configs = [tuple(sorted(t.params.items())) for t in trials]
    # lr 2 x (sgd, adam, momentum x 2 momenta) = 8 distinct configurations, each once
    assert len(configs) == 8 and len(set(configs)) == 8
    assert sorted({t.params["lr"] for t in trials}) == pytest.approx([1e-4, 1e-1])
    assert sorted(t.params["momentum"] for t in trials if "momentum" in t.params) == pytest.approx([0.5, 0.5, 0.95, 0.95])
    assert cli("run", str(path))[0] == 0
    assert len(_trials("cars/grid")) == 8


def test_stages_run_in_order_as_separate_studies(workdir: Path) -> None:
    study = base_study(stages=[{"name": "coarse", "sampler": "random", "trials": 2},
                               {"name": "fine", "sampler": "tpe", "trials": 2}])
    path = write_study(workdir, study)
    code, out, err = cli("run", str(path))
    assert code == 0, err
    assert len(_trials("cars/coarse")) == 2 and len(_trials("cars/fine")) == 2
    fine = optuna.load_study(study_name="cars/fine", storage=STORAGE)
    assert fine.user_attrs["sampler"] == "tpe" and fine.user_attrs["stage_index"] == 1
    assert "fine" in out


def test_failing_trials_stop_the_stage_with_the_last_reason(workdir: Path) -> None:
    (workdir / "boom.py").write_text(BOOM_MODEL)  # a user model that builds fine and fails in training
    study = base_study(model={"python": "boom:build"}, executor={"kind": "local", "workers": 1})
    study["stages"][0].update(trials=5, max_failures=3)
    path = write_study(workdir, study)
    code, _, err = cli("run", str(path))
    assert code == 1
    assert "stopped after 3 failed trials" in err and "RuntimeError: boom in forward" in err
    trials = _trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    reason = trials[0].user_attrs["fail_reason"]
    assert reason.startswith("RuntimeError: boom in forward") and "Traceback" in reason and "boom.py" in reason


def test_storage_from_the_environment_overrides_the_study_file(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_study(workdir, base_study(stages=[{"name": "coarse", "sampler": "random", "trials": 1}]))
    monkeypatch.setenv("HPSEARCH_STORAGE", "sqlite:///elsewhere/env.db")
    assert cli("run", str(path))[0] == 0
    assert Path("elsewhere/env.db").exists()
    assert not Path("runs/cars.db").exists()
    assert len(_trials(storage="sqlite:///elsewhere/env.db")) == 1
