"""Sampler registry: a stage's ``sampler`` name → the plan that picks its trials' parameters.

A plan wraps an Optuna sampler. Random and TPE sample freely; ``grid`` enumerates the distinct
configurations of the space (conditional parameters included, which Optuna's ``GridSampler`` cannot
express) and hands out the unvisited ones one at a time, which the stage runner puts in Optuna's
trial queue.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
import random
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch.space import Space, grid_configs

# Trials in these states hold their configuration: a grid point is not asked for again.
_VISITING = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


@dataclass
class SamplerPlan:
    """The sampler of a stage and, for planned samplers, the configurations still to run."""

    sampler: optuna.samplers.BaseSampler
    configs: list[dict[str, Any]] | None = None  # None: the sampler draws freely, no bound

    def remaining(self, study: optuna.Study) -> int | None:
        """How many planned configurations no trial holds yet; ``None`` when unbounded."""
        return None if self.configs is None else len(self._unvisited(study))

    def next_params(self, study: optuna.Study) -> dict[str, Any]:
        """The next unvisited planned configuration, or ``{}`` for the sampler to draw."""
        if self.configs is None:
            return {}
        todo = self._unvisited(study)
        return dict(todo[0]) if todo else {}

    def _unvisited(self, study: optuna.Study) -> list[dict[str, Any]]:
        held = {
            _key(t.system_attrs.get("fixed_params", {}) if t.state is TrialState.WAITING else t.params)
            for t in study.get_trials(deepcopy=False, states=_VISITING)
        }
        return [c for c in self.configs or () if _key(c) not in held]


def _key(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(params.items()))


SamplerFactory = Callable[[Space, Mapping[str, int], int], SamplerPlan]


def _random(space: Space, grid: Mapping[str, int], seed: int) -> SamplerPlan:
    return SamplerPlan(optuna.samplers.RandomSampler(seed=seed))


def _tpe(space: Space, grid: Mapping[str, int], seed: int) -> SamplerPlan:
    return SamplerPlan(optuna.samplers.TPESampler(seed=seed))


def _grid(space: Space, grid: Mapping[str, int], seed: int) -> SamplerPlan:
    configs = grid_configs(space, grid)
    # A seeded shuffle: a budget smaller than the grid samples it evenly, not its first corner.
    random.Random(seed).shuffle(configs)
    return SamplerPlan(optuna.samplers.RandomSampler(seed=seed), configs)


_REGISTRY: dict[str, SamplerFactory] = {"random": _random, "grid": _grid, "tpe": _tpe}


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def make_plan(name: str, space: Space, grid: Mapping[str, int], seed: int) -> SamplerPlan:
    """Build the plan for sampler ``name`` (validated by the spec) seeded with ``seed``."""
    return _REGISTRY[name](space, grid, seed)
