"""Re-run noise of one configuration on cars93: a single 80/20 split against 5-fold cross-validation.

One fixed, good configuration of the quickstart (its MLP [64, 32], 40 epochs, patience 8; Adam, lr
3e-3, batch 16, dropout 0.1, weight decay 1e-4) is trained RUNS times by the training core, as a
trial would be, and its val_rmse (the best epoch's; with folds, the best mean epoch's mean) recorded:

- ``trial seed``: only the trial's seed changes (initialization, batch order, dropout), the data
  split is the study seed 0's, as when a run re-trains a configuration;
- ``study seed``: the study's seed changes too, so the split (or the folds) is drawn anew.

For each it prints the mean, the coefficient of variation (std / mean) and the median relative
change between consecutive re-runs (|a - b| / mean(a, b)), the figure BENCHMARKS.md quotes as ~11 %.

Usage: python scripts/bench_cv.py [--runs 20] [--folds 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path
import statistics
import time

import torch

from hpsearch.train import build_train_config, parse_data_config, train, train_folds
from hpsearch.train.data import load_data
from hpsearch.train.data.folds import Folds

ROOT = Path(__file__).resolve().parents[1]
DATA = {"csv": str(ROOT / "studies" / "data" / "cars93.csv"), "target": "Price", "task": "regression",
        "drop": ["Model", "Make", "Min.Price", "Max.Price"]}
KNOBS = {"epochs": 40, "patience": 8, "device": "cpu", "optimizer": "adam", "lr": 3e-3, "batch_size": 16,
         "dropout": 0.1, "weight_decay": 1e-4}


def val_rmse(study_seed: int, trial_seed: int, folds: int | None) -> float:
    raw = {**DATA, "cv_folds": folds} if folds else {**DATA, "val_fraction": 0.2}
    data = load_data(parse_data_config(raw, seed=study_seed))
    config = build_train_config({"kind": "mlp", "hidden": [64, 32]}, KNOBS, task="regression", monitor="val_rmse",
                                maximize=False, seed=trial_seed)
    result = train_folds(config, data.datasets) if isinstance(data, Folds) else train(config, data)
    return result.best_metrics["val_rmse"]


def summary(values: list[float]) -> str:
    mean = statistics.fmean(values)
    changes = [abs(a - b) / ((a + b) / 2) for a, b in zip(values, values[1:], strict=False)]
    return (f"mean {mean:.3f}, min {min(values):.3f}, max {max(values):.3f}, "
            f"CV {statistics.pstdev(values) / mean:.1%}, median re-run change {statistics.median(changes):.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for varied in ("trial seed", "study seed"):
        for folds in (None, args.folds):
            start = time.perf_counter()
            values = [val_rmse(run if varied == "study seed" else 0, 1000 + run, folds) for run in range(args.runs)]
            name = f"{folds}-fold CV" if folds else "single split"
            print(f"{varied:10} | {name:12} | {summary(values)} | {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
