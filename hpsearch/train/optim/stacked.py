"""Optimizers for stacked parameters: one update for every member of a pack, each with its own knobs.

A stacked parameter holds the same tensor of M members along its first dimension. Each optimizer
here performs, member by member, the update of its torch counterpart (the single-tensor code torch
runs on a CPU), with the per-member values (lr, weight decay, momentum, betas, eps, ...) as tensors
broadcast along that first dimension. Python floats are turned into float32 tensors exactly where
torch turns them into float32 scalars, so a member's update equals its solo update up to the
rounding of fused multiply-adds.

``lbfgs`` has no batched form (its line search is a loop per model): a study that searches it runs
those trials unfused.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
import functools

import torch

from hpsearch.train.optim import OptimizerConfig


@dataclass
class Hyper:
    """The per-member values of one optimizer step, as float64 Python lists (one value per member)."""

    lr: list[float]
    weight_decay: list[float]
    options: Mapping[str, list[float]]


@dataclass
class _State:
    step: int = 0
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)

    def zeros(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Buffer ``name``, zeros like ``like`` on the first step (as torch's optimizers start theirs)."""
        buffer = self.buffers.get(name)
        if buffer is None:
            buffer = self.buffers[name] = torch.zeros_like(like)
        return buffer


Update = Callable[[torch.Tensor, torch.Tensor, _State, Hyper], None]


def _column(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """``values`` (one per member) as a float32 tensor that broadcasts along ``like``'s first dimension."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, *([1] * (like.dim() - 1)))


def _l2(grad: torch.Tensor, param: torch.Tensor, hyper: Hyper) -> torch.Tensor:
    """torch's ``grad.add(param, alpha=weight_decay)``, skipped where every member's decay is 0."""
    if not any(hyper.weight_decay):
        return grad
    return grad + _column(hyper.weight_decay, param) * param


def _sgd(param: torch.Tensor, grad: torch.Tensor, state: _State, hyper: Hyper, *, momentum: bool = False,
         nesterov: bool = False) -> None:
    col = functools.partial(_column, like=param)
    d_p = _l2(grad, param, hyper)
    if momentum:
        mu = col(hyper.options["momentum"])
        buf = state.buffers.get("momentum")
        if buf is None:
            buf = state.buffers["momentum"] = d_p.clone()
        else:
            buf.mul_(mu).add_(d_p)
        d_p = d_p + mu * buf if nesterov else buf
    param.sub_(col(hyper.lr) * d_p)


def _adam(param: torch.Tensor, grad: torch.Tensor, state: _State, hyper: Hyper, *, decoupled: bool = False) -> None:
    col = functools.partial(_column, like=param)
    step = state.step
    if decoupled:
        if any(hyper.weight_decay):
            param.mul_(col([1 - lr * wd for lr, wd in zip(hyper.lr, hyper.weight_decay, strict=True)]))
    else:
        grad = _l2(grad, param, hyper)
    beta1, beta2, eps = hyper.options["beta1"], hyper.options["beta2"], hyper.options["eps"]
    exp_avg = state.zeros("exp_avg", param)
    exp_avg_sq = state.zeros("exp_avg_sq", param)
    exp_avg.lerp_(grad, col([1 - b for b in beta1]))
    exp_avg_sq.mul_(col(beta2)).add_(col([1 - b for b in beta2]) * grad * grad)
    step_size = [lr / (1 - b1**step) for lr, b1 in zip(hyper.lr, beta1, strict=True)]
    correction2_sqrt = [(1 - b2**step) ** 0.5 for b2 in beta2]
    denom = (exp_avg_sq.sqrt() / col(correction2_sqrt)).add_(col(eps))
    param.sub_(col(step_size) * exp_avg / denom)


def _rmsprop(param: torch.Tensor, grad: torch.Tensor, state: _State, hyper: Hyper) -> None:
    col = functools.partial(_column, like=param)
    grad = _l2(grad, param, hyper)
    alpha = hyper.options["alpha"]
    square_avg = state.zeros("square_avg", param)
    square_avg.mul_(col(alpha)).add_(col([1 - a for a in alpha]) * grad * grad)
    avg = square_avg.sqrt().add_(col(hyper.options["eps"]))
    if any(hyper.options["momentum"]):
        # A member without momentum gets buf = grad / avg each step: torch's update without a buffer.
        buf = state.zeros("momentum", param)
        buf.mul_(col(hyper.options["momentum"])).add_(grad / avg)
        param.sub_(col(hyper.lr) * buf)
    else:
        param.sub_(col(hyper.lr) * grad / avg)


def _adagrad(param: torch.Tensor, grad: torch.Tensor, state: _State, hyper: Hyper) -> None:
    col = functools.partial(_column, like=param)
    grad = _l2(grad, param, hyper)
    state_sum = state.zeros("sum", param)
    state_sum.add_(grad * grad)
    std = state_sum.sqrt().add_(col(hyper.options["eps"]))
    param.sub_(col(hyper.lr) * grad / std)


def _adadelta(param: torch.Tensor, grad: torch.Tensor, state: _State, hyper: Hyper) -> None:
    col = functools.partial(_column, like=param)
    grad = _l2(grad, param, hyper)
    rho, eps = col(hyper.options["rho"]), col(hyper.options["eps"])
    one_minus_rho = col([1 - r for r in hyper.options["rho"]])
    square_avg = state.zeros("square_avg", param)
    acc_delta = state.zeros("acc_delta", param)
    square_avg.mul_(rho).add_(one_minus_rho * grad * grad)
    std = square_avg.add(eps).sqrt_()
    delta = acc_delta.add(eps).sqrt_().div_(std).mul_(grad)
    acc_delta.mul_(rho).add_(one_minus_rho * delta * delta)
    param.sub_(col(hyper.lr) * delta)


# Optimizer name -> its batched update. Names missing here (lbfgs) are not fused.
UPDATES: dict[str, Update] = {
    "sgd": _sgd,
    "momentum": functools.partial(_sgd, momentum=True),
    "nesterov": functools.partial(_sgd, momentum=True, nesterov=True),
    "adam": _adam,
    "adamw": functools.partial(_adam, decoupled=True),
    "rmsprop": _rmsprop,
    "adagrad": _adagrad,
    "adadelta": _adadelta,
}


class StackedOptimizer:
    """Steps stacked parameters with per-member knobs; members can be dropped between steps.

    ``configs`` are the members' optimizer configs (one optimizer kind). ``step(lrs, decays)`` takes,
    for each parameter, each member's learning rate of the step and whether the parameter is
    weight-decayed (biases are not, as in :mod:`hpsearch.train.optim.groups`).
    """

    def __init__(self, params: Sequence[torch.Tensor], configs: Sequence[OptimizerConfig]) -> None:
        names = {c.name for c in configs}
        if len(names) != 1 or next(iter(names)) not in UPDATES:
            raise ValueError(f"a pack needs one fusable optimizer kind, got {sorted(names)}")
        self.update = UPDATES[next(iter(names))]
        self.params = list(params)
        self.weight_decay = [c.weight_decay for c in configs]
        keys = {k for c in configs for k, _ in c.options}
        self.options = {k: [c.option(k) for c in configs] for k in sorted(keys)}
        self.states = [_State() for _ in self.params]

    def step(self, lrs: Sequence[Sequence[float]], decays: Sequence[bool]) -> None:
        for param, lr, decayed, state in zip(self.params, lrs, decays, self.states, strict=True):
            grad = param.grad
            if grad is None:
                continue
            state.step += 1
            hyper = Hyper(list(lr), self.weight_decay if decayed else [0.0] * len(lr), self.options)
            with torch.no_grad():
                self.update(param, grad, state, hyper)

    def keep(self, members: Sequence[int], params: Sequence[torch.Tensor]) -> None:
        """Keep only ``members`` (indices), whose stacked parameters are now ``params``."""
        index = torch.tensor(list(members), dtype=torch.long, device=params[0].device if params else "cpu")
        self.params = list(params)
        self.weight_decay = [self.weight_decay[m] for m in members]
        self.options = {k: [v[m] for m in members] for k, v in self.options.items()}
        for state in self.states:
            state.buffers = {k: b.index_select(0, index) for k, b in state.buffers.items()}
