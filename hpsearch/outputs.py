"""Files a command writes (``--out``): refused in one line before any work when they cannot be written."""

from __future__ import annotations

from collections.abc import Callable
import os
from pathlib import Path
from typing import TypeVar

from hpsearch.errors import HpsearchError

T = TypeVar("T")


class OutputError(HpsearchError):
    """An output path that is a folder, lies under a file, or whose folder cannot be written."""


def check_writable(path: Path, option: str) -> None:
    """``path`` can be created or replaced: not a folder, and its nearest existing folder is writable.

    Missing folders on the way are fine (the writer creates them); nothing is created here.
    """
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; name a file in it")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{option} {path}: {ancestor} is a file, so no folder can be made under it")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: cannot write into the folder {ancestor} (permission denied or read-only)")


def writing(path: Path, option: str, write: Callable[[], T]) -> T:
    """``write()``, its OSError (a disk that fills up, a folder that went away) as one line naming ``option``."""
    check_writable(path, option)
    try:
        return write()
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot be written: {exc.strerror or exc}") from None
