"""Storage: URLs and their drivers, masking, SQLite set-up, name limits, and the retrying proxy.

Against the machine's real PostgreSQL and MariaDB servers (README: Running the tests). Where a server
cannot be reached the tests that need it skip, except under ``HPSEARCH_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import multiprocessing
import os
from pathlib import Path
import sqlite3
import subprocess
import sys
import time
from typing import Any
import uuid

import optuna
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages._rdb import models
from optuna.trial import TrialState
import pytest
import sqlalchemy
from sqlalchemy.engine import make_url
import sqlalchemy.exc

from hpsearch import retrying
from hpsearch.cli import EXIT_STORAGE, EXIT_USAGE
from hpsearch.errors import StorageError, StorageUnavailableError
from hpsearch.faults import RETRY_ENV_VAR, Fault, classify
from hpsearch.retrying import WRITE_ID_ATTR, RetryingStorage, TrialWrite
from hpsearch.storage import (
    DEFAULT_URL,
    ENV_VAR,
    MAX_NAME_LENGTH,
    database_url,
    mask_url,
    open_storage,
    resolve_url,
)
from tests.helpers import ROOT, base_study, cli, write_study
from tests.servers import MARIADB, POSTGRES, require_server

# Optuna's notes on its experimental heartbeats, which the tests call directly.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning",
                                        "ignore:Heartbeat of storage is supposed to be used")


def with_driver(url: str, drivername: str) -> str:
    return make_url(url).set(drivername=drivername).render_as_string(hide_password=False)


def delete_studies(url: str, prefix: str) -> None:
    storage = open_storage(url, create=False)
    for study in storage.get_all_studies():
        if study.study_name.startswith(prefix):
            optuna.delete_study(study_name=study.study_name, storage=storage)


def tiny_study(name: str, trials: int = 2, **overrides: Any) -> dict[str, Any]:
    return base_study(name=name, stages=[{"name": "coarse", "sampler": "random", "trials": trials}],
                      executor={"kind": "local", "workers": 1}, **overrides)


# URLs and drivers.

def test_precedence_env_then_file_then_default() -> None:
    assert resolve_url(None, {}) == DEFAULT_URL
    assert resolve_url("sqlite:///a.db", {}) == "sqlite:///a.db"
    assert resolve_url("sqlite:///a.db", {ENV_VAR: "sqlite:///b.db"}) == "sqlite:///b.db"


def test_mask_url_hides_passwords_only() -> None:
    assert mask_url("postgresql://bob:hunter2@db.example:5432/hp") == "postgresql://bob:***@db.example:5432/hp"
    assert "hunter2" not in mask_url("not a url but bob:hunter2@host")
    assert mask_url("sqlite:///runs/x.db") == "sqlite:///runs/x.db"


def test_a_url_without_a_driver_gets_the_first_installed_one() -> None:
    # psycopg and psycopg2 are both installed by the test extra; SQLAlchemy's default would be psycopg.
    assert database_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert database_url("postgresql+psycopg2://u@h/db").drivername == "postgresql+psycopg2"
    assert database_url("mysql+pymysql://u@h/db").drivername == "mysql+pymysql"
    expected = "mysql+mysqldb" if _importable("MySQLdb") else "mysql+pymysql"
    assert database_url("mysql://u@h/db").drivername == expected
    assert database_url("sqlite:///x.db").drivername == "sqlite"
    with pytest.raises(StorageError, match="not a database URL"):
        database_url("nonsense")
    with pytest.raises(StorageError, match=r"needs the PostgreSQL driver pg8000: pip install pg8000"):
        database_url("postgresql+pg8000://u:pw@h/db")


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# A process in which the given modules cannot be imported, as where a driver is not installed.
_BLOCK_IMPORTS = """
import sys
blocked = set(sys.argv[1].split(","))
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Block())
from hpsearch.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _cli_without(modules: str, *args: str, cwd: Path, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), ENV_VAR: url}
    return subprocess.run([sys.executable, "-c", _BLOCK_IMPORTS, modules, *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=120)


@pytest.mark.parametrize(("blocked", "driver", "driver_name", "extra"), [
    ("psycopg,psycopg2", "postgresql", "psycopg", "postgres"),
    ("psycopg2", "postgresql+psycopg2", "psycopg2", "postgres"),
    ("psycopg", "postgresql+psycopg", "psycopg", "postgres"),
    ("pymysql,MySQLdb", "mysql", "pymysql", "mysql"),
    ("pymysql", "mysql+pymysql", "pymysql", "mysql"),
])
def test_a_missing_driver_is_one_line_naming_the_extra(workdir: Path, blocked: str, driver: str, driver_name: str,
                                                       extra: str) -> None:
    base = POSTGRES if driver.startswith("postgresql") else MARIADB
    url = with_driver(make_url(base).set(password="s3cret-pw").render_as_string(hide_password=False), driver)
    path = write_study(workdir, tiny_study("cars"))
    result = _cli_without(blocked, "status", str(path), cwd=workdir, url=url)
    assert result.returncode == EXIT_USAGE, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"driver {driver_name}: pip install 'hpsearch[{extra}]'" in lines[0]
    assert "s3cret-pw" not in result.stderr and "***" in lines[0]


def test_postgresql_url_falls_back_to_psycopg2_without_psycopg(workdir: Path) -> None:
    url = require_server(with_driver(POSTGRES, "postgresql"))
    path = write_study(workdir, tiny_study(f"t{uuid.uuid4().hex[:10]}"))
    result = _cli_without("psycopg", "status", str(path), cwd=workdir, url=url)
    assert result.returncode == 0, result.stderr


URL_FORMS = [(POSTGRES, "postgresql"), (POSTGRES, "postgresql+psycopg2"), (POSTGRES, "postgresql+psycopg"),
             (MARIADB, "mysql"), (MARIADB, "mysql+pymysql")]


@pytest.mark.parametrize(("base", "driver"), URL_FORMS, ids=[d for _, d in URL_FORMS])
def test_every_documented_url_runs_a_study_on_its_server(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                          base: str, driver: str) -> None:
    url = require_server(with_driver(base, driver))
    name = f"t{uuid.uuid4().hex[:10]}"
    path = write_study(workdir, tiny_study(name))
    monkeypatch.setenv(ENV_VAR, url)
    try:
        code, out, err = cli("run", str(path))
        assert code == 0, err
        password = make_url(url).password
        assert not password or password not in out + err
        trials = optuna.load_study(study_name=f"{name}/coarse", storage=open_storage(url)).get_trials()
        assert len(trials) == 2 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        code, out, err = cli("status", str(path))
        assert code == 0, err
        assert not password or (password not in out + err and "***" in out)
    finally:
        delete_studies(url, name)


# Limits of the SQL schema: checked up front, for every storage, before any database is touched.

def test_a_study_name_too_long_for_the_schema_is_one_line(workdir: Path) -> None:
    assert MAX_NAME_LENGTH == models.MAX_INDEXED_STRING_LENGTH
    name = "n" * (MAX_NAME_LENGTH - len("/coarse") + 1)
    path = write_study(workdir, tiny_study(name))
    code, _, err = cli("run", str(path))
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and err.startswith("hpsearch: error: name: ") and f"at most {MAX_NAME_LENGTH}" in err
    assert not (workdir / "runs").exists()  # no database was opened
    # The longest stage name counts; at the limit it is accepted.
    study = tiny_study("n" * (MAX_NAME_LENGTH - len("/coarse")))
    code, out, err = cli("validate", str(write_study(workdir, study)))
    assert code == 0, err


def test_a_parameter_name_too_long_for_the_schema_is_one_line(workdir: Path) -> None:
    long_name = "p" * (MAX_NAME_LENGTH + 1)
    path = write_study(workdir, tiny_study("cars", space={long_name: {"type": "float", "low": 0.0, "high": 1.0}}))
    code, _, err = cli("run", str(path))
    assert code == EXIT_USAGE
    assert err.count("\n") == 1 and err.startswith("hpsearch: error: space.pppp") and "513 characters" in err
    assert not (workdir / "runs").exists()


def test_a_space_too_large_for_mysql_text_is_one_line(workdir: Path) -> None:
    choices = [f"choice-{i:05d}-" + "x" * 40 for i in range(2000)]
    space = {"optimizer": {"type": "categorical", "choices": choices}}
    code, _, err = cli("validate", str(write_study(workdir, tiny_study("cars", space=space))))
    assert code == EXIT_USAGE
    assert err.startswith("hpsearch: error: space: is ") and "at most 65535" in err


# SQLite set-up.

def test_sqlite_file_gets_its_folder_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "s.db"
    open_storage(f"sqlite:///{path}")
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _open(url: str) -> None:
    open_storage(url)


def test_processes_opening_a_new_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    # Without care, all of them create Optuna's tables and the losers fail ("already exists").
    context = multiprocessing.get_context("spawn")
    for round_ in range(4):
        url = f"sqlite:///{tmp_path / f'new{round_}.db'}"
        processes = [context.Process(target=_open, args=(url,)) for _ in range(4)]
        for p in processes:
            p.start()
        for p in processes:
            p.join(60)
        assert [p.exitcode for p in processes] == [0, 0, 0, 0]
        assert optuna.storages.RDBStorage(url).get_all_studies() == []


# Faults: what is retried, what ends the run.

def test_unreachable_database_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RETRY_ENV_VAR, "0.5")
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError) as info:
        open_storage("postgresql+psycopg2://u:topsecret@127.0.0.1:1/none")
    assert time.monotonic() - started < 15
    assert "topsecret" not in str(info.value) and "***" in str(info.value)
    assert "\n" not in str(info.value) and "Connection refused" in str(info.value)
    with pytest.raises(StorageError, match="not a database URL"):
        open_storage("nonsense")


def test_an_unreachable_database_exits_3_with_one_line(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RETRY_ENV_VAR, "0.5")
    monkeypatch.setenv(ENV_VAR, "postgresql+psycopg2://u:topsecret@127.0.0.1:1/none")
    code, out, err = cli("status", str(write_study(workdir, tiny_study("cars"))))
    assert code == EXIT_STORAGE
    assert err.count("\n") == 1 and err.startswith("hpsearch: error: storage postgresql+psycopg2://u:***@127.0.0.1:1/none")
    assert "topsecret" not in out + err


def test_a_bad_retry_budget_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(RETRY_ENV_VAR, "soon")
    with pytest.raises(StorageError, match=f"{RETRY_ENV_VAR} must be a number of seconds >= 0, got 'soon'"):
        open_storage(f"sqlite:///{tmp_path / 'x.db'}")


def _locked_error(path: Path) -> sqlalchemy.exc.OperationalError:
    """A real "database is locked" from SQLite: another connection holds the write lock."""
    holder = sqlite3.connect(path)
    holder.execute("CREATE TABLE IF NOT EXISTS t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    engine = sqlalchemy.create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("INSERT INTO t VALUES (1)"))
    except sqlalchemy.exc.OperationalError as exc:
        return exc
    finally:
        holder.rollback()
        holder.close()
        engine.dispose()
    raise AssertionError("the insert was not refused")


def test_classify_real_errors(tmp_path: Path) -> None:
    locked = _locked_error(tmp_path / "locked.db")
    assert "database is locked" in str(locked)
    assert classify(locked) is Fault.TRANSIENT
    wrapped = optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
    wrapped.__cause__ = locked
    assert classify(wrapped) is Fault.TRANSIENT

    path = tmp_path / "ro.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    engine = sqlalchemy.create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    with pytest.raises(sqlalchemy.exc.OperationalError) as info, engine.begin() as conn:
        conn.execute(sqlalchemy.text("INSERT INTO t VALUES (1)"))
    engine.dispose()
    assert "readonly" in str(info.value)
    assert classify(info.value) is Fault.PERSISTENT

    engine = sqlalchemy.create_engine("postgresql+psycopg2://u@127.0.0.1:1/none")
    with pytest.raises(sqlalchemy.exc.OperationalError) as refused:
        engine.connect()
    assert classify(refused.value) is Fault.TRANSIENT

    assert classify(ValueError("not from the storage")) is Fault.OTHER
    assert classify(optuna.exceptions.DuplicatedStudyError()) is Fault.OTHER


def test_a_value_too_long_for_mariadb_is_no_storage_fault() -> None:
    storage = open_storage(require_server(MARIADB))
    name = f"t{uuid.uuid4().hex[:10]}"
    study = optuna.create_study(storage=storage, study_name=name)
    try:
        with pytest.raises(optuna.exceptions.StorageInternalError) as info:
            study.set_user_attr("big", "x" * 70000)  # TEXT holds 65535 bytes
        assert classify(info.value) is Fault.OTHER
    finally:
        optuna.delete_study(study_name=name, storage=storage)


def test_a_transient_fault_is_retried_until_the_budget_then_fails_fast(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    locked = _locked_error(tmp_path / "locked.db")
    calls: list[float] = []

    def always_locked() -> None:
        calls.append(time.monotonic())
        raise locked

    monkeypatch.setenv(RETRY_ENV_VAR, "1")
    with pytest.raises(StorageUnavailableError, match=r"is unavailable \(tried for 1 s to test\): database is locked"):
        storage.call_with_retries("test", always_locked)
    assert len(calls) > 2 and 0.9 < calls[-1] - calls[0] < 3
    # Given up on: the next call tries once instead of waiting out the budget again ...
    calls.clear()
    with pytest.raises(StorageUnavailableError):
        storage.call_with_retries("test", always_locked)
    assert len(calls) == 1
    # ... and a call that reaches the database puts it back in service (a cached answer would not).
    assert storage.call_with_retries("test", lambda x: x + 1, 1) == 2
    assert storage._unavailable
    assert storage.get_all_studies() == []
    calls.clear()
    with pytest.raises(StorageUnavailableError):
        storage.call_with_retries("test", always_locked)
    assert len(calls) > 2


def test_a_persistent_fault_ends_at_once(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    open_storage(f"sqlite:///{path}")  # Optuna's tables
    backend = optuna.storages.RDBStorage(f"sqlite:///file:{path}?mode=ro&uri=true")
    storage = RetryingStorage(backend, f"sqlite:///{path}")
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="attempt to write a readonly database"):
        optuna.create_study(storage=storage, study_name="x")
    assert time.monotonic() - started < 5


# Writes that may have committed before the connection dropped are not repeated blindly.

@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RetryingStorage]:
    if request.param == "sqlite":
        yield open_storage(f"sqlite:///{tmp_path / 's.db'}")
        return
    url = require_server(POSTGRES)
    prefix = f"t{uuid.uuid4().hex[:10]}"
    opened = open_storage(url)
    opened.test_prefix = prefix  # type: ignore[attr-defined]
    yield opened
    delete_studies(url, prefix)


def _lost_after_commit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, whose first call commits and then loses its connection (a real driver error)."""
    calls = 0

    def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        result = fn(*args, **kwargs)
        if calls == 1:
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, sqlite3.OperationalError("database is locked"))
        return result

    return flaky


def _name(storage: RetryingStorage) -> str:
    return f"{getattr(storage, 'test_prefix', 't')}-{uuid.uuid4().hex[:6]}"


def test_a_trial_created_before_the_connection_dropped_is_not_created_twice(storage: RetryingStorage,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    study = optuna.create_study(storage=storage, study_name=_name(storage))
    monkeypatch.setattr(storage, "_create_trial_once", _lost_after_commit(storage._create_trial_once))
    trial = study.ask()
    trial.suggest_float("x", 0, 1)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0] and trials[0].state is TrialState.RUNNING
    assert WRITE_ID_ATTR in trials[0].system_attrs
    study.tell(trial, 1.0)
    assert study.get_trials()[0].state is TrialState.COMPLETE


def test_a_queued_trial_claimed_before_the_connection_dropped_is_ours(storage: RetryingStorage,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    study = optuna.create_study(storage=storage, study_name=_name(storage))
    study.enqueue_trial({"x": 0.25})
    study.enqueue_trial({"x": 0.75})
    monkeypatch.setattr(storage, "_claim_once", _lost_after_commit(storage._claim_once))
    trial = study.ask()
    assert trial.number == 0 and trial.suggest_float("x", 0, 1) == 0.25
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.RUNNING, TrialState.WAITING]


def test_a_trial_finished_before_the_connection_dropped_is_finished_once(storage: RetryingStorage,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    study = optuna.create_study(storage=storage, study_name=_name(storage))
    trial = study.ask()
    monkeypatch.setattr(storage._cached, "set_trial_state_values",
                        _lost_after_commit(storage._cached.set_trial_state_values))
    study.tell(trial, 2.5)  # the repeat would raise UpdateFinishedTrialError if it were sent again
    (frozen,) = study.get_trials()
    assert frozen.state is TrialState.COMPLETE and frozen.value == 2.5


def test_trials_written_together_before_the_connection_dropped_are_written_once(
        storage: RetryingStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    study = optuna.create_study(storage=storage, study_name=_name(storage))
    trials = []
    for i in range(3):
        trial = study.ask()
        storage.defer_writes(trial._trial_id)  # as the stage loop does: parameters and epochs wait for the write
        trial.suggest_float("x", 0, 1)
        trial.report(float(i), 1)
        trials.append(trial)
    writes = [TrialWrite(trials[0]._trial_id, {"a": 1}, heartbeat=True),  # still running
              TrialWrite(trials[1]._trial_id, {"a": 2}, state=TrialState.COMPLETE, values=[1.5]),
              TrialWrite(trials[2]._trial_id, {"a": 3}, state=TrialState.FAIL)]
    real, calls = retrying._create_scoped_session, 0

    @contextlib.contextmanager
    def lost_after_commit(*args: Any, **kwargs: Any) -> Iterator[Any]:
        nonlocal calls
        calls += 1
        with real(*args, **kwargs) as session:
            yield session
        if calls == 1:  # committed, and then the answer is lost
            raise sqlalchemy.exc.OperationalError("COMMIT", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(retrying, "_create_scoped_session", lost_after_commit)
    assert storage.write_trials(writes) == set()
    monkeypatch.undo()
    assert calls == 2
    written = study.get_trials()
    assert [t.state for t in written] == [TrialState.RUNNING, TrialState.COMPLETE, TrialState.FAIL]
    assert [t.user_attrs["a"] for t in written] == [1, 2, 3] and written[1].value == 1.5
    assert all(set(t.params) == {"x"} and t.intermediate_values == {1: float(i)} for i, t in enumerate(written))


def test_a_study_created_before_the_connection_dropped_is_loaded(storage: RetryingStorage,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    name = _name(storage)
    monkeypatch.setattr(storage._cached, "create_new_study", _lost_after_commit(storage._cached.create_new_study))
    study = optuna.create_study(storage=storage, study_name=name)
    assert [s.study_name for s in storage.get_all_studies()].count(name) == 1
    assert optuna.load_study(study_name=name, storage=storage)._study_id == study._study_id


def test_heartbeats_and_stale_trials_go_through_the_proxy(storage: RetryingStorage) -> None:
    study = optuna.create_study(storage=storage, study_name=_name(storage))
    trial = study.ask()
    assert is_heartbeat_enabled(storage) and storage.get_heartbeat_interval() is not None
    storage.record_heartbeat(trial._trial_id)
    assert storage._get_stale_trial_ids(study._study_id) == []
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[0].state is TrialState.RUNNING
    assert isinstance(storage.engine, sqlalchemy.engine.Engine)
