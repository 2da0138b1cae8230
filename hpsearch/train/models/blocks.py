"""Pieces every built-in network uses: activation modules and weight initialization."""

from __future__ import annotations

from torch import nn

from hpsearch.train.models.knobs import activations, inits


def make_activation(name: str) -> nn.Module:
    return getattr(nn, activations()[name].module)()


def initialize(model: nn.Module, init: str, activation: str) -> None:
    """Initialize every linear and convolution weight of ``model`` for the activation that follows it."""
    spec, act = inits()[init], activations()[activation]
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            spec.apply(module.weight, act)
            if module.bias is not None and not spec.keeps_bias:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
            spec.apply(module.in_proj_weight, act)  # the query/key/value projections (its out_proj is a Linear)
