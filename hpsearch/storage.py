"""Storage URLs: which database a study lives in, how it is opened, and how it is shown.

SQLite is the default. Trials are written by one process (the orchestrator), so SQLite sees a
single writer; WAL mode and a long busy timeout keep readers (``hpsearch status``, the dashboard,
a second ``hpsearch run``) from ever meeting "database is locked".
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import contextlib
import os
from pathlib import Path
import re
import sqlite3
import time
import warnings

import optuna
from sqlalchemy.engine import make_url
import sqlalchemy.exc

from hpsearch.errors import StorageError

try:
    import fcntl
except ImportError:  # Windows: the retry below still covers the race
    fcntl = None  # type: ignore[assignment]

DEFAULT_URL = "sqlite:///hpsearch.db"
ENV_VAR = "HPSEARCH_STORAGE"
# A running trial's heartbeat is written this often; one silent for GRACE_S is abandoned.
HEARTBEAT_S = 10
GRACE_S = 60
_SQLITE_TIMEOUT_S = 60
_SCHEMA_ATTEMPTS = 5
_CREATE_RACE = ("already exists", "UNIQUE constraint failed", "Duplicate entry", "duplicate key")
_DRIVER_HINTS = {"psycopg2": "pip install 'hpsearch[postgres]'", "pymysql": "pip install 'hpsearch[mysql]'"}


def resolve_url(configured: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The storage URL: ``$HPSEARCH_STORAGE``, else the study file's ``storage``, else the default."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV_VAR) or configured or DEFAULT_URL


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, safe to print or log."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return re.sub(r"([^:/@\s]+:)[^@/\s]+@", r"\1***@", url)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, or ``None`` for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def open_storage(url: str, *, create: bool = True) -> optuna.storages.RDBStorage:
    """Open the Optuna storage at ``url``, with trial heartbeats enabled.

    With ``create=False`` (commands that only read) a SQLite file that does not exist is an error
    rather than a new, empty database.
    """
    try:
        parsed = make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(
            f"storage {mask_url(url)!r} is not a database URL; use e.g. sqlite:///hpsearch.db or postgresql://user@host/db"
        ) from None
    engine_kwargs: dict[str, object] = {"pool_pre_ping": True}
    path = sqlite_path(url)
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": _SQLITE_TIMEOUT_S}}
        if path is not None:
            if not create and not path.exists():
                raise StorageError(f"storage {mask_url(url)} does not exist yet: nothing has run; run hpsearch run STUDY.yaml")
            _prepare_sqlite(path)
    try:
        for attempt in range(_SCHEMA_ATTEMPTS):
            try:
                with _exclusive(path), quiet_heartbeat_warnings():
                    return optuna.storages.RDBStorage(
                        url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
                    )
            except sqlalchemy.exc.SQLAlchemyError as exc:
                # Processes opening a new database at once all create its tables, and the losers
                # fail; the tables are there now, so opening again succeeds.
                if not any(m in str(exc) for m in _CREATE_RACE) or attempt == _SCHEMA_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")
    except ModuleNotFoundError as exc:
        hint = _DRIVER_HINTS.get(exc.name or "", f"pip install {exc.name}")
        raise StorageError(f"storage {mask_url(url)} needs the database driver {exc.name}: {hint}") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StorageError(f"cannot open storage {mask_url(url)}: {reason}") from None


@contextlib.contextmanager
def quiet_heartbeat_warnings() -> Iterator[None]:
    """Silence Optuna's notes on heartbeats: experimental, and meant for ``Study.optimize``.

    hpsearch records heartbeats itself around ask-and-tell (see ``objective.TrialRecorder``).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        yield


@contextlib.contextmanager
def _exclusive(path: Path | None) -> Iterator[None]:
    """Hold an exclusive flock on a SQLite file's folder while Optuna creates or checks its tables.

    flock is separate from SQLite's own (fcntl) locks, so it only orders hpsearch processes. It is
    taken on the folder, never the file: closing any descriptor of the database file drops every
    fcntl lock this process holds on it, those of its open SQLite connections too; another process
    could then take itself for the last one, checkpoint and delete the WAL under them, and they read
    "database disk image is malformed".
    """
    if path is None or fcntl is None:
        yield
        return
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # releases the flock


def _prepare_sqlite(path: Path) -> None:
    """Create the file's folder and switch the database to WAL (a persistent, per-file setting)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One process at a time: SQLite may answer a concurrent switch to WAL with "database is
        # locked" at once, without waiting out its busy timeout.
        with _exclusive(path), sqlite3.connect(path, timeout=_SQLITE_TIMEOUT_S) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    except (OSError, sqlite3.Error) as exc:
        raise StorageError(f"cannot open SQLite database {path}: {exc}") from None


def existing_study_names(storage: optuna.storages.BaseStorage) -> set[str]:
    return {s.study_name for s in storage.get_all_studies()}
