"""The sweep itself: one optimizer step per learning rate, through the training core's own pieces.

The model, its parameter groups, optimizer, loss, penalties and gradient clipping are those of a
trial (:mod:`hpsearch.train.loop`); only the lr schedule is replaced by the sweep. Batches come as
the loop draws them: a fresh permutation per pass over the training set, augmented when the data
augments. The recorded loss is the data loss of each step's batch before its update, as fastai's
``lr_find`` records it. A repeat stops at its divergence point (:func:`~._analysis.diverged_at`).

Repeats of an MLP may run fused (:mod:`hpsearch.train.fused`): one stacked model, each member as
its solo run up to rounding.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import math

import torch

from hpsearch.train.config import TrainConfig
from hpsearch.train.data import Dataset
from hpsearch.train.fused.key import MLP_GROUPS
from hpsearch.train.fused.pack import _clip, _losses
from hpsearch.train.loop import _Step, autocast, check_precision, resolve_device
from hpsearch.train.lr_range._settings import RangeSettings, watch_for
from hpsearch.train.models import build_model_for
from hpsearch.train.models.stacked_mlp import StackedMlp
from hpsearch.train.optim import build_optimizer
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


def sweep_fused(config: TrainConfig, data: Dataset, settings: RangeSettings, seeds: Sequence[int]) -> list[list[float]]:
    """Every repeat at once as members of one stacked MLP (``config`` must have a fusion key)."""
    device = resolve_device(config.device)
    check_precision(config.precision, device)
    models, dropout = [], []
    for seed in seeds:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # as the fused pack: the solo network, then its dropout stream
            models.append(build_model_for(config.model, data))
            generator = torch.Generator().manual_seed(0)
            generator.set_state(torch.get_rng_state())
            dropout.append(generator)
    net = StackedMlp(models, [config.model.dropout] * len(seeds), config.model.activation, config.model.batch_norm,
                     device)
    optimizer = StackedOptimizer(net.params, [config.optimizer] * len(seeds))
    x, y = data.x_train.to(device), data.y_train.to(device)
    shuffles = [torch.Generator().manual_seed(seed) for seed in seeds]
    streams = [batches(x.shape[0], config.batch_size, g, device) for g in shuffles]
    watches = [watch_for(settings) for _ in seeds]
    losses: list[list[float]] = [[] for _ in seeds]
    alive = list(range(len(seeds)))
    scales = {group: dict(config.lr_multipliers).get(group, 1.0) for group in MLP_GROUPS}
    heads, decays = net.heads(), net.decays()
    for lr in settings.lrs():
        rate = effective_lr(config, lr, x.shape[0])
        idx = torch.stack([next(streams[m]) for m in alive])
        batch_x = x[idx]
        if data.augment is not None:
            batch_x = torch.stack([data.augment(batch_x[row], shuffles[m]) for row, m in enumerate(alive)])
        with autocast(config.precision, device):
            out = net.forward(batch_x, [dropout[m] for m in alive])
        step_losses = _losses(out.float(), y[idx], data.task)
        objective = step_losses.sum()
        if config.l1:
            weights = [p for p, decayed in zip(net.params, decays, strict=True) if decayed]
            objective = objective + config.l1 * torch.stack([w.abs().flatten(1).sum(1) for w in weights]).sum()
        for p in net.params:
            p.grad = None
        objective.backward()
        if config.grad_clip is not None:
            _clip(net.params, [config.grad_clip] * len(alive))
        lrs = [[rate * scales["head" if head else "body"]] * len(alive) for head in heads]
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
    return losses
