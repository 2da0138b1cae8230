"""Storage faults: which database errors are worth retrying, and the retry loop itself.

A transient fault (a dropped connection, a server restart or failover, a lock timeout, a deadlock, a
locked SQLite file) is retried with jittered backoff for up to :func:`retry_budget_s` seconds; a
persistent one (a full disk, a read-only file, access denied), or a transient one that outlasts the
budget, becomes one :class:`~hpsearch.errors.StorageUnavailableError`. The verdict is taken from the
driver's own error code under Optuna's and SQLAlchemy's wrappers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
import enum
import os
import random
import sqlite3
import time
from typing import Any, TypeVar

import optuna
import sqlalchemy.exc

from hpsearch.errors import StorageError, StorageUnavailableError

T = TypeVar("T")

# How long a transient fault is retried before the run gives up (exit 3); the variable overrides it.
RETRY_S = 60.0
RETRY_ENV_VAR = "HPSEARCH_STORAGE_RETRY_S"

_BACKOFF_FIRST_S = 0.1
_BACKOFF_MAX_S = 5.0


def retry_budget_s(environ: Mapping[str, str] | None = None) -> float:
    """Seconds a transient storage fault is retried: ``$HPSEARCH_STORAGE_RETRY_S``, else :data:`RETRY_S`."""
    environ = os.environ if environ is None else environ
    text = environ.get(RETRY_ENV_VAR)
    if not text:
        return RETRY_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:  # also NaN
        raise StorageError(f"{RETRY_ENV_VAR} must be a number of seconds >= 0, got {text!r}")
    return value


class Fault(enum.Enum):
    """What a storage error means for the run."""

    TRANSIENT = "transient"  # retry: the connection dropped, the server restarts, a lock timed out
    PERSISTENT = "persistent"  # give up: no space, read-only, access denied
    OTHER = "other"  # not a fault of the storage (a bug, bad data): raised as it is


def classify(exc: BaseException) -> Fault:
    """Whether ``exc``, raised by a storage call, is worth retrying, ends the run, or is no storage fault.

    Optuna raises ``StorageInternalError`` with SQLAlchemy's error as its cause, and some paths raise
    SQLAlchemy's errors themselves; the verdict is taken from the driver's error underneath.
    """
    if not isinstance(exc, (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError, sqlite3.Error)):
        return Fault.OTHER
    for link in _chain(exc):
        if isinstance(link, sqlalchemy.exc.DBAPIError):
            if link.connection_invalidated:
                return Fault.TRANSIENT
            fault = _driver_fault(link.orig)
            if fault is not None:
                return fault
        elif isinstance(link, sqlalchemy.exc.TimeoutError):  # no pooled connection came free
            return Fault.TRANSIENT
        elif isinstance(link, sqlite3.Error):
            fault = _driver_fault(link)
            if fault is not None:
                return fault
    return Fault.OTHER


def retrying(masked: str, what: str, fn: Callable[..., T], *args: Any, budget_s: float,
              on_fault: Callable[[str], None] | None = None, **kwargs: Any) -> T:
    """The retry loop of :meth:`RetryingStorage.call_with_retries`, for a storage shown as ``masked``.

    ``on_fault(reason)`` is called when a transient fault outlasts the first retry: a connection that
    dropped and came back at once is not worth a line, a server that is down is.
    """
    deadline: float | None = None
    delay = _BACKOFF_FIRST_S
    failures = 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            fault = classify(exc)
            if fault is Fault.OTHER:
                raise
            reason = first_line(exc)
            if fault is Fault.PERSISTENT:
                raise StorageUnavailableError(f"storage {masked} failed to {what}: {reason}") from exc
            now = time.monotonic()
            failures += 1
            if deadline is None:
                deadline = now + budget_s
            if failures == 2 and budget_s > 0 and on_fault is not None:
                on_fault(reason)
            if now >= deadline:
                tried = f" (tried for {budget_s:g} s to {what})" if budget_s > 0 else ""
                raise StorageUnavailableError(f"storage {masked} is unavailable{tried}: {reason}") from exc
            # Jittered, so that the runs of an array do not all come back at the same instant.
            time.sleep(min(delay * random.uniform(0.5, 1.5), max(deadline - now, 0.0)))
            delay = min(delay * 2, _BACKOFF_MAX_S)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


# PostgreSQL SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_PG_TRANSIENT_CLASSES = ("08", "40")  # connection exception; transaction rollback (deadlock, serialization)
_PG_TRANSIENT = {"57P01", "57P02", "57P03", "57014", "55P03", "53300", "53200", "53400"}  # shutdown, cancel, lock timeout, too many connections
_PG_PERSISTENT_CLASSES = ("28", "3D", "58")  # authorization; no such database; system (I/O) error
_PG_PERSISTENT = {"53100", "25006", "42501"}  # disk full; read-only transaction; insufficient privilege
# libpq's errors before a connection exists carry no SQLSTATE.
_PG_CONNECT_PERSISTENT = ("password authentication failed", "no pg_hba.conf entry", "does not exist")
# MySQL/MariaDB error numbers.
_MYSQL_TRANSIENT = {
    2002, 2003, 2005, 2006, 2013, 2055,  # cannot connect, server gone away, lost connection
    1040, 1053, 1205, 1213, 1927, 4031,  # too many connections, shutdown, lock wait timeout, deadlock, killed
    1159, 1160, 1161,  # network read/write timeouts
}
_MYSQL_PERSISTENT = {1044, 1045, 1049, 1142, 1290, 1792, 1836, 1021, 1114, 3}  # access, unknown db, read-only, disk full
# SQLite primary result codes.
_SQLITE_TRANSIENT = {5, 6}  # SQLITE_BUSY, SQLITE_LOCKED
_SQLITE_PERSISTENT = {3, 8, 10, 11, 13, 14, 23, 26}  # PERM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, AUTH, NOTADB
_SQLITE_TRANSIENT_TEXT = ("database is locked", "database table is locked")
_SQLITE_PERSISTENT_TEXT = ("readonly", "read-only", "disk is full", "unable to open database", "disk i/o error",
                           "malformed", "not a database")


def _driver_fault(orig: BaseException | None) -> Fault | None:
    """The verdict on a DB-API error, from its driver's code; None when the driver's error says nothing."""
    if orig is None:
        return None
    module = type(orig).__module__.split(".")[0]
    if module in ("psycopg", "psycopg2"):
        code = getattr(orig, "pgcode", None) or getattr(orig, "sqlstate", None)
        if isinstance(code, str) and code:
            if code in _PG_TRANSIENT or code.startswith(_PG_TRANSIENT_CLASSES):
                return Fault.TRANSIENT
            if code in _PG_PERSISTENT or code.startswith(_PG_PERSISTENT_CLASSES):
                return Fault.PERSISTENT
            return None
        if type(orig).__name__ == "OperationalError":  # refused, timed out, closed, starting up
            text = str(orig).lower()
            return Fault.PERSISTENT if any(m in text for m in _PG_CONNECT_PERSISTENT) else Fault.TRANSIENT
        return None
    if module in ("pymysql", "MySQLdb"):
        number = orig.args[0] if orig.args and isinstance(orig.args[0], int) else None
        if number in _MYSQL_TRANSIENT:
            return Fault.TRANSIENT
        if number in _MYSQL_PERSISTENT:
            return Fault.PERSISTENT
        return None
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)  # Python 3.11+
        text = str(orig).lower()
        if code is not None:
            if code & 0xFF in _SQLITE_TRANSIENT:
                return Fault.TRANSIENT
            if code & 0xFF in _SQLITE_PERSISTENT:
                return Fault.PERSISTENT
        if any(m in text for m in _SQLITE_TRANSIENT_TEXT):
            return Fault.TRANSIENT
        if any(m in text for m in _SQLITE_PERSISTENT_TEXT):
            return Fault.PERSISTENT
    return None


def first_line(exc: BaseException) -> str:
    """The first line of the database's own message under ``exc``."""
    for link in _chain(exc):
        orig = getattr(link, "orig", None)
        if isinstance(link, sqlalchemy.exc.DBAPIError) and orig is not None:
            text = str(orig)
            break
        if isinstance(link, sqlite3.Error):
            text = str(link)
            break
    else:
        text = str(exc)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
