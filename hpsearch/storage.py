"""Storage: which database a study lives in, how it is opened and shown, and how its faults are met.

SQLite is the default. Trials are written by one process (the orchestrator), so SQLite sees a
single writer; WAL mode and a long busy timeout keep readers (``hpsearch status``, the dashboard,
a second ``hpsearch run``) from ever meeting "database is locked". A SQLite file that cannot be
written is opened read-only, so the commands that only read still work on it.

PostgreSQL and MySQL/MariaDB URLs may leave out the driver (``postgresql://``): the first installed
of the dialect's usual drivers is used, and a missing one is one line naming the extra to install.

:func:`open_storage` returns a :class:`RetryingStorage`: Optuna's cached RDB storage behind a proxy
that retries each call on a transient fault (a dropped connection, a server restart, a lock timeout,
a deadlock, a locked SQLite file) for up to :func:`retry_budget_s` seconds, and turns a persistent
one (the server gone for longer, a full disk, a read-only file) into one
:class:`~hpsearch.errors.StorageUnavailableError`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import contextlib
import logging
import os
from pathlib import Path
import re
import sqlite3
import time
from typing import Any, TypeVar
from urllib.parse import quote
import warnings

import optuna
from optuna.storages import BaseStorage
from sqlalchemy.engine import URL, make_url
import sqlalchemy.event
import sqlalchemy.exc

from hpsearch.errors import StorageError, StorageUnavailableError
from hpsearch.faults import Fault, classify, first_line, retry_budget_s, retrying
from hpsearch.retrying import RetryingStorage

try:
    import fcntl
except ImportError:  # Windows: the retry below still covers the race
    fcntl = None  # type: ignore[assignment]

DEFAULT_URL = "sqlite:///hpsearch.db"
ENV_VAR = "HPSEARCH_STORAGE"
# A running trial's heartbeat is written this often; one silent for GRACE_S is abandoned.
HEARTBEAT_S = 10
GRACE_S = 60
# Optuna stores study names, attribute keys and parameter names as String(512)
# (MAX_INDEXED_STRING_LENGTH); PostgreSQL and MySQL enforce it, SQLite does not.
MAX_NAME_LENGTH = 512
# MySQL/MariaDB store Optuna's JSON values (attributes, distributions) as TEXT: at most this many bytes.
MAX_TEXT_BYTES = 65535
_SQLITE_TIMEOUT_S = 60
_CONNECT_TIMEOUT_S = 10
_SCHEMA_ATTEMPTS = 5
_CREATE_RACE = ("already exists", "UNIQUE constraint failed", "Duplicate entry", "duplicate key")
# The drivers tried, in order, for a URL that names none (``postgresql://``).
_DRIVERS = {"postgresql": ("psycopg", "psycopg2"), "mysql": ("mysqldb", "pymysql"), "mariadb": ("mysqldb", "pymysql")}
_DATABASES = {"postgresql": "PostgreSQL", "mysql": "MySQL", "mariadb": "MariaDB", "sqlite": "SQLite"}
_PG_EXTRA = "pip install 'hpsearch[postgres]'"
_MYSQL_EXTRA = "pip install 'hpsearch[mysql]'"
_INSTALL = {
    "psycopg": _PG_EXTRA,
    "psycopg2": _PG_EXTRA,
    "pymysql": _MYSQL_EXTRA,
    "mysqldb": f"pip install mysqlclient, or use mysql+pymysql:// and {_MYSQL_EXTRA}",
}

_logger = logging.getLogger(__name__)
T = TypeVar("T")


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


def check_url(url: str) -> URL:
    """``url`` parsed, once what can be told without a driver or a server holds: it is a database URL,
    its port is a port, and it names a database that outlives the process (not in-memory SQLite).

    Raises:
        StorageError: naming the storage and what is wrong with it.
    """
    if url != url.strip() or not url.isprintable():  # a pasted newline would name another file, or host
        raise StorageError(f"storage {mask_url(url)!r} holds spaces at its ends or a control character such as a newline")
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        port = parsed.port
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise StorageError(
            f"storage {mask_url(url)!r} is not a database URL; use e.g. sqlite:///hpsearch.db or postgresql://user@host/db"
        ) from None
    if port is not None and not 0 < port < 65536:
        raise StorageError(f"storage {mask_url(url)}: the port must be 1..65535, got {port}")
    if backend == "sqlite" and _in_memory(parsed):
        raise StorageError(f"storage {mask_url(url)} is an in-memory SQLite database: every trial would be lost when "
                           f"the command ends; name a file, such as sqlite:///runs/study.db")
    unknown = sorted(set(parsed.query) - _SQLITE_OPTIONS) if "uri" not in parsed.query else []
    if backend == "sqlite" and unknown:  # SQLAlchemy would warn and ignore them (?mode=ro opened read-write)
        raise StorageError(f"storage {mask_url(url)}: unknown SQLite URL option {unknown[0]!r}; "
                           f"allowed: {', '.join(sorted(_SQLITE_OPTIONS))} (or a SQLite URI filename with uri=true)")
    if backend in ("mysql", "mariadb") and not parsed.database:
        raise StorageError(f"storage {mask_url(url)} names no database; add one after the host, such as "
                           f"mysql://user@127.0.0.1/hpsearch")
    return parsed


# What SQLAlchemy's pysqlite dialect passes on to sqlite3.connect; with uri=true the rest is SQLite's own.
_SQLITE_OPTIONS = frozenset({"timeout", "check_same_thread", "isolation_level", "detect_types", "cached_statements", "uri"})


def _in_memory(parsed: URL) -> bool:
    database = parsed.database or ""
    return database in ("", ":memory:") or database.startswith("file::memory:") or "mode=memory" in database \
        or parsed.query.get("mode") == "memory"


def database_url(url: str) -> URL:
    """``url`` parsed, with the driver that will open it: the one it names, or the first one installed.

    Raises:
        StorageError: ``url`` is not a database URL (:func:`check_url`), or its driver is not installed
            (the message names the extra that installs it).
    """
    parsed = check_url(url)
    backend = parsed.get_backend_name()
    explicit = "+" in parsed.drivername
    drivers = (parsed.get_driver_name(),) if explicit or backend not in _DRIVERS else _DRIVERS[backend]
    for driver in drivers:
        candidate = parsed.set(drivername=f"{backend}+{driver}")
        try:
            candidate.get_dialect().import_dbapi()
        except ImportError:
            continue
        except sqlalchemy.exc.NoSuchModuleError:
            raise StorageError(f"storage {mask_url(url)} names the unknown database driver {parsed.drivername!r}") from None
        try:  # the driver's reading of the query, such as ?timeout=abc, before anything is created
            candidate.get_dialect()().create_connect_args(candidate)
        except (ValueError, TypeError) as exc:
            raise StorageError(f"storage {mask_url(url)} has an argument its driver refuses: {exc}") from None
        return candidate if not explicit and backend in _DRIVERS else parsed
    driver = drivers[-1] if backend in ("mysql", "mariadb") and not explicit else drivers[0]
    what = f"the {_DATABASES.get(backend, backend)} driver {driver}"
    raise StorageError(f"storage {mask_url(url)} needs {what}: {_INSTALL.get(driver, f'pip install {driver}')}")


def open_storage(url: str, *, create: bool = True) -> RetryingStorage:
    """Open the Optuna storage at ``url``, with trial heartbeats enabled and storage faults retried.

    With ``create=False`` (commands that only read) a SQLite file that does not exist is an error
    rather than a new, empty database. A SQLite file that cannot be written (its folder or the file
    is read-only) is opened read-only; nothing is written on opening it.

    Raises:
        StorageError: a malformed URL, a missing driver, or a database that refuses us (such as an
            unknown user).
        StorageUnavailableError: the database cannot be reached or written for :func:`retry_budget_s`.
    """
    parsed = database_url(url)
    masked = mask_url(url)
    path = sqlite_path(url)
    _quiet_optuna_fallback()
    read_only = False
    engine_kwargs: dict[str, Any]
    if parsed.get_backend_name() == "sqlite":
        engine_kwargs = {"connect_args": {"timeout": _SQLITE_TIMEOUT_S}}
        if path is not None:
            _check_sqlite_file(path, masked)
            if not path.exists() and not create:
                raise StorageError(f"storage {masked} does not exist yet: nothing has run; run hpsearch run STUDY.yaml")
            read_only = path.exists() and not _writable(path)
            if read_only:
                parsed = _read_only_sqlite_url(path, masked)
            elif create:
                _prepare_sqlite(path, masked)
    else:
        # A pooled connection the server dropped is replaced before use instead of failing a call.
        engine_kwargs = {"pool_pre_ping": True, "connect_args": _server_connect_args(parsed)}

    def build() -> optuna.storages.RDBStorage:
        with _exclusive(path), quiet_heartbeat_warnings():
            try:
                if not create:
                    _check_tables(parsed, engine_kwargs, masked)
                return optuna.storages.RDBStorage(
                    parsed.render_as_string(hide_password=False), engine_kwargs=engine_kwargs,
                    heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S, skip_table_creation=not create,
                )
            except sqlalchemy.exc.DatabaseError as exc:
                # Another kind of file at a SQLite URL: a mistake to fix, not a fault to wait out. (Its
                # header is not read here: closing a descriptor of it would drop this process's locks.)
                if path is not None and "not a database" in str(exc):
                    raise StorageError(f"storage {masked}: {path} is not a SQLite database file") from None
                raise

    budget = retry_budget_s()

    def tell(reason: str) -> None:
        _logger.warning("storage %s: %s; retrying for up to %g s", masked, reason, budget)

    try:
        for attempt in range(_SCHEMA_ATTEMPTS):
            try:
                rdb = retrying(masked, "open it", build, budget_s=budget, on_fault=tell)
                return RetryingStorage(rdb, url, read_only=read_only)
            except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
                # Processes opening a new database at once all create its tables, and the losers
                # fail; the tables are there now, so opening again succeeds.
                if not any(m in str(exc) for m in _CREATE_RACE) or attempt == _SCHEMA_ATTEMPTS - 1:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")
    except ImportError as exc:  # database_url checked the driver; this is one of its own imports
        raise StorageError(f"storage {masked} cannot load its database driver: {exc}") from None
    except (ValueError, TypeError) as exc:  # the driver refused a query argument, such as ?timeout=abc
        raise StorageError(f"cannot open storage {masked}: {exc}") from None
    except RuntimeError as exc:  # Optuna: the tables were made by another Optuna version; it migrates nothing
        raise StorageError(f"cannot open storage {masked}: {first_line(exc)}") from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:
        raise StorageError(f"cannot open storage {masked}: {first_line(exc)}") from None


def _check_sqlite_file(path: Path, masked: str) -> None:
    """A folder or another kind of file at a SQLite URL is a mistake to fix, not a fault to wait out."""
    if path.is_dir():
        raise StorageError(f"storage {masked}: {path} is a folder; name a database file in it, such as {path}/study.db")


def _check_tables(url: URL, engine_kwargs: dict[str, Any], masked: str) -> None:
    """For the commands that only read: Optuna's tables must be there, since opening would create them."""
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        names = set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    if not {"studies", "version_info", "alembic_version"} <= names:
        raise StorageError(f"storage {masked} holds no Optuna tables: nothing has run there yet; "
                           f"run hpsearch run STUDY.yaml")


def _server_connect_args(url: URL) -> dict[str, Any]:
    """Time limits for a database server: a dead host fails a connection in seconds, not minutes."""
    driver = url.get_driver_name()
    if driver in ("psycopg", "psycopg2"):
        # TCP keepalives notice a server host that vanished while a query waits for its answer.
        args: dict[str, Any] = {"connect_timeout": _CONNECT_TIMEOUT_S, "keepalives": 1, "keepalives_idle": 30,
                                "keepalives_interval": 10, "keepalives_count": 3}
        if "PGAPPNAME" not in os.environ:  # libpq's own variable wins; else pg_stat_activity shows who we are
            args["application_name"] = "hpsearch"
    elif driver in ("pymysql", "mysqldb"):
        args = {"connect_timeout": _CONNECT_TIMEOUT_S}
    else:
        args = {}
    return {k: v for k, v in args.items() if k not in url.query}  # the URL's own settings win


class _OptunaFallbackFilter(logging.Filter):
    """Drops Optuna's "Caught an error from sqlalchemy ... Falling back to a slower alternative".

    Optuna's trial query takes any OperationalError for too many SQL variables and logs the query
    before it tries a slower one; after a dropped connection that is a screenful of SQL blaming the
    wrong cause. The fault itself is retried, and told once, by :class:`RetryingStorage`.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Caught an error from sqlalchemy")


def _quiet_optuna_fallback() -> None:
    logger = logging.getLogger("optuna.storages._rdb.storage")
    if not any(isinstance(f, _OptunaFallbackFilter) for f in logger.filters):
        logger.addFilter(_OptunaFallbackFilter())


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


def _writable(path: Path) -> bool:
    # SQLite writes the file and, next to it, its -wal and -shm files. os.access asks the kernel, so
    # a read-only mount or an immutable file count even for root; it opens nothing (see _exclusive).
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def _read_only_sqlite_url(path: Path, masked: str) -> URL:
    """A URL that opens ``path`` read-only; ``immutable`` where its folder cannot hold the -shm file."""
    query = {"mode": "ro", "uri": "true"}
    shm, wal = Path(f"{path}-shm"), Path(f"{path}-wal")
    if not os.access(path.parent, os.W_OK) and not shm.exists():
        if wal.exists() and wal.stat().st_size > 0:
            raise StorageUnavailableError(
                f"storage {masked} cannot be read: its folder is read-only and {wal.name} holds writes not yet "
                f"in the database; open it once where it can be written"
            )
        # Without -shm SQLite reads a WAL database only as immutable: nothing can write here anyway.
        query["immutable"] = "1"
    return URL.create("sqlite", database=f"file:{quote(str(path.resolve()))}", query=query)


def _prepare_sqlite(path: Path, masked: str) -> None:
    """Create the file's folder and switch the database to WAL (a persistent, per-file setting)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # One process at a time: SQLite may answer a concurrent switch to WAL with "database is
        # locked" at once, without waiting out its busy timeout.
        with _exclusive(path), sqlite3.connect(path, timeout=_SQLITE_TIMEOUT_S) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
        conn.close()
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if "not a database" in reason:  # another kind of file: a mistake to fix, not a fault to wait out
            raise StorageError(f"storage {masked}: {path} is not a SQLite database file") from None
        if isinstance(exc, OSError) or classify(exc) is Fault.PERSISTENT:
            raise StorageUnavailableError(f"storage {masked} cannot be written: {reason}") from None
        raise StorageError(f"cannot open SQLite database {path}: {reason}") from None


def existing_study_names(storage: BaseStorage) -> set[str]:
    return {s.study_name for s in storage.get_all_studies()}
