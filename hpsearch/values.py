"""Coercion of scalar values written in YAML or on the command line."""

from __future__ import annotations

import math
from typing import Any

from hpsearch.errors import SpecError


def as_number(value: Any, path: str, *, integer: bool = False) -> float | int:
    """Return ``value`` as a number, accepting strings such as ``"1e-5"``.

    YAML 1.1 (PyYAML) reads ``1e-5`` without a dot as a string; the user meant the number.
    """
    if isinstance(value, bool):
        raise SpecError(path, f"must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise SpecError(path, f"must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(path, f"must be a finite number, got {value!r}")
    if integer:
        if float(value) != int(value):
            raise SpecError(path, f"must be a whole number, got {value!r}")
        return int(value)
    return value


def as_int(value: Any, path: str, *, minimum: int | None = None) -> int:
    number = as_number(value, path, integer=True)
    if minimum is not None and number < minimum:
        raise SpecError(path, f"must be >= {minimum}, got {number}")
    return int(number)
