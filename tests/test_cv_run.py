"""k-fold cross-validation end to end: ``data: {cv_folds: 5}`` through ``hpsearch run``, fused and not,
the kept model through ``hpsearch predict``, and ``validate`` refusing a bad ``cv_folds``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState
import pandas as pd
import pytest

from hpsearch.train.data.folds import fold_rows
from tests.helpers import base_study, cli, write_study

DROP = ["Model", "Make", "Min.Price", "Max.Price"]
DATA = {"csv": "data/cars93.csv", "target": "Price", "task": "regression", "drop": DROP, "cv_folds": 5}
SPACE = {"lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
         "dropout": {"type": "float", "low": 0.0, "high": 0.3}}
TRAIN = {"epochs": 6, "patience": 3, "device": "cpu", "batch_size": 16, "optimizer": "adam"}


def cv_study(folder: Path, **overrides: Any) -> dict[str, Any]:
    study = {"storage": f"sqlite:///{folder / 'db.sqlite'}", "data": DATA, "space": SPACE, "train": TRAIN,
             "stages": [{"name": "coarse", "sampler": "random", "trials": 6}], **overrides}
    return base_study(**study)


def trials(folder: Path) -> list[FrozenTrial]:
    study = optuna.load_study(study_name="cars/coarse", storage=f"sqlite:///{folder / 'db.sqlite'}")
    return study.get_trials(deepcopy=False)


def test_a_k_fold_run_records_each_folds_value_and_their_spread(workdir: Path) -> None:
    path = write_study(workdir, cv_study(workdir, keep="best"))
    code, _, err = cli("run", str(path))
    assert code == 0, err
    done = [t for t in trials(workdir) if t.state is TrialState.COMPLETE]
    assert len(done) >= 4
    for t in done:
        folds = t.user_attrs["val_rmse_folds"]
        assert len(folds) == 5 and len(set(folds)) == 5
        assert t.value == t.user_attrs["val_rmse"] == pytest.approx(np.mean(folds), rel=1e-12)
        assert t.user_attrs["val_rmse_std"] == pytest.approx(float(np.std(folds)), rel=1e-9)
        assert t.user_attrs["val_r2"] == pytest.approx(np.mean(t.user_attrs["val_r2_folds"]), rel=1e-12)
        assert t.intermediate_values[t.user_attrs["best_epoch"]] == pytest.approx(t.value, rel=1e-12)  # the mean curve
    # The kept model is the first fold's network: predicting that fold's validation rows gives its value.
    best = min(done, key=lambda t: t.value)  # type: ignore[arg-type, return-value]
    frame = pd.read_csv("data/cars93.csv")
    _, first_val = fold_rows(len(frame), 5, seed=0)[0]
    frame.iloc[first_val].to_csv("fold1.csv", index=False)
    code, _, err = cli("predict", str(path), "--input", "fold1.csv", "--out", "pred.csv")
    assert code == 0, err
    rows = pd.read_csv("pred.csv")
    rmse = float(np.sqrt(np.mean((rows["prediction"] - rows["Price"]) ** 2)))
    assert rmse == pytest.approx(best.user_attrs["val_rmse_folds"][0], rel=1e-5)


def test_fused_k_fold_trials_record_what_unfused_ones_record(workdir: Path) -> None:
    values = {}
    for fuse in (1, 3):
        folder = workdir / f"fuse{fuse}"
        folder.mkdir()
        study = cv_study(folder, executor={"kind": "local", "workers": 2, "fuse": fuse})
        code, _, err = cli("run", str(write_study(folder, study)))
        assert code == 0, err
        got = trials(folder)
        assert len(got) == 6
        if fuse > 1:
            assert max(t.user_attrs.get("pack", 1) for t in got) > 1  # the folds of several trials in one pack
        values[fuse] = {t.number: (t.params, t.user_attrs.get("val_rmse_folds")) for t in got
                        if t.state is TrialState.COMPLETE}
    both = values[1].keys() & values[3].keys()
    assert len(both) >= 4
    for number in both:
        (params, alone), (fused_params, together) = values[1][number], values[3][number]
        assert fused_params == params
        assert together == pytest.approx(alone, rel=1e-3)


@pytest.mark.parametrize(("cv_folds", "message"), [
    (1, "data.cv_folds: must be an integer >= 2 (the number of folds), got 1"),
    ("five", "data.cv_folds: must be a number, got 'five'"),
    (2.5, "data.cv_folds: must be an integer, got 2.5"),
    (94, "data.cv_folds: 94 folds need at least 94 rows; data/cars93.csv has 93"),
])
def test_validate_refuses_a_bad_cv_folds_in_one_line(workdir: Path, cv_folds: Any, message: str) -> None:
    path = write_study(workdir, cv_study(workdir, data={**DATA, "cv_folds": cv_folds}))
    code, _, err = cli("validate", str(path))
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_validate_refuses_cv_folds_with_val_fraction(workdir: Path) -> None:
    path = write_study(workdir, cv_study(workdir, data={**DATA, "val_fraction": 0.2}))
    code, _, err = cli("validate", str(path))
    assert code == 2 and err.count("\n") == 1
    assert "data.cv_folds: give cv_folds or val_fraction, not both" in err
