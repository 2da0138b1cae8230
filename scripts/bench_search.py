"""Coarse-to-fine against single-stage search, at the same total trial budget, over several seeds.

Strategies (each over the same budget of finished trials, e.g. 60):
  random   one stage, random sampler
  tpe      one stage, TPE
  c2f      random on half the budget, then TPE on the rest in a space narrowed around the random
           stage's best quarter (narrow: {top: 0.25, margin: 0.1}; a conditional parameter such as momentum
           around the best quarter of the trials that have it; no range below a tenth of its width as written)
  c2f-ws   the same, the fine stage starting with the coarse stage's best 5 configurations (warm_start: 5)
Problems:
  bowl     analytic, smooth and unimodal over the MLP knobs: optimum 0 at lr 10^-2.5, weight_decay 1e-4,
           dropout 0.2, optimizer momentum with momentum 0.9, batch_size 32
  trap     analytic, deceptive in lr: a broad basin (0.3 at lr 10^-1.5) and a narrow global one (0 at
           lr 1e-5, below 0.3 only for |log10 lr + 5| < 0.137, 4.6% of the log range), plus 0.25 x the
           bowl's other terms
  cars93   the quickstart MLP study (studies/car_price.yaml's space), really trained by the local executor
Each run drives hpsearch's stage machinery (parse_spec, run_study, SQLite storage) with the study's
``seed`` key set to the run's seed; trial values are read back from the storage. Random draws are seeded
from the study seed, so c2f's coarse stage is the same 30 trials as the first 30 of random.
Prints, per problem and strategy, the median best value over seeds with its quartiles and range, how
many finished trials of each half of the budget came near the optimum, and, for c2f, how much of each
range the fine stage kept and which parameters it narrowed away from the known optimum, and, for c2f-ws,
how much re-running the warm-started configurations changed their value. Nothing is asserted.

Usage: python scripts/bench_search.py [--seeds 5] [--budget 60] [--only bowl,trap,cars93]
                                      [--strategies random,tpe,c2f,c2f-ws] [--epochs 40] [--patience 8]
                                      [--workers 2]
The defaults take about 6-7 minutes on 2 otherwise idle CPU cores (about 9 when other work loads them),
nearly all of it cars93.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
import copy
import dataclasses
import datetime
import math
import os
from pathlib import Path
import platform
import statistics
import tempfile
import time
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch import __version__ as hpsearch_version
from hpsearch.executors import Executor, TrialHandler, TrialJob
from hpsearch.narrow import contains
from hpsearch.space import CategoricalParam, Param, Space, parse_space
from hpsearch.spec import StudySpec, parse_spec
from hpsearch.stages import ATTR_SPACE, ATTR_WARM_START, run_study
from hpsearch.storage import open_storage
from hpsearch.train import TrainResult

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("random", "tpe", "c2f", "c2f-ws")
NARROW = {"top": 0.25, "margin": 0.1}
WARM_START = 5

ANALYTIC_SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 1.0e-6, "high": 1.0, "log": True},
    "weight_decay": {"type": "float", "low": 1.0e-7, "high": 1.0e-1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.6},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32, 64]},
    "optimizer": {"type": "categorical", "choices": ["sgd", "momentum", "adam"]},
    "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": ["momentum"]}},
}
OPTIMUM = {"lr": 10**-2.5, "weight_decay": 1e-4, "dropout": 0.2, "batch_size": 32, "optimizer": "momentum",
           "momentum": 0.9}
TRAP_OPTIMUM = {**OPTIMUM, "lr": 1e-5}
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


@dataclasses.dataclass(frozen=True)
class Problem:
    name: str
    about: str
    fn: Callable[[Mapping[str, Any]], float] | None  # None: train for real
    optimum: Mapping[str, Any] | None
    near_text: str
    # Whether a finished trial (params, value) counts as near the optimum; ref: the best any strategy found
    # with the same seed.
    near: Callable[[Mapping[str, Any], float, float], bool]


PROBLEMS: dict[str, Problem] = {
    "bowl": Problem("bowl", "smooth unimodal, optimum 0 at lr 10^-2.5, wd 1e-4, dropout 0.2, momentum 0.9, "
                    "batch 32", bowl, OPTIMUM, "value < 1", lambda p, v, ref: v < 1.0),
    "trap": Problem("trap", "lr term: broad basin 0.3 at lr 10^-1.5, narrow global one 0 at lr 1e-5; "
                    "+ 0.25 x the bowl's other terms", trap, TRAP_OPTIMUM,
                    "in the global basin (lr term < 0.3: |log10 lr + 5| < 0.137)",
                    lambda p, v, ref: _trap_lr(p["lr"]) < 0.3),
    "cars93": Problem("cars93", "MLP [64, 32] on cars93 (the quickstart's space), val_rmse in $1000, trained "
                      "for real", None, None, "val_rmse <= 1.1 x the best any strategy found with the seed",
                      lambda p, v, ref: v <= 1.1 * ref),
}


class FunctionExecutor(Executor):
    """Evaluates an analytic function of the sampled parameters in this process, one trial at a time."""

    def __init__(self, fn: Callable[[Mapping[str, Any]], float]) -> None:
        self.capacity = 1
        self._fn = fn
        self._done: list[tuple[int, TrainResult]] = []

    def running(self) -> int:
        return len(self._done)

    def submit(self, job: TrialJob) -> None:
        value = self._fn(job.params)
        self._done.append((job.key, TrainResult(best_epoch=1, best_metrics={"val_rmse": value}, epochs_run=1)))

    def poll(self, handler: TrialHandler, timeout: float) -> None:
        while self._done:
            key, result = self._done.pop(0)
            handler.on_result(key, result)

    def close(self) -> None:
        self._done.clear()


def study_dict(problem: Problem, strategy: str, seed: int, budget: int, args: argparse.Namespace) -> dict:
    coarse = budget // 2
    if strategy == "random":
        stages: list[dict[str, Any]] = [{"name": "main", "sampler": "random", "trials": budget}]
    elif strategy == "tpe":
        stages = [{"name": "main", "sampler": "tpe", "trials": budget}]
    else:
        fine: dict[str, Any] = {"name": "fine", "sampler": "tpe", "trials": budget - coarse, "narrow": dict(NARROW)}
        if strategy == "c2f-ws":
            fine["warm_start"] = WARM_START
        stages = [{"name": "coarse", "sampler": "random", "trials": coarse}, fine]
    raw: dict[str, Any] = {"name": f"{problem.name}-{strategy}-{seed}", "seed": seed, "metric": "val_rmse",
                           "model": {"kind": "mlp", "hidden": [64, 32]}, "stages": stages}
    if problem.fn is not None:
        raw["data"] = {"builtin": "cars93", "task": "regression"}  # validated, never loaded
        raw["space"] = copy.deepcopy(ANALYTIC_SPACE)
    else:
        raw["data"] = {"csv": str(ROOT / "studies" / "data" / "cars93.csv"), "target": "Price", "task": "regression",
                       "drop": ["Model", "Make", "Min.Price", "Max.Price"], "val_fraction": 0.2}
        raw["train"] = {"epochs": args.epochs, "patience": args.patience, "device": "cpu"}
        raw["space"] = {
            "lr": {"type": "float", "low": 1.0e-5, "high": 1.0, "log": True},
            "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5},
            "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-1, "log": True},
            "optimizer": {"type": "categorical", "choices": ["sgd", "momentum", "adam"]},
            "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": ["momentum"]}},
        }
        raw["executor"] = {"kind": "local", "workers": args.workers}
    return raw


@dataclasses.dataclass
class Run:
    """One strategy on one problem with one seed, as read back from the storage."""

    seed: int
    finished: list[tuple[dict[str, Any], float]]  # params and value (nan: pruned), stage by stage, by number
    pruned: int
    failed: int
    per_stage: dict[str, int]
    fine_space: Space | None = None
    wall_s: float = 0.0
    repeats: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # warm start: (coarse value, its re-run)

    @property
    def best_trial(self) -> tuple[dict[str, Any], float]:
        return min((t for t in self.finished if not math.isnan(t[1])), key=lambda t: t[1], default=({}, math.nan))

    @property
    def best(self) -> float:
        return self.best_trial[1]

    def half(self, which: int) -> list[tuple[dict[str, Any], float]]:
        """The finished trials of the first (0) or second (1) half of the budget."""
        cut = len(self.finished) // 2
        return self.finished[:cut] if which == 0 else self.finished[cut:]


def run_one(problem: Problem, strategy: str, seed: int, budget: int, args: argparse.Namespace) -> Run:
    spec: StudySpec = parse_spec(study_dict(problem, strategy, seed, budget, args))
    with tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(f"sqlite:///{tmp}/search.db")
        executor = FunctionExecutor(problem.fn) if problem.fn is not None else None
        start = time.perf_counter()
        run_study(spec, storage, executor=executor)
        wall = time.perf_counter() - start
        finished: list[tuple[dict[str, Any], float]] = []
        pruned = failed = 0
        per_stage: dict[str, int] = {}
        fine_space = None
        by_ref: dict[str, float] = {}
        repeats: list[tuple[float, float]] = []
        for stage in spec.stages:
            study = optuna.load_study(study_name=spec.study_name(stage), storage=storage)
            trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
            per_stage[stage.name] = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
            for t in trials:
                if t.state is TrialState.COMPLETE:
                    by_ref[f"{stage.name}#{t.number}"] = float(t.value)  # type: ignore[arg-type]
                    if ATTR_WARM_START in t.user_attrs:
                        repeats.append((by_ref[t.user_attrs[ATTR_WARM_START]], float(t.value)))  # type: ignore[arg-type]
                    finished.append((t.params, float(t.value)))  # type: ignore[arg-type]
                elif t.state is TrialState.PRUNED:
                    finished.append((t.params, math.nan))
                    pruned += 1
                elif t.state is TrialState.FAIL:
                    failed += 1
            if stage.derived:
                fine_space = parse_space(study.user_attrs[ATTR_SPACE])
        del storage
    return Run(seed, finished, pruned, failed, per_stage, fine_space, wall, repeats)


def kept_share(original: Param, fine: Space | None) -> float:
    """The share of ``original``'s range the fine space kept (in log space for log params); 0 if dropped."""
    narrowed = next((p for p in fine or () if p.name == original.name), None)
    if narrowed is None or isinstance(original, CategoricalParam) or isinstance(narrowed, CategoricalParam):
        return 0.0
    to = math.log if original.log else float
    return (to(narrowed.high) - to(narrowed.low)) / (to(original.high) - to(original.low))


def kept_text(original: Param, narrowed: Param) -> str:
    if isinstance(narrowed, CategoricalParam):
        return "/".join(map(str, narrowed.choices))
    return f"{kept_share(original, (narrowed,)):.0%}"


def quartiles(xs: Sequence[float]) -> tuple[float, float, float]:
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def near_share(runs: Sequence[Run], half: int, near: Callable[[Run, dict[str, Any], float], bool]) -> str:
    """The share of the finished trials of ``half`` of the budget, pooled over seeds, that are near the optimum."""
    hits = sum(sum(not math.isnan(v) and near(r, p, v) for p, v in r.half(half)) for r in runs)
    total = sum(len(r.half(half)) for r in runs)
    return f"{hits / total:.0%}" if total else "-"


def label(strategy: str, budget: int) -> str:
    coarse = budget // 2
    return {"random": f"random {budget}", "tpe": f"tpe {budget}", "c2f": f"random {coarse} > tpe {budget - coarse}",
            "c2f-ws": f"random {coarse} > tpe {budget - coarse} ws{WARM_START}"}[strategy]


def report(problem: Problem, results: dict[str, list[Run]], budget: int, args: argparse.Namespace) -> None:
    seeds = [r.seed for r in next(iter(results.values()))]
    ref = {s: min(r.best for runs in results.values() for r in runs if r.seed == s) for s in seeds}

    def near(run: Run, params: dict[str, Any], value: float) -> bool:
        return problem.near(params, value, ref[run.seed])

    print(f"\n== {problem.name}: {problem.about}; budget {budget}, seeds {seeds[0]}..{seeds[-1]} ==")
    print(f"near = {problem.near_text}; near 1st/2nd half: share of the finished trials of that half of the "
          "budget, pooled over seeds; any 1st / any near: seeds with a near trial in the 1st half / at all; best near: "
          "seeds whose best trial is near")
    print(f"{'strategy':<26} {'median best':>11} {'q1..q3':>15} {'min..max':>15} "
          f"{'near 1st':>8} {'near 2nd':>8} {'any 1st':>7} {'any near':>8} {'best near':>9} {'pruned':>6} {'failed':>6} "
          f"{'wall s':>7}")
    for strategy, runs in results.items():
        bests = sorted(r.best for r in runs)
        q1, q2, q3 = quartiles(bests)
        best_near = sum(near(r, *r.best_trial) for r in runs)
        any_near = sum(any(not math.isnan(v) and near(r, p, v) for p, v in r.finished) for r in runs)
        any_first = sum(any(not math.isnan(v) and near(r, p, v) for p, v in r.half(0)) for r in runs)
        print(f"{label(strategy, budget):<26} {q2:>11.4g} {f'{q1:.3g}..{q3:.3g}':>15} "
              f"{f'{bests[0]:.3g}..{bests[-1]:.3g}':>15} {near_share(runs, 0, near):>8} "
              f"{near_share(runs, 1, near):>8} {f'{any_first}/{len(runs)}':>7} {f'{any_near}/{len(runs)}':>8} {f'{best_near}/{len(runs)}':>9} {sum(r.pruned for r in runs):>6} "
              f"{sum(r.failed for r in runs):>6} {sum(r.wall_s for r in runs):>7.1f}")
    print("best per seed:")
    for strategy, runs in results.items():
        print(f"  {strategy:<8} " + "  ".join(f"{r.best:.4g}" for r in runs))
    others = [s for s in results if not s.startswith("c2f")]
    for strategy in (s for s in results if s.startswith("c2f")):
        wins = ", ".join(f"than {o} in {sum(c.best < r.best for c, r in zip(results[strategy], results[o], strict=True))}"
                         f"/{len(seeds)}" for o in others)
        if wins:
            print(f"{strategy} better {wins} seeds (ties count as not better)")
    for strategy in (s for s in results if s.startswith("c2f")):
        runs = results[strategy]
        stages = {name: [r.per_stage[name] for r in runs] for name in runs[0].per_stage}
        print(f"{strategy} budget: " + ", ".join(f"{n} {min(c)}..{max(c)} finished trials" for n, c in stages.items())
              + f"; {sum(r.pruned for r in runs)} pruned and {sum(r.failed for r in runs)} failed over all seeds")
        spec_space = parse_space(study_dict(problem, strategy, 0, budget, args)["space"])
        shares = {p.name: [kept_share(p, r.fine_space) for r in runs] for p in spec_space
                  if not isinstance(p, CategoricalParam)}
        print(f"{strategy} fine-stage space: median share of each range kept (log scale for log params): "
              + ", ".join(f"{n} {statistics.median(v):.0%}" for n, v in shares.items())
              + (f"; optimum inside the fine space in {sum(contains(r.fine_space or (), problem.optimum) for r in runs)}"
                 f"/{len(runs)} seeds" if problem.optimum is not None else ""))
        print(f"{strategy} fine-stage space per seed (numeric: share of the range kept; categorical: choices kept):")
        for r in runs:
            fine = {p.name: p for p in r.fine_space or ()}
            parts = [f"{p.name} {kept_text(p, fine[p.name]) if p.name in fine else 'dropped'}" for p in spec_space]
            outside = ""
            if problem.optimum is not None:
                missed = [p.name for p in spec_space if p.name in problem.optimum
                          and (p.name not in fine or not contains((dataclasses.replace(fine[p.name], when=()),),
                                                                  {p.name: problem.optimum[p.name]}))]
                outside = f"; optimum's value excluded for: {', '.join(missed) or 'none'}"
            print(f"  seed {r.seed}: " + ", ".join(parts) + outside)
        pairs = [pair for r in runs for pair in r.repeats]
        if pairs:
            deltas = sorted(abs(b - a) / abs(a) if a else abs(b - a) for a, b in pairs)
            worse = sum(b > a for a, b in pairs)
            print(f"{strategy} warm start: {len(pairs)} coarse configurations re-run in the fine stage (a new trial seed); "
                  f"value changed by median {statistics.median(deltas):.1%} (max {deltas[-1]:.1%}), "
                  f"worse on re-run {worse}/{len(pairs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--budget", type=int, default=60, help="finished trials per strategy (default 60)")
    parser.add_argument("--only", default=",".join(PROBLEMS), help=f"comma-separated subset of {','.join(PROBLEMS)}")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help=f"subset of {','.join(STRATEGIES)}")
    parser.add_argument("--epochs", type=int, default=40, help="cars93: epochs per trial (default 40)")
    parser.add_argument("--patience", type=int, default=8, help="cars93: early stopping (default 8)")
    parser.add_argument("--workers", type=int, default=2, help="cars93: local workers (default 2)")
    args = parser.parse_args()
    problems = [p.strip() for p in args.only.split(",") if p.strip()]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    for name, allowed in ((problems, PROBLEMS), (strategies, STRATEGIES)):
        bad = [x for x in name if x not in allowed]
        if bad:
            parser.error(f"unknown {bad[0]!r}; choose from {', '.join(allowed)}")
    if args.budget < 8:
        parser.error("--budget must be at least 8 (the coarse stage needs 4 complete trials to narrow on)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import torch

    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; "
          f"Python {platform.python_version()}, torch {torch.__version__}, Optuna {optuna.__version__}, "
          f"hpsearch {hpsearch_version}")
    print(f"strategies at {args.budget} finished trials: " + "; ".join(f"{s} = {label(s, args.budget)}"
                                                                      for s in strategies)
          + f"; narrow {NARROW}" + (f", epochs {args.epochs}, patience {args.patience}, {args.workers} workers"
                                    if "cars93" in problems else ""))
    started = time.perf_counter()
    for name in problems:
        problem = PROBLEMS[name]
        results: dict[str, list[Run]] = {s: [] for s in strategies}
        for seed in range(args.seeds):
            for strategy in strategies:
                results[strategy].append(run_one(problem, strategy, seed, args.budget, args))
        report(problem, results, args.budget, args)
    print(f"\ntotal wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
