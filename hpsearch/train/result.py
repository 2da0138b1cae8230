"""What a training run reports while it runs (``Reporter``) and when it ends (``TrainResult``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
import enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from hpsearch.train.checkpoint import TrainedModel


class Reporter(Protocol):
    """Receives every epoch's metrics; the objective glue turns these into Optuna reports."""

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Called after each epoch (1-based) with all its metrics; return True to stop now (pruned)."""
        ...


class StopReason(enum.Enum):
    COMPLETED = "completed"  # ran every epoch
    EARLY_STOPPED = "early_stopped"  # the monitored metric stopped improving for `patience` epochs
    DIVERGED = "diverged"  # the loss or the monitored metric became nan or inf, or the metric ran away (diverge_factor)
    PRUNED = "pruned"  # the reporter asked to stop


@dataclass(frozen=True)
class TrainResult:
    best_epoch: int | None  # None when no epoch produced a finite monitored metric
    best_metrics: Mapping[str, float] = field(default_factory=dict)
    epochs_run: int = 0
    stop_reason: StopReason = StopReason.COMPLETED
    message: str = ""
    duration_s: float = 0.0
    device: str = "cpu"
    samples_per_s: float = 0.0
    model: TrainedModel | None = None  # the best epoch's network, when the config asks to keep it
    # k-fold (data.cv_folds): each fold's metrics at the best epoch; best_metrics are then their means
    folds: tuple[Mapping[str, float], ...] = ()
