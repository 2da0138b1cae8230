"""Small parsers for values written in YAML or on the command line.

Each takes the key it reports in errors and the raw value and raises ConfigError; the study-file
parser turns that into a SpecError at the field's path (:func:`spec_number`, :func:`spec_int`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
import math
from typing import Any

from hpsearch.errors import ConfigError, SpecError, did_you_mean, one_of


def as_float(key: str, value: Any) -> float:
    """A finite float; ints and numeric strings such as ``"1e-5"`` (YAML 1.1 reads those as strings) count."""
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(key, f"must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise ConfigError(key, f"must be a number, got {value!r}")
    result = float(value)
    if not math.isfinite(result):
        raise ConfigError(key, f"must be finite, got {value!r}")
    return result


def as_int(key: str, value: Any) -> int:
    """An int; integral floats (``64.0``) and integer strings (``"64"``) count."""
    if isinstance(value, bool):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    number = as_float(key, value)
    if not number.is_integer():
        raise ConfigError(key, f"must be an integer, got {value!r}")
    return int(number)


def as_choice(key: str, value: Any, allowed: Iterable[str], *, what: str) -> str:
    allowed = sorted(allowed)
    if not isinstance(value, str) or value not in allowed:
        hint = did_you_mean(value, allowed) if isinstance(value, str) else ""
        raise ConfigError(key, f"unknown {what} {value!r}{hint}; {one_of(allowed)}")
    return value


def check_keys(
    raw: Mapping[str, Any], allowed: Iterable[str], *, prefix: str = "", what: str = "key"
) -> None:
    """Reject keys outside ``allowed``; the error names the key, prefixed like ``model.``."""
    allowed = list(allowed)
    for key in raw:
        if key not in allowed:
            hint = did_you_mean(str(key), allowed)
            raise ConfigError(f"{prefix}{key}", f"unknown {what}{hint}; allowed: {', '.join(allowed)}")


def spec_keys(raw: Mapping[str, Any], allowed: Iterable[str], path: str, *, what: str = "key") -> None:
    """:func:`check_keys` for a study-file section at ``path`` (empty for the top level)."""
    try:
        check_keys(raw, allowed, prefix=f"{path}." if path else "", what=what)
    except ConfigError as exc:
        raise SpecError(exc.key, exc.message) from None


def spec_number(value: Any, path: str, *, integer: bool = False) -> float | int:
    """:func:`as_float` (or :func:`as_int`) for a study-file field at ``path``."""
    try:
        return as_int(path, value) if integer else as_float(path, value)
    except ConfigError as exc:
        raise SpecError(path, exc.message) from None


def spec_int(value: Any, path: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    number = int(spec_number(value, path, integer=True))
    if minimum is not None and number < minimum:
        raise SpecError(path, f"must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise SpecError(path, f"must be at most {maximum}, got {number:.3g}" if number >= 10**15 else
                              f"must be at most {maximum}, got {number}")
    return number


def key_problem(raw: Any, path: str = "") -> tuple[str, str] | None:
    """The first mapping key in ``raw`` (nested) that is not a string, as (its path, what is wrong).

    YAML reads ``7:``, ``null:``, ``yes:`` or ``1.5:`` as a number, null or boolean; every key of a
    study file names a field, a knob or a parameter, all of which are text.
    """
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            shown = "null" if key is None else str(key).lower() if isinstance(key, bool) else str(key)
            where = f"{path}.{shown}" if path else shown
            if not isinstance(key, str):
                what = ("null" if key is None else "a boolean" if isinstance(key, bool)
                        else "a number" if isinstance(key, (int, float)) else f"a {type(key).__name__}")
                return where, f"YAML reads the key {shown} as {what}, not text; quote it (\"{shown}\") or use a name"
            found = key_problem(value, where)
            if found:
                return found
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            found = key_problem(item, f"{path}.{i}" if path else str(i))
            if found:
                return found
    return None
