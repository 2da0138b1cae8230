"""The sweep itself: one optimizer step per learning rate, through the training core's own pieces.

The model, its parameter groups, optimizer, loss, penalties and gradient clipping are those of a
trial (:mod:`hpsearch.train.loop`); only the lr schedule is replaced by the sweep. Batches come as
the loop draws them: a fresh permutation per pass over the training set, augmented when the data
augments. The recorded loss is the data loss of each step's batch before its update, as fastai's
``lr_find`` records it. A repeat stops at its divergence point (:func:`~._analysis.diverged_at`).

Repeats of an MLP, and the tests of its optimizer choices, may run fused (:mod:`hpsearch.train.fused`):
one stacked model, each member as its solo run up to rounding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import itertools
import math

import torch

from hpsearch.train.config import TrainConfig
from hpsearch.train.data import Dataset
from hpsearch.train.fused.key import MLP_GROUPS, fusion_key
from hpsearch.train.fused.pack import _clip, _losses
from hpsearch.train.loop import _Step, autocast, check_precision, resolve_device
from hpsearch.train.lr_range._settings import RangeSettings, watch_for
from hpsearch.train.models import build_model_for
from hpsearch.train.models.stacked_mlp import StackedMlp
from hpsearch.train.optim import OptimizerConfig, build_optimizer
from hpsearch.train.optim.groups import param_groups
from hpsearch.train.optim.stacked import StackedOptimizer


def effective_lr(config: TrainConfig, lr: float, rows: int) -> float:
    """The rate a step trains at for the searched ``lr``: scaled for the batch as the loop scales it."""
    return lr if config.full_batch else config.lr_scaling.scale(lr, min(config.batch_size, rows))


def batches(n: int, batch: int, generator: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
    """Row indices of each step's batch, pass after pass, split as :class:`hpsearch.train.loop._Step` splits an epoch."""
    count = max(1, n // batch) if n % batch == 1 else math.ceil(n / batch)
    while True:
        order = torch.randperm(n, generator=generator).to(device)
        for b in range(count):
            yield order[b * batch: (b + 1) * batch if b < count - 1 else n]


def sweep(config: TrainConfig, data: Dataset, settings: RangeSettings, seed: int) -> list[float]:
    """One repeat: the loss of each step, up to and including the step where it diverged."""
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)  # as train(): the network, then dropout, from this seed
        model = build_model_for(config.model, data).to(device)
        optimizer = build_optimizer(param_groups(model, config), config.optimizer)
        step = _Step(config, data, model, optimizer, device)
        generator = torch.Generator().manual_seed(seed)
        stream = batches(step.x.shape[0], config.batch_size, generator, device)
        watch, losses = watch_for(settings), []
        model.train()
        for lr in settings.lrs():
            rate = effective_lr(config, lr, step.x.shape[0])
            for group in optimizer.param_groups:
                group["lr"] = rate * group["lr_scale"]
            if config.full_batch:
                loss = step._full_batch_step().item()
            else:
                idx = next(stream)
                x = step.x[idx] if step.augment is None else step.augment(step.x[idx], generator)
                loss = step._minibatch_step(x, step.y[idx]).item()
            losses.append(loss)
            if watch.add(loss):
                break
    return losses


def sweep_fused(members: Sequence[tuple[TrainConfig, int]], data: Dataset, settings: RangeSettings) -> list[list[float]]:
    """Every member (a config and a repeat's seed) at once in one stacked MLP: its losses, in order.

    The configs share a fusion key but for the optimizer (:func:`mixable`); members of one optimizer
    kind are stepped by one :class:`~hpsearch.train.optim.stacked.StackedOptimizer` over their rows.
    """
    order = sorted(range(len(members)), key=lambda m: members[m][0].optimizer.name)  # each kind's rows together
    configs = [members[m][0] for m in order]
    seeds = [members[m][1] for m in order]
    config = configs[0]
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    models, dropout = [], []
    for member, seed in zip(configs, seeds, strict=True):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # as the fused pack: the solo network, then its dropout stream
            models.append(build_model_for(member.model, data))
            generator = torch.Generator().manual_seed(0)
            generator.set_state(torch.get_rng_state())
            dropout.append(generator)
    net = StackedMlp(models, [c.model.dropout for c in configs], config.model.activation, config.model.batch_norm,
                     device)
    optimizer = _KindsOptimizer(net.params, [c.optimizer for c in configs])
    x, y = data.x_train.to(device), data.y_train.to(device)
    shuffles = [torch.Generator().manual_seed(seed) for seed in seeds]
    streams = [batches(x.shape[0], config.batch_size, g, device) for g in shuffles]
    watches = [watch_for(settings) for _ in seeds]
    losses: list[list[float]] = [[] for _ in seeds]
    alive = list(range(len(seeds)))
    scales = [{group: dict(c.lr_multipliers).get(group, 1.0) for group in MLP_GROUPS} for c in configs]
    heads, decays = net.heads(), net.decays()
    for lr in settings.lrs():
        rates = [effective_lr(configs[m], lr, x.shape[0]) for m in alive]
        idx = torch.stack([next(streams[m]) for m in alive])
        batch_x = x[idx]
        if data.augment is not None:
            batch_x = torch.stack([data.augment(batch_x[row], shuffles[m]) for row, m in enumerate(alive)])
        with autocast(config.precision, device):
            out = net.forward(batch_x, [dropout[m] for m in alive])
        step_losses = _losses(out.float(), y[idx], data.task)
        objective = step_losses.sum()
        l1 = [configs[m].l1 for m in alive]
        if any(l1):
            weights = [p for p, decayed in zip(net.params, decays, strict=True) if decayed]
            penalty = torch.stack([w.abs().flatten(1).sum(1) for w in weights]).sum(0)
            objective = objective + (torch.tensor(l1, device=device) * penalty).sum()
        for p in net.params:
            p.grad = None
        objective.backward()
        clips = [configs[m].grad_clip for m in alive]
        if any(c is not None for c in clips):
            _clip(net.params, clips)
        lrs = [[rate * scales[m]["head" if head else "body"] for rate, m in zip(rates, alive, strict=True)]
               for head in heads]
        optimizer.step(lrs, decays)
        staying = []
        for row, (m, loss) in enumerate(zip(alive, step_losses.tolist(), strict=True)):
            losses[m].append(loss)
            if not watches[m].add(loss):
                staying.append(row)
        if not staying:
            break
        if len(staying) < len(alive):
            alive = [alive[row] for row in staying]
            net.keep(staying)
            optimizer.keep(staying, net.params)
    result: list[list[float]] = [[] for _ in members]
    for row, m in enumerate(order):
        result[m] = losses[row]
    return result


def mixable(config: TrainConfig) -> tuple[object, ...] | None:
    """The fusion key of ``config`` but for its optimizer kind: range tests of equal keys share one pack."""
    key = fusion_key(config)
    return None if key is None else (*key[:2], *key[3:])


class _KindsOptimizer:
    """Stacked members of several optimizer kinds, each kind's rows side by side (rows a..b of every
    parameter), stepped by a :class:`StackedOptimizer` of that kind over views of those rows."""

    def __init__(self, params: Sequence[torch.Tensor], configs: Sequence[OptimizerConfig]) -> None:
        self.parts: list[tuple[int, int, StackedOptimizer]] = []
        start = 0
        for _, rows in itertools.groupby(range(len(configs)), key=lambda m: configs[m].name):
            end = start + len(list(rows))
            self.parts.append((start, end, StackedOptimizer([p.detach()[start:end] for p in params],
                                                            configs[start:end])))
            start = end
        self.params = list(params)

    def step(self, lrs: Sequence[Sequence[float]], decays: Sequence[bool]) -> None:
        for start, end, part in self.parts:
            for view, param in zip(part.params, self.params, strict=True):
                view.grad = None if param.grad is None else param.grad[start:end]
            part.step([lr[start:end] for lr in lrs], decays)

    def keep(self, members: Sequence[int], params: Sequence[torch.Tensor]) -> None:
        """Keep only ``members`` (rows, ascending), whose stacked parameters are now ``params``."""
        parts, start = [], 0
        for a, b, part in self.parts:
            local = [m - a for m in members if a <= m < b]
            if local:
                end = start + len(local)
                part.keep(local, [p.detach()[start:end] for p in params])
                parts.append((start, end, part))
                start = end
        self.parts, self.params = parts, list(params)
