"""Shared helpers for the training-core tests (a unique module name, so it cannot clash on sys.path)."""

from __future__ import annotations

from pathlib import Path

import torch

from hpsearch.train import DataConfig, Dataset, parse_data_config

CARS = Path(__file__).resolve().parents[2] / "studies" / "data" / "cars93.csv"
CARS_DROP = ["Model", "Make", "Min.Price", "Max.Price"]


def cars_config(seed: int = 0, **overrides: object) -> DataConfig:
    raw = {"csv": str(CARS), "target": "Price", "task": "regression", "drop": CARS_DROP, **overrides}
    return parse_data_config(raw, seed=seed)


def synthetic_regression(n: int = 200, n_features: int = 5, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_features, generator=g)
    w = torch.randn(n_features, generator=g)
    y = x @ w + 0.1 * torch.randn(n, generator=g)
    cut = int(n * 0.8)
    return Dataset(
        x_train=x[:cut],
        y_train=y[:cut],
        x_val=x[cut:],
        y_val=y[cut:],
        task="regression",
        feature_names=tuple(f"x{i}" for i in range(n_features)),
        n_outputs=1,
    )


def synthetic_classification(n: int = 200, seed: int = 0) -> Dataset:
    """Two well separated Gaussian blobs in 4 dimensions."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 4, generator=g) + 3.0 * (labels[:, None].float() * 2 - 1)
    cut = int(n * 0.8)
    return Dataset(
        x_train=x[:cut],
        y_train=labels[:cut],
        x_val=x[cut:],
        y_val=labels[cut:],
        task="classification",
        feature_names=("a", "b", "c", "d"),
        n_outputs=2,
        classes=("neg", "pos"),
    )
