"""The fitted preprocessing of tabular data: what turns a frame's rows into the network's inputs.

Fitted on the training rows once (:meth:`TabularEncoding.fit`), applied to the training and
validation rows, and kept with a trained model so that new rows (``hpsearch predict``) are encoded
exactly as the rows it was trained on: numeric columns median-imputed then standardized, other
columns one-hot with a category for missing values, in the training frame's column order.
Round-trips through plain data (:meth:`to_dict`, :meth:`from_dict`) so a checkpoint needs no pickle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hpsearch.errors import DataError
from hpsearch.train.data.tensors import mean_std

MISSING = "<missing>"  # the category imputed for missing categorical values


@dataclass(frozen=True)
class NumericColumn:
    name: str
    median: float  # imputed for missing values, before standardizing
    mean: float
    std: float


@dataclass(frozen=True)
class CategoricalColumn:
    name: str
    categories: tuple[str, ...]  # one input each, in this order; an unseen category encodes as zeros


Column = NumericColumn | CategoricalColumn


@dataclass(frozen=True)
class TabularEncoding:
    """Feature columns in input order, and the columns a frame may carry besides (target, dropped ones)."""

    columns: tuple[Column, ...]
    ignored: tuple[str, ...] = ()

    @classmethod
    def fit(cls, train: pd.DataFrame, ignored: Sequence[str] = ()) -> TabularEncoding:
        """Every statistic from ``train``'s rows; its columns become the features, in its order."""
        columns: list[Column] = []
        for col in train.columns:
            if _numeric(train[col]):
                values = train[col].to_numpy(dtype=np.float64)
                median = float(np.nanmedian(values)) if np.isfinite(values).any() else 0.0
                mean, std = mean_std(np.where(np.isnan(values), median, values))
                columns.append(NumericColumn(str(col), median, mean, std))
            else:
                columns.append(CategoricalColumn(str(col), tuple(sorted(set(as_categories(train[col]))))))
        if not columns:
            raise DataError("no feature columns are left after removing the target and the drop columns")
        return cls(tuple(columns), tuple(ignored))

    @property
    def feature_names(self) -> tuple[str, ...]:
        """One name per input: the column, or ``column=category`` for a one-hot input."""
        names: list[str] = []
        for c in self.columns:
            names += [c.name] if isinstance(c, NumericColumn) else [f"{c.name}={v}" for v in c.categories]
        return tuple(names)

    def check_columns(self, columns: Sequence[str], where: str) -> None:
        """A frame must carry every feature column, and nothing but them, the target and dropped columns."""
        names = [c.name for c in self.columns]
        missing = [n for n in names if n not in columns]
        if missing:
            raise DataError(f"{where} lacks the column(s) {', '.join(missing)}; the model reads: {', '.join(names)}")
        extra = [c for c in columns if c not in names and c not in self.ignored]
        if extra:
            raise DataError(f"{where} has column(s) the model was not trained on: {', '.join(extra)}; "
                            f"allowed: {', '.join([*names, *self.ignored])}")

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The float32 inputs of ``frame``'s rows, ``(rows, len(feature_names))``."""
        parts: list[np.ndarray] = []
        for c in self.columns:
            if isinstance(c, NumericColumn):
                try:
                    values = frame[c.name].to_numpy(dtype=np.float64)
                except (TypeError, ValueError) as exc:
                    raise DataError(f"column {c.name!r} must be numeric, as when the model was trained ({exc})") from None
                values = np.where(np.isnan(values), c.median, values)
                parts.append(((values - c.mean) / c.std)[:, None])
            else:
                parts.append(one_hot(as_categories(frame[c.name]), c.categories))
        return np.concatenate(parts, axis=1).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        columns = [{"name": c.name, "median": c.median, "mean": c.mean, "std": c.std} if isinstance(c, NumericColumn)
                   else {"name": c.name, "categories": list(c.categories)} for c in self.columns]
        return {"columns": columns, "ignored": list(self.ignored)}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> TabularEncoding:
        columns: list[Column] = [
            CategoricalColumn(c["name"], tuple(c["categories"])) if "categories" in c
            else NumericColumn(c["name"], float(c["median"]), float(c["mean"]), float(c["std"]))
            for c in raw["columns"]]
        return cls(tuple(columns), tuple(raw.get("ignored", ())))


def _numeric(column: pd.Series) -> bool:
    return bool(pd.api.types.is_numeric_dtype(column)) and not pd.api.types.is_bool_dtype(column)


def one_hot(values: Any, categories: Sequence[str]) -> np.ndarray:
    codes = pd.Index(list(categories)).get_indexer(values)  # -1 for a category unseen in training
    out = np.zeros((len(values), len(categories)), dtype=np.float32)
    seen = codes >= 0
    out[np.flatnonzero(seen), codes[seen]] = 1.0
    return out


def as_categories(column: pd.Series) -> Any:
    """The column's values as strings, with ``MISSING`` for missing ones."""
    missing = column.isna().to_numpy()
    values = column.astype(object).astype(str).to_numpy(dtype=object)
    values[missing] = MISSING
    return values
