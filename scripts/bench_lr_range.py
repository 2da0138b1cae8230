"""The lr range test against a wide random search, on the shipped studies.

For each study (studies/car_price.yaml: the cars93 MLP, digits_cnn.yaml: the digits CNN,
sequence_transformer.yaml: the transformer on is_sorted), trained for real on CPU by the local executor:

1. the range test of ``hpsearch lr-range`` (seed 0; --steps, --repeats; every optimizer choice) gives a
   suggested lr range, or none;
2. per seed, a **wide** coarse stage: random search with ``lr`` over 1e-5..1 (log), the study's other
   parameters as written, ``--trials`` trials plus as many as the range test cost (its wall time over
   the mean training time of the stage's first --trials trials, rounded up; the stage then resumes with
   the raised budget): equal compute;
3. per seed, a **ranged** coarse stage: the same with ``lr`` over the suggested range, ``--trials`` trials.

Prints per study: the suggestion and its cost; per seed, the best lr of the wide stage and whether it lies
inside the suggested range, how many of the wide stage's top 5 do, and both stages' best values; then
the median best of each. Nothing is asserted. A study with no suggestion gets only the wide stages.

Usage: python scripts/bench_lr_range.py [--only cars,digits,transformer] [--seeds 3] [--trials 16]
                                        [--steps 200] [--min 1e-8] [--repeats 3] [--workers 2]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import math
import platform
import statistics
import tempfile
import time
from typing import Any

import optuna
import torch

from hpsearch import lr_range
from hpsearch.spec import parse_spec, read_study_file
from hpsearch.stages import run_study
from hpsearch.storage import open_storage
from hpsearch.train.lr_range import parse_settings

STUDIES = {"cars": "studies/car_price.yaml", "digits": "studies/digits_cnn.yaml",
           "transformer": "studies/sequence_transformer.yaml"}
WIDE = (1e-5, 1.0)
TOP = 5


@dataclasses.dataclass
class Stage:
    best_value: float
    best_lr: float
    top_lrs: list[float]
    seconds: float
    trials: int
    trial_seconds: float  # mean training time of a trial (its duration_s, one worker)


def raw_study(path: str, seed: int, lr: tuple[float, float], trials: int, workers: int, name: str) -> dict[str, Any]:
    raw = copy.deepcopy(read_study_file(path))
    raw.update(name=name, seed=seed, storage=None)
    raw["train"] = {**raw.get("train", {}), "device": "cpu"}
    raw["space"]["lr"] = {"type": "float", "low": lr[0], "high": lr[1], "log": True}
    raw["stages"] = [{"name": "coarse", "sampler": "random", "trials": trials}]
    raw.pop("pruner", None)  # every trial trains to its end: the stages differ by lr only
    raw["executor"] = {"kind": "local", "workers": workers}
    raw["keep"] = "none"  # no trained models written to ./hpsearch-artifacts
    return raw


def run_stage(raw: dict[str, Any], maximize: bool, db: str) -> Stage:
    """Run (or, with a raised budget, resume) the study ``raw`` in the SQLite file ``db``."""
    spec = parse_spec(raw)
    storage = open_storage(f"sqlite:///{db}")
    start = time.perf_counter()
    run_study(spec, storage)
    seconds = time.perf_counter() - start
    trials = optuna.load_study(study_name=f"{spec.name}/coarse", storage=storage).get_trials()
    complete = sorted((t for t in trials if t.value is not None and math.isfinite(t.value)),
                      key=lambda t: -t.value if maximize else t.value)  # type: ignore[operator, return-value]
    durations = [t.user_attrs["duration_s"] for t in trials if "duration_s" in t.user_attrs]
    return Stage(complete[0].value, complete[0].params["lr"], [t.params["lr"] for t in complete[:TOP]],  # type: ignore[arg-type]
                 seconds, len(trials), statistics.fmean(durations))


def bench(key: str, args: argparse.Namespace) -> None:
    path = STUDIES[key]
    spec = parse_spec({**read_study_file(path), "train": {**read_study_file(path).get("train", {}), "device": "cpu"}})
    settings = parse_settings(args.min, 10, args.steps, args.repeats)
    start = time.perf_counter()
    tested = lr_range.run(spec, settings)
    cost = time.perf_counter() - start
    suggestion, message = lr_range.combined([t.result for t in tested])
    print(f"\n== {key} ({path}): {spec.direction} {spec.metric}; range test {cost:.1f} s "
          f"({args.steps} steps x {args.repeats} repeats x {len(tested)} optimizer(s))")
    for t in tested:
        print(f"   {t.result.optimizer}: {t.result.message}")
    print(f"   suggested: {message}" if suggestion else "   no suggestion: the ranged stage is skipped")
    rows = []
    for seed in range(args.seeds):
        with tempfile.TemporaryDirectory() as tmp:
            # The wide stage's first --trials trials price the test: its cost in trials of one worker each
            # (it ran in one process); then the same stage, its budget raised by that many, resumes.
            db = f"{tmp}/bench.db"
            wide = run_stage(raw_study(path, seed, WIDE, args.trials, args.workers, f"{key}-wide-{seed}"),
                             spec.maximize, db)
            per_trial = wide.trial_seconds
            extra = math.ceil(cost / per_trial) if suggestion else 0
            if extra:
                wide = run_stage(raw_study(path, seed, WIDE, args.trials + extra, args.workers, f"{key}-wide-{seed}"),
                                 spec.maximize, db)
            ranged = None
            if suggestion is not None:
                ranged = run_stage(raw_study(path, seed, (suggestion.low, suggestion.high), args.trials,
                                             args.workers, f"{key}-ranged-{seed}"), spec.maximize, db)
        inside = suggestion is not None and suggestion.low <= wide.best_lr <= suggestion.high
        top_in = sum(suggestion.low <= x <= suggestion.high for x in wide.top_lrs) if suggestion else 0
        rows.append((wide, ranged))
        print(f"   seed {seed}: wide {wide.trials} trials ({extra} for the test's cost, {per_trial:.1f} s/trial) "
              f"best {wide.best_value:.4g} at lr {wide.best_lr:.3g} ({'inside' if inside else 'outside'}; "
              f"top {len(wide.top_lrs)} inside: {top_in})"
              + (f"; ranged {ranged.trials} trials best {ranged.best_value:.4g} at lr {ranged.best_lr:.3g}"
                 if ranged else ""), flush=True)
    wide_best = statistics.median(w.best_value for w, _ in rows)
    line = f"   median best: wide {wide_best:.4g}"
    if suggestion is not None:
        ranged_best = statistics.median(r.best_value for _, r in rows if r is not None)
        inside = sum(suggestion.low <= w.best_lr <= suggestion.high for w, _ in rows)
        line += f", ranged {ranged_best:.4g}; best wide lr inside the suggestion in {inside}/{len(rows)} seeds"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(STUDIES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--min", type=float, default=1e-8, help="the sweep's first lr (its last is 10)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {platform.machine()}, "
          f"Python {platform.python_version()}, torch {torch.__version__}, Optuna {optuna.__version__}; "
          f"{args.seeds} seeds, {args.trials} trials a ranged stage, range test {args.steps} steps x {args.repeats}")
    for key in args.only.split(","):
        bench(key, args)


if __name__ == "__main__":
    main()
