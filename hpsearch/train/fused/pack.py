"""Training a pack: several trials of one structure trained as one stacked model, each as it would alone.

Each member follows the solo loop (:mod:`hpsearch.train.loop`) step for step: the same
initialization (its network is built under its seed), the same batch order (its own shuffling
generator), its own learning rate under its own schedule knobs, weight decay, L1, gradient clipping,
dropout and optimizer knobs; its own validation metrics, reporter calls, early stopping and
divergence. A member that stops (pruned, early-stopped, diverged, done) is dropped from the stacked
model at the end of that epoch and its result handed to ``on_end`` at once; the rest go on.

Members differ from their solo run only by floating-point rounding: a batched matmul adds in
another order than a plain one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
import functools
import math
import time

import torch
import torch.nn.functional as F

from hpsearch.train.config import TrainConfig
from hpsearch.train.data import Dataset
from hpsearch.train.fused.key import MLP_GROUPS, fusion_key
from hpsearch.train.loop import EVAL_ROWS, autocast, check_precision, resolve_device
from hpsearch.train.metrics import validation_metrics
from hpsearch.train.models import MlpConfig, build_model_for
from hpsearch.train.models.stacked_mlp import StackedMlp
from hpsearch.train.optim.stacked import StackedOptimizer
from hpsearch.train.result import Reporter, StopReason, TrainResult


@dataclass
class _Member:
    """One trial in the pack, with the state the solo loop keeps for it."""

    index: int
    config: TrainConfig
    shuffle: torch.Generator  # the solo loop's generator for batch order
    dropout: torch.Generator  # the global RNG as the solo run leaves it after building its network
    base_lr: float
    scales: dict[str, float]  # lr group -> multiplier
    samples: int = 0
    best_epoch: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    stale: int = 0
    diverged: str | None = None  # the message, once its training loss is not finite
    epoch_loss: float = 0.0

    def improves(self, value: float) -> bool:
        if self.best_epoch is None:
            return True
        best = self.best_metrics[self.config.monitor]
        delta = self.config.min_delta
        return value > best + delta if self.config.maximize else value < best - delta


# Every member's report of one epoch at once: (member index, epoch, metrics) -> stop it? (pruned)
EpochReport = Callable[[Sequence[tuple[int, int, Mapping[str, float]]]], Sequence[bool]]


def train_pack(configs: Sequence[TrainConfig], data: Dataset, reporters: Sequence[Reporter | None] | None = None,
               on_end: Callable[[int, TrainResult], None] | None = None,
               report_epoch: EpochReport | None = None) -> list[TrainResult]:
    """Train the trials ``configs`` (all of one :func:`fusion_key`) together; their results, in order.

    ``reporters[i]`` gets member i's metrics after each epoch, as in solo training; or, given
    ``report_epoch``, it gets those of every member still training at once (a worker then asks its
    executor once an epoch, not once a member). ``on_end(i, result)`` is called as soon as member i stops.
    """
    keys = {fusion_key(c) for c in configs}
    if not configs or len(keys) != 1 or None in keys:
        raise ValueError("a pack needs trials of one fusion key (see fusion_key)")
    first = configs[0]
    device = resolve_device(first.device)
    check_precision(first.precision, device)
    reporters = list(reporters) if reporters is not None else [None] * len(configs)
    report = report_epoch or functools.partial(_report_each, reporters)
    start = time.perf_counter()
    members, models = [], []
    n = data.x_train.shape[0]
    for i, config in enumerate(configs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)  # as the solo train(): the network, then dropout, from this seed
            models.append(build_model_for(config.model, data))
            dropout = torch.Generator().manual_seed(0)
            dropout.set_state(torch.get_rng_state())
        members.append(_Member(
            i, config, torch.Generator().manual_seed(config.seed), dropout,
            base_lr=config.lr_scaling.scale(config.optimizer.lr, min(config.batch_size, n)),
            scales={group: dict(config.lr_multipliers).get(group, 1.0) for group in MLP_GROUPS}))
    model_config: MlpConfig = first.model
    net = StackedMlp(models, [c.model.dropout for c in configs], model_config.activation, model_config.batch_norm,
                     device)
    optimizer = StackedOptimizer(net.params, [c.optimizer for c in configs])
    results: dict[int, TrainResult] = {}
    x, y = data.x_train.to(device), data.y_train.to(device)
    x_val = data.x_val.to(device)

    def end(member: _Member, epoch: int, reason: StopReason, message: str) -> None:
        duration = time.perf_counter() - start
        results[member.index] = result = TrainResult(
            best_epoch=member.best_epoch, best_metrics=dict(member.best_metrics), epochs_run=epoch,
            stop_reason=reason, message=message, duration_s=duration,
            device=str(device) if device.type == "cpu" else f"cuda:{device.index or 0}",
            samples_per_s=member.samples / duration if duration > 0 else 0.0)
        if on_end is not None:
            on_end(member.index, result)

    for epoch in range(1, first.epochs + 1):
        _train_epoch(net, optimizer, members, x, y, epoch - 1, first, data, device)
        outputs = _evaluate(net, x_val, first.precision)
        stops: dict[int, tuple[StopReason, str]] = {}
        reported: dict[int, dict[str, float]] = {}
        for row, member in enumerate(members):
            diverged = _diverged(member, epoch, outputs[row], data)
            if isinstance(diverged, tuple):
                stops[row] = diverged
            else:
                reported[row] = diverged
        answers = report([(members[row].index, epoch, metrics) for row, metrics in reported.items()])
        for (row, metrics), pruned in zip(reported.items(), answers, strict=True):
            stop = _after_report(members[row], epoch, metrics, pruned)
            if stop is not None:
                stops[row] = stop
        staying = []
        for row, member in enumerate(members):
            if row in stops:
                end(member, epoch, *stops[row])
            else:
                staying.append(row)
        if len(staying) < len(members):
            if not staying:
                break
            members = [members[row] for row in staying]
            net.keep(staying)
            optimizer.keep(staying, net.params)
    for member in members:
        if member.index not in results:
            end(member, first.epochs, StopReason.COMPLETED, f"completed {first.epochs} epochs")
    return [results[i] for i in range(len(configs))]


def _train_epoch(net: StackedMlp, optimizer: StackedOptimizer, members: Sequence[_Member], x: torch.Tensor,
                 y: torch.Tensor, index: int, first: TrainConfig, data: Dataset, device: torch.device) -> None:
    """One epoch of minibatch steps for every member, as :class:`hpsearch.train.loop._Step` runs it."""
    n, batch = x.shape[0], first.batch_size
    schedule_per_batch = first.schedule.per_batch
    batches = max(1, n // batch) if n % batch == 1 else math.ceil(n / batch)
    orders = torch.stack([torch.randperm(n, generator=m.shuffle) for m in members]).to(device)
    heads, decays = net.heads(), net.decays()
    l1 = [m.config.l1 for m in members]
    clips = [m.config.grad_clip for m in members]
    totals = torch.zeros(len(members), device=device)
    generators = [m.dropout for m in members]
    lrs = _lrs(members, heads, float(index), first.epochs)
    for b in range(batches):
        if schedule_per_batch:
            lrs = _lrs(members, heads, index + (b + 1) / batches, first.epochs)
        idx = orders[:, b * batch: (b + 1) * batch if b < batches - 1 else n]
        batch_x = x[idx]
        if data.augment is not None:  # each member's batch with its own generator, as alone
            batch_x = torch.stack([data.augment(batch_x[row], m.shuffle) for row, m in enumerate(members)])
        with autocast(first.precision, device):
            out = net.forward(batch_x, generators)
        losses = _losses(out.float(), y[idx], data.task)
        objective = losses.sum()
        if any(l1):
            weights = [p for p, decayed in zip(net.params, decays, strict=True) if decayed]
            penalty = torch.stack([w.abs().flatten(1).sum(1) for w in weights]).sum(0)
            objective = objective + (torch.tensor(l1, device=device) * penalty).sum()
        for p in net.params:
            p.grad = None
        objective.backward()
        if any(c is not None for c in clips):
            _clip(net.params, clips)
        optimizer.step(lrs, decays)
        count = idx.shape[1]
        totals += losses.detach() * count
        for m in members:
            m.samples += count
        if device.type == "cpu":  # as solo: a loss that turns nan or inf ends that member's epoch at once
            for m, loss in zip(members, losses.tolist(), strict=True):
                if m.diverged is None and not math.isfinite(loss):
                    m.diverged = f"train loss became {loss} at epoch {index + 1} (batch {b + 1} of {batches})"
                    m.epoch_loss = loss
    for m, total in zip(members, (totals / n).tolist(), strict=True):
        if m.diverged is None:
            m.epoch_loss = total


def _lrs(members: Sequence[_Member], heads: Sequence[bool], t: float, epochs: int) -> list[list[float]]:
    """Each parameter's learning rate for each member at progress ``t``, as the solo loop's ``_set_lr``."""
    factors = [m.config.schedule.factor(t, epochs) for m in members]
    body = [m.base_lr * m.scales["body"] * f for m, f in zip(members, factors, strict=True)]
    head = [m.base_lr * m.scales["head"] * f for m, f in zip(members, factors, strict=True)]
    return [head if is_head else body for is_head in heads]


def _losses(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Each member's mean loss over its batch: ``out`` ``(members, batch, outputs)``."""
    if task == "classification":
        flat = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
        return flat.view(out.shape[0], -1).mean(1)
    return (out.squeeze(-1) - y).square().mean(1)


def _clip(params: Sequence[torch.Tensor], clips: Sequence[float | None]) -> None:
    """torch's clip_grad_norm_, member by member: the norm over all of a member's gradients."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads]).norm(dim=0)
    limit = torch.tensor([math.inf if c is None else c for c in clips], device=norms.device)
    coef = torch.where(torch.isinf(limit), torch.ones_like(norms), (limit / (norms + 1e-6)).clamp(max=1.0))
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))))


def _evaluate(net: StackedMlp, x_val: torch.Tensor, precision: str) -> torch.Tensor:
    """Every member's validation outputs ``(members, rows, outputs)``, without gradients."""
    members = net.members
    with torch.no_grad(), autocast(precision, x_val.device):
        return torch.cat([net.forward(chunk.unsqueeze(0).expand(members, *chunk.shape)).float()
                          for chunk in x_val.split(EVAL_ROWS)], dim=1)


def _report_each(reporters: Sequence[Reporter | None], items: Sequence[tuple[int, int, Mapping[str, float]]]) -> list[bool]:
    return [reporters[i].report(epoch, metrics) if reporters[i] is not None else False  # type: ignore[union-attr]
            for i, epoch, metrics in items]


def _diverged(member: _Member, epoch: int, outputs: torch.Tensor, data: Dataset) -> tuple[StopReason, str] | dict[str, float]:
    """The solo loop's checks before its report: why the member stops (diverged), or its epoch's metrics."""
    config = member.config
    if member.diverged is not None or not math.isfinite(member.epoch_loss):
        return StopReason.DIVERGED, member.diverged or f"train loss became {member.epoch_loss} at epoch {epoch}"
    metrics = {"train_loss": member.epoch_loss, **validation_metrics(outputs, data)}
    value = metrics[config.monitor]
    if not math.isfinite(value):
        return StopReason.DIVERGED, f"{config.monitor} became {value} at epoch {epoch}"
    return metrics


def _after_report(member: _Member, epoch: int, metrics: dict[str, float], pruned: bool) -> tuple[StopReason, str] | None:
    """The solo loop's end of an epoch after the report: None to go on, else why the member stops."""
    config = member.config
    if member.improves(metrics[config.monitor]):
        member.best_epoch, member.best_metrics, member.stale = epoch, dict(metrics), 0
    else:
        member.stale += 1
    if pruned:
        return StopReason.PRUNED, f"pruned by the reporter at epoch {epoch}"
    if config.patience is not None and member.stale >= config.patience:
        return StopReason.EARLY_STOPPED, (f"{config.monitor} did not improve for {config.patience} epochs; "
                                          f"best was epoch {member.best_epoch}")
    return None
