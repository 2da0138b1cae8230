"""Sampler registry: a stage's ``sampler`` name → the plan that picks its trials' parameters.

A plan makes the Optuna sampler of each trial. It is seeded by the trial's number, which Optuna
hands out once per study, so any number of processes sampling one stage at once never draw the same
sequence, and a resumed run does not replay the first one's draws.

- ``random``: independent uniform draws (log-uniform for ``log`` parameters).
- ``qmc``: scrambled Sobol points, trial n taking point n of the stage's sequence: a space-filling
  coarse stage. Optuna's ``QMCSampler`` numbers its points with a counter in the study, which two
  runs sampling at once would race for, and a scramble per trial would undo the low discrepancy, so
  :class:`SobolSampler` takes the point from the trial's number and one scramble per stage instead.
- ``tpe``: Optuna's TPE with its options set here, not left to the installed Optuna's defaults
  (they changed in 5.0): ``multivariate`` and ``group`` (it models parameters jointly, and each
  branch of a conditional space on its own), ``constant_liar`` (it counts the trials other workers
  and runs are running as bad, so it does not send them all to one spot), and ``n_startup_trials``.
- ``gp`` (Gaussian process) and ``cmaes`` (CMA-ES): Optuna's, for fine stages over numeric spaces
  (CMA-ES samples categorical parameters at random).

``tpe``, ``gp`` and ``cmaes`` model the stage's past trials: they start with ``startup_trials``
random ones (a stage key; default a third of the stage's budget, between 2 and 10).

``grid`` enumerates the distinct configurations of the space (conditional parameters included, which
Optuna's ``GridSampler`` cannot express) in a seeded shuffle; the stage runner gives the n-th of them
to the trial that fills slot n, so no two processes run the same grid point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
import math
import random
from typing import Any
import warnings
import zlib

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from hpsearch.space import Space, grid_configs

MODELLING = ("tpe", "gp", "cmaes")  # samplers that model past trials (and take startup_trials)

SamplerMaker = Callable[[int], optuna.samplers.BaseSampler]


@dataclass(frozen=True)
class SamplerPlan:
    """The samplers of a stage and, for planned samplers, the configurations to run in order."""

    make: SamplerMaker  # seed → sampler
    configs: tuple[dict[str, Any], ...] | None = None  # None: the sampler draws freely, no bound
    seed: int = 0
    reads_history: bool = False  # whether the sampler models past trials (the stage reads them first)

    def sampler_for(self, number: int) -> optuna.samplers.BaseSampler:
        """The sampler of trial ``number``, seeded by the stage's seed and that number."""
        return self.make(zlib.crc32(f"{self.seed}:{number}".encode()))


@dataclass(frozen=True)
class PlanArgs:
    """What a sampler factory is given: the stage's space, grid points, seed, budget and start-up count."""

    space: Space
    grid: Mapping[str, int]
    seed: int
    trials: int
    startup_trials: int | None = None

    @property
    def startup(self) -> int:
        """Random trials before a modelling sampler models: as given, else a third of the budget in [2, 10]."""
        return self.startup_trials if self.startup_trials is not None else min(10, max(2, self.trials // 3))


SamplerFactory = Callable[[PlanArgs], SamplerPlan]


def _random(args: PlanArgs) -> SamplerPlan:
    return SamplerPlan(lambda s: optuna.samplers.RandomSampler(seed=s), seed=args.seed)


def _qmc(args: PlanArgs) -> SamplerPlan:
    names = tuple(p.name for p in args.space)
    sampler = SobolSampler(names, args.seed)  # one scramble for the stage: the trial's number picks the point
    return SamplerPlan(lambda s: sampler, seed=args.seed)


def _tpe(args: PlanArgs) -> SamplerPlan:
    startup = args.startup

    def make(seed: int) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate, group
            return optuna.samplers.TPESampler(seed=seed, constant_liar=True, multivariate=True, group=True,
                                              n_startup_trials=startup)

    return SamplerPlan(make, seed=args.seed, reads_history=True)


def _gp(args: PlanArgs) -> SamplerPlan:
    startup = args.startup

    def make(seed: int) -> optuna.samplers.BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)

    return SamplerPlan(make, seed=args.seed, reads_history=True)


def _cmaes(args: PlanArgs) -> SamplerPlan:
    startup = args.startup

    def make(seed: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup, warn_independent_sampling=False)

    return SamplerPlan(make, seed=args.seed, reads_history=True)


def _grid(args: PlanArgs) -> SamplerPlan:
    configs = grid_configs(args.space, args.grid)
    # A seeded shuffle: a budget smaller than the grid samples it evenly, not its first corner.
    random.Random(args.seed).shuffle(configs)
    return SamplerPlan(lambda s: optuna.samplers.RandomSampler(seed=s), tuple(configs), args.seed)


_REGISTRY: dict[str, SamplerFactory] = {"random": _random, "qmc": _qmc, "grid": _grid, "tpe": _tpe, "gp": _gp,
                                        "cmaes": _cmaes}


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def make_plan(name: str, space: Space, grid: Mapping[str, int], seed: int, *, trials: int = 100,
              startup_trials: int | None = None) -> SamplerPlan:
    """Build the plan for sampler ``name`` (validated by the spec) seeded with ``seed``, for a stage of ``trials``."""
    return _REGISTRY[name](PlanArgs(space, grid, seed, trials, startup_trials))


class SobolSampler(optuna.samplers.RandomSampler):
    """Trial n takes point n of a scrambled Sobol sequence, one dimension per parameter of the space.

    The point depends only on the stage's seed and the trial's number, so runs sampling one stage at
    once share one low-discrepancy sequence without coordinating. A parameter outside the space it
    was made for (none in hpsearch) is drawn at random.
    """

    def __init__(self, names: Sequence[str], seed: int) -> None:
        from scipy.stats import qmc

        super().__init__(seed=seed)
        self._dims = {name: i for i, name in enumerate(names)}
        self._engine = qmc.Sobol(max(1, len(self._dims)), scramble=True, seed=seed)
        self._points: list[Any] = []  # the sequence so far, extended in blocks as trial numbers grow

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        dim = self._dims.get(param_name)
        if dim is None:
            return super().sample_independent(study, trial, param_name, param_distribution)
        return _from_unit(float(self._point(trial.number)[dim]), param_distribution)

    def _point(self, number: int) -> Any:
        while len(self._points) <= number:
            # Blocks of a power of two keep the sequence's balance (and scipy's warning quiet).
            self._points.extend(self._engine.random(max(64, 2 ** math.ceil(math.log2(len(self._points) or 1)))))
        return self._points[number]


def _from_unit(u: float, distribution: BaseDistribution) -> Any:
    """The value at ``u`` in [0, 1) of a distribution's range (log-scaled, stepped, or a choice)."""
    if isinstance(distribution, CategoricalDistribution):
        choices = distribution.choices
        return choices[min(len(choices) - 1, int(u * len(choices)))]
    if not isinstance(distribution, (FloatDistribution, IntDistribution)):
        raise TypeError(f"no unit mapping for {type(distribution).__name__}")
    low, high = distribution.low, distribution.high
    if distribution.log:
        value = math.exp(math.log(low) + u * (math.log(high) - math.log(low)))
    elif distribution.step is not None:
        # Each of the n grid values owns an equal share of [0, 1).
        n = int(round((high - low) / distribution.step)) + 1
        value = low + min(n - 1, int(u * n)) * distribution.step
    else:
        value = low + u * (high - low)
    if isinstance(distribution, IntDistribution):
        return int(min(high, max(low, round(value))))
    return float(min(high, max(low, value)))
