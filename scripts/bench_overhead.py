"""What orchestration costs per trial: hpsearch (local and Ray executors), plain Optuna, Ray Tune + OptunaSearch.

Every method runs the same trivial trial: the cars93 MLP of the quickstart trained for one epoch
(a few milliseconds) by hpsearch's training core, reporting each epoch to its tuner, with the same
random search over the same space. Each method runs as a fresh process twice, with SMALL and with
TRIALS trials; the per-trial cost is the difference of the two wall times over the difference in
trials, so start-up (imports, starting Ray, loading the data) cancels out, and start-up is what is
left of the small run. Each size runs REPEAT times and the median counts, except Ray Tune with its
defaults, whose seconds per trial dwarf the noise. Parallel methods run WORKERS trials at once.

Usage: python scripts/bench_overhead.py [--trials 200] [--tune-trials 40] [--small 5] [--repeat 3] [--workers 2]
                                        [--epochs 1] [--only NAME ...]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
import io
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
SPACE = {
    "lr": {"type": "float", "low": 1.0e-5, "high": 1.0, "log": True},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-1, "log": True},
    "optimizer": {"type": "categorical", "choices": ["sgd", "momentum", "adam"]},
}
METHODS = {
    "optuna-memory": "plain Optuna, study.optimize in process, in-memory storage",
    "optuna-sqlite": "plain Optuna, study.optimize in process, SQLite",
    "hpsearch-local": "hpsearch run, executor local, SQLite",
    "hpsearch-ray": "hpsearch run, executor ray (embedded Ray), SQLite",
    "tune": "Ray Tune + OptunaSearch (Tune's defaults)",
    "tune-reuse": "Ray Tune + OptunaSearch, reuse_actors=True",
}


def study_dict(trials: int, epochs: int, executor: Mapping[str, Any], storage: str) -> dict[str, Any]:
    return {
        "name": "bench", "storage": storage, "metric": "val_rmse", "seed": 0,
        "data": {"csv": str(ROOT / "studies" / "data" / "cars93.csv"), "target": "Price", "task": "regression",
                 "drop": ["Model", "Make", "Min.Price", "Max.Price"]},
        "model": {"kind": "mlp", "hidden": [64, 32]},
        "train": {"epochs": epochs, "device": "cpu"},
        "space": SPACE,
        "stages": [{"name": "s", "sampler": "random", "trials": trials}],
        "executor": dict(executor),
    }


def load(epochs: int) -> tuple[Any, Any]:
    """The study's spec and its dataset."""
    from hpsearch.spec import parse_spec
    from hpsearch.train import load_dataset

    spec = parse_spec(study_dict(1, epochs, {"kind": "local"}, "sqlite:///unused.db"))
    return spec, load_dataset(spec.data)


class Reporter:
    def __init__(self, report: Callable[[int, Mapping[str, float]], bool]) -> None:
        self.report = report


def train_once(spec: Any, data: Any, params: Mapping[str, Any], seed: int,
               report: Callable[[int, Mapping[str, float]], bool]) -> Any:
    """One trial of the training core, as every method runs it."""
    from hpsearch.train import build_train_config, train

    config = build_train_config(spec.model, {**spec.train, **params}, task=spec.task, monitor=spec.metric,
                                maximize=False, seed=seed)
    return train(config, data, Reporter(report))


def optuna_objective(spec: Any, data: Any) -> Callable[[Any], float]:
    """Plain Optuna's objective: the same trial, reporting each epoch to Optuna's pruner."""
    import optuna

    from hpsearch.space import suggest

    def objective(trial: optuna.Trial) -> float:
        def report(epoch: int, metrics: Mapping[str, float]) -> bool:
            trial.report(metrics[spec.metric], epoch)
            return trial.should_prune()

        result = train_once(spec, data, suggest(trial, spec.space), trial.number, report)
        if result.best_epoch is None:
            raise optuna.TrialPruned
        return float(result.best_metrics[spec.metric])

    return objective


def run_optuna(trials: int, epochs: int, storage: str | None) -> None:
    import optuna

    spec, data = load(epochs)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(optuna_objective(spec, data), n_trials=trials)
    if len(study.trials) != trials:
        raise SystemExit(f"Optuna ran {len(study.trials)} trials; {trials} asked for")


class DefineByRun:
    """The space for OptunaSearch, sampled by hpsearch's own suggest(); picklable, as Tune needs."""

    def __init__(self, space: Any) -> None:
        self.space = space

    def __call__(self, trial: Any) -> None:
        from hpsearch.space import suggest

        suggest(trial, self.space)


def run_tune(trials: int, epochs: int, workers: int, reuse: bool, tmp: str) -> None:
    import optuna
    import ray
    from ray import tune
    from ray.tune.search.optuna import OptunaSearch

    spec, data = load(epochs)

    def trainable(config: dict[str, Any], spec: Any, data: Any) -> None:
        reports = []

        def report(epoch: int, metrics: Mapping[str, float]) -> bool:
            reports.append(epoch)
            tune.report({spec.metric: metrics[spec.metric]})
            return False

        train_once(spec, data, config, 0, report)
        if not reports:  # diverged before its first epoch ended; Tune insists on a result
            tune.report({spec.metric: float("inf")})

    ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    search = OptunaSearch(space=DefineByRun(spec.space), metric=spec.metric, mode="min", sampler=optuna.samplers.RandomSampler(seed=0))
    tuner = tune.Tuner(
        tune.with_parameters(trainable, spec=spec, data=data),  # Tune's way to ship data to trials
        tune_config=tune.TuneConfig(search_alg=search, num_samples=trials, max_concurrent_trials=workers,
                                    reuse_actors=reuse),
        run_config=tune.RunConfig(storage_path=tmp, name="bench", verbose=0),
    )
    results = tuner.fit()
    ray.shutdown()
    if len(results) != trials or results.errors:
        raise SystemExit(f"Ray Tune ran {len(results)} trials with {len(results.errors)} errors; {trials} asked for")


def run_hpsearch(trials: int, epochs: int, workers: int, kind: str, tmp: str) -> None:
    from hpsearch.cli import main as hpsearch

    path = Path(tmp) / "study.yaml"
    path.write_text(yaml.safe_dump(study_dict(trials, epochs, {"kind": kind, "workers": workers}, "sqlite:///bench.db")))
    os.chdir(tmp)
    if hpsearch(["run", str(path)], stdout=io.StringIO(), stderr=io.StringIO()) != 0:
        raise SystemExit(f"hpsearch run failed in {tmp}")


def run_one(method: str, trials: int, epochs: int, workers: int) -> None:
    """One measured run, in this (fresh) process."""
    with tempfile.TemporaryDirectory() as tmp:
        if method == "optuna-memory":
            run_optuna(trials, epochs, None)
        elif method == "optuna-sqlite":
            run_optuna(trials, epochs, f"sqlite:///{tmp}/bench.db")
        elif method.startswith("tune"):
            run_tune(trials, epochs, workers, method == "tune-reuse", tmp)
        else:
            run_hpsearch(trials, epochs, workers, method.removeprefix("hpsearch-"), tmp)


def timed(method: str, trials: int, epochs: int, workers: int) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--one", method, "--trials", str(trials), "--epochs", str(epochs),
                    "--workers", str(workers)], check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--trials", type=int, default=200, help="trials of the big run")
    parser.add_argument("--tune-trials", type=int, default=40, help="trials of Ray Tune's big run with its defaults (slow)")
    parser.add_argument("--small", type=int, default=5, help="trials of the small run")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each size; the median counts (Tune's defaults: 1)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--only", nargs="*", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--one", choices=list(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.trials, args.epochs, args.workers)
        return
    print(f"one trial's training alone: {training_ms(args.epochs):.1f} ms (median of 50, in process)")
    print(f"small runs of {args.small} trials, big runs of {args.trials} (Tune's defaults: {args.tune_trials}); "
          f"median of {args.repeat} runs (Tune's defaults: 1); {args.workers} trials at once where parallel\n")
    print("| how | small run | big run | per trial | start-up |")
    print("| --- | --- | --- | --- | --- |")
    per_trial = {}
    for method in args.only:
        big_n, repeat = (args.tune_trials, 1) if method == "tune" else (args.trials, args.repeat)
        small = statistics.median(timed(method, args.small, args.epochs, args.workers) for _ in range(repeat))
        big = statistics.median(timed(method, big_n, args.epochs, args.workers) for _ in range(repeat))
        per_trial[method] = (big - small) / (big_n - args.small)
        startup = small - args.small * per_trial[method]
        print(f"| {METHODS[method]} | {small:.2f} s | {big:.2f} s ({big_n}) | {per_trial[method] * 1000:.0f} ms "
              f"| {startup:.1f} s |", flush=True)
    for tune in ("tune", "tune-reuse"):
        if "hpsearch-ray" in per_trial and tune in per_trial:
            print(f"\nhpsearch ray / {METHODS[tune]}, per trial: {per_trial['hpsearch-ray'] / per_trial[tune]:.3f}")


def training_ms(epochs: int) -> float:
    """What one trial's training costs by itself, in this process (data loaded, torch warm)."""
    import random

    spec, data = load(epochs)
    rng = random.Random(0)
    took = []
    for seed in range(51):
        params = {"lr": 10 ** rng.uniform(-5, 0), "batch_size": rng.choice([8, 16, 32]), "dropout": rng.uniform(0, 0.5),
                  "weight_decay": 10 ** rng.uniform(-6, -1), "optimizer": rng.choice(["sgd", "momentum", "adam"])}
        start = time.perf_counter()
        train_once(spec, data, params, seed, lambda epoch, metrics: False)
        took.append(time.perf_counter() - start)
    return statistics.median(took[1:]) * 1000  # the first one warms torch up


if __name__ == "__main__":
    main()
