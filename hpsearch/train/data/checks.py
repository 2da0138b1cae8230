"""Data that would train to a wrong result, refused before any trial in one line.

An ``inf`` target or feature turns every standardized value into NaN, so every trial diverges and the
study ends "done" with nothing in it; a classification target with one class scores accuracy 1.0
while learning nothing. Missing values are not problems here: tabular targets that are missing drop
their row and missing features are imputed (:mod:`hpsearch.train.data.tabular`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hpsearch.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from hpsearch.train.data import Dataset


def check_frame(frame: pd.DataFrame, target: str, task: str, where: str) -> None:
    """A tabular frame, its rows with a target kept and its dropped columns removed."""
    column = frame[target]
    if task == "classification":
        _two_classes([str(c) for c in column.unique()], f"data.target: column {target!r} of {where}")
    elif _numeric(column):
        _no_inf(column.to_numpy(dtype=np.float64), f"data.target: column {target!r} of {where}", "remove those rows")
    for name in frame.columns:
        if name != target and _numeric(frame[name]):
            _no_inf(frame[name].to_numpy(dtype=np.float64), f"data: feature column {name!r} of {where}",
                    "remove those rows, or the column with data.drop")


def check_arrays(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], task: str, where: str) -> None:
    """Arrays (user or builtin data, split or not): nothing to impute here, so NaN is refused too."""
    for x in xs:
        if x.is_floating_point():
            _finite(x.numpy(), f"{where}: x")
    if task == "classification":
        if any(y.is_floating_point() for y in ys):
            return  # not labels at all: from_arrays says so
        labels = sorted({int(v) for y in ys for v in y.unique().tolist()})
        _two_classes([str(v) for v in labels], f"{where}: y")
    else:
        for y in ys:
            _finite(y.double().numpy(), f"{where}: y")


def check_dataset(data: Dataset, where: str) -> None:
    """A loaded dataset, however it was made (a user's loader may return one as it is)."""
    check_arrays((data.x_train, data.x_val), (data.y_train, data.y_val), data.task, where)
    if data.task == "classification" and data.n_outputs < 2:
        raise DataError(f"{where}: classification needs at least 2 classes, the data has {data.n_outputs}")


def _numeric(column: pd.Series) -> bool:
    import pandas as pd

    return bool(pd.api.types.is_numeric_dtype(column)) and not pd.api.types.is_bool_dtype(column)


def _no_inf(values: Any, what: str, fix: str) -> None:
    count = int(np.isinf(values).sum())
    if count:
        raise DataError(f"{what} holds inf in {count} row(s), which makes every trial diverge; {fix}")


def _finite(values: Any, what: str) -> None:
    count = int((~np.isfinite(values)).sum())
    if count:
        raise DataError(f"{what} holds {count} value(s) that are NaN or inf, which makes every trial diverge")


def _two_classes(classes: Sequence[str], what: str) -> None:
    if len(classes) < 2:
        held = f"only the class {classes[0]!r}" if classes else "no class"
        raise DataError(f"{what} holds {held}; classification needs at least 2 classes")
