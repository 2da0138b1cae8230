"""The exceptions hpsearch raises for problems a user can fix.

Everything a user can get wrong derives from :class:`HpsearchError`; the CLI turns it into one line
and exit status 2. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable
import difflib


class HpsearchError(Exception):
    """Root of every error caused by user input or the user's environment."""


class SpecError(HpsearchError):
    """A study file (or a ``--set`` override) breaks a rule.

    Args:
        path: Dotted path of the offending field, such as ``space.lr.low``. Empty for the whole file.
        message: What is wrong and what is allowed.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class ConfigError(HpsearchError):
    """A training-core setting is invalid; ``key`` names the knob as the user wrote it."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


class DataError(HpsearchError):
    """The data a study names cannot be read or does not fit the study."""


class StorageError(HpsearchError):
    """The storage URL is malformed, its driver is missing, or the database refuses it."""


class StorageUnavailableError(StorageError):
    """The database cannot be reached or written: it stayed down past the retries, or is full or read-only.

    The CLI exits with its own status (3); finished trials are kept and a later run resumes.
    """


class ExecutorError(HpsearchError):
    """The executor cannot run trials: Ray failed to start, its cluster cannot be reached, or no worker fits."""


class StageFailedError(HpsearchError):
    """A stage stopped because too many of its trials failed."""


class RunAbortedError(HpsearchError):
    """The run cannot go on through no fault of the study (its Ray node died): exit 1, as a failed stage;
    finished trials are kept and running ones failed as lost, so the same command resumes."""


def did_you_mean(word: str, allowed: Iterable[str]) -> str:
    """Return `` (did you mean 'x'?)`` for the closest allowed word, or an empty string."""
    close = difflib.get_close_matches(word, list(allowed), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def one_of(allowed: Iterable[object]) -> str:
    """Format allowed values for an error message: ``one of: a, b, c``."""
    return "one of: " + ", ".join(str(a) for a in allowed)


def one_line(exc: BaseException) -> str:
    """``exc``'s message on one line: a value quoted in it may hold a newline (a name, a path, a choice)."""
    return " ".join(str(exc).splitlines())
