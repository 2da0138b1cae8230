"""Penalties added to the training loss, and gradient clipping.

``l1`` adds ``l1 * sum(|w|)`` over the decayed parameters (weights, not biases or norms; see
:func:`hpsearch.train.optim.groups.decays`), so ``l1`` with ``weight_decay`` is an elastic net. Weight decay
itself is the optimizer's (L2 for most, decoupled for adamw); only an optimizer without parameter
groups (lbfgs) gets it here, as ``weight_decay / 2 * sum(w**2)``, whose gradient is torch's L2 term.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from hpsearch.train.config import TrainConfig
from hpsearch.train.optim import optimizers
from hpsearch.train.optim.groups import decays


@dataclass(frozen=True)
class Penalty:
    l1: float
    l2: float
    params: Sequence[torch.nn.Parameter]

    def __call__(self) -> torch.Tensor | None:
        """The penalty of the current weights, or None when there is none (no work on the hot path)."""
        if not self.params or (self.l1 == 0 and self.l2 == 0):
            return None
        total = torch.zeros((), device=self.params[0].device)
        for p in self.params:
            if self.l1:
                total = total + self.l1 * p.abs().sum()
            if self.l2:
                total = total + 0.5 * self.l2 * p.square().sum()
        return total


def penalty(model: torch.nn.Module, config: TrainConfig) -> Penalty:
    native_decay = optimizers()[config.optimizer.name].param_groups
    l2 = 0.0 if native_decay else config.optimizer.weight_decay
    params = [p for p in model.parameters() if p.requires_grad and decays(p)]
    return Penalty(l1=config.l1, l2=l2, params=params)


def clip_gradients(params: Sequence[torch.nn.Parameter], max_norm: float | None) -> None:
    """Scale the gradients so that their global L2 norm is at most ``max_norm`` (no device sync)."""
    if max_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
