"""``hpsearch dashboard``: optuna-dashboard on a study's storage, read-only, bound to loopback by default.

optuna-dashboard (the ``dashboard`` extra) is imported only here. Its WSGI app
(``optuna_dashboard.wsgi``, the app ``optuna_dashboard.run_server`` serves) runs in this process on
the standard library's WSGI server, as ``run_server`` runs it, except: a thread per request (an idle
connection a browser opened ahead of time must not hold up the page), no log line per request, and
a stop from another thread when the caller's ``stop`` event is set (Ctrl-C, SIGTERM).

The dashboard only reads. It gets hpsearch's storage, opened without creating anything (a missing
SQLite file is an error, not a new database; no switch to WAL, no migration), and every database
connection of it refuses writes (SQLite ``PRAGMA query_only``, a read-only session on PostgreSQL and
MySQL/MariaDB). So a run writing the same database is not disturbed, and the dashboard's editing
features (notes, telling trials, renaming or deleting studies, upgrading the schema) fail rather
than write.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path
import socket
import socketserver
import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import sqlalchemy.event

from hpsearch.errors import HpsearchError
from hpsearch.retrying import RetryingStorage

MISSING = "hpsearch dashboard needs optuna-dashboard: pip install 'hpsearch[dashboard]'"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
PORT_RANGE = (1, 65535)
# The statement that makes a new connection refuse writes, by SQLAlchemy dialect name.
_READ_ONLY_SESSION = {
    "sqlite": "PRAGMA query_only = ON",
    "postgresql": "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
    "mysql": "SET SESSION TRANSACTION READ ONLY",
    "mariadb": "SET SESSION TRANSACTION READ ONLY",
}

_logger = logging.getLogger(__name__)


class DashboardError(HpsearchError):
    """The dashboard cannot start: optuna-dashboard is missing, or --host/--port cannot be served."""


def parse_port(value: str | int) -> int:
    """``--port`` as a number in :data:`PORT_RANGE`."""
    low, high = PORT_RANGE
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = None
    if port is None or not low <= port <= high:
        raise DashboardError(f"--port must be an integer from {low} to {high}, got {value!r}")
    return port


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is reachable from this machine only."""
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return False  # binding to it fails, and says so
    return bool(found) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in found)


def require_dashboard() -> None:
    """Raise the one line that names the extra when optuna-dashboard is not installed."""
    try:
        import optuna_dashboard  # noqa: F401
    except ImportError:
        raise DashboardError(MISSING) from None


def read_only(storage: RetryingStorage) -> RetryingStorage:
    """``storage``, every connection of which from now on refuses writes; the ones it holds are closed."""
    engine = storage.engine
    dialect = engine.dialect.name
    statement = _READ_ONLY_SESSION.get(dialect)
    if statement is None:
        raise DashboardError(f"hpsearch dashboard cannot open a {dialect} database read-only; "
                             f"it opens {', '.join(sorted(_READ_ONLY_SESSION))}")

    def on_connect(connection: Any, record: Any) -> None:
        cursor = connection.cursor()
        try:
            cursor.execute(statement)
        finally:
            cursor.close()
        if dialect != "sqlite":
            connection.commit()  # a server rolls a SET back with the transaction it ran in

    sqlalchemy.event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections made while opening it: the next ones are made read-only
    return storage


def wsgi_app(storage: RetryingStorage, artifacts: Path | None = None) -> Any:
    """optuna-dashboard's WSGI app on ``storage``; with ``artifacts`` (the study's artifact directory,
    :mod:`hpsearch.artifacts`) it lists and serves the trials' kept models."""
    require_dashboard()
    from optuna.artifacts import FileSystemArtifactStore
    import optuna_dashboard

    store = FileSystemArtifactStore(str(artifacts)) if artifacts is not None and artifacts.is_dir() else None
    return optuna_dashboard.wsgi(storage, artifact_store=store)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("%s " + format, self.address_string(), *args)


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a request still served does not hold up the stop

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A browser that closed its connection early, mostly: nothing the user must read.
        _logger.debug("dashboard request from %s failed", client_address, exc_info=True)


class _ThreadingServer6(_ThreadingServer):
    address_family = socket.AF_INET6


class DashboardServer:
    """optuna-dashboard's ``app`` bound to ``host``:``port``; :meth:`serve` answers until ``stop`` is set."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        ipv6 = ":" in host
        server_class = _ThreadingServer6 if ipv6 else _ThreadingServer
        try:
            self._server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise DashboardError(f"--host {host} --port {port}: cannot listen there: {why}") from None
        self.url = f"http://[{host}]:{port}/" if ipv6 else f"http://{host}:{port}/"

    def serve(self, stop: threading.Event) -> None:
        """Answer requests until ``stop`` is set; then close the listening socket."""

        def stopper() -> None:
            stop.wait()
            self._server.shutdown()  # returns once serve_forever has

        thread = threading.Thread(target=stopper, name="hpsearch-dashboard-stop", daemon=True)
        thread.start()
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            stop.set()  # serve_forever may have raised: let the stopper end
            thread.join()
            self._server.server_close()
