"""The ``data:`` section, a cheap pre-flight check, and the full load.

Sources (exactly one): ``csv: PATH`` or ``parquet: PATH`` (tabular, with ``target``), ``builtin:
NAME`` (see :mod:`hpsearch.train.data.datasets`) or ``python: "pkg.module:function"`` (see
:mod:`hpsearch.train.data.user`). Only ``load_dataset`` imports torch (and pandas is imported when
a file is read), so parsing and checking a study stays fast. Preprocessing statistics are fitted on
the training split only.

``cv_folds: k`` replaces the single split (``val_fraction``) by k folds (:mod:`hpsearch.train.data.folds`),
for files, builtins and a ``python`` loader that returns ``(x, y)``; :func:`load_data` then gives
:class:`~hpsearch.train.data.folds.Folds`, and :func:`load_dataset` the first fold.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
import math
import os
from typing import TYPE_CHECKING, Any

from hpsearch.errors import ConfigError, DataError, did_you_mean, one_of
from hpsearch.train.data.datasets import CARS93, builtins
from hpsearch.train.imports import check_import_path, freeze, load_callable
from hpsearch.train.metrics import TASKS
from hpsearch.values import as_choice, as_float, as_int, check_keys

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from hpsearch.train.data.encoding import TabularEncoding
    from hpsearch.train.data.folds import Folds

SOURCES = ("csv", "parquet", "builtin", "python")
_FILE_KEYS = ("csv", "parquet", "target", "task", "drop", "val_fraction", "cv_folds")


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how to split it. Hashable, so workers can cache loaded datasets by it.

    ``options`` holds a builtin's options (``rows``, ``augment``, ...) or the keyword arguments of a
    user's ``python`` loader, as sorted ``(name, value)`` pairs.
    """

    csv: str | None
    parquet: str | None
    target: str
    task: str
    drop: tuple[str, ...] = ()
    val_fraction: float = 0.2
    seed: int = 0
    builtin: str | None = None
    python: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    cv_folds: int | None = None  # k-fold cross-validation instead of one split (see hpsearch.train.data.folds)

    @property
    def path(self) -> str:
        """The file read, or a description of where the data comes from (for messages)."""
        if self.builtin == "cars93":
            return str(CARS93)
        if self.builtin is not None:
            return f"builtin {self.builtin}"
        if self.python is not None:
            return self.python
        return self.csv if self.csv is not None else str(self.parquet)

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A preprocessed, split dataset held as CPU tensors.

    ``x_*`` are float32 ``(n, n_features)`` for tabular data, float32 ``(n, channels, height, width)``
    for images and int64 token ids ``(n, length)`` for sequences (then ``vocab_size`` > 0). ``y_*``
    are float32 ``(n,)`` standardized targets for regression (``target_mean``/``target_std`` map them
    back to original units) and int64 class indices into ``classes`` for classification.
    ``augment(batch, generator)``, when set, transforms each training batch (never validation data).
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
    vocab_size: int = 0
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None
    encoding: TabularEncoding | None = None  # tabular data: how a frame's rows became ``x`` (None: arrays)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One example's shape: ``(n_features,)``, ``(channels, height, width)`` or ``(length,)``."""
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def n_features(self) -> int:
        return math.prod(self.input_shape)


def parse_data_config(raw: Mapping[str, Any], *, seed: int) -> DataConfig:
    """Validate the ``data:`` section. Error keys are relative to the section ("" for the whole of it)."""
    if not isinstance(raw, Mapping):
        raise ConfigError("", f"the data section must be a mapping, got {raw!r}")
    sources = [k for k in SOURCES if raw.get(k) is not None]
    if len(sources) != 1:
        if not sources:  # a misspelt source is the likeliest cause
            check_keys(raw, (*_FILE_KEYS, "builtin", "python"))
        got = ", ".join(sources) if sources else "none"
        raise ConfigError("", f"give exactly one of csv, parquet, builtin, python (got {got})")
    seed = as_int("seed", seed)
    if sources[0] == "builtin":
        return _builtin_config(raw, seed)
    if sources[0] == "python":
        return _python_config(raw, seed)
    return _file_config(raw, sources[0], seed)


def _file_config(raw: Mapping[str, Any], source: str, seed: int) -> DataConfig:
    check_keys(raw, _FILE_KEYS)
    if not isinstance(raw[source], str) or not raw[source]:
        raise ConfigError(source, f"must be a file path, got {raw[source]!r}")
    target = raw.get("target")
    if not isinstance(target, str) or not target:
        raise ConfigError("target", f"must name the target column, got {target!r}")
    return DataConfig(
        csv=raw[source] if source == "csv" else None,
        parquet=raw[source] if source == "parquet" else None,
        target=target,
        task=_task(raw.get("task"), TASKS),
        drop=_drop(raw.get("drop", ())),
        val_fraction=_val_fraction(raw),
        seed=seed,
        cv_folds=_cv_folds(raw),
    )


def _builtin_config(raw: Mapping[str, Any], seed: int) -> DataConfig:
    name = as_choice("builtin", raw["builtin"], builtins(), what="builtin data set")
    spec = builtins()[name]
    tabular_keys = ("target", "drop") if spec.tabular else ()
    check_keys(raw, ("builtin", "task", "val_fraction", "cv_folds", *tabular_keys, *spec.options))
    target = raw.get("target", spec.target)
    if not isinstance(target, str) or not target:
        raise ConfigError("target", f"must name the target column, got {target!r}")
    options = {k: opt.parse(k, raw.get(k, opt.default)) for k, opt in spec.options.items()}
    return DataConfig(
        csv=None,
        parquet=None,
        target=target,
        task=_task(raw.get("task", spec.tasks[0]), spec.tasks, f" for builtin {name}"),
        drop=_drop(raw.get("drop", spec.drop)),
        val_fraction=_val_fraction(raw),
        seed=seed,
        builtin=name,
        options=tuple(sorted(options.items())),
        cv_folds=_cv_folds(raw),
    )


def _python_config(raw: Mapping[str, Any], seed: int) -> DataConfig:
    path = check_import_path("python", raw["python"])
    load_callable("python", path)  # a wrong path fails when the study is checked, not in a trial
    options = {str(k): freeze(v) for k, v in raw.items() if k not in ("python", "task", "val_fraction", "cv_folds")}
    return DataConfig(
        csv=None,
        parquet=None,
        target="label",
        task=_task(raw.get("task"), TASKS),
        val_fraction=_val_fraction(raw),
        seed=seed,
        python=path,
        options=tuple(sorted(options.items())),
        cv_folds=_cv_folds(raw),
    )


def _task(task: Any, allowed: tuple[str, ...], where: str = "") -> str:
    if task is None:
        raise ConfigError("task", f"is required{where}: say what the target is; {one_of(allowed)}")
    if task not in allowed:
        hint = did_you_mean(task, allowed) if isinstance(task, str) else ""
        raise ConfigError("task", f"unknown task {task!r}{where}{hint}; {one_of(allowed)}")
    return str(task)


def _drop(drop: Any) -> tuple[str, ...]:
    if isinstance(drop, str):
        drop = (drop,)
    if not isinstance(drop, (list, tuple)) or not all(isinstance(c, str) for c in drop):
        raise ConfigError("drop", f"must be a list of column names, got {drop!r}")
    return tuple(drop)


def _val_fraction(raw: Mapping[str, Any]) -> float:
    val_fraction = as_float("val_fraction", raw.get("val_fraction", 0.2))
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError("val_fraction", f"must be in (0, 1), got {raw.get('val_fraction')!r}")
    return val_fraction


def _cv_folds(raw: Mapping[str, Any]) -> int | None:
    if raw.get("cv_folds") is None:
        return None
    if raw.get("val_fraction") is not None:
        raise ConfigError("cv_folds", "give cv_folds or val_fraction, not both: with cv_folds each fold "
                                      "validates on 1/cv_folds of the rows")
    k = as_int("cv_folds", raw["cv_folds"])
    if k < 2:
        raise ConfigError("cv_folds", f"must be an integer >= 2 (the number of folds), got {raw['cv_folds']!r}")
    return k


def check_data(cfg: DataConfig) -> None:
    """Check the data can be found and has the named columns, reading at most a header or schema."""
    if cfg.builtin is not None:
        spec = builtins()[cfg.builtin]
        if spec.columns is not None:
            _check_columns(cfg, list(spec.columns()))
        return
    if cfg.python is not None:
        return  # its import was checked when the section was parsed
    path = cfg.path
    field = "data.csv" if cfg.csv is not None else "data.parquet"
    if os.path.isdir(path):
        raise DataError(f"{field}: {path} is a directory; name the data file in it")
    if not os.path.isfile(path):
        raise DataError(f"{field}: data file {path} does not exist")
    if cfg.csv is not None:
        _check_text(path)
    try:
        if cfg.csv is not None:
            import pandas as pd

            first: list[Any] = list(pd.read_csv(path, nrows=1, header=None).iloc[0]) if os.path.getsize(path) else []
            header = [str(c) for c in first if not pd.isna(c)]  # empty names become Unnamed: N, each its own
            twice = sorted({c for c in header if header.count(c) > 1})
            if twice:  # pandas would rename the second to NAME.1 and train on the wrong one
                raise DataError(f"{field}: column {twice[0]!r} appears more than once in the header of {path}; "
                                "give each column its own name")
            columns = [str(c) for c in pd.read_csv(path, nrows=0).columns]
        else:
            import pyarrow.parquet as pq

            columns = list(pq.read_schema(path).names)
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        kind = "CSV" if cfg.csv is not None else "Parquet"
        raise DataError(f"{field}: cannot read {path} as {kind}: {exc}") from exc
    _check_columns(cfg, columns)


def _check_text(path: str) -> None:
    """A CSV is text: NUL bytes mean a binary file (or UTF-16), which pandas would read as one odd column."""
    try:
        with open(path, "rb") as file:
            head = file.read(1 << 16)
    except OSError as exc:
        raise DataError(f"data.csv: cannot read {path}: {exc.strerror}") from None
    if b"\x00" in head:
        raise DataError(f"data.csv: {path} is not a text CSV file (it holds NUL bytes); save it as UTF-8 CSV")


def _check_columns(cfg: DataConfig, columns: list[str]) -> None:
    listing = _listing(columns)
    if cfg.target not in columns:
        hint = did_you_mean(cfg.target, columns)
        raise DataError(f"data.target: target column {cfg.target!r} is not in {cfg.path}{hint}; columns: {listing}")
    for col in cfg.drop:
        if col not in columns:
            hint = did_you_mean(col, columns)
            raise DataError(f"data.drop: drop column {col!r} is not in {cfg.path}{hint}; columns: {listing}")
    if cfg.target in cfg.drop:
        raise DataError(f"data.drop: the target column {cfg.target!r} is also listed under drop")


def _listing(columns: list[str], most: int = 30) -> str:
    """Column names for a message: unprintable ones quoted, a long list cut (a binary file read as CSV)."""
    shown = [c if c.isprintable() else repr(c) for c in columns[:most]]
    return ", ".join(shown) + (f", ... ({len(columns) - most} more)" if len(columns) > most else "")


def _read(cfg: DataConfig) -> pd.DataFrame:
    import pandas as pd

    check_data(cfg)
    frame = pd.read_csv(cfg.path) if cfg.csv is not None else pd.read_parquet(cfg.path)
    frame.columns = [str(c) for c in frame.columns]
    return frame


def load_dataset(cfg: DataConfig) -> Dataset:
    """Load, split (by ``cfg.seed``) and preprocess the data. Deterministic for a cfg.

    With ``cv_folds``, the first fold (:func:`load_data` gives them all).
    """
    from hpsearch.train.data.folds import Folds

    data = load_data(cfg)
    return data.datasets[0] if isinstance(data, Folds) else data


def load_data(cfg: DataConfig) -> Dataset | Folds:
    """What trials train on: the split Dataset, or with ``cv_folds`` the :class:`Folds`. Deterministic for a cfg."""
    from hpsearch.train.data import tensors

    if cfg.python is not None:
        from hpsearch.train.data.user import load_user_data

        return load_user_data(cfg)
    if cfg.builtin is None:
        return _from_frame(_read(cfg), cfg)
    spec, options = builtins()[cfg.builtin], dict(cfg.options)
    if spec.frame is not None:
        frame = spec.frame(options, cfg.seed)
        _check_columns(cfg, [str(c) for c in frame.columns])
        return _from_frame(frame, cfg)
    assert spec.arrays is not None  # BuiltinSpec guarantees one of frame, arrays
    x, y = spec.arrays(options, cfg.seed)
    where = f"builtin {cfg.builtin}"
    if cfg.cv_folds is not None:
        return tensors.fold_arrays(x, y, cfg.task, cfg.cv_folds, cfg.seed, augment=_augment(options), where=where)
    return tensors.split_arrays(x, y, cfg.task, cfg.val_fraction, cfg.seed, augment=_augment(options), where=where)


def _from_frame(frame: pd.DataFrame, cfg: DataConfig) -> Dataset | Folds:
    from hpsearch.train.data import tabular

    return tabular.from_frame(frame, cfg) if cfg.cv_folds is None else tabular.frame_folds(frame, cfg)


def _augment(options: Mapping[str, Any]) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None:
    if options.get("augment", "none") == "none":
        return None
    from hpsearch.train.data.datasets.digits import random_shift

    return random_shift(options["max_shift"])
