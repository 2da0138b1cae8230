"""What a trial costs the stage loop, by sampler and by how much history TPE and the pruner model.

Builds a stage of SIZE finished trials (tests/bulk.py), then runs MORE trials on it in this process
with an executor that trains nothing (each trial reports EPOCHS epochs at once), so only
orchestration is timed: claims, sampling, pruning, storage writes. Prints milliseconds and SQL
statements per trial for each sampler and ``history.recent`` setting.

Usage: python scripts/bench_history.py [--sizes 100 20000] [--samplers random grid tpe]
                                       [--recent 100 1000 5000] [--more 100] [--epochs 3] [--pruner median]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
import sys
import tempfile
import time
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/bulk.py builds the studies


class _Clock:
    """Times trials after the first few (start-up is not per trial) and counts their SQL statements."""

    def __init__(self, engine: Any, skip: int = 10) -> None:
        import sqlalchemy as sa

        from hpsearch.stages import RunListener

        self.statements, self.ended, self.skip = 0, 0, skip
        self.start: tuple[float, int] | None = None
        sa.event.listen(engine, "before_cursor_execute", self._count)
        clock = self

        class Listener(RunListener):
            def on_trial_end(self, stage: Any, trial: Any, done: int, best: Any) -> None:
                clock.ended += 1
                if clock.ended == clock.skip:
                    clock.start = (time.perf_counter(), clock.statements)

        self.listener = Listener()

    def _count(self, *args: Any) -> None:
        self.statements += 1

    def per_trial(self) -> tuple[float, float]:
        assert self.start is not None
        trials = self.ended - self.skip
        return (time.perf_counter() - self.start[0]) / trials * 1000, (self.statements - self.start[1]) / trials


def measure(size: int, sampler: str, recent: int, more: int, epochs: int, pruner: str, tmp: Path) -> tuple[float, float]:
    import optuna

    from hpsearch.spec import parse_spec
    from hpsearch.stages import run_study
    from hpsearch.storage import open_storage
    from tests.bulk import InstantExecutor, bulk_add, set_budget
    from tests.helpers import base_study

    url = f"sqlite:///{tmp / f'{sampler}-{size}-{recent}.db'}"
    raw = base_study(storage=url, pruner={"kind": pruner})
    raw["data"]["csv"] = str(ROOT / "studies" / "data" / "cars93.csv")
    raw["space"].pop("momentum")
    stage = {"name": "s", "sampler": sampler, "trials": 1, "history": {"recent": recent, "best": max(1, recent // 10)},
             **({"grid": {"lr": 40_000}} if sampler == "grid" else {})}  # 240,000 points
    raw["stages"] = [stage]
    storage = open_storage(url)
    run_study(parse_spec(raw), storage, executor=InstantExecutor(epochs=epochs))
    study = optuna.load_study(study_name="cars/s", storage=storage)
    slots = 1 + (bulk_add(storage.engine, study, parse_spec(raw).space, size - 1) if size > 1 else 0)  # type: ignore[attr-defined]
    set_budget(study, slots)
    stage["trials"] = slots + more
    storage = open_storage(url)
    clock = _Clock(storage.engine)  # type: ignore[attr-defined]
    run_study(parse_spec(raw), storage, listener=clock.listener, executor=InstantExecutor(epochs=epochs))
    return clock.per_trial()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 20_000])
    parser.add_argument("--samplers", nargs="+", choices=["random", "grid", "tpe"], default=["random", "grid", "tpe"])
    parser.add_argument("--recent", type=int, nargs="+", default=[1000], help="history.recent values (best: a tenth)")
    parser.add_argument("--more", type=int, default=100, help="trials run and timed (the first 10 are not timed)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pruner", default="median")
    args = parser.parse_args()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    os.environ.setdefault("HPSEARCH_STORAGE_RETRY_S", "60")
    print(f"{args.more} more trials of {args.epochs} instant epochs each, pruner {args.pruner}, SQLite\n")
    print("| sampler | history.recent | stage size | ms per trial | SQL statements per trial |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in args.samplers:
            for recent in args.recent if sampler == "tpe" else args.recent[:1]:
                for size in args.sizes:
                    ms, statements = measure(size, sampler, recent, args.more, args.epochs, args.pruner, Path(tmp))
                    print(f"| {sampler} | {recent} | {size:,} | {ms:.1f} | {statements:.1f} |", flush=True)


if __name__ == "__main__":
    main()
