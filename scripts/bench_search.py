"""Search strategies at equal compute: epochs trained, summed over all trials, over many seeds.

Every strategy gets the same budget of epochs (B = --trials full-length trials of --epochs epochs; a
k-fold trial's epoch counts k times) and runs until it has spent it: a strategy whose trials stop
early (patience, pruning, short coarse stages) runs more of them. A trial that would end past B does
not count. Each run drives hpsearch's stage machinery (parse_spec, run_study, SQLite storage) with the
study's ``seed`` set to the run's seed, one trial at a time, so a run is reproducible.

Strategies:
  random   one stage, random sampler, full-length trials
  tpe      one stage, TPE (startup 10)
  tpe-hb   one stage, TPE, Hyperband pruner (min_resource 1, reduction_factor 3, max_resource = epochs)
  c2f      the quickstart's coarse to fine: qmc on 2/3 of random's trial count, then TPE narrowed to the
           best quarter (margin 0.1) from the 3 best coarse configurations (warm_start 3), median pruner
           (startup 5, warmup 5), all trials full length
  c2f-hb   the same stages with tpe-hb's Hyperband pruner in place of the median pruner
  recipe   the issue's recipe: a qmc coarse stage of --trials trials at an eighth of the epochs; TPE fine
           stages of --trials/4 (at least 12) full-length trials, narrowed to the best quarter of the stage before, with the
           short coarse trials as TPE's history (prior_trials: all) and a median pruner (startup 5, warmup
           an eighth of the epochs); iteration (repeat: {max: 20, min_improvement: 0}: rounds go on while
           narrowing shrinks the space); then a last TPE stage narrowed to the last round's best 3, for what is left
  recipe-p the same with a full-length coarse stage whose bad trials the median pruner stops, so its
           trials count as the fine stages' history (prior_trials: same)
  recipe-hb the recipe with tpe-hb's Hyperband pruner in its fine stages in place of the median pruner
  recipe:N, recipe-p:N, recipe-hb:N  the same with a coarse stage of 1/N of the epochs instead of 1/8
Problems:
  bowl     analytic, smooth and unimodal over the MLP knobs: optimum 0 at lr 10^-2.5, weight_decay 1e-4,
           dropout 0.2, optimizer momentum with momentum 0.9, batch_size 32
  trap     analytic, deceptive in lr: a broad basin (0.3 at lr 10^-1.5) and a narrow global one (0 at
           lr 1e-5, below 0.3 only for |log10 lr + 5| < 0.137, 4.6% of the log range), plus 0.25 x the
           bowl's other terms
           Both analytic problems have a learning curve: after t epochs the value is the final one plus
           2 exp(-t / tau), tau = 2 epochs at lr >= 1e-2 and 2 x 10^(0.2 (-2 - log10 lr)) below (8 epochs at
           1e-5): small learning rates converge slowly, as they do in training, so a short trial
           under-rates them (the trap's narrow basin most of all).
  cars93   the quickstart MLP study (studies/car_price.yaml's space) with cv_folds: 5, trained for real
  digits   the digits CNN study (studies/digits_cnn.yaml: val_accuracy, 15 epochs), trained for real
Prints, per problem and strategy: the median best at equal compute (B) with quartiles; the epochs a
strategy needed to reach random search's best at B (median over seeds, as a share of B; a seed that never
reached it counts as more than B); how often it won, tied and lost against each other strategy, paired
by seed; trials run, pruned and failed. Nothing is asserted.

Usage: python scripts/bench_search.py [--seeds 10] [--only bowl,trap,cars93,digits] [--fuse K]
                                      [--strategies random,tpe,tpe-hb,c2f,recipe] [--trials N] [--epochs E]
                                      [--threads T] [--save runs.jsonl]
       python scripts/bench_search.py --combine runs.jsonl [more.jsonl ...]
--save appends each run to a file as it ends; --combine reports saved runs together (the seeds every strategy
ran), so seeds can be split over processes (--first-seed, --threads 1) and a long benchmark stopped part way.
Defaults per problem (trials x epochs): bowl and trap 40 x 40, cars93 24 x 40 (patience 8), digits 16 x 15
(patience 4). The analytic problems take about 2 minutes on 2 CPU cores. At the defaults a trained run (one
seed and strategy) took 17-90 s (35-40 s on average) with cars93 at --fuse 2 (its 5 folds then train as members of one pack) and
digits beside it, each process with --threads 1: 42 and 48 minutes for 7 strategies x 10 seeds. Reduce
--seeds, --trials and --epochs to fit.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
import copy
import dataclasses
import datetime
import json
import math
import os
from pathlib import Path
import platform
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch import __version__ as hpsearch_version
from hpsearch.errors import StageFailedError
from hpsearch.executors import Executor, TrialHandler, TrialJob, make_executor
from hpsearch.executors.local import LocalExecutor
from hpsearch.spec import StudySpec, parse_spec
from hpsearch.stages import run_study
from hpsearch.storage import open_storage
from hpsearch.train import TrainResult
from hpsearch.train.result import StopReason

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("random", "tpe", "tpe-hb", "c2f", "c2f-hb", "recipe", "recipe-p", "recipe-hb")
NARROW = {"top": 0.25, "margin": 0.1}

ANALYTIC_SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 1.0e-6, "high": 1.0, "log": True},
    "weight_decay": {"type": "float", "low": 1.0e-7, "high": 1.0e-1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.6},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32, 64]},
    "optimizer": {"type": "categorical", "choices": ["sgd", "momentum", "adam"]},
    "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": ["momentum"]}},
}
CARS93_SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 1.0e-5, "high": 1.0, "log": True},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-1, "log": True},
    "optimizer": {"type": "categorical", "choices": ["sgd", "momentum", "adam"]},
    "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": ["momentum"]}},
}
DIGITS_SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 3.0e-4, "high": 1.0e-2, "log": True},
    "channels": {"type": "categorical", "choices": [16, 32]},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-2, "log": True},
    "optimizer": {"type": "categorical", "choices": ["adam", "adamw", "nesterov"]},
    "momentum": {"type": "float", "low": 0.8, "high": 0.95, "when": {"optimizer": ["nesterov"]}},
}
_BATCH_COST = {8: 0.5, 16: 0.1, 32: 0.0, 64: 0.2}
_OPTIMIZER_COST = {"sgd": 1.0, "adam": 0.25}


def _rest(p: Mapping[str, Any]) -> float:
    """Every term but the lr one: 0 at the optimum, smooth in each knob."""
    opt = p["optimizer"]
    opt_cost = ((p["momentum"] - 0.9) / 0.1) ** 2 if opt == "momentum" else _OPTIMIZER_COST[opt]
    return (((math.log10(p["weight_decay"]) + 4) / 2) ** 2 + ((p["dropout"] - 0.2) / 0.2) ** 2
            + _BATCH_COST[p["batch_size"]] + opt_cost)


def bowl(p: Mapping[str, Any]) -> float:
    return (math.log10(p["lr"]) + 2.5) ** 2 + _rest(p)


def _trap_lr(lr: float) -> float:
    """A broad basin (0.3 at lr 10^-1.5) and a narrow, deeper one (0 at lr 1e-5, below 0.3 for 0.27 decade)."""
    x = math.log10(lr)
    return min(0.3 + 0.5 * (x + 1.5) ** 2, ((x + 5) / 0.25) ** 2)


def trap(p: Mapping[str, Any]) -> float:
    return _trap_lr(p["lr"]) + 0.25 * _rest(p)


def curve(final: float, lr: float, epoch: int) -> float:
    """The value after ``epoch`` epochs of a trial whose fully trained value is ``final`` (see the module)."""
    tau = 2.0 * 10 ** (0.2 * max(0.0, -2.0 - math.log10(lr)))
    return final + 2.0 * math.exp(-epoch / tau)


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    about: str
    trials: int  # random search's budget in full-length trials: B = trials x epochs x folds
    epochs: int
    metric: str
    direction: str
    fn: Callable[[Mapping[str, Any]], float] | None = None  # None: train for real
    folds: int = 1

    def better(self, a: float, b: float) -> bool:
        return a < b if self.direction == "minimize" else a > b


PROBLEMS: dict[str, Problem] = {
    "bowl": Problem("bowl", "analytic, smooth unimodal (optimum 0), slow convergence at small lr", 40, 40,
                    "val_rmse", "minimize", bowl),
    "trap": Problem("trap", "analytic, broad basin 0.3 at lr 10^-1.5, narrow global one 0 at lr 1e-5 that "
                    "converges slowly", 40, 40, "val_rmse", "minimize", trap),
    "cars93": Problem("cars93", "MLP [64, 32] on cars93, cv_folds 5, val_rmse in $1000, trained for real", 24, 40,
                      "val_rmse", "minimize", folds=5),
    "digits": Problem("digits", "CNN on 8x8 digits (studies/digits_cnn.yaml), val_accuracy, trained for real",
                      16, 15, "val_accuracy", "maximize"),
}


def stages_of(strategy: str, trials: int, epochs: int) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The stages of ``strategy`` and the study's pruner. Trial counts are caps: the budget ends the run."""
    cap = 50 * trials
    strategy, _, divisor = strategy.partition(":")  # recipe:4: the coarse stage trains a quarter of the epochs
    short = max(1, epochs // int(divisor or 8))
    if strategy == "random":
        return [{"name": "main", "sampler": "random", "trials": cap}], None
    if strategy == "tpe":
        return [{"name": "main", "sampler": "tpe", "trials": cap, "startup_trials": 10}], None
    if strategy == "tpe-hb":
        return ([{"name": "main", "sampler": "tpe", "trials": cap, "startup_trials": 10}],
                {"kind": "hyperband", "min_resource": 1, "reduction_factor": 3})
    if strategy in ("c2f", "c2f-hb"):
        return ([{"name": "coarse", "sampler": "qmc", "trials": 2 * trials // 3},
                 {"name": "fine", "sampler": "tpe", "trials": cap, "narrow": dict(NARROW), "warm_start": 3}],
                {"kind": "median", "startup_trials": 5, "warmup_epochs": 5} if strategy == "c2f"
                else {"kind": "hyperband", "min_resource": 1, "reduction_factor": 3})
    if strategy in ("recipe", "recipe-p", "recipe-hb"):
        # The coarse stage: `recipe` trains every trial for an eighth of the epochs; `recipe-p` trains full
        # length and lets the median pruner stop the bad ones (so its trials also serve as TPE's history);
        # `recipe-hb` is `recipe` with tpe-hb's Hyperband pruner in the fine stages.
        pruner = ({"kind": "hyperband", "min_resource": 1, "reduction_factor": 3} if strategy == "recipe-hb"
                  else {"kind": "median", "startup_trials": 5, "warmup_epochs": short})
        fine = {"sampler": "tpe", "narrow": dict(NARROW), "pruner": pruner,
                "prior_trials": "same" if strategy == "recipe-p" else "all"}
        coarse: dict[str, Any] = {"name": "coarse", "sampler": "qmc", "trials": trials}
        coarse.update({"pruner": pruner} if strategy == "recipe-p" else {"train": {"epochs": short}})
        return [coarse, {"name": "fine", "trials": max(12, trials // 4), "repeat": {"max": 20, "min_improvement": 0.0},
                         **fine},
                {"name": "rest", "trials": cap, **fine, "narrow": {"top": 3, "margin": 0.1}}], None
    raise ValueError(strategy)


def study_dict(problem: Problem, strategy: str, seed: int, trials: int, epochs: int, fuse: int = 1) -> dict[str, Any]:
    stages, pruner = stages_of(strategy, trials, epochs)
    raw: dict[str, Any] = {"name": f"{problem.name}-{strategy.replace(':', '.')}-{seed}", "seed": seed, "metric": problem.metric,
                           "direction": problem.direction, "stages": stages, "keep": "none",
                           "executor": {"kind": "local", "workers": 1, "fuse": fuse}}
    if pruner is not None:
        raw["pruner"] = pruner
    if problem.name == "digits":
        raw["data"] = {"builtin": "digits", "augment": "shift", "max_shift": 1, "val_fraction": 0.2}
        raw["model"] = {"kind": "cnn", "blocks": 2, "kernel_size": 3, "batch_norm": True, "activation": "relu"}
        raw["train"] = {"epochs": epochs, "patience": 4, "batch_size": 64, "schedule": "cosine", "device": "cpu"}
        raw["space"] = copy.deepcopy(DIGITS_SPACE)
        return raw
    raw["model"] = {"kind": "mlp", "hidden": [64, 32]}
    if problem.fn is not None:
        raw["data"] = {"builtin": "cars93", "task": "regression"}  # validated, never loaded
        raw["train"] = {"epochs": epochs}
        raw["space"] = copy.deepcopy(ANALYTIC_SPACE)
    else:
        raw["data"] = {"csv": str(ROOT / "studies" / "data" / "cars93.csv"), "target": "Price", "task": "regression",
                       "drop": ["Model", "Make", "Min.Price", "Max.Price"], "cv_folds": problem.folds}
        raw["train"] = {"epochs": epochs, "patience": 8, "device": "cpu"}
        raw["space"] = copy.deepcopy(CARS93_SPACE)
    return raw


class FunctionExecutor(Executor):
    """Trains an analytic problem's trials in this process, one at a time: the value follows :func:`curve`,
    reported every epoch so that pruners act as they do on real trials."""

    def __init__(self, fn: Callable[[Mapping[str, Any]], float]) -> None:
        self.capacity = 1
        self._fn = fn
        self._queue: list[TrialJob] = []

    def running(self) -> int:
        return len(self._queue)

    def submit(self, job: TrialJob) -> None:
        self._queue.append(job)

    def poll(self, handler: TrialHandler, timeout: float) -> None:
        while self._queue:
            job = self._queue.pop(0)
            final, lr = self._fn(job.params), float(job.params["lr"])
            best, reason = math.inf, StopReason.COMPLETED
            epoch = 0
            for epoch in range(1, job.config.epochs + 1):
                value = curve(final, lr, epoch)
                best = min(best, value)
                if handler.on_report(job.key, epoch, {"val_rmse": value}):
                    reason = StopReason.PRUNED
                    break
            handler.on_result(job.key, TrainResult(best_epoch=epoch, best_metrics={"val_rmse": best},
                                                   epochs_run=epoch, stop_reason=reason))

    def close(self) -> None:
        self._queue.clear()


class _Counting:
    """A TrialHandler that counts epochs (x folds) and sets ``stop`` once ``budget`` of them are spent."""

    def __init__(self, inner: TrialHandler, spent: list[int], budget: int, folds: int, stop: threading.Event) -> None:
        self._inner, self._spent, self._budget, self._folds, self._stop = inner, spent, budget, folds, stop

    def on_report(self, key: int, epoch: int, metrics: Mapping[str, float]) -> bool:
        self._spent[0] += self._folds
        if self._spent[0] >= self._budget:
            self._stop.set()
        return self._inner.on_report(key, epoch, metrics)

    def on_result(self, key: int, result: TrainResult) -> None:
        self._inner.on_result(key, result)

    def on_error(self, key: int, message: str, detail: str, lost: bool = False) -> None:
        self._inner.on_error(key, message, detail, lost)

    def on_start(self, key: int, placement: Mapping[str, Any]) -> None:
        self._inner.on_start(key, placement)


class BudgetExecutor(Executor):
    """Runs trials on ``inner`` until ``budget`` epochs are spent, then stops the run (see :class:`_Counting`)."""

    def __init__(self, inner: Executor, budget: int, folds: int, stop: threading.Event) -> None:
        self.capacity = inner.capacity
        self._inner, self._budget, self._folds, self._stop = inner, budget, folds, stop
        self._spent = [0]

    def running(self) -> int:
        return self._inner.running()

    def submit(self, job: TrialJob) -> None:
        self._inner.submit(job)

    def poll(self, handler: TrialHandler, timeout: float) -> None:
        self._inner.poll(_Counting(handler, self._spent, self._budget, self._folds, self._stop), timeout)

    def close(self) -> None:
        self._inner.close()


@dataclasses.dataclass
class Run:
    """One strategy on one problem with one seed: its trials in the order they ended, within the budget."""

    seed: int
    # (epochs spent when the trial ended, its value or nan when it did not complete), in order of ending
    trace: list[tuple[int, float]]
    trials: int
    pruned: int
    failed: int
    stages: list[tuple[str, int]]  # (stage or round, trials in it)
    wall_s: float

    def best(self, problem: Problem, within: int | None = None) -> float:
        values = [v for spent, v in self.trace if not math.isnan(v) and (within is None or spent <= within)]
        if not values:
            return math.nan
        return min(values) if problem.direction == "minimize" else max(values)

    def epochs_to_reach(self, problem: Problem, target: float) -> float:
        """The epochs spent when a trial first matched ``target`` (inf if none did within the budget)."""
        for spent, v in self.trace:
            if not math.isnan(v) and not problem.better(target, v):
                return spent
        return math.inf


def _epochs(trial: FrozenTrial) -> int:
    return len(trial.intermediate_values)


def run_one(problem: Problem, strategy: str, seed: int, args: argparse.Namespace) -> Run:
    trials, epochs = args.trials or problem.trials, args.epochs or problem.epochs
    budget = trials * epochs * problem.folds
    spec: StudySpec = parse_spec(study_dict(problem, strategy, seed, trials, epochs, args.fuse))
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{tmp}/search.db")
        inner: Executor
        if problem.fn is not None:
            inner = FunctionExecutor(problem.fn)
        elif args.threads:  # e.g. two benchmark processes side by side, one core each
            inner = LocalExecutor(workers=1, threads_per_worker=args.threads, fuse=args.fuse)
        else:
            inner = make_executor(spec.executor)
        start = time.perf_counter()
        try:
            run_study(spec, storage, stop=stop, executor=BudgetExecutor(inner, budget, problem.folds, stop))
        except KeyboardInterrupt:  # the budget is spent: the run stops as a Ctrl-C would stop it
            pass
        except StageFailedError as e:  # e.g. pruning left a stage too few complete trials to narrow from
            print(f"  [{problem.name} seed {seed} {strategy}: stopped early: {e}]", file=sys.stderr, flush=True)
        wall = time.perf_counter() - start
        ended: list[tuple[Any, int, int, FrozenTrial]] = []
        stages: list[tuple[str, int]] = []
        for summary in sorted(storage.get_all_studies(), key=lambda s: s._study_id):
            name = summary.study_name.split("/", 1)[-1]
            found = storage.get_all_trials(summary._study_id, deepcopy=False)
            stages.append((name, len(found)))
            ended += [(t.datetime_complete, summary._study_id, t.number, t) for t in found
                      if t.datetime_complete is not None]
        del storage
    trace: list[tuple[int, float]] = []
    spent = pruned = failed = counted = 0
    for *_, t in sorted(ended, key=lambda e: e[:3]):
        spent += _epochs(t) * problem.folds
        if spent > budget:
            break
        counted += 1
        pruned += t.state is TrialState.PRUNED
        failed += t.state is TrialState.FAIL
        trace.append((spent, float(t.value) if t.state is TrialState.COMPLETE else math.nan))  # type: ignore[arg-type]
    return Run(seed, trace, counted, pruned, failed, stages, wall)


def save_run(path: Path, problem: Problem, strategy: str, run: Run, args: argparse.Namespace) -> None:
    """Appends ``run`` to ``path`` as one JSON line, so that runs made apart (seeds split over processes, or a
    long benchmark stopped part way) can be reported together with --combine."""
    row = {"problem": problem.name, "strategy": strategy, "scale_trials": args.trials or problem.trials,
           "scale_epochs": args.epochs or problem.epochs, "fuse": args.fuse, **dataclasses.asdict(run)}
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def load_runs(paths: Sequence[Path]) -> dict[tuple[str, int, int], dict[str, dict[int, Run]]]:
    """Saved runs by (problem, trials, epochs), then strategy, then seed (a seed saved twice: the last wins)."""
    found: dict[tuple[str, int, int], dict[str, dict[int, Run]]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            run = Run(seed=row["seed"], trace=[(int(a), float(b)) for a, b in row["trace"]], trials=row["trials"],
                      pruned=row["pruned"], failed=row["failed"], stages=[(str(a), int(b)) for a, b in row["stages"]],
                      wall_s=row["wall_s"])
            found.setdefault((row["problem"], row["scale_trials"], row["scale_epochs"]), {}).setdefault(
                row["strategy"], {})[run.seed] = run
    return found


def combine(paths: Sequence[Path]) -> None:
    """Reports saved runs: for each problem and scale, the seeds that every strategy ran."""
    for (name, trials, epochs), by_strategy in load_runs(paths).items():
        seeds = sorted(set.intersection(*(set(runs) for runs in by_strategy.values())))
        if not seeds:
            print(f"\n== {name} ({trials} x {epochs}): no seed ran every strategy ==")
            continue
        order = sorted(by_strategy, key=lambda s: (STRATEGIES.index(s.split(":")[0]), s))
        results = {s: [by_strategy[s][seed] for seed in seeds] for s in order}
        report(PROBLEMS[name], results, argparse.Namespace(trials=trials, epochs=epochs))


def quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def report(problem: Problem, results: dict[str, list[Run]], args: argparse.Namespace) -> None:
    trials, epochs = args.trials or problem.trials, args.epochs or problem.epochs
    budget = trials * epochs * problem.folds
    seeds = [r.seed for r in next(iter(results.values()))]
    sign = 1 if problem.direction == "minimize" else -1
    print(f"\n== {problem.name}: {problem.about}; {problem.metric} ({problem.direction}); budget B = {budget} epochs "
          f"({trials} trials x {epochs} epochs" + (f" x {problem.folds} folds" if problem.folds > 1 else "")
          + f"); seeds {seeds[0]}..{seeds[-1]} ==")
    target = {r.seed: r.best(problem) for r in results.get("random", [])}
    print(f"{'strategy':<8} {'median best':>11} {'q1..q3':>17} {'to random best':>14} {'reached':>7} "
          f"{'trials':>6} {'pruned':>6} {'failed':>6} {'wall s':>7}")
    for strategy, runs in results.items():
        bests = sorted((r.best(problem) for r in runs), key=lambda v: sign * v)
        q1, q2, q3 = quartiles(bests)
        if target:
            need = sorted(r.epochs_to_reach(problem, target[r.seed]) for r in runs)
            med = statistics.median(need)
            reach = f"{med / budget:.0%} of B" if math.isfinite(med) else "> B"
            reached = f"{sum(math.isfinite(n) for n in need)}/{len(runs)}"
        else:
            reach = reached = "-"
        print(f"{strategy:<8} {q2:>11.4g} {f'{q1:.4g}..{q3:.4g}':>17} {reach:>14} {reached:>7} "
              f"{statistics.median(r.trials for r in runs):>6g} {sum(r.pruned for r in runs):>6} "
              f"{sum(r.failed for r in runs):>6} {sum(r.wall_s for r in runs):>7.0f}")
    names = list(results)
    print("paired by seed, wins/ties/losses of the row against the column (best at B):")
    print(f"{'':<8} " + " ".join(f"{n:>10}" for n in names))
    for a in names:
        cells = []
        for b in names:
            if a == b:
                cells.append(f"{'-':>10}")
                continue
            pairs = [(x.best(problem), y.best(problem)) for x, y in zip(results[a], results[b], strict=True)]
            wins = sum(problem.better(x, y) for x, y in pairs)
            losses = sum(problem.better(y, x) for x, y in pairs)
            cells.append(f"{f'{wins}/{len(pairs) - wins - losses}/{losses}':>10}")
        print(f"{a:<8} " + " ".join(cells))
    print("best at B per seed:")
    for strategy, runs in results.items():
        print(f"  {strategy:<8} " + "  ".join(f"{r.best(problem):.4g}" for r in runs))
    if target:
        print("epochs to reach random's best, per seed (- : not within B):")
        for strategy, runs in results.items():
            print(f"  {strategy:<8} " + "  ".join(
                f"{n:g}" if math.isfinite(n := r.epochs_to_reach(problem, target[r.seed])) else "-" for r in runs))
    for strategy, runs in results.items():
        if len(runs[0].stages) > 1:
            # Rounds that did not run (converged) are left out.
            shapes = sorted({" > ".join(f"{n} {c}" for n, c in r.stages if c or "." not in n) for r in runs})
            print(f"{strategy} stages (trials started in each): " + " | ".join(shapes[:4])
                  + (f" | ... ({len(shapes)} shapes)" if len(shapes) > 4 else ""))


def _base(strategy: str) -> str:
    """``recipe`` of ``recipe:4``; any other name as it is. The divisor must be a whole number from 1."""
    if strategy.startswith("recipe") and ":" in strategy:
        name, _, divisor = strategy.partition(":")
        return name if divisor.isdigit() and int(divisor) >= 1 else strategy
    return strategy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10, help="seeds 0..N-1 (default 10)")
    parser.add_argument("--first-seed", type=int, default=0, help="the first seed (default 0)")
    parser.add_argument("--only", default=",".join(PROBLEMS), help=f"comma-separated subset of {','.join(PROBLEMS)}")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help=f"subset of {','.join(STRATEGIES)}")
    parser.add_argument("--trials", type=int, default=0, help="random's budget in full-length trials "
                        "(default: the problem's)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs of a full-length trial (default: the problem's)")
    parser.add_argument("--fuse", type=int, default=1, help="executor.fuse of the trained problems: trials asked "
                        "and trained at once as one pack, a k-fold trial's folds as members (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads of the trained problems' worker "
                        "(default: the CPUs; 1 to run two benchmark processes side by side)")
    parser.add_argument("--save", type=Path, help="append each run to this file as a JSON line")
    parser.add_argument("--combine", type=Path, nargs="+", help="report the runs saved in these files and exit")
    args = parser.parse_args()
    if args.combine:
        combine(args.combine)
        return
    problems = [p.strip() for p in args.only.split(",") if p.strip()]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for chosen, allowed in ((problems, PROBLEMS), (strategies, STRATEGIES)):
        bad = [x for x in chosen if _base(x) not in allowed]
        if bad:
            parser.error(f"unknown {bad[0]!r}; choose from {', '.join(allowed)}")
    if args.trials and args.trials < 8:
        parser.error("--trials must be at least 8 (the coarse stages need 4 complete trials to narrow on)")
    if args.epochs and args.epochs < 8:
        parser.error("--epochs must be at least 8 (the recipe's coarse stage trains an eighth of them)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import torch

    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; "
          f"Python {platform.python_version()}, torch {torch.__version__}, Optuna {optuna.__version__}, "
          f"hpsearch {hpsearch_version}")
    started = time.perf_counter()
    for name in problems:
        problem = PROBLEMS[name]
        results: dict[str, list[Run]] = {s: [] for s in strategies}
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for strategy in strategies:
                results[strategy].append(run := run_one(problem, strategy, seed, args))
                if args.save is not None:
                    save_run(args.save, problem, strategy, run, args)
                print(f"  [{name} seed {seed} {strategy}: best {run.best(problem):.4g}, {run.trials} trials, "
                      f"{run.wall_s:.0f} s]", file=sys.stderr, flush=True)
        report(problem, results, args)
    print(f"\ntotal wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
