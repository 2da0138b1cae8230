"""What a large stage costs: status, best, export and more trials, at 1k, 10k and 100k trials, SQLite and PostgreSQL.

For each backend and size it builds one stage study of SIZE finished trials shaped like hpsearch's
(a real run creates the stage; the rest is bulk-inserted by tests/bulk.py: 20 intermediate values and
~16 user attributes per trial, 5% failed and retried), then times, each as a fresh process:

- ``hpsearch status``, ``hpsearch best`` and ``hpsearch export --out x.csv``: wall time and peak memory;
- ``hpsearch run`` of SMALL and of BIG more trials (1 epoch of the quickstart MLP each, 1 worker):
  orchestration per trial = (wall(BIG) - wall(SMALL)) / (BIG - SMALL), so start-up cancels out;
  start-up is what is left of the small run;
- plain Optuna, ``study.optimize`` of the same trials (random sampler, hpsearch's training core) on a
  copy of the same stage: its first trial (it reads the whole study) and its median trial after that.

PostgreSQL runs against the server on 127.0.0.1:5432 (database hpsearch_bench, created and dropped); the
builder runs ANALYZE after the bulk load, as autovacuum would shortly after it.

Usage: python scripts/bench_storage.py [--sizes 1000 10000 100000] [--backends sqlite postgresql]
                                       [--small 5] [--big 45] [--optuna-trials 10] [--sampler random]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import os
from pathlib import Path
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/bulk.py builds the studies
PG_SERVER = "postgresql+psycopg://postgres@127.0.0.1:5432"
PG_DB = "hpsearch_bench"


def study_dict(storage: str, trials: int, sampler: str) -> dict[str, Any]:
    return {
        "name": "bench", "storage": storage, "metric": "val_rmse", "seed": 0,
        "data": {"csv": str(ROOT / "studies" / "data" / "cars93.csv"), "target": "Price", "task": "regression",
                 "drop": ["Model", "Make", "Min.Price", "Max.Price"]},
        "model": {"kind": "mlp", "hidden": [64, 32]},
        "train": {"epochs": 1, "device": "cpu"},
        "space": {
            "lr": {"type": "float", "low": 1.0e-5, "high": 1.0, "log": True},
            "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
            "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-1, "log": True},
            "optimizer": {"type": "categorical", "choices": ["sgd", "momentum", "adam"]},
        },
        "stages": [{"name": "s", "sampler": sampler, "trials": trials,
                    **({"grid": {"lr": 400, "dropout": 50, "weight_decay": 50}} if sampler == "grid" else {})}],
        "executor": {"kind": "local", "workers": 1},
    }


def fresh_storage(backend: str, tmp: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp / 'bench.db'}"
    _pg_database(create=True)
    return f"{PG_SERVER}/{PG_DB}"


def _pg_database(create: bool) -> None:
    """Drop the benchmark's PostgreSQL database, and create it afresh when ``create``."""
    import sqlalchemy as sa

    admin = sa.create_engine(f"{PG_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)"))
        if create:
            conn.execute(sa.text(f"CREATE DATABASE {PG_DB}"))
    admin.dispose()


def build(url: str, path: Path, size: int, sampler: str) -> tuple[int, int]:
    """A stage of ``size`` slots filled with finished trials; returns (slots, trials stored)."""
    import optuna

    from hpsearch.spec import parse_spec
    from hpsearch.storage import open_storage
    from tests.bulk import bulk_add, set_budget

    path.write_text(yaml.safe_dump(study_dict(url, 1, sampler)))
    if run_cli(["run", str(path)])[0] != 0:
        raise SystemExit("the first trial of the stage failed")
    spec = parse_spec(study_dict(url, 1, sampler))
    storage = open_storage(url)
    study = optuna.load_study(study_name=spec.study_name(spec.stages[0]), storage=storage)
    # Slots fill 1 + the bulk trials that did not fail; add until the stage holds ``size`` slots.
    slots, added = 1, 0
    while slots < size:
        missing = size - slots
        slots += bulk_add(storage.engine, study, spec.space, missing, seed=added)  # type: ignore[attr-defined]
        added += missing
    set_budget(study, slots)
    if url.startswith("postgresql"):
        # What autovacuum does within a minute or so of a bulk load: without it the planner guesses a few
        # hundred rows per table, and the first commands' times depend on when autovacuum gets to it.
        with storage.engine.begin() as conn:  # type: ignore[attr-defined]
            conn.exec_driver_sql("ANALYZE")
    return slots, storage.get_n_trials(study._study_id)


def run_cli(args: Sequence[str], cwd: Path | None = None) -> tuple[int, float, float]:
    """``python -m hpsearch ARGS`` as a fresh process: (exit status, seconds, peak memory in MB)."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "hpsearch", *args], cwd=cwd or ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(process.pid, 0)
    took = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        sys.stderr.write((process.stderr.read() if process.stderr else b"").decode()[-2000:])
    return process.returncode, took, usage.ru_maxrss / 1024


def optuna_trials(url: str, trials: int) -> tuple[float, float]:
    """Plain Optuna's first trial and median later trial (seconds) on the stage, in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--optuna", url, str(trials)], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    first, median = out.stdout.split()[-2:]
    return float(first), float(median)


def optuna_one(url: str, trials: int) -> None:
    """In this process: ``study.optimize`` on the stage with the training core, timing each trial."""
    import optuna

    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_overhead import load, optuna_objective

    spec, data = load(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="bench/s", storage=url, sampler=optuna.samplers.RandomSampler(seed=0))
    took: list[float] = []
    start = [time.perf_counter()]

    def lap(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        now = time.perf_counter()
        took.append(now - start[0])
        start[0] = now

    study.optimize(optuna_objective(spec, data), n_trials=trials, callbacks=[lap])
    print(f"{took[0]:.4f} {statistics.median(took[1:]):.4f}")


def measure(backend: str, size: int, args: argparse.Namespace) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        url = fresh_storage(backend, tmp)
        path = tmp / "study.yaml"
        started = time.perf_counter()
        slots, stored = build(url, path, size, args.sampler)
        row = {"backend": backend, "size": f"{size:,}", "build": f"{time.perf_counter() - started:.0f} s"}
        for command in ("status", "best"):
            code, took, mb = run_cli([command, str(path)])
            row[command] = f"{took:.2f} s, {mb:.0f} MB" if code == 0 else f"exit {code}"
        code, took, mb = run_cli(["export", str(path), "--out", str(tmp / "x.csv")])
        row["export"] = f"{took:.2f} s ({stored / took:,.0f}/s), {mb:.0f} MB" if code == 0 else f"exit {code}"
        walls: dict[int, float] = {}
        for more in (args.small, args.big):
            trials = slots + sum(walls) + more  # each run adds to what the previous ones ran
            code, took, mb = run_cli(["run", str(path), "--set", f"stages.0.trials={trials}"])
            if code != 0:
                raise SystemExit(f"hpsearch run failed at {backend} {size}")
            walls[more] = took
            row["run MB"] = f"{mb:.0f} MB"
        per_trial = (walls[args.big] - walls[args.small]) / (args.big - args.small)
        row["run per trial"] = f"{per_trial * 1000:.0f} ms"
        row["run start-up"] = f"{walls[args.small] - args.small * per_trial:.1f} s"
        first, median = optuna_trials(url, args.optuna_trials)
        row["optuna first trial"] = f"{first:.2f} s"
        row["optuna per trial"] = f"{median * 1000:.0f} ms"
        if backend == "postgresql":
            _pg_database(create=False)  # a 100,000-trial study is gigabytes on the server
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--backends", nargs="+", choices=["sqlite", "postgresql"], default=["sqlite", "postgresql"])
    parser.add_argument("--small", type=int, default=5, help="trials of the small run")
    parser.add_argument("--big", type=int, default=45, help="trials of the big run")
    parser.add_argument("--optuna-trials", type=int, default=10, help="trials plain Optuna runs")
    parser.add_argument("--sampler", choices=["random", "grid", "tpe"], default="random")
    parser.add_argument("--optuna", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.optuna:
        optuna_one(args.optuna[0], int(args.optuna[1]))
        return
    print(f"sampler {args.sampler}; hpsearch run: {args.small} and {args.big} more trials; "
          f"plain Optuna: {args.optuna_trials} more trials\n")
    rows = []
    for backend in args.backends:
        for size in args.sizes:
            rows.append(measure(backend, size, args))
            if len(rows) == 1:
                print("| " + " | ".join(rows[0]) + " |")
                print("|" + " --- |" * len(rows[0]))
            print("| " + " | ".join(rows[-1].values()) + " |", flush=True)


if __name__ == "__main__":
    main()
