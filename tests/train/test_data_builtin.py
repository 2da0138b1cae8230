"""Built-in data sets: the ``builtin:`` section, used_cars, digits and its augmentation, is_sorted."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from train_helpers import CARS, cars_config

from hpsearch.errors import ConfigError, DataError
from hpsearch.train import Dataset, build_train_config, check_data, fit, load_dataset, parse_data_config
from hpsearch.train.data.datasets import CARS93, builtins
from hpsearch.train.data.datasets.digits import random_shift
from hpsearch.train.data.datasets.sequences import is_sorted
from hpsearch.train.data.datasets.used_cars import COLUMNS, used_cars
from hpsearch.train.models import build_model_for


def builtin(seed: int = 0, **raw: Any) -> Dataset:
    return load_dataset(parse_data_config(raw, seed=seed))


def test_every_builtin_loads_with_its_defaults() -> None:
    for name, spec in builtins().items():
        cfg = parse_data_config({"builtin": name}, seed=0)
        assert cfg.task == spec.tasks[0]
        check_data(cfg)
        data = load_dataset(cfg)
        assert len(data.x_train) > len(data.x_val) > 0 and data.n_outputs >= 1, name


def test_cars93_builtin_is_the_shipped_csv(tmp_path: Path) -> None:
    assert CARS93.read_bytes() == CARS.read_bytes()
    cfg = parse_data_config({"builtin": "cars93"}, seed=0)
    assert (cfg.target, cfg.task, cfg.drop) == ("Price", "regression", ("Model", "Make", "Min.Price", "Max.Price"))
    from_builtin, from_csv = load_dataset(cfg), load_dataset(cars_config())
    assert from_builtin.feature_names == from_csv.feature_names
    assert torch.equal(from_builtin.x_train, from_csv.x_train) and torch.equal(from_builtin.y_val, from_csv.y_val)
    by_type = builtin(builtin="cars93", target="Type", task="classification")
    assert by_type.n_outputs == 6 and by_type.y_train.dtype == torch.int64


def test_pyproject_ships_the_csv_as_package_data() -> None:
    text = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '[tool.setuptools.package-data]\n"hpsearch.train.data.datasets" = ["*.csv"]' in text


def test_used_cars_is_deterministic_by_seed_with_the_documented_columns() -> None:
    a, b, c = used_cars(2000, seed=1), used_cars(2000, seed=1), used_cars(2000, seed=2)
    assert tuple(a.columns) == COLUMNS == (
        "brand", "model_year", "mileage", "engine_size", "fuel", "transmission", "price",
    )
    pd.testing.assert_frame_equal(a, b)
    assert not a["price"].equals(c["price"])
    assert a.notna().all().all() and (a["price"] > 0).all() and (a["mileage"] >= 0).all()
    assert set(a["fuel"]) == {"petrol", "diesel", "hybrid", "electric"}
    assert set(a["transmission"]) == {"manual", "automatic"}
    assert (a.loc[a["fuel"] == "electric", "engine_size"] == 0).all()
    assert a["model_year"].between(2005, 2025).all()


def test_used_cars_prices_depreciate_with_age_and_mileage() -> None:
    cars = used_cars(50_000, seed=0)
    age = 2025 - cars["model_year"].to_numpy()
    design = np.column_stack([np.ones(len(cars)), age, cars["mileage"] / 10_000,
                              pd.get_dummies(cars[["brand", "fuel", "transmission"]], drop_first=True, dtype=float)])
    coef, *_ = np.linalg.lstsq(design, np.log(cars["price"].to_numpy()), rcond=None)
    assert -0.2 < coef[1] < -0.03  # a few to twenty percent a year
    assert coef[2] < -0.01  # and more per 10 000 miles
    same = cars[(cars["brand"] == "Toyota") & (cars["fuel"] == "petrol")]
    medians = same.groupby(2025 - same["model_year"])["price"].median()
    assert medians.loc[0] > medians.loc[3] > medians.loc[8]


def test_used_cars_scales_to_a_million_rows() -> None:
    start = time.perf_counter()
    cars = used_cars(1_000_000, seed=0)
    assert len(cars) == 1_000_000 and time.perf_counter() - start < 20  # vectorized: about a second


def test_used_cars_builtin_goes_through_tabular_preprocessing() -> None:
    cfg = parse_data_config({"builtin": "used_cars", "rows": 500}, seed=3)
    assert cfg.option("rows") == 500 and cfg.target == "price"
    data = load_dataset(cfg)
    assert len(data.y_train) + len(data.y_val) == 500
    assert "brand=Toyota" in data.feature_names and "mileage" in data.feature_names
    j = data.feature_names.index("mileage")
    assert abs(data.x_train[:, j].mean().item()) < 1e-4  # standardized on the training rows
    assert data.target_mean == pytest.approx(used_cars(500, 3)["price"].iloc[
        np.sort(np.random.default_rng(3).permutation(500)[100:])].mean())


def test_digits_are_images_with_ten_classes() -> None:
    data = builtin(builtin="digits", val_fraction=0.25)
    assert data.input_shape == (1, 8, 8) and data.x_train.dtype == torch.float32
    assert len(data.x_train) + len(data.x_val) == 1797 and len(data.x_val) == round(1797 * 0.25)
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert data.classes == tuple(str(i) for i in range(10)) and data.augment is None
    assert builtin(builtin="digits", augment="shift").augment is not None


def test_random_shift_moves_images_within_bounds_reproducibly() -> None:
    images = torch.zeros(200, 1, 8, 8)
    images[:, 0, 3, 4] = 1.0
    shift = random_shift(1)
    out = shift(images, torch.Generator().manual_seed(0))
    again = shift(images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and torch.equal(out, again)
    rows, cols = out[:, 0].nonzero()[:, 1], out[:, 0].nonzero()[:, 2]
    assert out.sum() == 200  # nothing falls off: the pixel is 3 from every edge
    assert set(rows.tolist()) == {2, 3, 4} and set(cols.tolist()) == {3, 4, 5}
    edge = torch.zeros(50, 1, 8, 8)
    edge[:, 0, 0, 0] = 1.0
    assert shift(edge, torch.Generator().manual_seed(1)).sum() < 50  # shifted out, zero-filled


def test_augmentation_applies_to_training_batches_only() -> None:
    base = builtin(builtin="digits", val_fraction=0.5)
    calls: list[int] = []

    def record(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        calls.append(len(batch))
        return batch

    data = Dataset(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, "augment": record})
    cfg = build_train_config({"kind": "cnn", "channels": 4, "blocks": 1}, {"device": "cpu", "epochs": 2, "batch_size": 300},
                             task="classification", monitor="val_loss", maximize=False, seed=0)
    torch.manual_seed(0)
    fit(cfg, data, build_model_for(cfg.model, data))
    n = len(base.x_train)
    assert sum(calls) == 2 * n and max(calls) == 300  # every training row, twice; never the validation rows


@pytest.mark.parametrize("seed", [0, 1])
def test_is_sorted_labels_and_balance(seed: int) -> None:
    tokens, labels = is_sorted(4000, 12, 10, seed)
    again, _ = is_sorted(4000, 12, 10, seed)
    assert tokens.shape == (4000, 12) and tokens.dtype == np.int64 and np.array_equal(tokens, again)
    assert tokens.min() >= 0 and tokens.max() <= 9
    really_sorted = (np.diff(tokens, axis=1) >= 0).all(axis=1)
    assert np.array_equal(really_sorted, labels == 1)
    assert 0.45 < labels.mean() < 0.55
    # a swap keeps the tokens: the sorted row of every example is as likely in either class
    resorted = np.sort(tokens, axis=1)
    assert abs(resorted[labels == 1].mean() - resorted[labels == 0].mean()) < 0.1


def test_is_sorted_builtin_is_token_data() -> None:
    data = builtin(builtin="is_sorted", rows=300, length=8, vocab=6)
    assert data.x_train.dtype == torch.int64 and data.input_shape == (8,) and data.vocab_size <= 6
    assert len(data.x_train) + len(data.x_val) == 300 and data.n_outputs == 2


@pytest.mark.parametrize(
    ("raw", "key", "fragment"),
    [
        ({"builtin": "digit"}, "builtin", "unknown builtin data set 'digit' (did you mean 'digits'?); one of: cars93, digits"),
        ({"builtin": "digits", "task": "regression"}, "task", "unknown task 'regression' for builtin digits; one of: classification"),
        ({"builtin": "digits", "rows": 5}, "rows", "unknown key; allowed: builtin, task, val_fraction, cv_folds, augment, max_shift"),
        ({"builtin": "digits", "augment": "flip"}, "augment", "unknown augmentation 'flip'; one of: none, shift"),
        ({"builtin": "used_cars", "rows": 0}, "rows", "must be in [10, 100000000], got 0"),
        ({"builtin": "used_cars", "rows": "many"}, "rows", "must be a number"),
        ({"builtin": "is_sorted", "target": "x"}, "target", "unknown key"),
        ({"csv": "a.csv", "builtin": "digits", "task": "classification"}, "", "exactly one of csv, parquet, builtin, python (got csv, builtin)"),
        ({"cvs": "a.csv", "target": "y", "task": "regression"}, "cvs", "did you mean 'csv'?"),
    ],
)
def test_builtin_section_errors(raw: Mapping[str, Any], key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_data_config(raw, seed=0)
    assert info.value.key == key and fragment in info.value.message, info.value


def test_builtin_tabular_columns_are_checked() -> None:
    with pytest.raises(DataError, match=r"target column 'prize' is not in builtin used_cars \(did you mean 'price'\?\)"):
        check_data(parse_data_config({"builtin": "used_cars", "target": "prize"}, seed=0))
    with pytest.raises(DataError, match="drop column 'colour'"):
        check_data(parse_data_config({"builtin": "cars93", "drop": ["colour"]}, seed=0))


def test_builtin_configs_are_hashable_and_equal_by_value() -> None:
    a = parse_data_config({"builtin": "used_cars", "rows": 100}, seed=0)
    assert {a: 1}[parse_data_config({"builtin": "used_cars", "rows": 100.0}, seed=0)] == 1
    assert a != parse_data_config({"builtin": "used_cars", "rows": 101}, seed=0)
