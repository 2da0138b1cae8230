"""Built-in data sets, by name: ``data: {builtin: NAME, ...}``.

Tabular ones (``cars93``, ``used_cars``) yield a pandas frame that goes through the same
preprocessing as a CSV file (so ``target`` and ``drop`` apply); the others (``digits``,
``is_sorted``) yield tensors directly. Importing this package does not import torch or pandas.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpsearch.errors import ConfigError, one_of
from hpsearch.values import as_int

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

CARS93 = Path(__file__).resolve().parent / "cars93.csv"


@dataclass(frozen=True)
class Option:
    """A data option: its default and a parser ``parse(key, raw) -> value`` that raises ConfigError."""

    default: Any
    parse: Callable[[str, Any], Any]


@dataclass(frozen=True)
class BuiltinSpec:
    """A built-in data set.

    Exactly one of ``frame`` (tabular: ``frame(options, seed) -> DataFrame``) and ``arrays``
    (``arrays(options, seed) -> (x, y)`` numpy arrays, images float32 or token ids int64) is set.
    ``tasks[0]`` is the default task; ``target``/``drop``/``columns`` describe a tabular frame.
    """

    name: str
    tasks: tuple[str, ...]
    options: Mapping[str, Option] = field(default_factory=dict)
    frame: Callable[[Mapping[str, Any], int], pd.DataFrame] | None = None
    arrays: Callable[[Mapping[str, Any], int], tuple[np.ndarray, np.ndarray]] | None = None
    target: str = "label"
    drop: tuple[str, ...] = ()
    columns: Callable[[], tuple[str, ...]] | None = None

    @property
    def tabular(self) -> bool:
        return self.frame is not None


_REGISTRY: dict[str, BuiltinSpec] = {}


def register(spec: BuiltinSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"builtin data set {spec.name!r} is already registered")
    if (spec.frame is None) == (spec.arrays is None):
        raise ValueError(f"builtin data set {spec.name!r} needs exactly one of frame, arrays")
    _REGISTRY[spec.name] = spec


def builtins() -> Mapping[str, BuiltinSpec]:
    """Every built-in data set, by name."""
    return dict(_REGISTRY)


def _int_in(low: int, high: int) -> Callable[[str, Any], int]:
    def parse(key: str, value: Any) -> int:
        number = as_int(key, value)
        if not low <= number <= high:
            raise ConfigError(key, f"must be in [{low}, {high}], got {value!r}")
        return number

    return parse


def _augment(key: str, value: Any) -> str:
    if value not in ("none", "shift"):
        raise ConfigError(key, f"unknown augmentation {value!r}; {one_of(('none', 'shift'))}")
    return str(value)


def _cars93_frame(options: Mapping[str, Any], seed: int) -> pd.DataFrame:
    import pandas as pd

    return pd.read_csv(CARS93)


def _cars93_columns() -> tuple[str, ...]:
    import csv

    with CARS93.open(encoding="utf-8", newline="") as f:
        return tuple(next(csv.reader(f)))


def _used_cars_frame(options: Mapping[str, Any], seed: int) -> pd.DataFrame:
    from hpsearch.train.data.datasets.used_cars import used_cars

    return used_cars(options["rows"], seed)


def _used_cars_columns() -> tuple[str, ...]:
    from hpsearch.train.data.datasets.used_cars import COLUMNS

    return COLUMNS


def _digits_arrays(options: Mapping[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
    from hpsearch.train.data.datasets.digits import digits

    return digits()


def _is_sorted_arrays(options: Mapping[str, Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
    from hpsearch.train.data.datasets.sequences import is_sorted

    return is_sorted(options["rows"], options["length"], options["vocab"], seed)


register(
    BuiltinSpec(
        "cars93", ("regression", "classification"), frame=_cars93_frame, target="Price",
        drop=("Model", "Make", "Min.Price", "Max.Price"), columns=_cars93_columns,
    )
)
register(
    BuiltinSpec(
        "used_cars", ("regression", "classification"), {"rows": Option(5000, _int_in(10, 100_000_000))},
        frame=_used_cars_frame, target="price", columns=_used_cars_columns,
    )
)
register(
    BuiltinSpec(
        "digits", ("classification",),
        {"augment": Option("none", _augment), "max_shift": Option(1, _int_in(1, 3))},
        arrays=_digits_arrays,
    )
)
register(
    BuiltinSpec(
        "is_sorted", ("classification",),
        {
            "rows": Option(4000, _int_in(10, 10_000_000)),
            "length": Option(16, _int_in(2, 4096)),
            "vocab": Option(16, _int_in(4, 1_000_000)),
        },
        arrays=_is_sorted_arrays,
    )
)
