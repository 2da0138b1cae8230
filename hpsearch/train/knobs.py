"""The knobs a study may set under ``train:`` or search under ``space:``: default and parser of each.

Three tables: knobs every trial has (``TRAIN_KNOBS``), knobs only some optimizers take
(``OPTIMIZER_KNOBS``, owners declared by ``OptimizerSpec.knobs``) and knobs only some schedules
take (``SCHEDULE_KNOBS``, owners declared by ``ScheduleSpec.knobs``). Setting a scoped knob the
chosen optimizer or schedule does not take is a ConfigError that names the ones it applies to.

Optimizer knobs: ``momentum`` (momentum, nesterov, rmsprop), ``beta1``/``beta2`` (adam, adamw),
``eps`` (adam, adamw, rmsprop, adagrad, adadelta), ``rho`` (adadelta), ``alpha`` (rmsprop's
squared-gradient average). Defaults are torch's for each optimizer.

Schedule knobs (formulas in :mod:`hpsearch.train.optim.schedules`): ``step_size`` and ``gamma`` (step:
multiply by gamma every step_size epochs), ``decay`` (the rate k of exponential and inverse_time),
``warmup_epochs`` and ``min_lr_ratio`` (cosine; ``min_lr_ratio`` also one_cycle), ``cycle_epochs`` and
``peak_ratio`` (cyclic; ``peak_ratio`` also one_cycle), ``pct_start`` (one_cycle).

Other knobs: ``lr_scaling`` (:mod:`hpsearch.train.optim.scaling`), ``lr_multipliers``/``head_lr_ratio``
(:mod:`hpsearch.train.optim.groups`), ``weight_decay``/``l1``/``grad_clip``
(:mod:`hpsearch.train.optim.regularize`), ``precision`` (``bf16`` autocast or ``fp32``), ``diverge_factor``
(:mod:`hpsearch.train.divergence`).
Parsers raise ConfigError keyed by the knob. Importing this module does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
import re
from typing import Any

from hpsearch.errors import ConfigError
from hpsearch.train.divergence import DEFAULT_FACTOR
from hpsearch.train.optim import optimizers
from hpsearch.train.optim.scaling import RULES, LrScaling
from hpsearch.train.optim.schedules import schedules
from hpsearch.values import as_choice, as_float, as_int, check_keys

PRECISIONS = ("bf16", "fp32")


@dataclass(frozen=True)
class Knob:
    """A training knob: its default and a parser that validates a raw value (raising ConfigError)."""

    name: str
    default: Any
    parse: Callable[[str, Any], Any]


def positive_float(key: str, value: Any) -> float:
    number = as_float(key, value)
    if number <= 0:
        raise ConfigError(key, f"must be > 0, got {value!r}")
    return number


def non_negative_float(key: str, value: Any) -> float:
    number = as_float(key, value)
    if number < 0:
        raise ConfigError(key, f"must be >= 0, got {value!r}")
    return number


MAX_COUNT = 10_000_000  # epochs, patience, batch size, step size: far past any real run, short of absurd


def positive_int(key: str, value: Any) -> int:
    number = as_int(key, value)
    if number < 1:
        raise ConfigError(key, f"must be >= 1, got {value!r}")
    if number > MAX_COUNT:
        raise ConfigError(key, f"must be at most {MAX_COUNT}, got {number:.3g}")
    return number


def _optional(parse: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    return lambda key, value: None if value is None else parse(key, value)


def _unit_interval(key: str, value: Any) -> float:
    number = as_float(key, value)
    if not 0.0 <= number < 1.0:
        raise ConfigError(key, f"must be in [0, 1), got {value!r}")
    return number


def _factor(key: str, value: Any) -> float:
    number = as_float(key, value)
    if not 0.0 < number <= 1.0:
        raise ConfigError(key, f"must be in (0, 1], got {value!r}")
    return number


def _open_unit(key: str, value: Any) -> float:
    number = as_float(key, value)
    if not 0.0 < number < 1.0:
        raise ConfigError(key, f"must be in (0, 1), got {value!r}")
    return number


def _at_least_one(key: str, value: Any) -> float:
    number = as_float(key, value)
    if number < 1.0:
        raise ConfigError(key, f"must be >= 1 (a multiple of lr), got {value!r}")
    return number


def _over_one(key: str, value: Any) -> float:
    number = as_float(key, value)
    if not number > 1.0:
        raise ConfigError(key, f"must be > 1 (a multiple of the first epoch's metric), or null to turn it off, got {value!r}")
    return number


def _seed(key: str, value: Any) -> int:
    number = as_int(key, value)
    if not 0 <= number < 2**32:
        raise ConfigError(key, f"must be in [0, 2**32), got {value!r}")
    return number


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _device(key: str, value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise ConfigError(key, f"must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def _lr_scaling(key: str, value: Any) -> LrScaling:
    """``{rule: sqrt, reference_batch: 32}``, or just the rule (so it can be a categorical parameter)."""
    if isinstance(value, str):
        return LrScaling(rule=as_choice(key, value, RULES, what="rule"))
    if not isinstance(value, Mapping):
        raise ConfigError(
            key, f"must be a mapping such as {{rule: sqrt, reference_batch: 32}}, got {value!r}"
        )
    check_keys(value, ("rule", "reference_batch"), prefix=f"{key}.")
    rule = as_choice(f"{key}.rule", value.get("rule", "none"), RULES, what="rule")
    reference = positive_int(f"{key}.reference_batch", value.get("reference_batch", 32))
    return LrScaling(rule=rule, reference_batch=reference)


def _lr_multipliers(key: str, value: Any) -> tuple[tuple[str, float], ...]:
    """``{head: 2.0}``: parameter group -> multiple of the base lr. Group names are checked at train time."""
    if not isinstance(value, Mapping):
        raise ConfigError(
            key, f"must be a mapping of parameter group to factor such as {{head: 2.0}}, got {value!r}"
        )
    for group in value:
        if not isinstance(group, str) or not group:
            raise ConfigError(key, f"group names must be non-empty strings, got {group!r}")
    return tuple(sorted((g, positive_float(f"{key}.{g}", v)) for g, v in value.items()))


def _name_in(registry: Callable[[], Mapping[str, Any]], what: str) -> Callable[[str, Any], str]:
    return lambda key, value: as_choice(key, value, registry(), what=what)


def _table(*knobs: Knob) -> Mapping[str, Knob]:
    return {k.name: k for k in knobs}


# Knobs every trial has.
TRAIN_KNOBS: Mapping[str, Knob] = _table(
    Knob("epochs", 20, positive_int),
    Knob("patience", None, _optional(positive_int)),
    Knob("min_delta", 0.0, non_negative_float),
    Knob("device", "auto", _device),
    Knob("precision", "fp32", lambda key, value: as_choice(key, value, PRECISIONS, what="precision")),
    Knob("lr", 1e-3, positive_float),
    Knob("batch_size", 32, positive_int),
    Knob("optimizer", "adam", _name_in(optimizers, "optimizer")),
    Knob("schedule", "constant", _name_in(schedules, "schedule")),
    Knob("lr_scaling", "none", _lr_scaling),
    Knob("lr_multipliers", {}, _lr_multipliers),
    Knob("head_lr_ratio", None, _optional(positive_float)),
    Knob("weight_decay", 0.0, non_negative_float),
    Knob("l1", 0.0, non_negative_float),
    Knob("grad_clip", None, _optional(positive_float)),
    # A monitored metric this many times worse than at epoch 1 has diverged (hpsearch.train.divergence).
    Knob("diverge_factor", DEFAULT_FACTOR, _optional(_over_one)),
    # The training seed (initialization, batch order, dropout) of every trial; by default the study's
    # seed + the trial's number. Fixing it retrains one trial exactly (`hpsearch best --config`).
    Knob("seed", None, _optional(_seed)),
)

# Knobs only some optimizers take (OptimizerSpec.knobs); an OptimizerSpec may override the default.
OPTIMIZER_KNOBS: Mapping[str, Knob] = _table(
    Knob("momentum", 0.9, _unit_interval),
    Knob("beta1", 0.9, _unit_interval),
    Knob("beta2", 0.999, _unit_interval),
    Knob("eps", 1e-8, positive_float),
    Knob("alpha", 0.99, _unit_interval),
    Knob("rho", 0.9, _unit_interval),
)

# Knobs only some schedules take (ScheduleSpec.knobs); see hpsearch.train.optim.schedules for the formulas.
SCHEDULE_KNOBS: Mapping[str, Knob] = _table(
    Knob("step_size", 10, positive_int),
    Knob("gamma", 0.1, _factor),
    Knob("decay", 0.1, non_negative_float),
    Knob("warmup_epochs", 0.0, non_negative_float),
    Knob("min_lr_ratio", 0.0, _unit_interval),
    Knob("cycle_epochs", 4.0, positive_float),
    Knob("peak_ratio", 10.0, _at_least_one),
    Knob("pct_start", 0.3, _open_unit),
)
