"""A residual MLP: hpsearch calls ``build(inputs, **options)`` with the ``model:`` section's options."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from hpsearch.train import ModelInputs


class ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def build(inputs: ModelInputs, width: int = 64, blocks: int = 2, dropout: float = 0.0) -> nn.Module:
    """``inputs`` tells the shapes (``inputs.n_features``, ``inputs.n_outputs``); the rest are the
    options of the ``model:`` section, any scalar of which ``space:`` may search."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(inputs.n_features, width),
        *(ResidualBlock(width, dropout) for _ in range(blocks)),
        nn.Linear(width, inputs.n_outputs),
    )
