"""Learning-rate schedule registry: name -> its knobs and a pure function of training progress.

Every schedule returns a *factor* that multiplies the trial's base rate (``lr`` after
``lr_scaling``), so ``lr`` and the schedule's knobs can be searched independently: peaks and floors
are ratios of ``lr`` (``peak_ratio``, ``min_lr_ratio``), not absolute rates.

Progress ``t`` is measured in epochs and ``total`` is the ``epochs`` knob. Per-epoch schedules are
evaluated once per epoch at the number of completed epochs (``t = 0`` in the first epoch, so it runs
at exactly ``lr``); per-batch schedules before every step at the progress that step reaches,
``t = epoch + (batch + 1) / batches_per_epoch``, as nanoGPT's ``get_lr(it + 1)``.

==============  ==========  ==========================================================================
schedule        granularity factor(t)
==============  ==========  ==========================================================================
constant        epoch       1
step            epoch       gamma ** floor(t / step_size)
exponential     epoch       exp(-decay * t), or gamma ** t given gamma = exp(-decay) instead
inverse_time    epoch       1 / (1 + decay * t)
cosine          batch       t / warmup_epochs while warming up, then a half cosine from 1 down to
                            min_lr_ratio at t = total
cyclic          batch       triangular: 1 at the start of each cycle of cycle_epochs, peak_ratio
                            half way, back to 1 at its end
one_cycle       batch       linear from 1 up to peak_ratio over the first pct_start of the run, then
                            a half cosine down to min_lr_ratio at t = total
==============  ==========  ==========================================================================

Importing this module does not import torch. A new schedule is one ``register`` call; its knobs
must be declared in ``config.SCHEDULE_KNOBS``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
import math


@dataclass(frozen=True)
class ScheduleConfig:
    """A validated schedule choice; ``options`` holds its own knobs, e.g. ``(("gamma", 0.1), ("step_size", 10))``."""

    name: str = "constant"
    options: tuple[tuple[str, float], ...] = ()

    def factor(self, t: float, total: float) -> float:
        """The lr multiplier at progress ``t`` (epochs) of a run of ``total`` epochs."""
        return _REGISTRY[self.name].factor(t, total, dict(self.options))

    @property
    def per_batch(self) -> bool:
        return _REGISTRY[self.name].per_batch


Factor = Callable[[float, float, Mapping[str, float]], float]


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule: ``factor(t, total, options)`` and whether it is re-evaluated every batch."""

    name: str
    factor: Factor
    knobs: tuple[str, ...] = ()
    per_batch: bool = False


_REGISTRY: dict[str, ScheduleSpec] = {}


def register(spec: ScheduleSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"schedule {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def schedules() -> Mapping[str, ScheduleSpec]:
    """Every registered schedule, by name."""
    return dict(_REGISTRY)


def _constant(t: float, total: float, o: Mapping[str, float]) -> float:
    return 1.0


def _step(t: float, total: float, o: Mapping[str, float]) -> float:
    return o["gamma"] ** math.floor(t / o["step_size"])


def _exponential(t: float, total: float, o: Mapping[str, float]) -> float:
    return math.exp(-o["decay"] * t)


def _inverse_time(t: float, total: float, o: Mapping[str, float]) -> float:
    return 1.0 / (1.0 + o["decay"] * t)


def _half_cosine(progress: float, floor: float) -> float:
    """From 1 at progress 0 down to ``floor`` at progress 1."""
    progress = min(max(progress, 0.0), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _cosine(t: float, total: float, o: Mapping[str, float]) -> float:
    warmup = o["warmup_epochs"]
    if t < warmup:
        return t / warmup
    return _half_cosine((t - warmup) / (total - warmup), o["min_lr_ratio"])


def _cyclic(t: float, total: float, o: Mapping[str, float]) -> float:
    phase = (t / o["cycle_epochs"]) % 1.0
    return 1.0 + (o["peak_ratio"] - 1.0) * (1.0 - abs(2.0 * phase - 1.0))


def _one_cycle(t: float, total: float, o: Mapping[str, float]) -> float:
    rise = o["pct_start"] * total
    peak = o["peak_ratio"]
    if t < rise:
        return 1.0 + (peak - 1.0) * t / rise
    return peak * _half_cosine((t - rise) / (total - rise), o["min_lr_ratio"] / peak)


register(ScheduleSpec("constant", _constant))
register(ScheduleSpec("step", _step, knobs=("step_size", "gamma")))
register(ScheduleSpec("exponential", _exponential, knobs=("decay", "gamma")))
register(ScheduleSpec("inverse_time", _inverse_time, knobs=("decay",)))
register(ScheduleSpec("cosine", _cosine, knobs=("warmup_epochs", "min_lr_ratio"), per_batch=True))
register(ScheduleSpec("cyclic", _cyclic, knobs=("cycle_epochs", "peak_ratio"), per_batch=True))
register(
    ScheduleSpec("one_cycle", _one_cycle, knobs=("peak_ratio", "pct_start", "min_lr_ratio"), per_batch=True)
)
