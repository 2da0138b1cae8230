"""When a trial has diverged: the rule for a monitored metric that runs away.

A loss or monitored metric that becomes nan or inf has diverged (checked where it is computed,
:mod:`hpsearch.train.loop` and :mod:`hpsearch.train.fused.pack`). So has a monitored metric that
runs away while staying finite, by this rule (``diverge_factor``, default 100; ``null`` turns it off):

- a minimized metric (``val_rmse``, ``val_mse``, ``val_mae``, ``val_loss``, ``train_loss``; all >= 0)
  has run away at the first epoch whose value is more than ``diverge_factor`` times the first
  epoch's value (a first value of 0 leaves nothing to compare with);
- ``val_r2`` (at most 1, unbounded below) is ``1 - val_mse / variance``: it has run away when its
  distance to 1, ``1 - val_r2``, is more than ``diverge_factor`` times that of the first epoch,
  exactly when ``val_mse`` would have;
- ``val_accuracy`` and ``val_f1`` lie in [0, 1] and cannot run away: only nan or inf counts.

The runaway epoch's metrics are not reported (no intermediate value, no pruner call) and do not
count as an epoch of the trial's best: the trial ends as diverged with the best epoch it had.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

DEFAULT_FACTOR = 100.0

# How far each metric is from perfect, a number >= 0 that grows without bound when training runs away.
_ERRORS: Mapping[str, Callable[[float], float]] = {
    "train_loss": float,
    "val_mse": float,
    "val_rmse": float,
    "val_mae": float,
    "val_loss": float,
    "val_r2": lambda value: 1.0 - value,
}


@dataclass
class RunawayWatch:
    """Watches one trial's monitored metric, epoch by epoch, for the runaway rule of this module."""

    monitor: str
    factor: float | None = DEFAULT_FACTOR
    _first: tuple[float, float] | None = None  # (value, error) of the first epoch

    def check(self, epoch: int, value: float) -> str | None:
        """Why epoch ``epoch`` with the (finite) monitored ``value`` ran away, or None when it did not."""
        error_of = _ERRORS.get(self.monitor)
        if error_of is None or self.factor is None:
            return None
        error = error_of(value)
        if self._first is None:
            self._first = (value, error)
            return None
        first_value, first_error = self._first
        if first_error > 0 and error > self.factor * first_error:
            return (f"{self.monitor} ran away to {value:.6g} at epoch {epoch} (epoch 1: {first_value:.6g}; "
                    f"diverge_factor {self.factor:g})")
        return None
