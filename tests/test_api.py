"""The Python API: hpsearch.run and hpsearch.load round-trip what the CLI reports, and the README's example runs."""

from __future__ import annotations

import json
from pathlib import Path
import re
import shutil
import subprocess
import sys

import optuna
import pandas as pd
import pytest

import hpsearch
from hpsearch.errors import SpecError
from tests.helpers import ROOT, base_study, cli, process_env, write_study


def _study() -> dict[str, object]:
    study = base_study()
    study["train"] = {"epochs": 4, "device": "cpu"}
    study["executor"] = {"kind": "local", "workers": 1}
    return study


def test_run_and_load_report_what_the_cli_reports(workdir: Path) -> None:
    raw = _study()
    study = hpsearch.run(raw, overrides={"stages.0.trials": 3})
    assert isinstance(study, hpsearch.Study) and study.name == "cars"
    path = write_study(workdir, raw)
    code, out, err = cli("best", str(path), "--set", "stages.0.trials=3")
    assert code == 0, err
    assert study.best() == json.loads(out)
    (row,) = study.status()
    assert row.finished == 3 and row.best is not None and row.best.number == study.best()["trial"]
    assert study.best_trial().number == study.best()["trial"]

    code, _, err = cli("export", str(path), "--set", "stages.0.trials=3", "--out", "trials.csv")
    assert code == 0, err
    exported, trials = pd.read_csv("trials.csv"), study.trials()
    assert list(trials["number"]) == list(exported["number"]) == [0, 1, 2]
    assert list(trials["value"]) == pytest.approx(list(exported["value"]))

    curves = study.trials(curves=True)
    assert list(curves.columns) == ["stage", "trial", "state", "epoch", "val_rmse"]
    for trial in optuna.load_study(study_name="cars/coarse", storage="sqlite:///runs/cars.db").trials:
        mine = curves[curves["trial"] == trial.number]
        assert dict(zip(mine["epoch"], mine["val_rmse"], strict=True)) == pytest.approx(trial.intermediate_values)
        assert set(mine["state"]) == {trial.state.name} and set(mine["stage"]) == {"coarse"}

    loaded = hpsearch.load(path, ["stages.0.trials=3"])  # overrides as --set strings
    assert loaded.best() == study.best()
    assert "cars" in repr(loaded)
    with pytest.raises(SpecError, match=r"^metric: changed since stage coarse"):
        hpsearch.load(path, {"metric": "val_mae"})


def test_a_bad_study_is_the_clis_error_as_an_exception(workdir: Path) -> None:
    raw = _study()
    raw["metric"] = "val_accuracy"  # a regression task reports no accuracy
    with pytest.raises(SpecError, match="metric"):
        hpsearch.run(raw)
    assert not (workdir / "runs" / "cars.db").exists()  # refused before anything was written


def test_import_hpsearch_is_cheap() -> None:
    code = "import sys, hpsearch; print(sorted(m for m in ('optuna', 'torch', 'pandas', 'ray') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], env=process_env(), text=True, capture_output=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


def test_the_readme_example_runs(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    (example,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    shutil.copytree(ROOT / "studies", tmp_path / "studies")  # the quickstart, as in a checkout
    done = subprocess.run([sys.executable, "-c", example], cwd=tmp_path, env=process_env(), text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert '"stage":' not in done.stdout and "'stage':" in done.stdout  # best() printed as a dict
    assert "prediction" in done.stdout  # the best model's predictions, as a frame
    assert (tmp_path / "runs" / "car-price.db").exists()
