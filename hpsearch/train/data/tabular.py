"""Tabular preprocessing: a pandas frame -> a split :class:`Dataset`.

Numeric columns are median-imputed then standardized, other columns one-hot encoded with a
category for missing values; every statistic comes from the training rows only. Vectorized, so
a frame of millions of rows (``builtin: used_cars``) preprocesses in seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from hpsearch.errors import DataError
from hpsearch.train.data import DataConfig, Dataset
from hpsearch.train.data.tensors import mean_std, split_rows

if TYPE_CHECKING:
    from collections.abc import Callable

MISSING = "<missing>"  # the category imputed for missing categorical values


def from_frame(frame: pd.DataFrame, cfg: DataConfig, augment: Callable[..., Any] | None = None) -> Dataset:
    """Split (by ``cfg.seed``), impute, standardize and one-hot encode. Deterministic for a cfg."""
    frame = frame[frame[cfg.target].notna()].drop(columns=list(cfg.drop)).reset_index(drop=True)
    n = len(frame)
    if n < 2:
        raise DataError(f"{cfg.path} has {n} rows with a target value; at least 2 are needed to split")
    train_rows, val_rows = split_rows(n, cfg.val_fraction, cfg.seed)
    features = frame.drop(columns=[cfg.target])
    x_train, x_val, names = _encode_features(features.iloc[train_rows], features.iloc[val_rows])
    target = frame[cfg.target]
    common: dict[str, Any] = {
        "x_train": torch.from_numpy(x_train),
        "x_val": torch.from_numpy(x_val),
        "task": cfg.task,
        "feature_names": names,
    }
    if cfg.task == "classification":
        labels = pd.Categorical(_as_categories(target))
        y = labels.codes.astype(np.int64)
        return Dataset(
            y_train=torch.from_numpy(y[train_rows]),
            y_val=torch.from_numpy(y[val_rows]),
            n_outputs=len(labels.categories),
            classes=tuple(str(c) for c in labels.categories),
            **common,
        )
    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        raise DataError(
            f"target column {cfg.target!r} must be numeric for regression, got dtype {target.dtype}"
        )
    y = target.to_numpy(dtype=np.float64)
    mean, std = mean_std(y[train_rows])
    return Dataset(
        y_train=torch.from_numpy(((y[train_rows] - mean) / std).astype(np.float32)),
        y_val=torch.from_numpy(((y[val_rows] - mean) / std).astype(np.float32)),
        n_outputs=1,
        target_mean=mean,
        target_std=std,
        **common,
    )


def _encode_features(train: pd.DataFrame, val: pd.DataFrame) -> tuple[Any, Any, tuple[str, ...]]:
    """Numeric columns: median-imputed then standardized; others: one-hot with a missing category.

    Every statistic comes from ``train``; a validation category never seen in training encodes as zeros.
    """
    train_cols: list[Any] = []
    val_cols: list[Any] = []
    names: list[str] = []
    for col in train.columns:
        if pd.api.types.is_numeric_dtype(train[col]) and not pd.api.types.is_bool_dtype(train[col]):
            tr = train[col].to_numpy(dtype=np.float64)
            va = val[col].to_numpy(dtype=np.float64)
            median = float(np.nanmedian(tr)) if np.isfinite(tr).any() else 0.0
            tr, va = np.where(np.isnan(tr), median, tr), np.where(np.isnan(va), median, va)
            mean, std = mean_std(tr)
            train_cols.append(((tr - mean) / std)[:, None])
            val_cols.append(((va - mean) / std)[:, None])
            names.append(col)
        else:
            tr, va = _as_categories(train[col]), _as_categories(val[col])
            categories = sorted(set(tr))
            train_cols.append(_one_hot(tr, categories))
            val_cols.append(_one_hot(va, categories))
            names += [f"{col}={c}" for c in categories]
    if not names:
        raise DataError("no feature columns are left after removing the target and the drop columns")
    x_train = np.concatenate(train_cols, axis=1).astype(np.float32)
    x_val = np.concatenate(val_cols, axis=1).astype(np.float32)
    return x_train, x_val, tuple(names)


def _one_hot(values: Any, categories: list[str]) -> Any:
    codes = pd.Index(categories).get_indexer(values)  # -1 for a category unseen in training
    out = np.zeros((len(values), len(categories)), dtype=np.float32)
    seen = codes >= 0
    out[np.flatnonzero(seen), codes[seen]] = 1.0
    return out


def _as_categories(column: pd.Series) -> Any:
    """The column's values as strings, with ``MISSING`` for missing ones."""
    missing = column.isna().to_numpy()
    values = column.astype(object).astype(str).to_numpy(dtype=object)
    values[missing] = MISSING
    return values
