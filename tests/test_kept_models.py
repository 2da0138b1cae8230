"""Kept models end to end: `keep: best|all|none`, `hpsearch predict`, `best --config`, `Study.best_model`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from helpers import base_study, cli, write_study
import numpy as np
import optuna
from optuna.artifacts import download_artifact, get_all_artifact_meta
import pandas as pd
import pytest
import yaml

import hpsearch
from hpsearch.artifacts import artifact_dir, artifact_store, kept_models
from hpsearch.results import _started
from hpsearch.spec import load_spec
from hpsearch.storage import open_storage, resolve_url
from hpsearch.train.data.tensors import split_rows

DROP = ["Model", "Make", "Min.Price", "Max.Price"]


def two_stages(**overrides: Any) -> dict[str, Any]:
    study = base_study(stages=[{"name": "coarse", "sampler": "random", "trials": 5},
                               {"name": "fine", "sampler": "random", "trials": 3}], **overrides)
    study["executor"] = {"kind": "local", "workers": 2, **overrides.get("executor", {})}
    return study


def val_rows(workdir: Path) -> pd.DataFrame:
    """The validation rows of the study's data file (seed 0, val_fraction 0.2), as the file has them."""
    frame = pd.read_csv(workdir / "data" / "cars93.csv")
    frame = frame[frame["Price"].notna()].reset_index(drop=True)
    return frame.iloc[split_rows(len(frame), 0.2, 0)[1]]


def rmse(predicted: pd.Series, rows: pd.DataFrame) -> float:
    return float(np.sqrt(np.mean((predicted.to_numpy() - rows["Price"].to_numpy()) ** 2)))


def kept(path: Path) -> list[tuple[str, int]]:
    spec = load_spec(path)
    storage = open_storage(resolve_url(spec.storage))
    return [(k.stage, k.trial) for k in kept_models(storage, _started(spec, storage))]


def stage_trials(path: Path, stage: str) -> list[optuna.trial.FrozenTrial]:
    spec = load_spec(path)
    return optuna.load_study(study_name=f"{spec.name}/{stage}", storage=resolve_url(spec.storage)).get_trials()


def best_of_stage(path: Path, stage: str) -> optuna.trial.FrozenTrial:
    spec = load_spec(path)
    return optuna.load_study(study_name=f"{spec.name}/{stage}", storage=resolve_url(spec.storage)).best_trial


def test_keep_best_keeps_each_stages_best_and_predict_reproduces_its_metric(workdir: Path) -> None:
    path = write_study(workdir, two_stages())
    assert cli("run", str(path))[0] == 0
    coarse, fine = best_of_stage(path, "coarse"), best_of_stage(path, "fine")
    assert kept(path) == [("coarse", coarse.number), ("fine", fine.number)]
    # Only those files are left in the store: the worse ones written on the way were removed.
    assert len(list(artifact_dir(load_spec(path)).iterdir())) == 2
    assert artifact_dir(load_spec(path)) == Path("runs/cars-artifacts")

    rows = val_rows(workdir)
    rows.to_csv("val.csv", index=False)
    code, _, err = cli("predict", str(path), "--input", "val.csv", "--out", "pred.csv")
    assert code == 0, err
    best = json.loads(cli("best", str(path))[1])
    assert f"trial {best['trial']} of stage {best['stage']}" in err
    out = pd.read_csv("pred.csv")
    assert list(out.columns) == [*rows.columns, "prediction"]
    assert rmse(out["prediction"], rows) == pytest.approx(best["value"], rel=1e-6)

    # The other stage's best, by name.
    other = "coarse" if best["stage"] == "fine" else "fine"
    code, _, err = cli("predict", str(path), "--input", "val.csv", "--out", "pred2.csv", "--stage", other)
    assert code == 0, err
    assert rmse(pd.read_csv("pred2.csv")["prediction"], rows) == pytest.approx(best_of_stage(path, other).value, rel=1e-6)

    # The Python API gives the same model.
    study = hpsearch.load(path)
    api = study.best_model().predict_frame(rows)["prediction"]
    assert np.allclose(api.to_numpy(), out["prediction"].to_numpy())
    assert study.best_model().meta["trial"] == best["trial"]


def test_the_dashboard_and_optuna_see_the_kept_model_as_an_artifact(workdir: Path) -> None:
    path = write_study(workdir, base_study())
    assert cli("run", str(path))[0] == 0
    spec = load_spec(path)
    storage = open_storage(resolve_url(spec.storage))
    best = best_of_stage(path, "coarse")
    metas = get_all_artifact_meta(best, storage=storage)
    assert [m.filename for m in metas] == ["model.pt"]
    download_artifact(artifact_store=artifact_store(spec), artifact_id=metas[0].artifact_id, file_path="copy.pt")
    assert hpsearch.load(path).best_model().meta["value"] == pytest.approx(best.value)
    assert Path("copy.pt").stat().st_size > 1000


def test_keep_all_keeps_every_complete_trial_and_fused_members_keep_their_own(workdir: Path) -> None:
    study = base_study(keep="all", executor={"kind": "local", "workers": 1, "fuse": 4},
                       stages=[{"name": "coarse", "sampler": "random", "trials": 6}])
    study["space"] = {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
                      "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True}}
    path = write_study(workdir, study)
    assert cli("run", str(path))[0] == 0
    complete = [t for t in stage_trials(path, "coarse") if t.state is optuna.trial.TrialState.COMPLETE]
    assert complete and kept(path) == [("coarse", t.number) for t in complete]
    rows = val_rows(workdir)
    rows.to_csv("val.csv", index=False)
    for trial in complete:
        code, _, err = cli("predict", str(path), "--input", "val.csv", "--out", "p.csv", "--trial", str(trial.number))
        assert code == 0, err
        assert rmse(pd.read_csv("p.csv")["prediction"], rows) == pytest.approx(trial.value, rel=1e-5)


def test_keep_none_keeps_nothing_and_predict_says_so(workdir: Path) -> None:
    path = write_study(workdir, base_study(keep="none"))
    assert cli("run", str(path))[0] == 0
    assert kept(path) == []
    assert not artifact_dir(load_spec(path)).exists()
    val_rows(workdir).to_csv("val.csv", index=False)
    code, out, err = cli("predict", str(path), "--input", "val.csv", "--out", "p.csv")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "has no kept model (keep: none" in err
    assert not Path("p.csv").exists()


@pytest.mark.parametrize(("change", "message"), [
    (lambda rows: rows.drop(columns=["Horsepower", "Type"]), "lacks the column(s) Type, Horsepower"),
    (lambda rows: rows.assign(colour="red"), "has column(s) the model was not trained on: colour"),
])
def test_predict_refuses_missing_and_extra_columns_in_one_line(workdir: Path, change: Any, message: str) -> None:
    path = write_study(workdir, base_study())
    assert cli("run", str(path))[0] == 0
    change(val_rows(workdir)).to_csv("bad.csv", index=False)
    code, _, err = cli("predict", str(path), "--input", "bad.csv", "--out", "p.csv")
    assert code == 2
    assert err.count("\n") == 1 and "--input bad.csv" in err and message in err and "Traceback" not in err
    assert not Path("p.csv").exists()


def test_predict_bad_arguments_get_one_line(workdir: Path) -> None:
    path = write_study(workdir, base_study())
    assert cli("run", str(path))[0] == 0
    val_rows(workdir).to_csv("val.csv", index=False)
    cases = {
        ("--input", "nope.csv", "--out", "p.csv"): "--input nope.csv: does not exist",
        ("--input", "val.txt", "--out", "p.csv"): "--input val.txt: unknown file type '.txt'",
        ("--input", "val.csv", "--out", "p.json"): "--out p.json: unknown file type '.json'",
        ("--input", "val.csv", "--out", "missing/p.csv"): "the directory missing does not exist",
        ("--input", "val.csv", "--out", "p.csv", "--trial", "99"): "trial 99 has no kept model",
        ("--input", "val.csv", "--out", "p.csv", "--trial", "abc"): "--trial: must be a number, got 'abc'",
        ("--input", "val.csv", "--out", "p.csv", "--trial", "-1"): "--trial: must be >= 0, got -1",
        ("--input", "val.csv", "--out", "p.csv", "--stage", "fine"): "--stage fine: no such stage",
    }
    for args, message in cases.items():
        code, _, err = cli("predict", str(path), *args)
        assert code == 2 and err.count("\n") == 1 and message in err, (args, err)


def test_best_config_trains_exactly_the_best_trial_again(workdir: Path) -> None:
    study = base_study()
    study["space"]["dropout"] = {"type": "float", "low": 0.0, "high": 0.3}  # a model knob, searched
    path = write_study(workdir, study)
    assert cli("run", str(path))[0] == 0
    best = json.loads(cli("best", str(path))[1])
    code, out, err = cli("best", str(path), "--config")
    assert code == 0, err
    assert out.startswith(f"# trains trial {best['trial']} of stage coarse of study cars")
    config = yaml.safe_load(out)
    assert config["name"] == "cars-best" and "space" not in config
    assert config["train"]["seed"] == best["trial"]  # the study's seed (0) + the trial's number
    again = write_study(workdir, config, "best.yaml")
    assert cli("run", str(again))[0] == 0
    retrained = json.loads(cli("best", str(again))[1])
    assert retrained["value"] == pytest.approx(best["value"], rel=1e-6)
    assert retrained["metrics"] == pytest.approx(best["metrics"], rel=1e-6)


def test_the_training_seed_knob_fixes_every_trials_seed(workdir: Path) -> None:
    """train.seed: trials with the same parameters train alike, whatever their number."""
    study = base_study(space={"lr": {"type": "categorical", "choices": [0.01]}})
    study["train"]["seed"] = 7
    path = write_study(workdir, study)
    assert cli("run", str(path))[0] == 0
    values = {t.value for t in stage_trials(path, "coarse")}
    assert len(values) == 1
    study["train"]["seed"] = -1
    code, _, err = cli("validate", str(write_study(workdir, study, "bad.yaml")))
    assert code == 2 and "seed" in err and "[0, 2**32)" in err


def test_keep_and_artifacts_are_checked(workdir: Path) -> None:
    code, _, err = cli("validate", str(write_study(workdir, base_study(keep="some"))))
    assert code == 2 and "keep: must be one of best, all, none, got 'some'" in err
    study = base_study(artifacts="models")
    path = write_study(workdir, study)
    assert cli("run", str(path))[0] == 0
    assert len(list(Path("models").iterdir())) == 1


def test_a_model_that_cannot_be_written_leaves_its_trial_complete_and_says_why(workdir: Path) -> None:
    Path("blocker").write_text("a file where the artifacts folder would go")
    path = write_study(workdir, base_study(keep="all", artifacts="blocker/models"))
    code, _, err = cli("run", str(path))
    assert code == 0, err
    trials = stage_trials(path, "coarse")
    complete = [t for t in trials if t.state is optuna.trial.TrialState.COMPLETE]
    assert complete and not [t for t in trials if t.state is optuna.trial.TrialState.RUNNING]
    assert all("blocker/models" in t.user_attrs["model_not_kept"] for t in complete)
    assert kept(path) == []
