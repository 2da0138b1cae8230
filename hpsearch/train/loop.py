"""The epoch loop: minibatch training on device-resident tensors, validation metrics, reporter
calls, early stopping with restore of the best weights, and divergence detection."""

from __future__ import annotations

from collections.abc import Callable
import math
import time

import torch
import torch.nn.functional as F

from hpsearch.errors import ConfigError
from hpsearch.train.config import TrainConfig
from hpsearch.train.data import Dataset
from hpsearch.train.metrics import validation_metrics
from hpsearch.train.models import build_model
from hpsearch.train.optim import build_optimizer
from hpsearch.train.result import Reporter, StopReason, TrainResult


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; an unavailable cuda device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device", f"{name} was requested but CUDA is not available; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ConfigError("device", f"{name} does not exist; this machine has {count} CUDA device(s)")
    return device


def train(config: TrainConfig, data: Dataset, reporter: Reporter | None = None) -> TrainResult:
    """Build the model from ``config`` and train it on ``data``; see :func:`fit`."""
    device = resolve_device(config.device)
    # Fork the RNGs so a trial is reproducible from its seed and leaves the caller's RNG state untouched.
    cuda_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(config.seed)
        model = build_model(config.model, data.n_features, data.n_outputs)
        return fit(config, data, model, reporter, device=device)


def fit(
    config: TrainConfig,
    data: Dataset,
    model: torch.nn.Module,
    reporter: Reporter | None = None,
    *,
    device: torch.device | None = None,
) -> TrainResult:
    """Train ``model`` in place; at the end it holds the weights of the best epoch (if there was one)."""
    start = time.perf_counter()
    device = device or resolve_device(config.device)
    model.to(device)
    optimizer = build_optimizer(model.parameters(), config.optimizer)
    x, y = data.x_train.to(device), data.y_train.to(device)
    x_val = data.x_val.to(device)
    loss_fn = _loss_fn(data.task)
    generator = torch.Generator().manual_seed(config.seed)
    tracker = _BestTracker(config)
    n = x.shape[0]
    epoch, reason, message = 0, StopReason.COMPLETED, f"completed {config.epochs} epochs"

    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        total = torch.zeros((), device=device)
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += loss.detach() * idx.numel()
        train_loss = (total / n).item()  # one device sync per epoch
        if not math.isfinite(train_loss):
            reason, message = StopReason.DIVERGED, f"train loss became {train_loss} at epoch {epoch}"
            break
        metrics = {"train_loss": train_loss, **evaluate(model, x_val, data)}
        value = metrics[config.monitor]
        if not math.isfinite(value):
            reason, message = StopReason.DIVERGED, f"{config.monitor} became {value} at epoch {epoch}"
            break
        pruned = reporter.report(epoch, metrics) if reporter is not None else False
        tracker.update(epoch, metrics, model)
        if pruned:
            reason, message = StopReason.PRUNED, f"pruned by the reporter at epoch {epoch}"
            break
        if config.patience is not None and tracker.stale_epochs >= config.patience:
            reason = StopReason.EARLY_STOPPED
            message = (
                f"{config.monitor} did not improve for {config.patience} epochs; "
                f"best was epoch {tracker.epoch}"
            )
            break

    tracker.restore(model)
    duration = time.perf_counter() - start
    return TrainResult(
        best_epoch=tracker.epoch,
        best_metrics=dict(tracker.metrics),
        epochs_run=epoch,
        stop_reason=reason,
        message=message,
        duration_s=duration,
        device=str(device) if device.type == "cpu" else f"cuda:{device.index or 0}",
        samples_per_s=n * epoch / duration if duration > 0 else 0.0,
    )


def evaluate(model: torch.nn.Module, x_val: torch.Tensor, data: Dataset) -> dict[str, float]:
    """Validation metrics of ``model`` (in eval mode, without gradients)."""
    model.eval()
    with torch.no_grad():
        return validation_metrics(model(x_val), data)


def _loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "classification":
        return F.cross_entropy
    return lambda out, target: F.mse_loss(out.squeeze(-1), target)


class _BestTracker:
    """Remembers the best epoch's metrics and weights (copies kept on the model's device)."""

    def __init__(self, config: TrainConfig) -> None:
        self._monitor = config.monitor
        self._maximize = config.maximize
        self._min_delta = config.min_delta
        self.epoch: int | None = None
        self.metrics: dict[str, float] = {}
        self.stale_epochs = 0
        self._state: dict[str, torch.Tensor] | None = None

    def update(self, epoch: int, metrics: dict[str, float], model: torch.nn.Module) -> None:
        value = metrics[self._monitor]
        if self.epoch is None or self._improves(value, self.metrics[self._monitor]):
            self.epoch, self.metrics, self.stale_epochs = epoch, dict(metrics), 0
            self._state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.stale_epochs += 1

    def _improves(self, value: float, best: float) -> bool:
        return value > best + self._min_delta if self._maximize else value < best - self._min_delta

    def restore(self, model: torch.nn.Module) -> None:
        if self._state is not None:
            model.load_state_dict(self._state)
