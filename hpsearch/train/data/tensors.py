"""Arrays -> a split :class:`Dataset`: the path of image, token and user data (tabular data goes
through :mod:`hpsearch.train.data.tabular`)."""

from __future__ import annotations

from collections.abc import Callable
import math
from typing import Any

import numpy as np
import torch

from hpsearch.errors import DataError
from hpsearch.train.data import Dataset
from hpsearch.train.data.checks import check_arrays
from hpsearch.train.data.folds import Folds, fold_rows


def split_rows(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted training and validation row indices; the split depends only on ``n``, the fraction and ``seed``."""
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def mean_std(values: Any) -> tuple[float, float]:
    mean, std = float(values.mean()), float(values.std())
    return mean, (std if std > 0 and math.isfinite(std) else 1.0)


def from_arrays(
    x_train: Any,
    y_train: Any,
    x_val: Any,
    y_val: Any,
    task: str,
    *,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    where: str = "the data",
) -> Dataset:
    """A Dataset from numpy arrays or tensors. Integer ``x`` are token ids; floats become float32.

    Classification labels must be integers ``0 .. k-1``; regression targets are standardized with
    the training rows' mean and std (metrics are reported in the original units).
    """
    xs = [_tensor(x, f"{where}: x") for x in (x_train, x_val)]
    ys = [_tensor(y, f"{where}: y").reshape(-1) for y in (y_train, y_val)]
    for x, y, part in zip(xs, ys, ("train", "validation"), strict=True):
        if x.ndim < 2 or len(x) != len(y) or len(x) == 0:
            raise DataError(f"{where}: {part} x {list(x.shape)} and y {list(y.shape)} must be non-empty with one row per label")
    if xs[0].shape[1:] != xs[1].shape[1:]:
        raise DataError(f"{where}: train and validation rows differ in shape: {list(xs[0].shape[1:])} vs {list(xs[1].shape[1:])}")
    check_arrays(xs, ys, task, where)
    tokens = not xs[0].is_floating_point() and xs[0].dtype != torch.bool  # bool x are 0/1 features
    vocab = int(max(x.max() for x in xs)) + 1 if tokens else 0
    x_train_t, x_val_t = (x.long() if tokens else x.float() for x in xs)
    names = tuple(f"x{i}" for i in range(x_train_t[0].numel()))
    if task == "classification":
        if ys[0].is_floating_point() or int(min(y.min() for y in ys)) < 0:
            raise DataError(f"{where}: classification labels must be integers 0 .. k-1")
        k = int(max(y.max() for y in ys)) + 1
        return Dataset(x_train_t, ys[0].long(), x_val_t, ys[1].long(), task, names, k,
                       classes=tuple(str(i) for i in range(k)), vocab_size=vocab, augment=augment)
    mean, std = mean_std(ys[0].double().numpy())
    y_train_t, y_val_t = (((y.double() - mean) / std).float() for y in ys)
    return Dataset(x_train_t, y_train_t, x_val_t, y_val_t, task, names, 1, mean, std,
                   vocab_size=vocab, augment=augment)


def split_arrays(x: Any, y: Any, task: str, val_fraction: float, seed: int, **kw: Any) -> Dataset:
    """Split ``x``/``y`` by ``seed`` (the same rule as tabular data), then :func:`from_arrays`."""
    x, y = _tensor(x, "x"), _tensor(y, "y")
    if len(x) < 2 or len(x) != len(y):
        raise DataError(f"{kw.get('where', 'the data')}: x {list(x.shape)} and y {list(y.shape)} need >= 2 matching rows")
    train_rows, val_rows = (torch.from_numpy(r) for r in split_rows(len(x), val_fraction, seed))
    return from_arrays(x[train_rows], y[train_rows], x[val_rows], y[val_rows], task, **kw)


def fold_arrays(x: Any, y: Any, task: str, k: int, seed: int, **kw: Any) -> Folds:
    """The ``k`` folds of ``x``/``y`` (:func:`~hpsearch.train.data.folds.fold_rows`), each through
    :func:`from_arrays`, so a regression target is standardized by its own training rows."""
    x, y = _tensor(x, "x"), _tensor(y, "y")
    where = kw.get("where", "the data")
    if len(x) != len(y):
        raise DataError(f"{where}: x {list(x.shape)} and y {list(y.shape)} need matching rows")
    splits = fold_rows(len(x), k, seed, where)
    return Folds(tuple(from_arrays(x[torch.from_numpy(train)], y[torch.from_numpy(train)],
                                   x[torch.from_numpy(val)], y[torch.from_numpy(val)], task, **kw)
                       for train, val in splits))


def _tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what} must be a numeric array, got {type(value).__name__}: {exc}") from None
