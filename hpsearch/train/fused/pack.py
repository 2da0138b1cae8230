"""Training a pack: several trials of one structure trained as one stacked model, each as it would alone.

Each member follows the solo loop (:mod:`hpsearch.train.loop`) step for step: the same
initialization (its network is built under its seed), the same batch order (its own shuffling
generator), its own learning rate under its own schedule knobs, weight decay, L1, gradient clipping,
dropout and optimizer knobs; its own validation metrics, reporter calls, early stopping and
divergence. A member that stops (pruned, early-stopped, diverged, done) is dropped from the stacked
model at the end of that epoch and its result handed to ``on_end`` at once; the rest go on.

With k-fold data (:class:`~hpsearch.train.data.folds.Folds`) a trial is k members, one per fold, and
is judged as :func:`hpsearch.train.cv.train_folds` judges it: by the mean over its folds, all of
which stop together. Folds whose one-hot inputs differ in number are padded to the widest with zero
inputs (and zero weights, which then stay zero), which changes no output or gradient.

Members differ from their solo run only by floating-point rounding: a batched matmul adds in
another order than a plain one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
import functools
import math
import time

import torch
import torch.nn.functional as F

from hpsearch.train.checkpoint import TrainedModel
from hpsearch.train.config import TrainConfig
from hpsearch.train.cv import judge_epoch
from hpsearch.train.data import Dataset
from hpsearch.train.data.folds import Folds
from hpsearch.train.divergence import RunawayWatch
from hpsearch.train.fused.key import MLP_GROUPS, fusion_key
from hpsearch.train.loop import EVAL_ROWS, autocast, check_precision, device_name, resolve_device
from hpsearch.train.metrics import validation_metrics
from hpsearch.train.models import MlpConfig, build_model_for
from hpsearch.train.models.stacked_mlp import StackedMlp, load_member
from hpsearch.train.optim.stacked import StackedOptimizer
from hpsearch.train.result import Reporter, StopReason, TrainResult


@dataclass
class _Member:
    """One row of the stacked model: a trial on one fold, with the training state the solo loop keeps."""

    index: int  # the trial's
    fold: int
    config: TrainConfig
    shuffle: torch.Generator  # the solo loop's generator for batch order
    dropout: torch.Generator  # the global RNG as the solo run leaves it after building its network
    base_lr: float
    scales: dict[str, float]  # lr group -> multiplier
    samples: int = 0
    diverged: str | None = None  # the message, once its training loss is not finite
    epoch_loss: float = 0.0


@dataclass
class _Trial:
    """One trial of the pack: its members (one per fold) and what the solo loop tracks of its curve."""

    index: int
    config: TrainConfig
    watch: RunawayWatch  # the solo loop's runaway check of the monitored metric
    members: list[_Member] = field(default_factory=list)
    best_epoch: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_folds: tuple[dict[str, float], ...] = ()
    stale: int = 0
    best_state: list[torch.Tensor] | None = None  # its first fold's best epoch tensors, when its config keeps the model

    def improves(self, value: float) -> bool:
        if self.best_epoch is None:
            return True
        best = self.best_metrics[self.config.monitor]
        delta = self.config.min_delta
        return value > best + delta if self.config.maximize else value < best - delta


# Every trial's report of one epoch at once: (trial index, epoch, metrics) -> stop it? (pruned)
EpochReport = Callable[[Sequence[tuple[int, int, Mapping[str, float]]]], Sequence[bool]]


def train_pack(configs: Sequence[TrainConfig], data: Dataset | Folds,
               reporters: Sequence[Reporter | None] | None = None,
               on_end: Callable[[int, TrainResult], None] | None = None,
               report_epoch: EpochReport | None = None) -> list[TrainResult]:
    """Train the trials ``configs`` (all of one :func:`fusion_key`) together; their results, in order.

    ``reporters[i]`` gets trial i's metrics after each epoch, as in solo training; or, given
    ``report_epoch``, it gets those of every trial still training at once (a worker then asks its
    executor once an epoch, not once a trial). ``on_end(i, result)`` is called as soon as trial i stops.
    With ``data`` of k folds each trial trains on every fold and reports the mean over them.
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
    datasets = data.datasets if isinstance(data, Folds) else (data,)
    trials, members, models = _build(configs, datasets)
    model_config: MlpConfig = first.model
    net = StackedMlp(models, [m.config.model.dropout for m in members], model_config.activation,
                     model_config.batch_norm, device)
    optimizer = StackedOptimizer(net.params, [m.config.optimizer for m in members])
    tensors = _Tensors(datasets, [m.fold for m in members], device)
    results: dict[int, TrainResult] = {}

    def end(trial: _Trial, epoch: int, reason: StopReason, message: str) -> None:
        duration = time.perf_counter() - start
        samples = sum(m.samples for m in trial.members)
        results[trial.index] = result = TrainResult(
            best_epoch=trial.best_epoch, best_metrics=dict(trial.best_metrics), epochs_run=epoch,
            stop_reason=reason, message=message, duration_s=duration, device=device_name(device),
            samples_per_s=samples / duration if duration > 0 else 0.0,
            model=_kept(trial, models[trial.index * len(datasets)], datasets[0]),
            folds=trial.best_folds if isinstance(data, Folds) else ())
        if on_end is not None:
            on_end(trial.index, result)

    for epoch in range(1, first.epochs + 1):
        _train_epoch(net, optimizer, members, tensors, epoch - 1, first, datasets[0], device)
        outputs = _evaluate(net, tensors, first.precision)
        stops: dict[int, tuple[StopReason, str]] = {}
        reported: dict[int, tuple[dict[str, float], tuple[dict[str, float], ...]]] = {}
        rows = _rows_of(trials)
        for trial in trials:
            per_fold = [_fold_metrics(m, epoch, outputs[row], tensors, row)
                        for m, row in zip(trial.members, rows[trial.index], strict=True)]
            judged = judge_epoch(trial.watch, epoch, per_fold)
            if isinstance(judged, str):
                stops[trial.index] = StopReason.DIVERGED, judged
            else:
                reported[trial.index] = judged, tuple(m for m in per_fold if not isinstance(m, str))
        by_index = {t.index: t for t in trials}
        answers = report([(index, epoch, mean) for index, (mean, _) in reported.items()])
        for (index, (mean, folds)), pruned in zip(reported.items(), answers, strict=True):
            trial = by_index[index]
            stop = _after_report(trial, epoch, mean, folds, pruned)
            if trial.best_epoch == epoch and first.keep_model:
                trial.best_state = net.member_state(rows[index][0])
            if stop is not None:
                stops[index] = stop
        staying = [t for t in trials if t.index not in stops]
        for trial in trials:
            if trial.index in stops:
                end(trial, epoch, *stops[trial.index])
        if len(staying) < len(trials):
            if not staying:
                break
            keep = [row for t in staying for row in rows[t.index]]
            trials = staying
            members = [m for t in trials for m in t.members]
            net.keep(keep)
            optimizer.keep(keep, net.params)
            tensors.keep(keep)
    for trial in trials:
        if trial.index not in results:
            end(trial, first.epochs, StopReason.COMPLETED, f"completed {first.epochs} epochs")
    return [results[i] for i in range(len(configs))]


def _build(configs: Sequence[TrainConfig], datasets: Sequence[Dataset]
           ) -> tuple[list[_Trial], list[_Member], list[torch.nn.Module]]:
    """Each trial with its members (a trial's folds side by side), and each member's solo network."""
    trials, members, models = [], [], []
    n = datasets[0].x_train.shape[0]  # every fold trains on as many rows (hpsearch.train.data.folds)
    for i, config in enumerate(configs):
        trial = _Trial(i, config, RunawayWatch(config.monitor, config.diverge_factor))
        for f, data in enumerate(datasets):
            with torch.random.fork_rng(devices=[]):
                # As the solo train(): the network, then dropout, from this seed. The CPU generator only
                # (members are built on the CPU): torch.manual_seed also queues a seeding of every
                # accelerator, with a traceback each time on a machine without one (5 ms a member).
                torch.random.default_generator.manual_seed(config.seed)
                models.append(build_model_for(config.model, data))
                dropout = torch.Generator().manual_seed(0)
                dropout.set_state(torch.get_rng_state())
            trial.members.append(_Member(
                i, f, config, torch.Generator().manual_seed(config.seed), dropout,
                base_lr=config.lr_scaling.scale(config.optimizer.lr, min(config.batch_size, n)),
                scales={group: dict(config.lr_multipliers).get(group, 1.0) for group in MLP_GROUPS}))
        trials.append(trial)
        members += trial.members
    return trials, members, models


def _rows_of(trials: Sequence[_Trial]) -> dict[int, list[int]]:
    """Each trial's rows in the stacked model, whose members are the trials' members in order."""
    rows, row = {}, 0
    for trial in trials:
        rows[trial.index] = list(range(row, row + len(trial.members)))
        row += len(trial.members)
    return rows


class _Tensors:
    """The pack's data on the device: one Dataset that every member trains on, or each member its fold's.

    Folds are stacked: inputs padded with zero columns to the widest fold, validation rows with zero
    rows to the longest (a fold's metrics read only its own rows).
    """

    def __init__(self, datasets: Sequence[Dataset], folds: Sequence[int], device: torch.device) -> None:
        self.datasets = list(datasets)
        self.folds = list(folds)  # each member's fold, in the stacked model's order
        self.n = int(datasets[0].x_train.shape[0])  # training rows, as many in every fold
        if len(datasets) == 1:
            self.x, self.y = datasets[0].x_train.to(device), datasets[0].y_train.to(device)
            self.x_val = datasets[0].x_val.to(device)
        else:
            self.x = _pad([d.x_train for d in datasets]).to(device)
            self.y = torch.stack([d.y_train for d in datasets]).to(device)
            self.x_val = _pad([d.x_val for d in datasets]).to(device)
            self._index = torch.tensor(self.folds, device=device)

    @property
    def shared(self) -> bool:
        return len(self.datasets) == 1

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of each member's rows ``idx`` ``(members, batch)``."""
        if self.shared:
            return self.x[idx], self.y[idx]
        fold = self._index.unsqueeze(1)
        return self.x[fold, idx], self.y[fold, idx]

    def val_chunks(self) -> Iterator[torch.Tensor]:
        """Each member's validation inputs ``(members, rows, ...)``, ``EVAL_ROWS`` rows at a time."""
        members = len(self.folds)
        if self.shared:
            for chunk in self.x_val.split(EVAL_ROWS):
                yield chunk.unsqueeze(0).expand(members, *chunk.shape)
        else:
            yield from self.x_val.index_select(0, self._index).split(EVAL_ROWS, dim=1)

    def metrics(self, row: int, outputs: torch.Tensor) -> dict[str, float]:
        data = self.datasets[self.folds[row]]
        return validation_metrics(outputs[: data.x_val.shape[0]], data)

    def keep(self, rows: Sequence[int]) -> None:
        self.folds = [self.folds[row] for row in rows]
        if not self.shared:
            self._index = torch.tensor(self.folds, device=self._index.device)


def _pad(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(k, rows, features...)``: each tensor padded with zeros to the most rows and the widest last dimension."""
    rows = max(t.shape[0] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    return torch.stack([F.pad(t, (0, width - t.shape[-1], *[0, 0] * (t.dim() - 2), 0, rows - t.shape[0]))
                        for t in tensors])


def _train_epoch(net: StackedMlp, optimizer: StackedOptimizer, members: Sequence[_Member], tensors: _Tensors,
                 index: int, first: TrainConfig, data: Dataset, device: torch.device) -> None:
    """One epoch of minibatch steps for every member, as :class:`hpsearch.train.loop._Step` runs it."""
    n, batch = tensors.n, first.batch_size
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
        batch_x, batch_y = tensors.batch(idx)
        if data.augment is not None:  # each member's batch with its own generator, as alone
            batch_x = torch.stack([data.augment(batch_x[row], m.shuffle) for row, m in enumerate(members)])
        with autocast(first.precision, device):
            out = net.forward(batch_x, generators)
        losses = _losses(out.float(), batch_y, data.task)
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


def _evaluate(net: StackedMlp, tensors: _Tensors, precision: str) -> torch.Tensor:
    """Every member's validation outputs ``(members, rows, outputs)``, without gradients."""
    with torch.no_grad(), autocast(precision, tensors.x_val.device):
        return torch.cat([net.forward(chunk).float() for chunk in tensors.val_chunks()], dim=1)


def _kept(trial: _Trial, network: torch.nn.Module, data: Dataset) -> TrainedModel | None:
    """The trial's best epoch as its (first fold's) solo network, when its config keeps the model."""
    if trial.best_state is None:
        return None
    load_member(trial.best_state, network)
    return TrainedModel.of(trial.config.model, data, network)


def _report_each(reporters: Sequence[Reporter | None], items: Sequence[tuple[int, int, Mapping[str, float]]]) -> list[bool]:
    return [reporters[i].report(epoch, metrics) if reporters[i] is not None else False  # type: ignore[union-attr]
            for i, epoch, metrics in items]


def _fold_metrics(member: _Member, epoch: int, outputs: torch.Tensor, tensors: _Tensors, row: int
                  ) -> dict[str, float] | str:
    """The member's metrics of the epoch, or why its training loss diverged (as the solo loop's epoch)."""
    if member.diverged is not None or not math.isfinite(member.epoch_loss):
        return member.diverged or f"train loss became {member.epoch_loss} at epoch {epoch}"
    return {"train_loss": member.epoch_loss, **tensors.metrics(row, outputs)}


def _after_report(trial: _Trial, epoch: int, metrics: dict[str, float], folds: tuple[dict[str, float], ...],
                  pruned: bool) -> tuple[StopReason, str] | None:
    """The solo loop's end of an epoch after the report: None to go on, else why the trial stops."""
    config = trial.config
    if trial.improves(metrics[config.monitor]):
        trial.best_epoch, trial.best_metrics, trial.best_folds, trial.stale = epoch, dict(metrics), folds, 0
    else:
        trial.stale += 1
    if pruned:
        return StopReason.PRUNED, f"pruned by the reporter at epoch {epoch}"
    if config.patience is not None and trial.stale >= config.patience:
        return StopReason.EARLY_STOPPED, (f"{config.monitor} did not improve for {config.patience} epochs; "
                                          f"best was epoch {trial.best_epoch}")
    return None
