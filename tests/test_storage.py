"""Storage URLs: precedence, masking, SQLite set-up, and the real PostgreSQL and MariaDB servers."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
import sqlite3
import uuid

import optuna
from optuna.trial import TrialState
import pytest
from sqlalchemy.engine import make_url

from hpsearch.errors import StorageError
from hpsearch.storage import DEFAULT_URL, ENV_VAR, mask_url, open_storage, resolve_url
from tests.helpers import base_study, cli, write_study

# The machine's real servers (README: Running the tests). The PostgreSQL URL carries a password, which
# trust authentication ignores, so that the tests can check it never reaches the output.
POSTGRES = os.environ.get("HPSEARCH_TEST_POSTGRES", "postgresql+psycopg2://postgres:s3cret-pw@127.0.0.1:5432/test")
MARIADB = os.environ.get("HPSEARCH_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")


def test_precedence_env_then_file_then_default() -> None:
    assert resolve_url(None, {}) == DEFAULT_URL
    assert resolve_url("sqlite:///a.db", {}) == "sqlite:///a.db"
    assert resolve_url("sqlite:///a.db", {ENV_VAR: "sqlite:///b.db"}) == "sqlite:///b.db"


def test_mask_url_hides_passwords_only() -> None:
    assert mask_url("postgresql://bob:hunter2@db.example:5432/hp") == "postgresql://bob:***@db.example:5432/hp"
    assert "hunter2" not in mask_url("not a url but bob:hunter2@host")
    assert mask_url("sqlite:///runs/x.db") == "sqlite:///runs/x.db"


def test_sqlite_file_gets_its_folder_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "s.db"
    open_storage(f"sqlite:///{path}")
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        open_storage("postgresql+psycopg2://u:topsecret@127.0.0.1:1/none")
    assert "topsecret" not in str(info.value) and "***" in str(info.value)
    with pytest.raises(StorageError, match="not a database URL"):
        open_storage("nonsense")


@pytest.mark.parametrize("url", [POSTGRES, MARIADB], ids=["postgresql", "mariadb"])
def test_a_study_runs_on_a_real_database_server(workdir: Path, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    study = base_study(name=name, stages=[{"name": "coarse", "sampler": "random", "trials": 2}])
    path = write_study(workdir, study)
    monkeypatch.setenv(ENV_VAR, url)
    code, out, err = cli("run", str(path))
    try:
        assert code == 0, err
        password = make_url(url).password
        assert not password or password not in out + err
        trials = optuna.load_study(study_name=f"{name}/coarse", storage=url).get_trials()
        assert len(trials) == 2 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        code, out, err = cli("status", str(path))
        assert code == 0
        assert not password or (password not in out + err and "***" in out)
    finally:
        optuna.delete_study(study_name=f"{name}/coarse", storage=url)


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
