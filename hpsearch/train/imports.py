"""Resolve a user's ``package.module:function`` import path into the callable it names.

The CLI runs from a study's working directory, so that directory is tried on ``sys.path`` too: from the
repository root, ``studies.user_example.models:build`` imports without installing anything.
"""

from __future__ import annotations

from collections.abc import Callable
import importlib
import os
import re
import sys
from typing import Any

from hpsearch.errors import ConfigError

_PATH = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")


def check_import_path(key: str, value: Any) -> str:
    """Check the shape of ``value`` without importing anything."""
    if not isinstance(value, str) or not _PATH.fullmatch(value):
        raise ConfigError(key, f"must look like package.module:function, got {value!r}")
    return value


def load_callable(key: str, path: str) -> Callable[..., Any]:
    """Import the function ``path`` names; every failure is a one-line ConfigError keyed by ``key``."""
    module_name, _, attr = check_import_path(key, path).partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.append(cwd)  # appended, so an installed package of the same name still wins
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(key, f"cannot import module {module_name!r} ({exc})") from None
    except Exception as exc:  # a user module may fail in any way while it runs
        raise ConfigError(key, f"cannot import module {module_name!r} ({type(exc).__name__}: {exc})") from None
    except SystemExit as exc:  # it would end hpsearch, with its status (0 too) and no word of why
        raise ConfigError(key, f"importing module {module_name!r} called sys.exit({exc.code!r}); "
                               f"a module hpsearch imports must not exit") from None
    function = getattr(module, attr, None)
    if function is None:
        raise ConfigError(key, f"module {module_name!r} has no attribute {attr!r}")
    if not callable(function):
        raise ConfigError(key, f"{path} is not callable (got {type(function).__name__})")
    return function


class _FrozenDict(tuple):  # type: ignore[type-arg]
    """A mapping option frozen as sorted ``(key, value)`` pairs, told apart from a list of pairs."""


def freeze(value: Any) -> Any:
    """A hashable copy of a YAML value (lists become tuples), so configs stay hashable and picklable."""
    if isinstance(value, dict):
        return _FrozenDict(sorted((str(k), freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The plain Python value a user function receives: dicts and lists again."""
    if isinstance(value, _FrozenDict):
        return {k: thaw(v) for k, v in value}
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    return value


def is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))
