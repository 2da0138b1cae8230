"""``hpsearch dashboard``: optuna-dashboard served on a study's storage, read-only, on loopback by default;
and the stage studies' metric names, which the dashboard shows instead of "Objective 0"."""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import json
from pathlib import Path
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from typing import Any
import urllib.error
import urllib.request
import uuid
import warnings

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState
import pytest

from hpsearch import dashboard
from hpsearch.errors import StorageUnavailableError
from hpsearch.spec import load_spec
from hpsearch.stages import open_stage_study
from hpsearch.storage import open_storage
from tests.browser import artifact_path, load_page, require_chromium
from tests.helpers import base_study, cli, process_env, start_run, write_study
from tests.servers import MARIADB, POSTGRES, require_server

DB = "sqlite:///runs/cars.db"
START_S = 180  # a loaded machine takes a while to import torch, optuna and the dashboard


def _study(trials: int) -> dict[str, Any]:
    return base_study(stages=[{"name": "coarse", "sampler": "random", "trials": trials}],
                      executor={"kind": "local", "workers": 1})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _dashboard(path: Path, cwd: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """``hpsearch dashboard PATH --port P ARGS`` as a process, answering on 127.0.0.1:P; stopped with SIGTERM."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "hpsearch", "dashboard", str(path), "--port", str(port), *args],
                               cwd=cwd, env=process_env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + START_S
        while True:
            if process.poll() is not None:
                raise AssertionError(f"the dashboard ended with {process.returncode}: {process.communicate()}")
            try:
                _get(port, "/api/studies")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("the dashboard did not answer") from None
                time.sleep(0.2)
        yield process, port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as response:
        return json.loads(response.read())


def _study_id(port: int, name: str) -> int:
    return next(int(s["study_id"]) for s in _get(port, "/api/studies")["study_summaries"] if s["study_name"] == name)


def _dump(path: Path) -> list[str]:
    """Every row of the SQLite file, read-only."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        return list(conn.iterdump())


def test_the_dashboard_shows_the_study_and_its_metric_in_a_browser(workdir: Path) -> None:
    require_chromium()
    path = write_study(workdir, _study(2))
    assert cli("run", str(path))[0] == 0
    before = _dump(workdir / "runs" / "cars.db")
    with _dashboard(path, workdir) as (process, port):
        study_id = _study_id(port, "cars/coarse")
        home = load_page(f"http://127.0.0.1:{port}/dashboard/", wait_for_text="cars/coarse", timeout=90,
                         screenshot=artifact_path("dashboard-home.png"))
        assert home.console_errors == ()
        page = load_page(f"http://127.0.0.1:{port}/dashboard/studies/{study_id}", wait_for_text="val_rmse",
                         timeout=90, screenshot=artifact_path("dashboard-study.png"))
        assert page.console_errors == () and "cars/coarse" in page.text
        # The history plot's axis is titled by the metric's name (the study file's text also holds it).
        assert re.search(r'class="ytitle"[^>]*>val_rmse<', page.html), page.text[:500]
        assert "Objective 0" not in page.text
        # The kept model (keep: best) is listed as the best trial's artifact, and served.
        trials = _get(port, f"/api/studies/{study_id}?after=0")["trials"]
        listed = [(t, a) for t in trials for a in t.get("artifacts", [])]
        assert [a["filename"] for _, a in listed] == ["model.pt"]
        trial, artifact = listed[0]
        url = f"http://127.0.0.1:{port}/artifacts/{study_id}/{trial['trial_id']}/{artifact['artifact_id']}"
        with urllib.request.urlopen(url, timeout=30) as response:
            assert len(response.read()) > 1000
        # Read-only: editing a note is refused, and nothing reaches the file.
        note = urllib.request.Request(f"http://127.0.0.1:{port}/api/studies/{study_id}/note", method="PUT",
                                      data=json.dumps({"version": 1, "body": "edited"}).encode(),
                                      headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(note, timeout=30)
    out, err = process.communicate()
    assert process.returncode == 0, err
    lines = err.splitlines()
    assert lines[0] == f"hpsearch: dashboard of study cars at http://127.0.0.1:{port}/ (read-only; Ctrl-C stops it)"
    assert lines[-1] == "hpsearch: dashboard stopped" and "warning" not in err
    assert _dump(workdir / "runs" / "cars.db") == before


def test_a_run_beside_the_dashboard_finishes_undisturbed(workdir: Path) -> None:
    path = write_study(workdir, _study(1))
    assert cli("run", str(path))[0] == 0  # the database the dashboard opens
    path = write_study(workdir, {**_study(8), "executor": {"kind": "local", "workers": 2}})
    with _dashboard(path, workdir) as (dash, port):
        study_id = _study_id(port, "cars/coarse")
        run = start_run(path, workdir)
        polls = 0
        try:
            while run.poll() is None:
                detail = _get(port, f"/api/studies/{study_id}")
                assert detail["objective_names"] == ["val_rmse"]
                _get(port, "/api/studies")
                polls += 1
                time.sleep(0.1)
            out, err = run.communicate(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
        last = _get(port, f"/api/studies/{study_id}")
    assert run.returncode == 0, err
    assert "database is locked" not in err + dash.communicate()[1]
    assert polls >= 5
    trials = optuna.load_study(study_name="cars/coarse", storage=DB).trials
    assert len(trials) == 8 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    assert len(last["trials"]) == 8


def test_a_host_beyond_loopback_is_served_with_a_warning(workdir: Path) -> None:
    path = write_study(workdir, _study(1))
    assert cli("run", str(path))[0] == 0
    with _dashboard(path, workdir, "--host", "0.0.0.0") as (process, port):
        assert _study_id(port, "cars/coarse") >= 0  # reached on 127.0.0.1 too
    _, err = process.communicate()
    assert process.returncode == 0
    assert err.splitlines()[0] == ("hpsearch: warning: --host 0.0.0.0 lets other machines reach the dashboard, "
                                   "which has no authentication")


@pytest.mark.parametrize("port", ["0", "65536", "http", "80.5"])
def test_a_bad_port_is_one_line_naming_the_range(workdir: Path, port: str) -> None:
    path = write_study(workdir, _study(1))
    assert cli("dashboard", str(path), "--port", port) == (
        2, "", f"hpsearch: error: --port must be an integer from 1 to 65535, got {port!r}\n")


def test_without_optuna_dashboard_it_names_the_extra(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # how Python marks a module not importable
    path = write_study(workdir, _study(1))
    assert cli("dashboard", str(path)) == (
        2, "", "hpsearch: error: hpsearch dashboard needs optuna-dashboard: pip install 'hpsearch[dashboard]'\n")


def test_nothing_to_show_before_a_run(workdir: Path) -> None:
    code, _, err = cli("dashboard", str(write_study(workdir, _study(1))))
    assert code == 2 and "does not exist yet" in err and not (workdir / "runs" / "cars.db").exists()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost"])
def test_loopback_hosts(host: str) -> None:
    assert dashboard.is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "", "no-such-host.invalid"])
def test_hosts_beyond_loopback(host: str) -> None:
    assert not dashboard.is_loopback(host)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_the_dashboards_storage_refuses_writes_and_reads_the_writers(kind: str, tmp_path: Path) -> None:
    url = {"sqlite": f"sqlite:///{tmp_path / 'd.db'}", "postgresql": POSTGRES, "mariadb": MARIADB}[kind]
    writer = open_storage(url if kind == "sqlite" else require_server(url))
    name = f"dashboard-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=writer)
    try:
        reader = dashboard.read_only(open_storage(url, create=False))
        study_id = reader.get_study_id_from_name(name)
        with pytest.raises(StorageUnavailableError):
            reader.set_study_user_attr(study_id, "note", "edited")
        with pytest.raises(StorageUnavailableError):
            reader.create_new_study([StudyDirection.MINIMIZE], f"{name}-new")
        study.set_user_attr("seen", 1)  # the writer is not held up, and the reader sees its writes
        assert reader.get_study_user_attrs(study_id) == {"seen": 1}
        assert name + "-new" not in {s.study_name for s in reader.get_all_studies()}
    finally:
        optuna.delete_study(study_name=name, storage=writer)


def test_a_stage_study_names_its_metric_also_when_created_before(workdir: Path) -> None:
    spec = load_spec(write_study(workdir, _study(1)))
    (workdir / "runs").mkdir()
    storage = open_storage(DB)
    # A stage created by an hpsearch that did not name the metric yet.
    optuna.create_study(study_name="cars/coarse", storage=storage, direction="minimize")
    assert optuna.load_study(study_name="cars/coarse", storage=DB).metric_names is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna's ExperimentalWarning is ours to silence
        study = open_stage_study(spec, spec.stages[0], storage)
    assert study.metric_names == ["val_rmse"]
    assert optuna.load_study(study_name="cars/coarse", storage=DB).metric_names == ["val_rmse"]
