"""Sampler registry: a stage's ``sampler`` name → the plan that picks its trials' parameters.

A plan makes the Optuna sampler of each trial. It is seeded by the trial's number, which Optuna
hands out once per study, so any number of processes sampling one stage at once never draw the same
sequence, and a resumed run does not replay the first one's draws. TPE counts the trials other
processes are running (``constant_liar``), so it does not send them all to the same spot.

``grid`` enumerates the distinct configurations of the space (conditional parameters included, which
Optuna's ``GridSampler`` cannot express) in a seeded shuffle; the stage runner gives the n-th of them
to the trial that fills slot n, so no two processes run the same grid point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
import random
from typing import Any
import zlib

import optuna

from hpsearch.space import Space, grid_configs

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


SamplerFactory = Callable[[Space, Mapping[str, int], int], SamplerPlan]


def _random(space: Space, grid: Mapping[str, int], seed: int) -> SamplerPlan:
    return SamplerPlan(lambda s: optuna.samplers.RandomSampler(seed=s), seed=seed)


def _tpe(space: Space, grid: Mapping[str, int], seed: int) -> SamplerPlan:
    return SamplerPlan(lambda s: optuna.samplers.TPESampler(seed=s, constant_liar=True), seed=seed, reads_history=True)


def _grid(space: Space, grid: Mapping[str, int], seed: int) -> SamplerPlan:
    configs = grid_configs(space, grid)
    # A seeded shuffle: a budget smaller than the grid samples it evenly, not its first corner.
    random.Random(seed).shuffle(configs)
    return SamplerPlan(lambda s: optuna.samplers.RandomSampler(seed=s), tuple(configs), seed)


_REGISTRY: dict[str, SamplerFactory] = {"random": _random, "grid": _grid, "tpe": _tpe}


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def make_plan(name: str, space: Space, grid: Mapping[str, int], seed: int) -> SamplerPlan:
    """Build the plan for sampler ``name`` (validated by the spec) seeded with ``seed``."""
    return _REGISTRY[name](space, grid, seed)
