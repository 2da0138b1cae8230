"""Storage faults during a real run: connections killed, the server restarted or gone, a full disk, a
read-only database.

Transient faults are retried and the run goes on; a persistent one ends it with one line and exit 3,
and a later run resumes with nothing lost. The servers are the machine's real ones; "server gone" is
a real TCP proxy in front of PostgreSQL or MariaDB being closed, so that it disturbs no other test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
import contextlib
import os
from pathlib import Path
import shutil
import socket
import subprocess
import threading
import time
from typing import Any
import uuid

import optuna
from optuna.trial import TrialState
import psycopg2
import pytest
from sqlalchemy.engine import make_url

from hpsearch.cli import EXIT_STORAGE
from hpsearch.faults import RETRY_ENV_VAR
from hpsearch.storage import open_storage
from tests.helpers import base_study, cli, cli_process, running_trial, start_run, write_study
from tests.servers import MARIADB, POSTGRES, require_server, unavailable
from tests.test_storage import delete_studies

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def fault_study(name: str, storage: str, trials: int = 4) -> dict[str, Any]:
    """A study whose trials each take a second or so: long enough to break the storage under them."""
    return base_study(name=name, storage=storage, stages=[{"name": "coarse", "sampler": "random", "trials": trials}],
                      train={"epochs": 25, "device": "cpu"}, executor={"kind": "local", "workers": 2})


def states(name: str, storage: str) -> Counter[TrialState]:
    trials = optuna.load_study(study_name=f"{name}/coarse", storage=open_storage(storage, create=False)).get_trials()
    return Counter(t.state for t in trials)


def assert_exact_budget(name: str, storage: str, budget: int) -> None:
    """Nothing lost: exactly ``budget`` finished trials, none left RUNNING."""
    counts = states(name, storage)
    assert sum(counts[s] for s in FINISHED) == budget and counts[TrialState.RUNNING] == 0, counts


def assert_one_line(stderr: str, storage: str) -> str:
    """The run's last word: one error line naming the storage with its password masked, no traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("hpsearch: error:")]
    assert len(errors) == 1, stderr
    password = make_url(storage).password
    assert not password or password not in stderr
    assert make_url(storage).render_as_string(hide_password=True) in errors[0], errors[0]
    return errors[0]


def finish(process: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"the run did not end: {err}") from None
    return process.returncode, out, err


# PostgreSQL: the run's own connections killed, the server restarted.

def test_connections_killed_mid_run_are_retried(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = require_server(POSTGRES)
    if make_url(url).get_driver_name() not in ("psycopg2", "psycopg"):
        unavailable("needs a libpq driver, which names its connections after PGAPPNAME")
    name, app = f"t{uuid.uuid4().hex[:10]}", f"hpsearch-test-{uuid.uuid4().hex[:8]}"
    path = write_study(workdir, fault_study(name, url, trials=8))
    monkeypatch.setenv("PGAPPNAME", app)  # only this run's connections are killed, no other test's
    killer = psycopg2.connect(host=make_url(url).host, port=make_url(url).port or 5432, user=make_url(url).username,
                              dbname=make_url(url).database, application_name="hpsearch-test-killer")
    killer.autocommit = True
    process = start_run(path, workdir)
    try:
        running_trial(process, f"{name}/coarse", url)
        rounds = kills = 0
        while process.poll() is None and rounds < 12:
            with killer.cursor() as cur:
                cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
                            (app,))
                kills += cur.fetchone()[0]
            rounds += 1
            time.sleep(0.4)
        code, _, err = finish(process)
        assert code == 0, err
        assert kills >= 3, f"only {kills} connections were killed while the run worked"
        assert "Traceback" not in err
        assert_exact_budget(name, url, 8)
    finally:
        killer.close()
        if process.poll() is None:
            process.kill()
        delete_studies(url, name)


def _postgres_cluster() -> tuple[str, str] | None:
    """(version, name) of the local Debian PostgreSQL cluster on the test URL's port, if there is one."""
    if shutil.which("pg_lsclusters") is None or make_url(POSTGRES).host not in ("127.0.0.1", "localhost"):
        return None
    listing = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout.split("\n")
    for line in listing:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == str(make_url(POSTGRES).port or 5432):
            return fields[0], fields[1]
    return None


@contextlib.contextmanager
def postgres_back_up(cluster: tuple[str, str]) -> Iterator[None]:
    """Whatever happens in the test, the shared server is running again at its end."""
    try:
        yield
    finally:
        for _ in range(30):
            if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(make_url(POSTGRES).port or 5432)]).returncode == 0:
                break
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "start"], capture_output=True)
            time.sleep(1)


def test_a_postgresql_restart_mid_run_loses_nothing(workdir: Path) -> None:
    url = require_server(POSTGRES)
    cluster = _postgres_cluster()
    if cluster is None:
        unavailable("no local Debian PostgreSQL cluster (pg_lsclusters) serves the test URL; cannot restart it")
    name = f"t{uuid.uuid4().hex[:10]}"
    path = write_study(workdir, fault_study(name, url))
    process = start_run(path, workdir)
    try:
        with postgres_back_up(cluster):
            running_trial(process, f"{name}/coarse", url)
            restart = subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"],
                                     capture_output=True, text=True, timeout=120)
            assert restart.returncode == 0, restart.stderr
        code, _, err = finish(process)
        if code != 0:  # allowed: one line and exit 3; then a second run finishes the study
            assert code == EXIT_STORAGE, err
            assert_one_line(err, url)
            again = cli_process("run", str(path), cwd=workdir)
            assert again.returncode == 0, again.stderr
        assert "Traceback" not in err
        assert_exact_budget(name, url, 4)
    finally:
        if process.poll() is None:
            process.kill()
        delete_studies(url, name)


# The server gone: a TCP proxy in front of the real one, closed and opened again.

class TcpProxy:
    """Forwards a local port to a database server. ``down()`` drops every connection and refuses new
    ones, as a server that crashed or a network that broke; ``up()`` serves again on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = 0
        self.up()

    def up(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            if self._listener is not None:
                # Without the shutdown a thread blocked in accept() would still take one more connection.
                with contextlib.suppress(OSError):
                    self._listener.shutdown(socket.SHUT_RDWR)
                self._listener.close()
                self._listener = None
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._sockets.clear()

    def url(self, url: str) -> str:
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # went down meanwhile
                    client.close()
                    server.close()
                    return
                self._sockets.update((client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture(params=[POSTGRES, MARIADB], ids=["postgresql", "mariadb"])
def gate(request: pytest.FixtureRequest) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of a real server, and the server's own URL (to look at the study past the proxy)."""
    direct = require_server(request.param)
    target = make_url(direct)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or (5432 if target.get_backend_name() == "postgresql" else 3306))
    yield proxy, direct
    proxy.down()


def test_a_server_gone_for_a_few_seconds_is_waited_for(workdir: Path, gate: tuple[TcpProxy, str]) -> None:
    proxy, direct = gate
    url, name = proxy.url(direct), f"t{uuid.uuid4().hex[:10]}"
    path = write_study(workdir, fault_study(name, url))
    process = start_run(path, workdir)
    try:
        running_trial(process, f"{name}/coarse", direct)
        proxy.down()
        time.sleep(4)
        proxy.up()
        code, _, err = finish(process)
        assert code == 0, err
        assert "retrying for up to" in err and "Traceback" not in err
        assert_exact_budget(name, direct, 4)
    finally:
        if process.poll() is None:
            process.kill()
        delete_studies(direct, name)


def test_a_server_gone_for_longer_ends_the_run_and_a_later_run_resumes(
        workdir: Path, gate: tuple[TcpProxy, str], monkeypatch: pytest.MonkeyPatch) -> None:
    proxy, direct = gate
    url, name = proxy.url(direct), f"t{uuid.uuid4().hex[:10]}"
    path = write_study(workdir, fault_study(name, url))
    monkeypatch.setenv(RETRY_ENV_VAR, "2")
    process = start_run(path, workdir)
    try:
        running_trial(process, f"{name}/coarse", direct)
        proxy.down()
        code, _, err = finish(process)
        assert code == EXIT_STORAGE, err
        line = assert_one_line(err, url)
        assert "is unavailable" in line
        proxy.up()
        again = cli_process("run", str(path), cwd=workdir)
        assert again.returncode == 0, again.stderr
        assert_exact_budget(name, direct, 4)
    finally:
        if process.poll() is None:
            process.kill()
        delete_studies(direct, name)


# SQLite: a read-only database, a full disk.

def _run_to_the_end(workdir: Path, trials: int = 2) -> Path:
    study = base_study(stages=[{"name": "coarse", "sampler": "random", "trials": trials}],
                       executor={"kind": "local", "workers": 1})
    path = write_study(workdir, study)
    code, _, err = cli("run", str(path))
    assert code == 0, err
    return path


@contextlib.contextmanager
def read_only(target: Path) -> Iterator[None]:
    """``target`` (a file or a folder) read-only, for root too: the immutable attribute; chmod otherwise."""
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(target)], capture_output=True, text=True)
        if made.returncode != 0:
            unavailable(f"cannot make {target} read-only for root: chattr +i: {made.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(target)], check=True)
        return
    mode = target.stat().st_mode
    target.chmod(0o555 if target.is_dir() else 0o444)
    try:
        yield
    finally:
        target.chmod(mode)


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_database_still_reads(workdir: Path, what: str) -> None:
    path = _run_to_the_end(workdir)
    database = workdir / "runs" / "cars.db"
    before = database.read_bytes()
    with read_only(database if what == "file" else database.parent):
        for command in (["status"], ["best"], ["export", "--out", str(workdir / "trials.csv")]):
            code, out, err = cli(*command[:1], str(path), *command[1:])
            assert code == 0, f"{command}: {err}"
        assert (workdir / "trials.csv").read_text().count("\n") == 3
        # Nothing left to run: nothing to write either.
        result = cli_process("run", str(path), cwd=workdir)
        assert result.returncode == 0, result.stderr
        # Trials left to run: one line, exit 3, no trial started.
        result = cli_process("run", str(path), "--set", "stages.0.trials=3", cwd=workdir)
        assert result.returncode == EXIT_STORAGE, result.stderr
        assert "readonly" in assert_one_line(result.stderr, "sqlite:///runs/cars.db")
    assert database.read_bytes() == before
    assert_exact_budget("cars", "sqlite:///runs/cars.db", 2)


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[None]:
    """A tmpfs of ``size`` mounted on ``folder``: a disk that fills up for real."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        unavailable(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):  # ENOSPC: full
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_ends_the_run_and_a_later_run_resumes(workdir: Path) -> None:
    runs = workdir / "runs"
    study = fault_study("cars", "sqlite:///runs/cars.db")
    path = write_study(workdir, study)
    with small_disk(runs, "8m"):
        process = start_run(path, workdir)
        try:
            running_trial(process)
            filler = _fill(runs)
            code, _, err = finish(process)
            assert code == EXIT_STORAGE, err
            line = assert_one_line(err, "sqlite:///runs/cars.db")
            assert "full" in line, line
            filler.unlink()
            again = cli_process("run", str(path), cwd=workdir)
            assert again.returncode == 0, again.stderr
            assert_exact_budget("cars", "sqlite:///runs/cars.db", 4)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
