"""Optimizer registry: name -> the knobs it accepts beyond lr/weight_decay, and a factory.

Importing this module does not import torch (the config layer reads the registry at parse time);
factories import it when called. A new optimizer is one ``register`` call; its own knobs must be
declared in ``config.OPTIMIZER_KNOBS`` so they are parsed and validated.

Factories receive torch parameter groups (dicts with ``params``, ``lr`` and, when the optimizer
takes groups, ``weight_decay``), built by :mod:`hpsearch.train.optim.groups`; the group values override
the defaults the factory passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# torch's LBFGS defaults, except a shorter history and a strong-Wolfe line search: without the line
# search a searched lr too large makes LBFGS diverge on its first step.
LBFGS_MAX_ITER = 20
LBFGS_HISTORY = 10


@dataclass(frozen=True)
class OptimizerConfig:
    """A validated optimizer choice. ``options`` holds the optimizer's own knobs, e.g. ``(("momentum", 0.9),)``."""

    name: str
    lr: float
    weight_decay: float = 0.0
    options: tuple[tuple[str, float], ...] = ()

    def option(self, name: str) -> float:
        return dict(self.options)[name]


Factory = Callable[[Iterable[Any], OptimizerConfig], "torch.optim.Optimizer"]


@dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer.

    ``knobs`` are its own knobs (any other optimizer rejects them); ``defaults`` overrides the generic
    default of a knob where torch's default for this optimizer differs (``eps`` of adagrad is 1e-10).
    ``full_batch`` optimizers take one closure step per epoch over the whole training set, so
    ``batch_size`` and ``lr_scaling`` do not affect them. Optimizers without ``param_groups`` get a
    single group: no per-group lr, and weight decay is added to the loss as an L2 penalty instead.
    """

    name: str
    factory: Factory
    knobs: tuple[str, ...] = ()
    defaults: tuple[tuple[str, float], ...] = ()
    full_batch: bool = False
    param_groups: bool = True


_REGISTRY: dict[str, OptimizerSpec] = {}


def register(spec: OptimizerSpec) -> None:
    if spec.name in _REGISTRY:
        raise ValueError(f"optimizer {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def optimizers() -> Mapping[str, OptimizerSpec]:
    """Every registered optimizer, by name."""
    return dict(_REGISTRY)


def build_optimizer(groups: Iterable[Any], config: OptimizerConfig) -> torch.optim.Optimizer:
    """The optimizer of ``config`` over ``groups`` (parameters, or torch parameter-group dicts)."""
    return _REGISTRY[config.name].factory(groups, config)


def _sgd(params: Iterable[Any], c: OptimizerConfig) -> torch.optim.Optimizer:
    import torch

    return torch.optim.SGD(params, lr=c.lr, weight_decay=c.weight_decay)


def _momentum(params: Iterable[Any], c: OptimizerConfig) -> torch.optim.Optimizer:
    import torch

    return torch.optim.SGD(params, lr=c.lr, momentum=c.option("momentum"), weight_decay=c.weight_decay)


def _nesterov(params: Iterable[Any], c: OptimizerConfig) -> torch.optim.Optimizer:
    import torch

    return torch.optim.SGD(
        params, lr=c.lr, momentum=c.option("momentum"), nesterov=True, weight_decay=c.weight_decay
    )


def _adagrad(params: Iterable[Any], c: OptimizerConfig) -> torch.optim.Optimizer:
    import torch

    return torch.optim.Adagrad(params, lr=c.lr, eps=c.option("eps"), weight_decay=c.weight_decay)


def _rmsprop(params: Iterable[Any], c: OptimizerConfig) -> torch.optim.Optimizer:
    import torch

    o = dict(c.options)
    return torch.optim.RMSprop(
        params, lr=c.lr, alpha=o["alpha"], eps=o["eps"], momentum=o["momentum"], weight_decay=c.weight_decay
    )


def _adam(params: Iterable[Any], c: OptimizerConfig) -> torch.optim.Optimizer:
    import torch

    o = dict(c.options)
    return torch.optim.Adam(
        params, lr=c.lr, betas=(o["beta1"], o["beta2"]), eps=o["eps"], weight_decay=c.weight_decay
    )


def _adamw(params: Iterable[Any], c: OptimizerConfig) -> torch.optim.Optimizer:
    import torch

    # AdamW decouples the decay from the gradient; torch does it, we only pass the rate.
    o = dict(c.options)
    return torch.optim.AdamW(
        params, lr=c.lr, betas=(o["beta1"], o["beta2"]), eps=o["eps"], weight_decay=c.weight_decay
    )


def _adadelta(params: Iterable[Any], c: OptimizerConfig) -> torch.optim.Optimizer:
    import torch

    o = dict(c.options)
    return torch.optim.Adadelta(params, lr=c.lr, rho=o["rho"], eps=o["eps"], weight_decay=c.weight_decay)


def _lbfgs(params: Iterable[Any], c: OptimizerConfig) -> torch.optim.Optimizer:
    import torch

    return torch.optim.LBFGS(
        params, lr=c.lr, max_iter=LBFGS_MAX_ITER, history_size=LBFGS_HISTORY, line_search_fn="strong_wolfe"
    )


_ADAM_KNOBS = ("beta1", "beta2", "eps")

register(OptimizerSpec("sgd", _sgd))
register(OptimizerSpec("momentum", _momentum, knobs=("momentum",)))
register(OptimizerSpec("nesterov", _nesterov, knobs=("momentum",)))
register(OptimizerSpec("adagrad", _adagrad, knobs=("eps",), defaults=(("eps", 1e-10),)))
register(
    OptimizerSpec("rmsprop", _rmsprop, knobs=("alpha", "eps", "momentum"), defaults=(("momentum", 0.0),))
)
register(OptimizerSpec("adam", _adam, knobs=_ADAM_KNOBS))
register(OptimizerSpec("adamw", _adamw, knobs=_ADAM_KNOBS))
register(OptimizerSpec("adadelta", _adadelta, knobs=("eps", "rho"), defaults=(("eps", 1e-6),)))
register(OptimizerSpec("lbfgs", _lbfgs, full_batch=True, param_groups=False))
