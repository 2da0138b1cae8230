"""Which trials can train together in one pack: the fusion key. Importing this does not import torch."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from hpsearch.train.config import TrainConfig
from hpsearch.train.models import MlpConfig

# Optimizers with a batched form (hpsearch.train.optim.stacked.UPDATES); lbfgs's line search is a loop per model.
FUSABLE_OPTIMIZERS = frozenset({"sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "adadelta"})
# lr groups of a network without lr_groups(): its output layer and the rest (hpsearch.train.optim.groups)
MLP_GROUPS = frozenset({"head", "body"})


def unfused_reason(config: TrainConfig) -> str | None:
    """Why a trial of ``config`` cannot join a pack (it then trains alone), or None when it can."""
    if not isinstance(config.model, MlpConfig):
        return f"model kind {config.model.kind} trains unfused: only mlp has a stacked form so far"
    if config.optimizer.name not in FUSABLE_OPTIMIZERS:
        return f"optimizer {config.optimizer.name} trains unfused: it has no batched form (full-batch line search)"
    unknown = {group for group, _ in config.lr_multipliers} - MLP_GROUPS
    if unknown:
        return f"lr_multipliers for {sorted(unknown)} train unfused: an MLP has the groups head and body"
    return None


def fusion_key(config: TrainConfig) -> tuple[Any, ...] | None:
    """What trials must share to train in one pack; None for a trial that trains alone.

    The structure: the architecture (all of the model's knobs but dropout), batch size, optimizer
    and schedule kinds, epochs, task, metric, device and precision. Everything else is per member.
    """
    if unfused_reason(config) is not None:
        return None
    return (replace(config.model, dropout=0.0), config.batch_size, config.optimizer.name, config.schedule.name,
            config.epochs, config.task, config.monitor, config.maximize, config.device, config.precision)
