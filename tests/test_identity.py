"""Studies can't silently mix: a started stage keeps the study file it started from, and a changed metric,
direction, seed, data, model or train is refused (or, with --force-resume, recorded)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from hpsearch.identity import ATTR_FIXED, ATTR_FORCED, ATTR_STUDY_FILE, ATTR_VERSIONS
from tests.helpers import base_study, cli, write_study

STORAGE = "sqlite:///runs/cars.db"


def _started(workdir: Path) -> Path:
    study = base_study()
    study["train"] = {"epochs": 1, "device": "cpu"}
    study["stages"][0]["trials"] = 2
    study["executor"] = {"kind": "local", "workers": 1}
    path = write_study(workdir, study)
    code, _, err = cli("run", str(path), "--set", "model.hidden=[8]")
    assert code == 0, err
    return path


def _stage() -> optuna.Study:
    return optuna.load_study(study_name="cars/coarse", storage=STORAGE)


def test_a_stage_stores_the_study_file_after_set_and_the_versions(workdir: Path) -> None:
    _started(workdir)
    attrs = _stage().user_attrs
    assert attrs[ATTR_STUDY_FILE]["model"] == {"kind": "mlp", "hidden": [8]}  # as run, after --set
    assert attrs[ATTR_STUDY_FILE]["train"] == {"epochs": 1, "device": "cpu"}
    assert attrs[ATTR_FIXED]["metric"] == "val_rmse" and attrs[ATTR_FIXED]["direction"] == "minimize"
    assert set(attrs[ATTR_VERSIONS]) == {"hpsearch", "optuna", "torch", "python"}
    assert attrs[ATTR_VERSIONS]["optuna"] == optuna.__version__ and attrs[ATTR_VERSIONS]["torch"]


@pytest.mark.parametrize(("override", "path", "change"), [
    ("train.epochs=15", "train.epochs", "1 → 15"),
    ("metric=val_mae", "metric", '"val_rmse" → "val_mae"'),
    ("metric=val_r2", "direction", '"minimize" → "maximize"'),  # and the metric: "and 1 more"
    ("seed=7", "seed", "0 → 7"),
    ("data.target=Horsepower", "data.target", '"Price" → "Horsepower"'),
    ("model.hidden=[16]", "model.hidden", "[8] → [16]"),
    ("train.weight_decay=0.01", "train.weight_decay", "(none) → 0.01"),
])
def test_every_command_refuses_a_changed_study_in_one_line(workdir: Path, override: str, path: str, change: str) -> None:
    study = _started(workdir)
    before = len(_stage().trials)
    commands = [("run",), ("status",), ("best",), ("export", "--out", "trials.csv"), ("report", "--out", "report"),
                ("predict", "--input", "data/cars93.csv", "--out", "predictions.csv")]
    for command, *options in commands:
        code, out, err = cli(command, str(study), *options, "--set", "model.hidden=[8]", "--set", override)
        assert code == 2, (command, out, err)
        assert err.count("\n") == 1 and err.startswith(f"hpsearch: error: {path}: changed since stage coarse"), err
        assert change in err and "--force-resume" in err and "Traceback" not in err
    assert len(_stage().trials) == before  # nothing ran
    assert not any(Path(p).exists() for p in ("trials.csv", "report", "predictions.csv"))  # nothing written


def test_the_device_may_change_where_trials_train(workdir: Path) -> None:
    """Where a trial runs is placement, like the executor: a study started on CPUs goes on elsewhere."""
    study = _started(workdir)
    code, _, err = cli("run", str(study), "--set", "model.hidden=[8]", "--set", "train.device=auto",
                       "--set", "stages.0.trials=3")
    assert code == 0, err
    assert len(_stage().trials) == 3 and ATTR_FORCED not in _stage().user_attrs


def test_budgets_executor_and_pruner_may_change(workdir: Path) -> None:
    study = _started(workdir)
    code, _, err = cli("run", str(study), "--set", "model.hidden=[8]", "--set", "stages.0.trials=3",
                       "--set", "executor.workers=2", "--set", "pruner.kind=median")
    assert code == 0, err
    assert len(_stage().trials) == 3 and ATTR_FORCED not in _stage().user_attrs


def test_force_resume_goes_on_and_records_the_change_on_the_stage(workdir: Path) -> None:
    study = _started(workdir)
    changed = ("--set", "model.hidden=[8]", "--set", "train.epochs=2", "--set", "stages.0.trials=3")
    code, _, err = cli("run", str(study), *changed, "--force-resume")
    assert code == 0, err
    attrs = _stage().user_attrs
    (forced,) = attrs[ATTR_FORCED]
    assert forced["changes"] == ["train.epochs: 1 → 2"] and forced["at"]
    assert attrs[ATTR_FIXED]["train"]["epochs"] == 2  # the stage now goes by the new file
    assert len(_stage().trials) == 3
    code, _, err = cli("status", str(study), *changed)  # no --force-resume needed any more
    assert code == 0, err
