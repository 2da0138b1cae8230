"""Tabular data: the ``data:`` section, a cheap pre-flight check, and the full load.

Only ``load_dataset`` imports torch (and pandas is imported when a file is read), so parsing and
checking a study stays fast. Preprocessing statistics are fitted on the training split only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
import math
import os
from typing import TYPE_CHECKING, Any

from hpsearch.errors import ConfigError, DataError, did_you_mean, one_of
from hpsearch.train._validate import as_float, as_int, check_keys
from hpsearch.train.metrics import TASKS

if TYPE_CHECKING:
    import pandas as pd
    import torch

_KEYS = ("csv", "parquet", "target", "task", "drop", "val_fraction")
MISSING = "<missing>"  # the category imputed for missing categorical values


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how to split it. Hashable, so workers can cache loaded datasets by it."""

    csv: str | None
    parquet: str | None
    target: str
    task: str
    drop: tuple[str, ...] = ()
    val_fraction: float = 0.2
    seed: int = 0

    @property
    def path(self) -> str:
        return self.csv if self.csv is not None else str(self.parquet)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A preprocessed, split dataset held as CPU tensors.

    ``x_*`` are float32 ``(n, n_features)``. ``y_*`` are float32 ``(n,)`` standardized targets for
    regression (``target_mean``/``target_std`` map them back to original units) and int64 class
    indices into ``classes`` for classification.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    task: str
    feature_names: tuple[str, ...]
    n_outputs: int
    target_mean: float = 0.0
    target_std: float = 1.0
    classes: tuple[str, ...] = ()

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1])


def parse_data_config(raw: Mapping[str, Any], *, seed: int) -> DataConfig:
    """Validate the ``data:`` section. Error keys are relative to the section ("" for the whole of it)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("", f"the data section must be a mapping, got {raw!r}")
    check_keys(raw, _KEYS)
    sources = [k for k in ("csv", "parquet") if raw.get(k) is not None]
    if len(sources) != 1:
        got = "both" if sources else "neither"
        raise ConfigError("", f"give exactly one of csv, parquet (got {got})")
    source = sources[0]
    if not isinstance(raw[source], str) or not raw[source]:
        raise ConfigError(source, f"must be a file path, got {raw[source]!r}")
    target = raw.get("target")
    if not isinstance(target, str) or not target:
        raise ConfigError("target", f"must name the target column, got {target!r}")
    task = raw.get("task")
    if task not in TASKS:
        hint = did_you_mean(task, TASKS) if isinstance(task, str) else ""
        raise ConfigError("task", f"unknown task {task!r}{hint}; {one_of(TASKS)}")
    drop = raw.get("drop", ())
    if isinstance(drop, str):
        drop = (drop,)
    if not isinstance(drop, (list, tuple)) or not all(isinstance(c, str) for c in drop):
        raise ConfigError("drop", f"must be a list of column names, got {drop!r}")
    val_fraction = as_float("val_fraction", raw.get("val_fraction", 0.2))
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError("val_fraction", f"must be in (0, 1), got {raw.get('val_fraction')!r}")
    return DataConfig(
        csv=raw[source] if source == "csv" else None,
        parquet=raw[source] if source == "parquet" else None,
        target=target,
        task=task,
        drop=tuple(drop),
        val_fraction=val_fraction,
        seed=as_int("seed", seed),
    )


def check_data(cfg: DataConfig) -> None:
    """Check the file exists and has the named columns, reading only its header or schema."""
    path = cfg.path
    if not os.path.isfile(path):
        raise DataError(f"data file {path} does not exist")
    try:
        if cfg.csv is not None:
            import pandas as pd

            columns = [str(c) for c in pd.read_csv(path, nrows=0).columns]
        else:
            import pyarrow.parquet as pq

            columns = list(pq.read_schema(path).names)
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        kind = "CSV" if cfg.csv is not None else "Parquet"
        raise DataError(f"cannot read {path} as {kind}: {exc}") from exc
    _check_columns(cfg, columns)


def _check_columns(cfg: DataConfig, columns: list[str]) -> None:
    listing = ", ".join(columns)
    if cfg.target not in columns:
        hint = did_you_mean(cfg.target, columns)
        raise DataError(f"target column {cfg.target!r} is not in {cfg.path}{hint}; columns: {listing}")
    for col in cfg.drop:
        if col not in columns:
            hint = did_you_mean(col, columns)
            raise DataError(f"drop column {col!r} is not in {cfg.path}{hint}; columns: {listing}")
    if cfg.target in cfg.drop:
        raise DataError(f"the target column {cfg.target!r} is also listed under drop")


def _read(cfg: DataConfig) -> pd.DataFrame:
    import pandas as pd

    check_data(cfg)
    frame = pd.read_csv(cfg.path) if cfg.csv is not None else pd.read_parquet(cfg.path)
    frame.columns = [str(c) for c in frame.columns]
    return frame


def load_dataset(cfg: DataConfig) -> Dataset:
    """Read, split (by ``cfg.seed``), impute, standardize and one-hot encode. Deterministic for a cfg."""
    import numpy as np
    import torch

    frame = _read(cfg)
    frame = frame[frame[cfg.target].notna()].drop(columns=list(cfg.drop)).reset_index(drop=True)
    n = len(frame)
    if n < 2:
        raise DataError(f"{cfg.path} has {n} rows with a target value; at least 2 are needed to split")
    n_val = min(max(1, round(n * cfg.val_fraction)), n - 1)
    order = np.random.default_rng(cfg.seed).permutation(n)
    train_rows, val_rows = np.sort(order[n_val:]), np.sort(order[:n_val])

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
        labels = target.astype(str).to_numpy()
        classes = tuple(sorted(set(labels)))
        index = {c: i for i, c in enumerate(classes)}
        y = np.array([index[v] for v in labels], dtype=np.int64)
        return Dataset(
            y_train=torch.from_numpy(y[train_rows]),
            y_val=torch.from_numpy(y[val_rows]),
            n_outputs=len(classes),
            classes=classes,
            **common,
        )
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
        raise DataError(
            f"target column {cfg.target!r} must be numeric for regression, got dtype {target.dtype}"
        )
    y = target.to_numpy(dtype=np.float64)
    mean, std = _mean_std(y[train_rows])
    return Dataset(
        y_train=torch.from_numpy(((y[train_rows] - mean) / std).astype(np.float32)),
        y_val=torch.from_numpy(((y[val_rows] - mean) / std).astype(np.float32)),
        n_outputs=1,
        target_mean=mean,
        target_std=std,
        **common,
    )


def _mean_std(values: Any) -> tuple[float, float]:
    mean, std = float(values.mean()), float(values.std())
    return mean, (std if std > 0 and math.isfinite(std) else 1.0)


def _encode_features(train: pd.DataFrame, val: pd.DataFrame) -> tuple[Any, Any, tuple[str, ...]]:
    """Numeric columns: median-imputed then standardized; others: one-hot with a missing category.

    Every statistic comes from ``train``; a validation category never seen in training encodes as zeros.
    """
    import numpy as np
    import pandas as pd

    train_cols: list[Any] = []
    val_cols: list[Any] = []
    names: list[str] = []
    for col in train.columns:
        if pd.api.types.is_numeric_dtype(train[col]) and not pd.api.types.is_bool_dtype(train[col]):
            tr = train[col].to_numpy(dtype=np.float64)
            va = val[col].to_numpy(dtype=np.float64)
            median = float(np.nanmedian(tr)) if np.isfinite(tr).any() else 0.0
            tr, va = np.where(np.isnan(tr), median, tr), np.where(np.isnan(va), median, va)
            mean, std = _mean_std(tr)
            train_cols.append(((tr - mean) / std)[:, None])
            val_cols.append(((va - mean) / std)[:, None])
            names.append(col)
        else:
            tr, va = _as_categories(train[col]), _as_categories(val[col])
            categories = sorted(set(tr))
            train_cols.append((tr[:, None] == np.array(categories)[None, :]).astype(np.float64))
            val_cols.append((va[:, None] == np.array(categories)[None, :]).astype(np.float64))
            names += [f"{col}={c}" for c in categories]
    if not names:
        raise DataError("no feature columns are left after removing the target and the drop columns")
    x_train = np.concatenate(train_cols, axis=1).astype(np.float32)
    x_val = np.concatenate(val_cols, axis=1).astype(np.float32)
    return x_train, x_val, tuple(names)


def _as_categories(column: pd.Series) -> Any:
    import numpy as np

    values = column.astype(object)
    return np.array([MISSING if _is_missing(v) else str(v) for v in values], dtype=object)


def _is_missing(value: Any) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))
