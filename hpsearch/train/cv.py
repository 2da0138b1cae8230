"""k-fold cross-validation of one trial: its ``k`` folds trained side by side, judged by the mean curve.

Each fold trains exactly as :func:`hpsearch.train.loop.train` would train it alone (the network built
under the trial's seed, its own batch order and dropout draws), the folds an epoch at a time in
lockstep. After each epoch the reporter gets the mean over the folds of every metric, so a pruner sees
the mean curve; early stopping, the runaway rule and the best epoch follow the mean of the monitored
metric, and all folds stop together. A fold whose training loss turns nan or inf ends the trial as
diverged.

The result's ``best_metrics`` are the best mean epoch's means, ``folds`` each fold's metrics at that
epoch. The kept model (``keep``) is the first fold's network at that epoch, with the first fold's
preprocessing: it was trained on ``(k - 1) / k`` of the rows.

:func:`hpsearch.train.fused.train_pack` trains the folds of several trials as one stacked model, by
the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
import time

import torch

from hpsearch.train.checkpoint import TrainedModel
from hpsearch.train.config import TrainConfig
from hpsearch.train.cv_metrics import mean_metrics
from hpsearch.train.data import Dataset
from hpsearch.train.divergence import RunawayWatch
from hpsearch.train.loop import (
    BestTracker,
    EpochTrainer,
    after_report,
    check_metric,
    device_name,
    resolve_device,
)
from hpsearch.train.models import build_model_for
from hpsearch.train.result import Reporter, StopReason, TrainResult


def judge_epoch(watch: RunawayWatch, epoch: int, per_fold: Sequence[dict[str, float] | str]) -> dict[str, float] | str:
    """An epoch's mean metrics over the folds, or why the trial diverged: a fold's training loss became
    nan or inf, or the mean monitored metric did (or ran away). One fold is judged as the solo loop judges it."""
    k = len(per_fold)
    for i, metrics in enumerate(per_fold, 1):
        if isinstance(metrics, str):
            return metrics if k == 1 else f"fold {i}: {metrics}"
    folds = [m for m in per_fold if not isinstance(m, str)]
    mean = dict(folds[0]) if k == 1 else mean_metrics(folds)
    diverged = check_metric(watch, epoch, mean[watch.monitor])
    if diverged is not None:
        return diverged if k == 1 else f"mean over {k} folds: {diverged}"
    return mean


class _Fold:
    """One fold's network and trainer, with the global RNG state its solo run would have (dropout)."""

    def __init__(self, config: TrainConfig, data: Dataset, device: torch.device) -> None:
        torch.manual_seed(config.seed)  # as the solo train(): the network, then dropout, from this seed
        self.model = build_model_for(config.model, data)
        self.trainer = EpochTrainer(config, data, self.model, device)
        self._cuda = (device.index or 0) if device.type == "cuda" else None
        self._rng = self._save()

    def _save(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        cuda = torch.cuda.get_rng_state(self._cuda) if self._cuda is not None else None
        return torch.get_rng_state(), cuda

    def epoch(self, epoch: int) -> dict[str, float] | str:
        cpu, cuda = self._rng
        torch.set_rng_state(cpu)
        if cuda is not None and self._cuda is not None:
            torch.cuda.set_rng_state(cuda, self._cuda)
        try:
            return self.trainer.epoch(epoch)
        finally:
            self._rng = self._save()


def train_folds(config: TrainConfig, folds: Sequence[Dataset], reporter: Reporter | None = None) -> TrainResult:
    """Train ``config`` on each of ``folds``, in lockstep, reporting the mean curve (see the module)."""
    start = time.perf_counter()
    device = resolve_device(config.device)
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):  # the caller's RNG state stays as it was
        runs = [_Fold(config, data, device) for data in folds]
        tracker = BestTracker(config)
        watch = RunawayWatch(config.monitor, config.diverge_factor)
        best_folds: tuple[dict[str, float], ...] = ()
        epoch, reason, message = 0, StopReason.COMPLETED, f"completed {config.epochs} epochs"
        for epoch in range(1, config.epochs + 1):
            per_fold = [run.epoch(epoch) for run in runs]
            mean = judge_epoch(watch, epoch, per_fold)
            if isinstance(mean, str):
                reason, message = StopReason.DIVERGED, mean
                break
            pruned = reporter.report(epoch, mean) if reporter is not None else False
            before = tracker.epoch
            tracker.update(epoch, mean, runs[0].model)  # keeps the first fold's weights of the best mean epoch
            if tracker.epoch != before:
                best_folds = tuple(m for m in per_fold if not isinstance(m, str))
            stop = after_report(config, tracker, pruned, epoch)
            if stop is not None:
                reason, message = stop
                break
        tracker.restore(runs[0].model)
    duration = time.perf_counter() - start
    samples = sum(run.trainer.step.samples for run in runs)
    kept = config.keep_model and tracker.epoch is not None
    return TrainResult(
        best_epoch=tracker.epoch, best_metrics=dict(tracker.metrics), epochs_run=epoch, stop_reason=reason,
        message=message, duration_s=duration, device=device_name(device),
        samples_per_s=samples / duration if duration > 0 else 0.0,
        model=TrainedModel.of(config.model, folds[0], runs[0].model) if kept else None,
        folds=best_folds,
    )
