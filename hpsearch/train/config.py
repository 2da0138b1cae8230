"""Training configuration: the knobs of a trial parsed once into frozen dataclasses.

The knob tables live in :mod:`hpsearch.train.knobs`; this module applies them and the rules that
tie knobs together (a knob only some optimizers or schedules take, nesterov needs momentum, ...).
Importing it does not import torch, so spec validation stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
import math
from typing import Any

from hpsearch.errors import ConfigError, did_you_mean, one_of
from hpsearch.train.divergence import DEFAULT_FACTOR
from hpsearch.train.knobs import OPTIMIZER_KNOBS, SCHEDULE_KNOBS, TRAIN_KNOBS, Knob
from hpsearch.train.metrics import TASKS, reported_metrics
from hpsearch.train.models import model_kind, models
from hpsearch.train.optim import OptimizerConfig, optimizers
from hpsearch.train.optim.scaling import LrScaling
from hpsearch.train.optim.schedules import ScheduleConfig, schedules
from hpsearch.values import as_int, check_keys


@dataclass(frozen=True)
class TrainConfig:
    """Everything one trial needs to train, validated.

    ``lr_multipliers`` maps parameter groups (see :mod:`hpsearch.train.optim.groups`) to multiples of the
    base lr; ``head_lr_ratio`` is already folded into it as ``head``.
    """

    model: Any  # the model kind's frozen config, e.g. models.MlpConfig
    optimizer: OptimizerConfig
    task: str
    monitor: str
    maximize: bool
    seed: int
    epochs: int = 20
    batch_size: int = 32
    patience: int | None = None
    min_delta: float = 0.0
    device: str = "auto"
    precision: str = "fp32"
    schedule: ScheduleConfig = ScheduleConfig()
    lr_scaling: LrScaling = LrScaling()
    lr_multipliers: tuple[tuple[str, float], ...] = ()
    l1: float = 0.0
    grad_clip: float | None = None
    diverge_factor: float | None = DEFAULT_FACTOR  # see hpsearch.train.divergence; None: nan/inf only
    keep_model: bool = False  # return the best epoch's network with the result (TrainResult.model)

    @property
    def full_batch(self) -> bool:
        """Whether the optimizer takes one step per epoch on the whole training set (lbfgs)."""
        return optimizers()[self.optimizer.name].full_batch

    @property
    def base_lr(self) -> float:
        """``lr`` scaled for ``batch_size`` by ``lr_scaling``; full-batch optimizers are not scaled."""
        if self.full_batch:
            return self.optimizer.lr
        return self.lr_scaling.scale(self.optimizer.lr, self.batch_size)


def knob_names(kind: str = "mlp", section: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Every name the ``train:`` and ``space:`` sections may set for a model of ``kind``.

    ``section`` is the ``model:`` section, for kinds whose knobs depend on it (a user model's).
    """
    spec = models().get(kind)
    if spec is None:
        raise ConfigError("model.kind", _unknown_kind(kind))
    model_knobs = spec.knobs(section) if section is not None else spec.scalar_knobs
    return (*TRAIN_KNOBS, *OPTIMIZER_KNOBS, *SCHEDULE_KNOBS, *model_knobs)


def _unknown_kind(kind: Any) -> str:
    hint = did_you_mean(kind, models()) if isinstance(kind, str) else ""
    return f"unknown model kind {kind!r}{hint}; {one_of(sorted(models()))}"


def build_train_config(
    model: Mapping[str, Any],
    knobs: Mapping[str, Any],
    *,
    task: str,
    monitor: str,
    maximize: bool,
    seed: int,
    keep_model: bool = False,
) -> TrainConfig:
    """Validate the ``model:`` section and the knobs (``train:`` merged with a trial's parameters).

    Raises:
        ConfigError: keyed by the knob name, or ``model.<field>`` for the model section.
    """
    kind = model_kind(model)
    if kind not in models():
        raise ConfigError("model.kind", _unknown_kind(kind))
    model_spec = models()[kind]
    model_knobs = model_spec.knobs(model)
    check_keys(knobs, knob_names(kind, model), what="knob")
    if task not in TASKS:
        raise ConfigError("task", f"unknown task {task!r}; {one_of(TASKS)}")
    metrics = reported_metrics(task)
    if monitor not in metrics:
        hint = did_you_mean(monitor, metrics)
        raise ConfigError("monitor", f"unknown metric {monitor!r} for {task}{hint}; {one_of(metrics)}")

    v = {name: knob.parse(name, knobs.get(name, knob.default)) for name, knob in TRAIN_KNOBS.items()}
    return TrainConfig(
        model=model_spec.parse(model, {k: knobs[k] for k in model_knobs if k in knobs}),
        optimizer=_optimizer_config(v, knobs),
        task=task,
        monitor=monitor,
        maximize=bool(maximize),
        seed=as_int("seed", seed) if v["seed"] is None else v["seed"],
        epochs=v["epochs"],
        batch_size=v["batch_size"],
        patience=v["patience"],
        min_delta=v["min_delta"],
        device=v["device"],
        precision=v["precision"],
        schedule=_schedule_config(v, knobs),
        lr_scaling=v["lr_scaling"],
        lr_multipliers=_lr_multipliers(v, knobs),
        l1=v["l1"],
        grad_clip=v["grad_clip"],
        diverge_factor=v["diverge_factor"],
        keep_model=keep_model,
    )


def _scoped_options(
    knobs: Mapping[str, Any],
    table: Mapping[str, Knob],
    owners: Mapping[str, tuple[str, ...]],
    what: str,
    chosen: str,
    defaults: Mapping[str, float],
) -> tuple[tuple[str, Any], ...]:
    """Parse the knobs ``chosen`` takes; any knob of ``table`` it does not take is a ConfigError."""
    accepted = owners[chosen]
    for knob in table:
        if knob in knobs and knob not in accepted:
            raise ConfigError(knob, _inapplicable(knob, owners, what, chosen))
    return tuple(
        (knob, table[knob].parse(knob, knobs.get(knob, defaults.get(knob, table[knob].default))))
        for knob in sorted(accepted)
    )


def _inapplicable(knob: str, owners: Mapping[str, tuple[str, ...]], what: str, chosen: str) -> str:
    users = sorted(name for name, taken in owners.items() if knob in taken)
    which = f"{what} {users[0]}" if len(users) == 1 else f"{what}s {', '.join(users)}"
    own = sorted(owners[chosen])
    takes = f"which takes {', '.join(own)}" if own else f"which takes no {what} knobs"
    return f"applies only to {which} ({what} is {chosen!r}, {takes})"


def _optimizer_config(v: Mapping[str, Any], knobs: Mapping[str, Any]) -> OptimizerConfig:
    name = v["optimizer"]
    specs = optimizers()
    owners = {n: s.knobs for n, s in specs.items()}
    options = _scoped_options(knobs, OPTIMIZER_KNOBS, owners, "optimizer", name, dict(specs[name].defaults))
    if name == "nesterov" and dict(options)["momentum"] == 0:
        raise ConfigError("momentum", "must be > 0 for optimizer nesterov, got 0")
    return OptimizerConfig(name=name, lr=v["lr"], weight_decay=v["weight_decay"], options=options)


def _schedule_config(v: Mapping[str, Any], knobs: Mapping[str, Any]) -> ScheduleConfig:
    name = v["schedule"]
    owners = {n: s.knobs for n, s in schedules().items()}
    options = _scoped_options(knobs, SCHEDULE_KNOBS, owners, "schedule", name, {})
    if name == "exponential":
        options = _exponential_rate(dict(options), knobs)
    warmup = dict(options).get("warmup_epochs", 0.0)
    if warmup >= v["epochs"]:
        raise ConfigError("warmup_epochs", f"must be < epochs ({v['epochs']}), got {warmup:g}")
    return ScheduleConfig(name=name, options=options)


def _exponential_rate(options: Mapping[str, Any], knobs: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Exponential decay is given as the rate k (``decay``: lr0·e^(−k·t)) or, as torch's ExponentialLR
    does, as the factor per epoch (``gamma`` = e^(−k)); it is kept as the rate."""
    if "gamma" in knobs and "decay" in knobs:
        raise ConfigError("gamma", "and decay both set the exponential schedule's rate (gamma = exp(-decay)); set one")
    rate = -math.log(options["gamma"]) if "gamma" in knobs else options["decay"]
    return (("decay", rate),)


def _lr_multipliers(v: Mapping[str, Any], knobs: Mapping[str, Any]) -> tuple[tuple[str, float], ...]:
    multipliers = dict(v["lr_multipliers"])
    ratio = v["head_lr_ratio"]
    if ratio is not None:
        if "head" in multipliers:
            raise ConfigError("head_lr_ratio", "is also set as lr_multipliers.head; set it in one place")
        multipliers["head"] = ratio
    if multipliers and not optimizers()[v["optimizer"]].param_groups:
        key = "head_lr_ratio" if "head_lr_ratio" in knobs else "lr_multipliers"
        users = sorted(n for n, s in optimizers().items() if s.param_groups)
        raise ConfigError(
            key,
            f"applies only to optimizers {', '.join(users)} "
            f"(optimizer is {v['optimizer']!r}, which trains all parameters as one group)",
        )
    return tuple(sorted(multipliers.items()))
