"""The range test's settings, validated once: the sweep's bounds, steps and repeats."""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any

from hpsearch.errors import ConfigError
from hpsearch.train.lr_range._analysis import Watch, start_steps

MIN_STEPS = 10  # fewer steps cannot show a fall and a blow-up with a smoothed curve between them
MAX_STEPS = 100_000
MAX_REPEATS = 64
# The loss's EMA averages over about this many decades of lr, however many steps a decade takes: a
# longer average lags the curve to the right, so the loss would seem to blow up at a larger lr.
SMOOTHING_DECADES = 0.2
MIN_SMOOTHING_STEPS = 4  # but over this many steps at least: one minibatch's loss can be far off the trend
DIVERGE_FACTOR = 4.0  # diverged once the smoothed loss exceeds this multiple of its minimum (as fastai)


@dataclass(frozen=True)
class RangeSettings:
    """An exponential sweep of ``steps`` learning rates from ``min_lr`` to ``max_lr``, ``repeats`` times.

    Repeat r trains from seed ``seed + r`` of the config it is given.
    """

    min_lr: float = 1e-8
    max_lr: float = 10.0
    steps: int = 200
    repeats: int = 3
    smoothing_decades: float = SMOOTHING_DECADES
    diverge_factor: float = DIVERGE_FACTOR

    @property
    def smoothing(self) -> float:
        """The EMA's weight of the past: a time constant of ``smoothing_decades`` of the sweep, at least
        ``MIN_SMOOTHING_STEPS`` steps."""
        per_decade = (self.steps - 1) / math.log10(self.max_lr / self.min_lr)
        return 1 - 1 / max(MIN_SMOOTHING_STEPS, self.smoothing_decades * per_decade)

    def lrs(self) -> tuple[float, ...]:
        """The lr of each step: ``min_lr`` to ``max_lr``, evenly spaced in log space, both ends included."""
        ratio = math.log(self.max_lr / self.min_lr)
        values = [self.min_lr * math.exp(ratio * i / (self.steps - 1)) for i in range(self.steps)]
        values[-1] = self.max_lr
        return tuple(values)


def watch_for(settings: RangeSettings) -> Watch:
    """The smoothing and divergence check of a sweep with ``settings``."""
    return Watch(settings.smoothing, settings.diverge_factor, start_steps(settings.steps))


def parse_settings(min_lr: Any = 1e-8, max_lr: Any = 10.0, steps: Any = 200, repeats: Any = 3) -> RangeSettings:
    """Validate the sweep's settings.

    Raises:
        ConfigError: keyed ``min``, ``max``, ``steps`` or ``repeats`` (the names the CLI and a stage use).
    """
    low, high = _positive("min", min_lr), _positive("max", max_lr)
    if low >= high:
        raise ConfigError("min", f"must be below max ({high:g}), got {low:g}")
    return RangeSettings(low, high, _count("steps", steps, MIN_STEPS, MAX_STEPS), _count("repeats", repeats, 1, MAX_REPEATS))


def _positive(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(key, f"must be a learning rate > 0 such as 1e-8, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(key, f"must be a learning rate > 0 such as 1e-8, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(key, f"must be a finite learning rate > 0 such as 1e-8, got {value!r}")
    return number


def _count(key: str, value: Any, low: int, high: int) -> int:
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    if text is None or not text.lstrip("-").isdigit():
        raise ConfigError(key, f"must be a whole number in {low}..{high}, got {value!r}")
    number = int(text)
    if not low <= number <= high:
        raise ConfigError(key, f"must be in {low}..{high}, got {number}")
    return number
