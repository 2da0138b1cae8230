"""M multilayer perceptrons of one architecture as one model: weights stacked, one batched matmul per layer.

Each member is first built by the solo builder (:func:`hpsearch.train.models.build_model_for`)
under its own seed, so it starts from exactly the weights it would have alone; its layers' tensors
are then stacked along a new first dimension. A forward pass takes ``x`` of shape
``(members, batch, features)``, each member its own batch, and returns ``(members, batch, outputs)``.

Per member: the dropout rate (a member with 0 has no dropout, as its solo network has no Dropout
layer), and on a CPU the dropout masks, drawn from the member's own generator in the order its solo
network draws them from the global one, so masks are the same bits. On a GPU the masks of all
members come from one draw: the same distribution, not the same bits as alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from hpsearch.train.models.blocks import make_activation

BN_MOMENTUM = 0.1  # torch.nn.BatchNorm1d's defaults, which the solo network uses
BN_EPS = 1e-5


class StackedMlp:
    """The stacked parameters (``params``, leaves that require grad) and the forward pass."""

    def __init__(self, models: Sequence[nn.Module], dropouts: Sequence[float], activation: str,
                 batch_norm: bool, device: torch.device) -> None:
        linears = [[m for m in model.modules() if isinstance(m, nn.Linear)] for model in models]
        norms = [[m for m in model.modules() if isinstance(m, nn.BatchNorm1d)] for model in models]
        depth = len(linears[0])
        self.weights = [_stack([ls[i].weight for ls in linears], device) for i in range(depth)]
        self.biases = [_stack([ls[i].bias for ls in linears], device) for i in range(depth)]
        self.batch_norm = batch_norm
        self.gammas = [_stack([ns[i].weight for ns in norms], device) for i in range(depth - 1)] if batch_norm else []
        self.betas = [_stack([ns[i].bias for ns in norms], device) for i in range(depth - 1)] if batch_norm else []
        self.running = [(torch.stack([_buffer(ns[i].running_mean) for ns in norms]).to(device),
                         torch.stack([_buffer(ns[i].running_var) for ns in norms]).to(device))
                        for i in range(depth - 1)] if batch_norm else []
        self.activation = make_activation(activation)
        self.dropouts = list(dropouts)

    @property
    def members(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def params(self) -> list[torch.Tensor]:
        """Every stacked parameter, in the order of :meth:`heads` and :meth:`decays`."""
        return [*self.weights, *self.biases, *self.gammas, *self.betas]

    def heads(self) -> list[bool]:
        """Which parameters are the output layer's: the ``head`` lr group of :mod:`hpsearch.train.optim.groups`."""
        last = len(self.weights) - 1
        return ([i == last for i in range(len(self.weights))] + [i == last for i in range(len(self.biases))]
                + [False] * (len(self.gammas) + len(self.betas)))

    def decays(self) -> list[bool]:
        """Which parameters are weight-decayed (and L1-penalized): the weights, not biases or norms."""
        return [True] * len(self.weights) + [False] * (len(self.biases) + len(self.gammas) + len(self.betas))

    def forward(self, x: torch.Tensor, generators: Sequence[torch.Generator] | None = None) -> torch.Tensor:
        """Outputs for ``x`` ``(members, batch, ...)``; training mode (batch statistics, dropout) when
        ``generators`` are given, one per member."""
        h = x.reshape(x.shape[0], x.shape[1], -1)
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = torch.bmm(h, weight.transpose(1, 2)) + bias.unsqueeze(1)
            if i == last:
                return h
            if self.batch_norm:
                h = self._normalize(i, h, training=generators is not None)
            h = self.activation(h)
            if generators is not None and any(self.dropouts):
                h = h * self._dropout_noise(h, generators)
        raise AssertionError("an MLP ends with its output layer")

    def _normalize(self, i: int, h: torch.Tensor, training: bool) -> torch.Tensor:
        """Batch norm per member, by torch's own kernel: the members' features side by side as channels.

        The kernel's gradients then equal the solo network's to the bit, which matters: a bias
        before a batch norm has a gradient that is zero up to rounding, and Adam scales any such
        rounding up to a full step.
        """
        members, batch, width = h.shape
        mean_run, var_run = self.running[i]
        flat = h.transpose(0, 1).reshape(batch, members * width)
        out = F.batch_norm(flat, mean_run.view(-1), var_run.view(-1), self.gammas[i].reshape(-1),
                           self.betas[i].reshape(-1), training=training, momentum=BN_MOMENTUM, eps=BN_EPS)
        return out.view(batch, members, width).transpose(0, 1)

    def _dropout_noise(self, h: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """What torch's dropout multiplies by: 0 or 1 / (1 - p), per member."""
        if h.device.type == "cpu":
            noise = torch.ones_like(h)
            for m, (p, generator) in enumerate(zip(self.dropouts, generators, strict=True)):
                if p > 0:  # as F.dropout: empty_like(input).bernoulli_(1 - p).div_(1 - p)
                    noise[m] = torch.empty_like(h[m]).bernoulli_(1 - p, generator=generator).div_(1 - p)
            return noise
        keep = 1 - torch.tensor(self.dropouts, dtype=h.dtype, device=h.device).view(-1, 1, 1)
        return torch.bernoulli(keep.expand_as(h)).div_(keep)

    def member_state(self, row: int) -> list[torch.Tensor]:
        """Copies of member ``row``'s parameters and batch-norm statistics (see :func:`load_member`)."""
        tensors = [*self.params, *(t for pair in self.running for t in pair)]
        return [t.detach()[row].clone() for t in tensors]

    def keep(self, members: Sequence[int]) -> None:
        """Keep only ``members`` (indices into the current members); new leaves for the optimizer."""
        index = torch.tensor(list(members), dtype=torch.long, device=self.weights[0].device)

        def take(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
            return [t.detach().index_select(0, index).requires_grad_(t.requires_grad) for t in tensors]

        self.weights, self.biases = take(self.weights), take(self.biases)
        self.gammas, self.betas = take(self.gammas), take(self.betas)
        self.running = [(mean.index_select(0, index).contiguous(), var.index_select(0, index).contiguous())
                        for mean, var in self.running]
        self.dropouts = [self.dropouts[m] for m in members]


def _stack(tensors: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Stacked along a new first dimension; a first layer narrower than the widest (a k-fold fold with
    fewer one-hot inputs) is padded with zero weights, which its zero inputs keep at zero."""
    width = max(t.shape[-1] for t in tensors)
    return torch.stack([F.pad(t.detach(), (0, width - t.shape[-1])) for t in tensors]).to(device).requires_grad_(True)


def _buffer(tensor: torch.Tensor | None) -> torch.Tensor:
    if tensor is None:
        raise ValueError("a batch norm of a stacked MLP keeps running statistics")
    return tensor


def load_member(state: Sequence[torch.Tensor], model: nn.Module) -> None:
    """Write :meth:`StackedMlp.member_state` into ``model``, the member's solo network: what it would
    hold had it trained alone."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    targets = [*(m.weight for m in linears), *(m.bias for m in linears), *(m.weight for m in norms),
               *(m.bias for m in norms), *(_buffer(b) for m in norms for b in (m.running_mean, m.running_var))]
    with torch.no_grad():
        for target, value in zip(targets, state, strict=True):
            target.copy_(value[..., : target.shape[-1]])  # without the padding of a narrower first layer
