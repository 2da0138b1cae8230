"""A multilayer perceptron; image inputs are flattened first."""

from __future__ import annotations

from torch import nn

from hpsearch.train.models.blocks import initialize, make_activation


def mlp(
    n_features: int,
    n_outputs: int,
    hidden: tuple[int, ...],
    *,
    dropout: float = 0.0,
    activation: str = "relu",
    batch_norm: bool = False,
    init: str = "default",
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    width = n_features
    for h in hidden:
        layers.append(nn.Linear(width, h))
        if batch_norm:
            layers.append(nn.BatchNorm1d(h))
        layers.append(make_activation(activation))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_outputs))
    model = nn.Sequential(*layers)
    initialize(model, init, activation)
    return model
