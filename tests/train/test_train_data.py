from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from train_helpers import CARS, CARS_DROP, cars_config

from hpsearch.errors import ConfigError, DataError
from hpsearch.train import Dataset, check_data, load_dataset, parse_data_config


def test_parse_data_config_defaults_and_hashable() -> None:
    cfg = cars_config(seed=7)
    assert (cfg.csv, cfg.parquet, cfg.target, cfg.task) == (str(CARS), None, "Price", "regression")
    assert cfg.drop == tuple(CARS_DROP) and cfg.val_fraction == 0.2 and cfg.seed == 7
    assert {cfg: 1}[cars_config(seed=7)] == 1


def test_parse_data_config_unknown_key_message() -> None:
    with pytest.raises(ConfigError) as info:
        parse_data_config({"csv": "x.csv", "tagret": "Price", "task": "regression"}, seed=0)
    assert info.value.key == "tagret"
    assert info.value.message == (
        "unknown key (did you mean 'target'?); allowed: csv, parquet, target, task, drop, val_fraction, cv_folds"
    )


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"target": "y", "task": "regression"}, "", "exactly one of csv, parquet"),
        ({"csv": "a.csv", "parquet": "a.parquet", "target": "y", "task": "regression"}, "", "exactly one"),
        ({"csv": "a.csv", "target": "y", "task": "regresion"}, "task", "did you mean 'regression'?"),
        ({"csv": "a.csv", "task": "regression"}, "target", "must name the target column"),
        ({"csv": "a.csv", "target": "y", "task": "regression", "val_fraction": 1}, "val_fraction", "(0, 1)"),
        ({"csv": "a.csv", "target": "y", "task": "regression", "val_fraction": 0}, "val_fraction", "(0, 1)"),
        ({"csv": "a.csv", "target": "y", "task": "regression", "drop": [1]}, "drop", "list of column names"),
    ],
)
def test_parse_data_config_rejects(raw: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_data_config(raw, seed=0)
    assert info.value.key == key and fragment in info.value.message


def test_check_data_missing_file() -> None:
    cfg = parse_data_config({"csv": "studies/x.csv", "target": "y", "task": "regression"}, seed=0)
    with pytest.raises(DataError, match="data file studies/x.csv does not exist"):
        check_data(cfg)


def test_check_data_columns() -> None:
    check_data(cars_config())
    with pytest.raises(
        DataError,
        match=r"target column 'Prise' is not in .*cars93.csv \(did you mean 'Price'\?\); columns: Manufacturer",
    ):
        check_data(cars_config(target="Prise"))
    with pytest.raises(DataError, match="drop column 'Modell'"):
        check_data(cars_config(drop=["Modell"]))
    with pytest.raises(DataError, match="also listed under drop"):
        check_data(cars_config(drop=["Price"]))


def test_check_data_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DataError, match="cannot read .* as Parquet"):
        check_data(parse_data_config({"parquet": str(bad), "target": "y", "task": "regression"}, seed=0))


def test_cars_has_no_nan_and_expected_shape(cars: Dataset) -> None:
    # the file really has gaps in these columns
    assert pd.read_csv(CARS)[["Rear.seat.room", "Luggage.room"]].isna().any().all()
    for t in (cars.x_train, cars.x_val, cars.y_train, cars.y_val):
        assert t.dtype == torch.float32 and not torch.isnan(t).any()
    assert len(cars.y_train) + len(cars.y_val) == 93 and len(cars.y_val) == round(93 * 0.2)
    assert cars.n_features == len(cars.feature_names) == cars.x_val.shape[1]
    assert "Luggage.room" in cars.feature_names and "Type=Small" in cars.feature_names
    assert not any(name.split("=")[0] in CARS_DROP for name in cars.feature_names)
    # standardized with training statistics: exactly centred on the training rows only
    j = cars.feature_names.index("Horsepower")
    assert (
        abs(cars.x_train[:, j].mean().item()) < 1e-5
        and abs(cars.x_train[:, j].std(correction=0).item() - 1) < 1e-4
    )
    assert abs(cars.x_val[:, j].mean().item()) > 1e-3


def test_split_is_deterministic_by_seed() -> None:
    a, b, c = (
        load_dataset(cars_config(seed=3)),
        load_dataset(cars_config(seed=3)),
        load_dataset(cars_config(seed=4)),
    )
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.y_val * a.target_std + a.target_mean, c.y_val * c.target_std + c.target_mean)


def _recover(data: Dataset, y: torch.Tensor) -> np.ndarray:
    return (y.double() * data.target_std + data.target_mean).numpy()


def test_preprocessing_is_fitted_on_train_rows_only(tmp_path: Path) -> None:
    # x equals the target except where missing, so each row's raw x can be recovered from its target
    n = 40
    y = np.arange(1.0, n + 1) ** 1.5
    x = y.copy()
    x[::4] = np.nan
    colour = np.where(np.arange(n) % 2 == 0, "red", None)
    path = tmp_path / "d.csv"
    pd.DataFrame({"x": x, "colour": colour, "y": y}).to_csv(path, index=False)
    data = load_dataset(parse_data_config({"csv": str(path), "target": "y", "task": "regression"}, seed=0))

    y_tr, y_va = _recover(data, data.y_train), _recover(data, data.y_val)
    assert data.target_mean == pytest.approx(y_tr.mean()) and data.target_std == pytest.approx(y_tr.std())
    missing = set(y[::4])  # neighbouring targets differ by > 1, float32 round-off by < 1e-3
    x_tr = np.array([np.nan if any(abs(v - m) < 1e-3 for m in missing) else v for v in y_tr])
    x_va = np.array([np.nan if any(abs(v - m) < 1e-3 for m in missing) else v for v in y_va])
    median = np.nanmedian(x_tr)
    filled_tr, filled_va = np.where(np.isnan(x_tr), median, x_tr), np.where(np.isnan(x_va), median, x_va)
    mean, std = filled_tr.mean(), filled_tr.std()
    j = data.feature_names.index("x")
    np.testing.assert_allclose(data.x_train[:, j].numpy(), (filled_tr - mean) / std, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(data.x_val[:, j].numpy(), (filled_va - mean) / std, rtol=1e-4, atol=1e-5)
    # missing categories get their own one-hot column
    assert {"colour=red", "colour=<missing>"} <= set(data.feature_names)
    onehot = data.x_train[
        :, [data.feature_names.index("colour=red"), data.feature_names.index("colour=<missing>")]
    ]
    assert torch.equal(onehot.sum(dim=1), torch.ones(len(onehot)))


def test_parquet_loads_like_csv(tmp_path: Path) -> None:
    path = tmp_path / "cars.parquet"
    pd.read_csv(CARS).to_parquet(path)
    raw = {"parquet": str(path), "target": "Price", "task": "regression", "drop": CARS_DROP}
    from_parquet, from_csv = load_dataset(parse_data_config(raw, seed=0)), load_dataset(cars_config())
    assert from_parquet.feature_names == from_csv.feature_names
    assert torch.allclose(from_parquet.x_train, from_csv.x_train) and torch.equal(
        from_parquet.y_val, from_csv.y_val
    )


def test_classification_dataset() -> None:
    data = load_dataset(cars_config(target="Type", task="classification", drop=CARS_DROP))
    assert data.classes == ("Compact", "Large", "Midsize", "Small", "Sporty", "Van")
    assert data.n_outputs == 6 and data.y_train.dtype == torch.int64
    assert int(data.y_train.max()) < 6 and not any(n.startswith("Type=") for n in data.feature_names)


def test_regression_target_must_be_numeric() -> None:
    with pytest.raises(DataError, match="must be numeric"):
        load_dataset(cars_config(target="Type"))
