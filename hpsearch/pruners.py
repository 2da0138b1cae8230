"""Pruner registry: ``pruner.kind`` → an Optuna pruner, plus the ``patient`` wrapper.

Trials report their objective metric once per epoch (epochs count from 1), so every "step" or
"resource" below is an epoch. The stage runner asks the pruner after each report, in the
orchestrating process, reading the shared storage: the decision is the same whichever worker or
node runs the trial.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
import warnings

import optuna


@dataclass(frozen=True)
class Option:
    """One option of a pruner: its type, default and smallest allowed value."""

    kind: type  # int or float
    default: Any
    minimum: float | None = None
    doc: str = ""


@dataclass(frozen=True)
class PrunerSpec:
    """A validated ``pruner:`` section. ``options`` holds every option of ``kind``, defaults filled in."""

    kind: str = "none"
    options: Mapping[str, Any] = field(default_factory=dict)
    patient: int | None = None  # wrap in PatientPruner: prune only after this many epochs without improvement
    min_delta: float = 0.0


_WARMUP = Option(int, 0, 0, "epochs reported before this pruner may prune a trial")
_STARTUP = Option(int, 5, 0, "complete trials needed before any trial is pruned")

OPTIONS: dict[str, dict[str, Option]] = {
    "none": {},
    "median": {"warmup_epochs": _WARMUP, "startup_trials": _STARTUP},
    "percentile": {"percentile": Option(float, 25.0, 0.0, "keep trials in the best PERCENTILE %"),
                   "warmup_epochs": _WARMUP, "startup_trials": _STARTUP},
    "successive_halving": {"min_resource": Option(int, 1, 1, "epochs before the first rung"),
                           "reduction_factor": Option(int, 3, 2, "keep 1/REDUCTION_FACTOR at each rung"),
                           "min_early_stopping_rate": Option(int, 0, 0, "skip this many rungs")},
    "hyperband": {"min_resource": Option(int, 1, 1, "epochs before the first rung"),
                  "max_resource": Option(int, 0, 0, "epochs of a full trial; 0: train.epochs"),
                  "reduction_factor": Option(int, 3, 2, "keep 1/REDUCTION_FACTOR at each rung")},
    "threshold": {"lower": Option(float, None, None, "prune when the metric falls below"),
                  "upper": Option(float, None, None, "prune when the metric rises above"),
                  "warmup_epochs": _WARMUP},
}
# Keys of the pruner section besides a kind's options.
COMMON_KEYS = ("kind", "patient", "min_delta")


def names() -> tuple[str, ...]:
    return tuple(OPTIONS)


def _none(o: Mapping[str, Any], epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.NopPruner()


def _median(o: Mapping[str, Any], epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.MedianPruner(n_startup_trials=o["startup_trials"], n_warmup_steps=o["warmup_epochs"])


def _percentile(o: Mapping[str, Any], epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.PercentilePruner(o["percentile"], n_startup_trials=o["startup_trials"],
                                           n_warmup_steps=o["warmup_epochs"])


def _successive_halving(o: Mapping[str, Any], epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=o["min_resource"], reduction_factor=o["reduction_factor"],
                                                  min_early_stopping_rate=o["min_early_stopping_rate"])


def _hyperband(o: Mapping[str, Any], epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.HyperbandPruner(min_resource=o["min_resource"], max_resource=o["max_resource"] or epochs,
                                          reduction_factor=o["reduction_factor"])


def _threshold(o: Mapping[str, Any], epochs: int) -> optuna.pruners.BasePruner:
    return optuna.pruners.ThresholdPruner(lower=o["lower"], upper=o["upper"], n_warmup_steps=o["warmup_epochs"])


_REGISTRY: dict[str, Callable[[Mapping[str, Any], int], optuna.pruners.BasePruner]] = {
    "none": _none, "median": _median, "percentile": _percentile,
    "successive_halving": _successive_halving, "hyperband": _hyperband, "threshold": _threshold,
}


def make_pruner(spec: PrunerSpec, epochs: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner of ``spec``; ``epochs`` is the longest a trial trains (hyperband's default resource)."""
    pruner = _REGISTRY[spec.kind](spec.options, epochs)
    if spec.patient is not None:
        with warnings.catch_warnings():  # "experimental" since Optuna 2.8: noise on a user's terminal
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            pruner = optuna.pruners.PatientPruner(None if spec.kind == "none" else pruner,
                                                  patience=spec.patient, min_delta=spec.min_delta)
    return pruner
