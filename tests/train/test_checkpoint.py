"""A kept model predicts as it validated: solo and fused, tabular encoding, file round trip, bad rows."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path

from loop_helpers import make_config
import numpy as np
import pandas as pd
import pytest
import torch
from train_helpers import CARS, CARS_DROP, cars_config, synthetic_classification

from hpsearch.errors import DataError
from hpsearch.train import Dataset, load_dataset, train
from hpsearch.train.checkpoint import TrainedModel
from hpsearch.train.data.tensors import split_rows
from hpsearch.train.fused import train_pack
from hpsearch.train.models import config_section, models, parse_section

BN = {"kind": "mlp", "hidden": [8, 4], "batch_norm": True, "dropout": 0.3, "activation": "tanh"}


def kept(knobs: dict, seed: int = 0, **kw: object) -> object:
    return dataclasses.replace(make_config({"epochs": 8, "batch_size": 16, "lr": 3e-3, **knobs}, seed=seed, **kw),
                               keep_model=True)


def cars_val_rows() -> pd.DataFrame:
    """The validation rows of cars_config(), as they are in the CSV file (target and dropped columns too)."""
    frame = pd.read_csv(CARS)
    frame = frame[frame["Price"].notna()].reset_index(drop=True)
    _, val = split_rows(len(frame), 0.2, 0)
    return frame.iloc[val]


def rmse(model: TrainedModel, rows: pd.DataFrame) -> float:
    predicted = model.predict_frame(rows)["prediction"].to_numpy()
    return float(np.sqrt(np.mean((predicted - rows["Price"].to_numpy()) ** 2)))


def test_a_kept_model_reproduces_its_validation_metric_from_the_csv_rows(cars: Dataset) -> None:
    result = train(kept({"dropout": 0.2}), cars)
    assert result.model is not None and result.best_epoch is not None
    # Through the file format, as `hpsearch predict` reads it.
    buffer = io.BytesIO(result.model.to_bytes())
    model = TrainedModel.load(buffer)
    assert rmse(model, cars_val_rows()) == pytest.approx(result.best_metrics["val_rmse"], rel=1e-6)


def test_no_model_unless_the_config_keeps_it(cars: Dataset) -> None:
    assert train(make_config({"epochs": 2}), cars).model is None


def test_fused_members_keep_their_own_best_epoch(cars: Dataset) -> None:
    """Each member's model is its own best epoch: it reproduces that member's best metric."""
    configs = [kept({"lr": lr, "weight_decay": wd}, seed=seed) for lr, wd, seed in
               [(3e-3, 0.0, 1), (1e-2, 1e-3, 2), (3e-4, 0.0, 3)]]
    results = train_pack(configs, cars)
    rows = cars_val_rows()
    for result in results:
        assert result.model is not None
        assert rmse(result.model, rows) == pytest.approx(result.best_metrics["val_rmse"], rel=1e-4)
    # Members differ: a model of the wrong member would not reproduce its metric.
    assert len({round(r.best_metrics["val_rmse"], 6) for r in results}) == 3


def test_fused_batch_norm_member_keeps_its_running_statistics(cars: Dataset) -> None:
    configs = [dataclasses.replace(c, model=parse_section(BN)) for c in
               (kept({"lr": 3e-3}, seed=s) for s in (4, 5))]
    results = train_pack(configs, cars)
    solo = train(configs[0], cars)
    assert results[0].model is not None and solo.model is not None
    rows = cars_val_rows()
    assert rmse(results[0].model, rows) == pytest.approx(results[0].best_metrics["val_rmse"], rel=1e-4)
    assert rmse(results[0].model, rows) == pytest.approx(rmse(solo.model, rows), rel=1e-3)


def test_classification_predicts_class_names_and_probabilities() -> None:
    data = synthetic_classification()
    result = train(kept({"epochs": 5}, task="classification", monitor="val_accuracy", maximize=True), data)
    assert result.model is not None
    probabilities = result.model.predict(data.x_val)
    assert probabilities.shape == (len(data.x_val), 2)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(len(data.x_val), dtype=probabilities.dtype))
    accuracy = (probabilities.argmax(dim=1) == data.y_val).double().mean().item()
    assert accuracy == pytest.approx(result.best_metrics["val_accuracy"])
    with pytest.raises(DataError, match="not table rows"):
        result.model.predict_frame(pd.DataFrame({"x0": [1.0]}))


def test_rows_with_missing_or_unknown_columns_are_refused_by_name(cars: Dataset) -> None:
    result = train(kept({"epochs": 2}), cars)
    assert result.model is not None
    rows = cars_val_rows()
    with pytest.raises(DataError, match=r"lacks the column\(s\) Horsepower"):
        result.model.predict_frame(rows.drop(columns=["Horsepower"]), where="new.csv")
    with pytest.raises(DataError, match="not trained on: colour"):
        result.model.predict_frame(rows.assign(colour="red"), where="new.csv")
    # The target and the dropped columns may stay: the training file had them.
    assert set(CARS_DROP) | {"Price"} <= set(rows.columns)
    assert len(result.model.predict_frame(rows)) == len(rows)
    # Unseen categories and missing values encode as in training: no error, finite answers.
    odd = rows.assign(Type="Hovercraft", Horsepower=math.nan)
    assert np.isfinite(result.model.predict_frame(odd)["prediction"]).all()


def test_the_encoding_is_the_datasets_own(cars: Dataset) -> None:
    assert cars.encoding is not None
    frame = pd.read_csv(CARS)
    frame = frame[frame["Price"].notna()].drop(columns=CARS_DROP).reset_index(drop=True)
    train_rows, _ = split_rows(len(frame), 0.2, 0)
    x = cars.encoding.transform(frame.iloc[train_rows])
    assert torch.equal(torch.from_numpy(x), cars.x_train)
    assert cars.encoding.feature_names == cars.feature_names


@pytest.mark.parametrize("kind", sorted(k for k in models() if k != "python"))
def test_every_model_kind_round_trips_its_section(kind: str) -> None:
    config = models()[kind].parse({"kind": kind}, {"dropout": 0.25})
    assert parse_section(config_section(config)) == config


def test_a_saved_model_file_is_loaded_without_pickled_code(tmp_path: Path) -> None:
    data = load_dataset(cars_config())
    result = train(kept({"epochs": 2}), data)
    assert result.model is not None
    path = tmp_path / "model.pt"
    result.model.save(path)
    raw = torch.load(path, weights_only=True)  # raises on anything but plain data and tensors
    assert raw["format"] == "hpsearch-model/1"
    path.write_bytes(b"not a model")
    with pytest.raises(DataError, match="not an hpsearch model file"):
        TrainedModel.load(path)


def test_a_kept_model_crosses_a_worker_pipe_as_bytes_not_shared_memory(cars: Dataset) -> None:
    # What a local worker's pipe does with a result: torch.multiprocessing's pickler, which would send
    # each tensor as a shared-memory file descriptor (a socket round trip each on the other side).
    from multiprocessing.reduction import ForkingPickler
    import pickle

    import torch.multiprocessing  # noqa: F401  # registers torch's reductions with ForkingPickler

    model = train(kept({"epochs": 2}), cars).model
    assert model is not None
    payload = bytes(ForkingPickler.dumps(model))
    assert b"torch.multiprocessing.reductions" not in payload  # rebuild_storage_fd and its kin
    again = pickle.loads(payload)
    assert again.state.keys() == model.state.keys()
    assert all(torch.equal(again.state[k], v) for k, v in model.state.items())
    assert (again.model, again.inputs, again.encoding, again.classes) == (model.model, model.inputs, model.encoding,
                                                                          model.classes)
    rows = torch.from_numpy(model.encoding.transform(cars_val_rows()))  # type: ignore[union-attr]
    assert torch.equal(again.predict(rows), model.predict(rows))
