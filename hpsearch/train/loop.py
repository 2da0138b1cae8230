"""The epoch loop: minibatch (or full-batch) training on device-resident tensors under an lr
schedule, validation metrics, reporter calls, early stopping with restore of the best weights, and
divergence detection (nan or inf, or a monitored metric that ran away: :mod:`hpsearch.train.divergence`)."""

from __future__ import annotations

from collections.abc import Callable
import math
import time

import torch
import torch.nn.functional as F

from hpsearch.errors import ConfigError
from hpsearch.train.checkpoint import TrainedModel
from hpsearch.train.config import TrainConfig
from hpsearch.train.data import Dataset
from hpsearch.train.divergence import RunawayWatch
from hpsearch.train.metrics import validation_metrics
from hpsearch.train.models import build_model_for
from hpsearch.train.optim import build_optimizer
from hpsearch.train.optim.groups import param_groups
from hpsearch.train.optim.regularize import clip_gradients, penalty
from hpsearch.train.result import Reporter, StopReason, TrainResult

EVAL_ROWS = 1024  # validation rows per forward pass, so a large validation split fits in memory


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
        if cuda_devices:
            torch.manual_seed(config.seed)
        else:  # torch.manual_seed would also queue a seeding of absent accelerators, with a traceback each
            torch.random.default_generator.manual_seed(config.seed)
        model = build_model_for(config.model, data)
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
    trainer = EpochTrainer(config, data, model, device)
    tracker = BestTracker(config)
    watch = RunawayWatch(config.monitor, config.diverge_factor)
    epoch, reason, message = 0, StopReason.COMPLETED, f"completed {config.epochs} epochs"

    for epoch in range(1, config.epochs + 1):
        metrics = trainer.epoch(epoch)
        diverged = metrics if isinstance(metrics, str) else check_metric(watch, epoch, metrics[config.monitor])
        if diverged is not None or isinstance(metrics, str):
            reason, message = StopReason.DIVERGED, str(diverged)
            break
        pruned = reporter.report(epoch, metrics) if reporter is not None else False
        tracker.update(epoch, metrics, model)
        stop = after_report(config, tracker, pruned, epoch)
        if stop is not None:
            reason, message = stop
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
        device=device_name(device),
        samples_per_s=trainer.step.samples / duration if duration > 0 else 0.0,
        model=TrainedModel.of(config.model, data, model) if config.keep_model and tracker.epoch is not None else None,
    )


class EpochTrainer:
    """One network's training, an epoch at a time: the part of :func:`fit` before its report.

    k-fold cross-validation (:mod:`hpsearch.train.cv`) runs one for each fold, in lockstep.
    """

    def __init__(self, config: TrainConfig, data: Dataset, model: torch.nn.Module, device: torch.device) -> None:
        check_precision(config.precision, device)
        model.to(device)
        self.config, self.data, self.model = config, data, model
        optimizer = build_optimizer(param_groups(model, config), config.optimizer)
        self.step = _Step(config, data, model, optimizer, device)
        self.x_val = data.x_val.to(device)
        self.generator = torch.Generator().manual_seed(config.seed)

    def epoch(self, epoch: int) -> dict[str, float] | str:
        """Train epoch ``epoch`` (1-based); its metrics, or why its training loss diverged."""
        self.model.train()
        train_loss, where = self.step.epoch(epoch - 1, self.generator)
        if not math.isfinite(train_loss):
            return f"train loss became {train_loss} at epoch {epoch}{where}"
        return {"train_loss": train_loss, **evaluate(self.model, self.x_val, self.data, self.config.precision)}


def check_metric(watch: RunawayWatch, epoch: int, value: float) -> str | None:
    """Why the monitored ``value`` of ``epoch`` means training diverged (nan, inf, ran away), or None."""
    if not math.isfinite(value):
        return f"{watch.monitor} became {value} at epoch {epoch}"
    return watch.check(epoch, value)  # a runaway epoch is not reported: it would flatten every other curve


def device_name(device: torch.device) -> str:
    return str(device) if device.type == "cpu" else f"cuda:{device.index or 0}"


def check_precision(precision: str, device: torch.device) -> None:
    """bf16 autocast needs bfloat16 support on a CUDA device (every CPU has it)."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision", f"bf16 is not supported by {device}; use fp32")


def autocast(precision: str, device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


class _Step:
    """One epoch of optimizer steps: lr schedule, forward under autocast, penalty, backward, clipping.

    Minibatch optimizers step once per batch of a fresh permutation; full-batch ones (lbfgs) take a
    single closure step on the whole training set. The epoch's loss is the sum of batch losses kept
    on the device, so a GPU syncs once per epoch; on a CPU a loss that turns nan or inf ends the
    epoch at once, since checking costs nothing there.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: Dataset,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        device: torch.device,
    ) -> None:
        self.config, self.model, self.optimizer, self.device = config, model, optimizer, device
        self.x, self.y = data.x_train.to(device), data.y_train.to(device)
        self.augment = data.augment  # applied to training batches only
        self.loss_fn = _loss_fn(data.task)
        self.penalty = penalty(model, config)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        # lr_scaling scales for the batch actually trained on: never more rows than the training set
        effective_batch = min(config.batch_size, self.x.shape[0])
        self.base_lr = (
            config.base_lr if config.full_batch
            else config.lr_scaling.scale(config.optimizer.lr, effective_batch)
        )
        self.samples = 0  # samples seen, for samples/second

    def epoch(self, index: int, generator: torch.Generator) -> tuple[float, str]:
        """Train epoch ``index`` (0-based); returns the mean training loss and where it broke, if it did."""
        n = self.x.shape[0]
        if self.config.full_batch:
            self._set_lr(index + 1.0 if self.config.schedule.per_batch else float(index))
            self.samples += n
            return self._full_batch_step().item(), ""
        schedule, batch = self.config.schedule, self.config.batch_size
        # a last batch of one row joins the one before: batch norm cannot train on a single row
        batches = max(1, n // batch) if n % batch == 1 else math.ceil(n / batch)
        if not schedule.per_batch:
            self._set_lr(float(index))
        order = torch.randperm(n, generator=generator).to(self.device)
        total = torch.zeros((), device=self.device)
        for b in range(batches):
            if schedule.per_batch:
                self._set_lr(index + (b + 1) / batches)
            idx = order[b * batch : (b + 1) * batch if b < batches - 1 else n]
            x = self.x[idx] if self.augment is None else self.augment(self.x[idx], generator)
            loss = self._minibatch_step(x, self.y[idx])
            total += loss * idx.numel()
            self.samples += idx.numel()
            if self.device.type == "cpu" and not math.isfinite(loss.item()):
                return loss.item(), f" (batch {b + 1} of {batches})"
        return (total / n).item(), ""  # one device sync per epoch

    def _set_lr(self, t: float) -> None:
        factor = self.config.schedule.factor(t, self.config.epochs)
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * group["lr_scale"] * factor

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(data loss, data loss + penalties); outputs are cast to float32 so bf16 losses stay accurate."""
        with autocast(self.config.precision, self.device):
            out = self.model(x)
        loss = self.loss_fn(out.float(), y)
        extra = self.penalty()
        return loss, loss if extra is None else loss + extra

    def _minibatch_step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss, objective = self._loss(x, y)
        objective.backward()
        clip_gradients(self.params, self.config.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def _full_batch_step(self) -> torch.Tensor:
        first: list[torch.Tensor] = []

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=True)
            loss, objective = self._loss(self.x, self.y)
            objective.backward()
            clip_gradients(self.params, self.config.grad_clip)
            first.append(loss.detach())
            return objective

        self.optimizer.step(closure)  # type: ignore[arg-type]
        return first[0]  # the loss before this epoch's update, as minibatch epochs report it


def evaluate(
    model: torch.nn.Module, x_val: torch.Tensor, data: Dataset, precision: str = "fp32"
) -> dict[str, float]:
    """Validation metrics of ``model`` (in eval mode, without gradients), ``EVAL_ROWS`` rows at a time."""
    model.eval()
    with torch.no_grad(), autocast(precision, x_val.device):
        outputs = torch.cat([model(chunk).float() for chunk in x_val.split(EVAL_ROWS)])
    return validation_metrics(outputs, data)


def _loss_fn(task: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task == "classification":
        return F.cross_entropy
    return lambda out, target: F.mse_loss(out.squeeze(-1), target)


class BestTracker:
    """Remembers the best epoch's metrics and weights (copies kept on the model's device)."""

    def __init__(self, config: TrainConfig) -> None:
        self._monitor = config.monitor
        self._maximize = config.maximize
        self._min_delta = config.min_delta
        self._patience = config.patience
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

    def stopped_message(self) -> str:
        """Why training stopped early: ``patience`` epochs without improvement."""
        return (f"{self._monitor} did not improve for {self._patience} epochs; "
                f"best was epoch {self.epoch}")

    def _improves(self, value: float, best: float) -> bool:
        return value > best + self._min_delta if self._maximize else value < best - self._min_delta

    def restore(self, model: torch.nn.Module) -> None:
        if self._state is not None:
            model.load_state_dict(self._state)


def after_report(config: TrainConfig, tracker: BestTracker, pruned: bool, epoch: int) -> tuple[StopReason, str] | None:
    """The end of an epoch after its report: why training stops now (pruned, early-stopped), or None."""
    if pruned:
        return StopReason.PRUNED, f"pruned by the reporter at epoch {epoch}"
    if config.patience is not None and tracker.stale_epochs >= config.patience:
        return StopReason.EARLY_STOPPED, tracker.stopped_message()
    return None
