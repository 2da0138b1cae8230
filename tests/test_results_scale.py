"""status, best and export on a stage of thousands of trials: SQL that never reads every trial, with
answers equal to Optuna's own (``get_trials``, ``best_trial``, ``trials_dataframe``).

A real run makes the stages; the coarse one then grows by bulk inserts (tests/bulk.py), and a few
trials of the kinds a run leaves behind are added through Optuna: one RUNNING, one WAITING (queued,
with a dict attribute), one with an infinite value. Against a SQLite file and the machine's real
PostgreSQL and MariaDB servers.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
import csv
from dataclasses import dataclass
import io
import json
import math
from pathlib import Path
import subprocess
import sys
import textwrap
import time
from typing import Any
import uuid

import optuna
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
import pandas as pd
import pytest
import sqlalchemy as sa

from hpsearch import export as exporting
from hpsearch import results
from hpsearch.coordination import CLAIMS
from hpsearch.outputs import OutputError
from hpsearch.retrying import RetryingStorage
from hpsearch.spec import StudySpec, load_spec
from hpsearch.storage import database_url, open_storage
from tests.bulk import bulk_add
from tests.helpers import CARS, ROOT, base_study, cli, write_study
from tests.servers import MARIADB, POSTGRES, require_server

BULK = 3_000
STAGES = ("coarse", "fine")  # run; a third, "polish", never starts


@dataclass(frozen=True)
class Built:
    """A study of two started stages and one not started, and what Optuna itself reads of it."""

    path: Path
    url: str
    name: str
    trials: dict[str, list[FrozenTrial]]  # by stage, as get_trials gives them
    best: dict[str, FrozenTrial]
    frame: pd.DataFrame  # what export wrote before it streamed

    def spec(self) -> StudySpec:
        return load_spec(str(self.path), [])


@pytest.fixture(scope="module")
def zone() -> Iterator[None]:
    """A local time zone away from UTC: Optuna stores UTC and shows local time, and so must the export."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TZ", "America/New_York")
        time.tzset()
        yield
    time.tzset()


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mariadb"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, zone: None) -> Iterator[Built]:
    folder = tmp_path_factory.mktemp(request.param)
    url = {"sqlite": f"sqlite:///{folder / 'cars.db'}", "postgresql": POSTGRES, "mariadb": MARIADB}[request.param]
    if request.param != "sqlite":
        require_server(url)
    name = f"t{uuid.uuid4().hex[:10]}"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HPSEARCH_STORAGE", raising=False)
        mp.chdir(folder)
        try:
            yield _build(folder, url, name)
        finally:
            if request.param != "sqlite":
                _delete(url, name)


def _build(folder: Path, url: str, name: str) -> Built:
    study = base_study(name=name, storage=url, data={**base_study()["data"], "csv": str(CARS)},
                       stages=[{"name": "coarse", "sampler": "random", "trials": 1},
                               {"name": "fine", "sampler": "random", "trials": 2}],
                       executor={"kind": "local", "workers": 1})
    path = write_study(folder, study)
    code, _, err = cli("run", str(path))
    assert code == 0, err
    storage = open_storage(url)
    coarse, fine = (optuna.load_study(study_name=f"{name}/{stage}", storage=storage) for stage in STAGES)
    _add_odd_trials(coarse, fine)
    bulk_add(storage.engine, coarse, load_spec(str(path), []).space, BULK)
    study["stages"].append({"name": "polish", "sampler": "random", "trials": 2})
    write_study(folder, study)
    # Optuna's own reading, through a storage of its own (not hpsearch's).
    studies = {stage: optuna.load_study(study_name=f"{name}/{stage}", storage=url) for stage in STAGES}
    return Built(path, url, name, {stage: s.get_trials() for stage, s in studies.items()},
                 {stage: s.best_trial for stage, s in studies.items()}, _expected_frame(studies))


def _expected_frame(studies: dict[str, optuna.Study]) -> pd.DataFrame:
    """What ``hpsearch export`` wrote before it streamed: Optuna's frames concatenated, lists as text."""
    frames = []
    for stage, study in studies.items():
        frame = study.trials_dataframe(multi_index=False)
        # Optuna names the column after the study's metric (value_val_rmse); hpsearch's export keeps "value".
        frame = frame.rename(columns={f"value_{name}": "value" for name in study.metric_names or []})
        # Kept models' artifact attributes are left out of the export (a column per model otherwise).
        frame = frame.drop(columns=[c for c in frame.columns if c.startswith("system_attrs_artifacts:")])
        frame.insert(0, "stage", stage)
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    for column in frame.columns:
        if frame[column].map(lambda v: isinstance(v, (list, dict))).any():
            frame[column] = frame[column].map(
                lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    return frame


def _delete(url: str, name: str) -> None:
    """Delete the stages from the shared server, their trials in bulk (Optuna deletes them one by one)."""
    engine = sa.create_engine(database_url(url))
    trials = models.TrialModel.__table__
    try:
        with engine.begin() as conn:
            ids = conn.execute(sa.select(models.StudyModel.__table__.c.study_id)
                               .where(models.StudyModel.__table__.c.study_name.like(f"{name}/%"))).scalars().all()
            ours = sa.select(trials.c.trial_id).where(trials.c.study_id.in_(ids)).scalar_subquery()
            for model in (models.TrialValueModel, models.TrialParamModel, models.TrialUserAttributeModel,
                          models.TrialSystemAttributeModel, models.TrialIntermediateValueModel,
                          models.TrialHeartbeatModel):
                table = model.__table__
                conn.execute(sa.delete(table).where(table.c.trial_id.in_(ours)))
            conn.execute(sa.delete(trials).where(trials.c.study_id.in_(ids)))
            conn.execute(sa.delete(CLAIMS).where(CLAIMS.c.study_id.in_(ids)))
    finally:
        engine.dispose()
    storage = open_storage(url, create=False)
    for stage in STAGES:
        optuna.delete_study(study_name=f"{name}/{stage}", storage=storage)


def _add_odd_trials(coarse: optuna.Study, fine: optuna.Study) -> None:
    running = coarse.ask()
    running.suggest_float("lr", 1e-4, 1e-1, log=True)
    for key, value in (("host", "elsewhere"), ("pid", 4242), ("val_mae", float("nan")), ("note", {"why": "odd"})):
        running.set_user_attr(key, value)
    infinite = coarse.ask()
    infinite.suggest_categorical("optimizer", ["sgd", "momentum", "adam"])
    coarse.tell(infinite, float("inf"))
    coarse.enqueue_trial({"lr": 0.01, "optimizer": "adam"}, user_attrs={"queued_by": "test"})  # stays WAITING
    # A column only the second stage has: it comes after the first stage's columns, as pandas.concat puts it.
    late = fine.ask()
    late.set_user_attr("only_in_fine", 1.5)


def _storage(built: Built) -> RetryingStorage:
    return open_storage(built.url, create=False)


@pytest.fixture
def reads_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fails the test if the readers write or load a whole stage; yields the SQL they run."""
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    def whole_stage(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("read every trial of a stage")

    monkeypatch.setattr(RetryingStorage, "get_all_trials", whole_stage)
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)
    writes = [s for s in statements if not s.lstrip().upper().startswith(("SELECT", "PRAGMA", "SHOW", "DESCRIBE", "SET LOCAL"))]
    assert not writes, writes


def test_status_counts_and_best_agree_with_optuna(built: Built, reads_only: list[str]) -> None:
    code, out, err = cli("status", str(built.path))
    assert code == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    for stage in STAGES:
        counts, best = Counter(t.state for t in built.trials[stage]), built.best[stage]
        expected = " ".join(str(counts[s]) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
                                                     TrialState.RUNNING))
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items())
        assert f" {expected} {best.value:.6g} (#{best.number}) " in " ".join(lines[stage].split())
        assert lines[stage].endswith(f"  {params}")
    assert "not started" in lines["polish"]

    rows = {r.stage.name: r for r in results.status(built.spec(), _storage(built))}
    for stage in STAGES:
        assert rows[stage].counts == Counter(t.state for t in built.trials[stage])  # WAITING too
        got, best = rows[stage].best, built.best[stage]
        assert got is not None and (got.number, got.value, got.params, got.user_attrs) == (
            best.number, best.value, best.params, best.user_attrs)
    assert rows["coarse"].counts[TrialState.WAITING] == 1 and not rows["polish"].started
    # Counts are one GROUP BY a stage (here for the CLI and then the call), never a query per trial.
    assert sum("GROUP BY" in s for s in reads_only) == 2 * len(STAGES)


def test_best_agrees_with_the_best_of_every_stage(built: Built, reads_only: list[str]) -> None:
    stage, best = min(built.best.items(), key=lambda c: c[1].value)  # type: ignore[arg-type, return-value]
    code, out, err = cli("best", str(built.path))
    assert code == 0, err
    expected = {"stage": stage, "trial": best.number, "value": best.value, "params": best.params,
                "metrics": {k: best.user_attrs[k] for k in best.user_attrs["metrics"] if k in best.user_attrs}}
    assert json.loads(out) == expected
    assert results.best_record(built.spec(), _storage(built)) == expected


def test_live_processes_names_the_owner_of_the_running_trials(built: Built, reads_only: list[str]) -> None:
    found = results.live_processes(built.spec(), _storage(built))
    assert results.LiveProcess("elsewhere", 4242, "coarse", 1, None) in found
    # The fine stage's RUNNING trial says nobody owns it.
    assert results.LiveProcess("?", -1, "fine", 1, None) in found
    assert sum(p.running for p in found) == 2


def _read_csv(source: Any) -> pd.DataFrame:
    """A CSV export read back, its datetime and duration text parsed (pandas reads them as text)."""
    frame = pd.read_csv(source)
    for column in ("datetime_start", "datetime_complete"):
        frame[column] = pd.to_datetime(frame[column], format="ISO8601")
    frame["duration"] = pd.to_timedelta(frame["duration"])
    return frame


@pytest.mark.parametrize("chunk", [exporting.CHUNK_TRIALS, 700])
def test_export_equals_optunas_trials_dataframe(built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                chunk: int, reads_only: list[str]) -> None:
    monkeypatch.setattr(exporting, "CHUNK_TRIALS", chunk)  # 700: chunk edges fall between a column's types
    expected = built.frame
    assert len(expected) > BULK and expected["datetime_start"].dt.tz is None
    assert list(expected.columns[-2:]) == ["state", "user_attrs_only_in_fine"]

    code, _, err = cli("export", str(built.path), "--out", str(tmp_path / "t.parquet"))
    assert code == 0 and f"wrote {len(expected)} trial(s)" in err, err
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), expected)
    pd.testing.assert_frame_equal(results.trials_frame(built.spec(), _storage(built)), expected)

    code, _, err = cli("export", str(built.path), "--out", str(tmp_path / "t.csv"))
    assert code == 0 and f"wrote {len(expected)} trial(s)" in err, err
    pd.testing.assert_frame_equal(_read_csv(tmp_path / "t.csv"), _read_csv(io.StringIO(expected.to_csv(index=False))))
    with (tmp_path / "t.csv").open(newline="") as text:  # NaN is an empty cell, as pandas writes it
        assert not any(cell.lower() == "nan" for row in csv.reader(text) for cell in row)
    assert not list(tmp_path.glob(".*partial"))

    # Read in chunks: one query of the trials per chunk (in this process with one worker), and one per
    # stage that finds the chunks' edges.
    chunks = sum(-(-len(trials) // chunk) for trials in built.trials.values())
    monkeypatch.setattr(exporting, "MAX_WORKERS", 1)
    reads_only.clear()
    assert results.export(built.spec(), _storage(built), tmp_path / "again.csv") == len(expected)
    assert sum("trials.datetime_start" in s for s in reads_only) == chunks
    assert sum("row_number()" in s for s in reads_only) == len(STAGES)
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "t.csv").read_bytes()


def test_an_export_that_fails_leaves_no_file(built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setitem(exporting._TEXT, "datetime_start", broken)
    with pytest.raises(OutputError, match="t.csv: cannot be written: disk full"):  # one line, not a traceback
        results.export(built.spec(), _storage(built), tmp_path / "t.csv")
    assert list(tmp_path.iterdir()) == []


def test_export_of_values_of_mixed_kinds() -> None:
    chunks = [exporting.Chunk("s", 2, {"a": [1, None], "b": [1, 2.5], "c": [True, None]}),
              exporting.Chunk("s", 2, {"a": ["x", 2], "b": [None, 3], "c": [None, None]})]
    columns = ["stage", "a", "b", "c"]
    frame = exporting.combined(columns, (exporting.arrow_chunk(columns, c) for c in chunks)).to_pandas()
    # Ints and text in one column: text, as a CSV has it; ints with floats: floats; a chunk without values: empty.
    pd.testing.assert_series_equal(frame["a"], pd.Series(["1", None, "x", "2"], name="a"))
    pd.testing.assert_series_equal(frame["b"], pd.Series([1.0, 2.5, None, 3.0], name="b"))
    assert frame["c"].tolist() == [True, None, None, None]


@pytest.mark.parametrize("workers", [1, 3])
def test_export_of_a_study_alone_in_its_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    # Trial ids 1..n all the study's: its keys are found by id range, without the join the others take.
    url = f"sqlite:///{tmp_path / 'alone.db'}"
    study = optuna.create_study(study_name="alone/s", storage=url)
    for i in range(41):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        trial.suggest_int("n", 1, 9)
        trial.suggest_categorical("c", ["a", "b"])
        trial.set_user_attr("k", i)
        if i % 7 == 0:
            trial.set_user_attr("rare", [i, "seven"])
        study.tell(trial, float(i) if i % 5 else None, state=TrialState.COMPLETE if i % 5 else TrialState.FAIL)
    monkeypatch.setattr(exporting, "CHUNK_TRIALS", 8)  # 6 chunks over 3 processes
    storage = open_storage(url, create=False)
    stage = [("s", study._study_id)]
    expected = _expected_frame({"s": study})
    pd.testing.assert_frame_equal(exporting.trials_frame(storage, stage, workers=workers), expected)
    assert exporting.export(storage, stage, tmp_path / "alone.csv", workers=workers) == len(expected)
    pd.testing.assert_frame_equal(_read_csv(tmp_path / "alone.csv"), _read_csv(io.StringIO(expected.to_csv(index=False))))


def test_export_runs_its_parts_in_processes_of_their_own(tmp_path: Path) -> None:
    # In a fresh interpreter, with no other thread; one with threads of its own stays in-process.
    code = textwrap.dedent("""
        import os, sys, threading
        from hpsearch.export import in_processes
        from hpsearch.storage import open_storage

        storage = open_storage(sys.argv[1])
        pids = in_processes(storage, [os.getpid] * 3)
        assert len(set(pids)) == 3 and os.getpid() not in pids, pids
        try:
            in_processes(storage, [os.getpid, lambda: 1 // 0])
        except ZeroDivisionError:
            pass
        else:
            raise AssertionError("the error of a call in another process was not raised")
        threading.Thread(target=threading.Event().wait, args=(5,), daemon=True).start()
        assert in_processes(storage, [os.getpid] * 2) == [os.getpid()] * 2
    """)
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{tmp_path / 'x.db'}"], check=True, cwd=ROOT)
