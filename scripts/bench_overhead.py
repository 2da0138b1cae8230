"""What hpsearch's orchestration costs per trial, next to a plain Optuna loop over the same training core.

Runs N short trials of the cars93 MLP three ways and prints the wall time of each:
  1. plain Optuna: study.optimize in this process, training with hpsearch.train directly (in-memory storage);
  2. hpsearch run with 1 worker (SQLite, a worker process, reports over a pipe);
  3. hpsearch run with 2 workers.
Usage: python scripts/bench_overhead.py [--trials 40] [--epochs 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path
import subprocess
import sys
import tempfile
import time

import optuna
import yaml

from hpsearch.space import suggest
from hpsearch.spec import parse_spec
from hpsearch.train import build_train_config, load_dataset, train

ROOT = Path(__file__).resolve().parents[1]


def study_dict(trials: int, epochs: int, workers: int) -> dict:
    raw = yaml.safe_load((ROOT / "studies" / "car_price.yaml").read_text())
    raw["data"]["csv"] = str(ROOT / "studies" / "data" / "cars93.csv")
    raw["storage"] = "sqlite:///bench.db"
    raw["train"] = {"epochs": epochs, "device": "cpu"}
    raw["stages"] = [{"name": "s", "sampler": "random", "trials": trials}]
    raw["executor"] = {"kind": "local", "workers": workers}
    return raw


def plain_optuna(trials: int, epochs: int) -> float:
    spec = parse_spec(study_dict(trials, epochs, 1))
    start = time.perf_counter()
    data = load_dataset(spec.data)

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, spec.space)
        config = build_train_config(spec.model, {**spec.train, **params}, task=spec.task, monitor=spec.metric,
                                    maximize=False, seed=trial.number)
        result = train(config, data)
        if result.best_epoch is None:
            raise optuna.TrialPruned
        return result.best_metrics[spec.metric]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).optimize(objective, n_trials=trials)
    return time.perf_counter() - start


def hpsearch_run(trials: int, epochs: int, workers: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "study.yaml"
        path.write_text(yaml.safe_dump(study_dict(trials, epochs, workers)))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "hpsearch", "run", str(path)], cwd=tmp, check=True,
                       capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    n = args.trials
    plain = plain_optuna(n, args.epochs)
    print(f"plain optuna, in process      : {plain:6.2f} s  ({plain / n * 1000:.0f} ms/trial)")
    for workers in (1, 2):
        took = hpsearch_run(n, args.epochs, workers)
        print(f"hpsearch run, {workers} worker(s)       : {took:6.2f} s  ({took / n * 1000:.0f} ms/trial, "
              "process start and torch import included)")


if __name__ == "__main__":
    main()
