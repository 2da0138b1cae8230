"""k-fold cross-validation in the training core: the folds, their preprocessing, and a trial judged by
the mean over its folds, trained alone (``train_folds``) or as members of a fused pack."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
from typing import Any

from loop_helpers import Recorder, make_config
import numpy as np
import pandas as pd
import pytest
import torch
from train_helpers import CARS, CARS_DROP, cars_config

from hpsearch.errors import ConfigError, DataError
from hpsearch.train import Dataset, StopReason, TrainConfig, parse_data_config, train, train_folds
from hpsearch.train.cv_metrics import fold_std
from hpsearch.train.data import load_data, load_dataset
from hpsearch.train.data.encoding import NumericColumn
from hpsearch.train.data.folds import Folds, fold_rows
from hpsearch.train.fused import train_pack

EPOCHS = 8


@pytest.fixture(scope="module")
def folds() -> Folds:
    data = load_data(cars_config(cv_folds=5))
    assert isinstance(data, Folds)
    return data


def config(**knobs: Any) -> TrainConfig:
    seed, keep = knobs.pop("seed", 1), knobs.pop("keep_model", False)
    return make_config({"optimizer": "momentum", "lr": 0.02, "epochs": EPOCHS, "batch_size": 16, **knobs},
                       hidden=(16, 8), seed=seed, keep_model=keep)


def solo_curves(cfg: TrainConfig, datasets: Sequence[Dataset]) -> list[list[dict[str, float]]]:
    """Each fold trained alone by the plain loop: its metrics, epoch by epoch."""
    curves = []
    for data in datasets:
        recorder = Recorder()
        train(cfg, data, recorder)
        curves.append([m for _, m in recorder.history])
    return curves


def mean_curve(curves: Sequence[Sequence[Mapping[str, float]]], name: str) -> list[float]:
    return [float(np.mean([curve[e][name] for curve in curves])) for e in range(min(map(len, curves)))]


@pytest.mark.parametrize(("n", "k"), [(93, 5), (10, 10), (7, 3), (100, 4), (2, 2)])
def test_folds_are_disjoint_and_validate_every_row_exactly_once(n: int, k: int) -> None:
    splits = fold_rows(n, k, seed=3)
    assert len(splits) == k
    validated = np.concatenate([val for _, val in splits])
    assert sorted(validated.tolist()) == list(range(n))  # every row once, no row twice
    assert {len(train_rows) for train_rows, _ in splits} == {n - math.ceil(n / k)}  # as many in every fold
    for train_rows, val in splits:
        assert not set(train_rows.tolist()) & set(val.tolist())
        assert max(len(v) for _, v in splits) - len(val) <= 1
    assert [v.tolist() for _, v in fold_rows(n, k, seed=3)] == [v.tolist() for _, v in splits]  # seeded
    if n > k:
        assert [v.tolist() for _, v in fold_rows(n, k, seed=4)] != [v.tolist() for _, v in splits]


def test_each_fold_is_preprocessed_on_its_own_training_rows(folds: Folds) -> None:
    frame = pd.read_csv(CARS).drop(columns=CARS_DROP)
    rows = fold_rows(len(frame), 5, seed=0)
    means = set()
    for data, (train_rows, val_rows) in zip(folds.datasets, rows, strict=True):
        assert (len(data.x_train), len(data.x_val)) == (len(train_rows), len(val_rows))
        assert data.target_mean == pytest.approx(frame["Price"].iloc[train_rows].mean())
        assert data.encoding is not None
        horsepower = next(c for c in data.encoding.columns if c.name == "Horsepower")
        assert isinstance(horsepower, NumericColumn)
        assert horsepower.mean == pytest.approx(frame["Horsepower"].iloc[train_rows].mean())
        # one-hot inputs are the categories of the fold's training rows only
        manufacturers = {n.split("=", 1)[1] for n in data.feature_names if n.startswith("Manufacturer=")}
        assert manufacturers == set(frame["Manufacturer"].iloc[train_rows])
        means.add(round(data.target_mean, 9))
    assert len(means) == 5
    assert load_dataset(cars_config(cv_folds=5)).x_val.shape == folds.datasets[0].x_val.shape  # the first fold


def test_array_data_is_cut_into_folds_too() -> None:
    data = load_data(parse_data_config({"builtin": "digits", "cv_folds": 3}, seed=0))
    assert isinstance(data, Folds) and len(data) == 3
    assert sum(len(d.y_val) for d in data.datasets) == 1797
    assert {len(d.y_train) for d in data.datasets} == {1198}


def test_the_mean_curve_is_the_mean_of_the_solo_trained_folds(folds: Folds) -> None:
    cfg = config(dropout=0.3)  # dropout draws: each fold from its own RNG state, as alone
    curves = solo_curves(cfg, folds.datasets)
    recorder = Recorder()
    result = train_folds(cfg, folds.datasets, recorder)
    assert [e for e, _ in recorder.history] == list(range(1, EPOCHS + 1))
    for name in ("train_loss", "val_rmse", "val_mae", "val_r2"):
        assert [m[name] for _, m in recorder.history] == pytest.approx(mean_curve(curves, name), rel=1e-12)
    best = int(np.argmin(mean_curve(curves, "val_rmse")))
    assert result.best_epoch == best + 1 and result.stop_reason is StopReason.COMPLETED
    assert [f["val_rmse"] for f in result.folds] == pytest.approx([c[best]["val_rmse"] for c in curves], rel=1e-12)
    assert result.best_metrics["val_rmse"] == pytest.approx(np.mean([f["val_rmse"] for f in result.folds]))
    assert fold_std([f["val_rmse"] for f in result.folds]) == pytest.approx(
        float(np.std([c[best]["val_rmse"] for c in curves])))


def _stop_epoch(curve: Sequence[float], patience: int) -> int:
    """When the solo loop's early stopping ends a curve (min_delta 0); its length when it never does."""
    best, stale = math.inf, 0
    for epoch, value in enumerate(curve, 1):
        best, stale = (value, 0) if value < best else (best, stale + 1)
        if stale >= patience:
            return epoch
    return len(curve)


def test_early_stopping_follows_the_mean_and_stops_every_fold_together(folds: Folds) -> None:
    cfg = config(lr=0.05, epochs=20, patience=2)
    curves = solo_curves(config(lr=0.05, epochs=20), folds.datasets)
    mean = mean_curve(curves, "val_rmse")
    expected = _stop_epoch(mean, 2)
    assert expected < 20  # the mean does stall
    assert any(_stop_epoch([m["val_rmse"] for m in c], 2) != expected for c in curves)  # a fold alone would not
    recorder = Recorder()
    result = train_folds(cfg, folds.datasets, recorder)
    assert result.stop_reason is StopReason.EARLY_STOPPED and result.epochs_run == expected
    assert result.best_epoch == int(np.argmin(mean[:expected])) + 1
    assert [m["val_rmse"] for _, m in recorder.history] == pytest.approx(mean[:expected], rel=1e-12)


class PruneAt(Recorder):
    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        super().report(epoch, metrics)
        return epoch == self.epoch


def test_the_pruner_sees_the_mean_and_prunes_the_whole_trial(folds: Folds) -> None:
    cfg = config()
    mean = mean_curve(solo_curves(cfg, folds.datasets), "val_rmse")
    reporter = PruneAt(3)
    result = train_folds(cfg, folds.datasets, reporter)
    assert [m["val_rmse"] for _, m in reporter.history] == pytest.approx(mean[:3], rel=1e-12)
    assert (result.stop_reason, result.epochs_run, len(result.folds)) == (StopReason.PRUNED, 3, 5)


def test_a_fold_that_diverges_ends_the_trial_as_diverged(folds: Folds) -> None:
    result = train_folds(config(optimizer="sgd", lr=1e6), folds.datasets)
    assert result.stop_reason is StopReason.DIVERGED
    assert result.message.startswith("fold 1: train loss became"), result.message


def test_fused_folds_train_as_their_solo_runs(folds: Folds) -> None:
    # Members differ per trial (lr, dropout, weight decay, patience, seed); the folds' one-hot inputs
    # differ in number (67, 69, 64 ...), so the narrower ones are padded in the stacked model.
    assert len({d.n_features for d in folds.datasets}) > 1
    configs = [config(seed=1, keep_model=True), config(seed=2, lr=0.05, patience=2, dropout=0.2, momentum=0.5),
               config(seed=3, lr=0.01, weight_decay=1e-3, grad_clip=1.0, keep_model=True)]
    solo = [Recorder(), Recorder(), PruneAt(4)]
    alone = [train_folds(c, folds.datasets, r) for c, r in zip(configs, solo, strict=True)]
    fused = [Recorder(), Recorder(), PruneAt(4)]
    together = train_pack(configs, folds, fused)
    for a, b, ra, rb in zip(alone, together, solo, fused, strict=True):
        assert [e for e, _ in rb.history] == [e for e, _ in ra.history]
        for (_, x), (_, y) in zip(ra.history, rb.history, strict=True):
            assert y == pytest.approx(x, rel=1e-4)
        assert (b.best_epoch, b.stop_reason, b.epochs_run) == (a.best_epoch, a.stop_reason, a.epochs_run)
        assert [f["val_rmse"] for f in b.folds] == pytest.approx([f["val_rmse"] for f in a.folds], rel=1e-4)
    assert together[2].stop_reason is StopReason.PRUNED
    for a, b in ((alone[0], together[0]), (alone[2], together[2])):
        assert a.model is not None and b.model is not None  # the first fold's network, at the best mean epoch
        for name, tensor in a.model.state.items():
            assert torch.allclose(b.model.state[name], tensor, rtol=1e-4, atol=1e-5), name


def test_the_kept_model_is_the_first_folds_network(folds: Folds) -> None:
    result = train_folds(config(keep_model=True), folds.datasets)
    assert result.model is not None
    first = folds.datasets[0]
    assert result.model.encoding == first.encoding and result.model.target_mean == first.target_mean
    network = result.model.network()
    with torch.no_grad():
        pred = network(first.x_val).squeeze(-1).double() * first.target_std + first.target_mean
    truth = first.y_val.double() * first.target_std + first.target_mean
    rmse = float((pred - truth).square().mean().sqrt())
    assert rmse == pytest.approx(result.folds[0]["val_rmse"], rel=1e-6)


@pytest.mark.parametrize(("raw", "message"), [
    ({"cv_folds": 1}, "cv_folds: must be an integer >= 2 (the number of folds), got 1"),
    ({"cv_folds": "five"}, "cv_folds: must be a number, got 'five'"),
    ({"cv_folds": 2.5}, "cv_folds: must be an integer, got 2.5"),
    ({"cv_folds": 5, "val_fraction": 0.2}, "cv_folds: give cv_folds or val_fraction, not both"),
])
def test_bad_cv_folds_are_refused_naming_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        cars_config(**raw)
    assert info.value.key == "cv_folds" and str(info.value).startswith(message)


def test_more_folds_than_rows_is_refused() -> None:
    with pytest.raises(DataError, match=r"^data.cv_folds: 94 folds need at least 94 rows; .* has 93$"):
        load_data(cars_config(cv_folds=94))


def test_a_python_loader_with_its_own_split_cannot_be_k_folded(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_data.py").write_text(
        "import numpy as np\n"
        "def split(seed):\n"
        "    x = np.random.default_rng(seed).normal(size=(20, 3)).astype('float32')\n"
        "    return x[:15], x[:15, 0], x[15:], x[15:, 0]\n"
        "def whole(seed):\n"
        "    x = np.random.default_rng(seed).normal(size=(20, 3)).astype('float32')\n"
        "    return x, x[:, 0]\n")
    monkeypatch.chdir(tmp_path)
    whole = load_data(parse_data_config({"python": "my_data:whole", "task": "regression", "cv_folds": 4}, seed=0))
    assert isinstance(whole, Folds) and [len(d.y_val) for d in whole.datasets] == [5, 5, 5, 5]
    with pytest.raises(DataError) as info:
        load_data(parse_data_config({"python": "my_data:split", "task": "regression", "cv_folds": 4}, seed=0))
    assert str(info.value).count("\n") == 0
    assert str(info.value).startswith("data.cv_folds: data.python my_data:split returned a split of its own")
