"""A small transformer encoder for classifying token sequences (or regressing on them)."""

from __future__ import annotations

import math

import torch
from torch import nn

from hpsearch.train.models.blocks import initialize, make_activation


def sinusoidal_encoding(length: int, d_model: int) -> torch.Tensor:
    """The fixed positional encoding of "Attention is all you need": ``[length, d_model]``."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    encoding = torch.zeros(length, d_model)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency)[:, : d_model // 2]
    return encoding


class EncoderBlock(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + feed_forward(norm(x)); pre-norm trains
    stably without a warmup, which matters when the schedule itself is being searched."""

    def __init__(self, d_model: int, heads: int, ff_mult: int, dropout: float, activation: str) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.feed_forward = nn.Sequential(
            nn.Linear(d_model, ff_mult * d_model),
            make_activation(activation),
            nn.Dropout(dropout),
            nn.Linear(ff_mult * d_model, d_model),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        attended, _ = self.attention(h, h, h, need_weights=False)
        x = x + self.dropout(attended)
        return x + self.dropout(self.feed_forward(self.norm2(x)))


class TransformerClassifier(nn.Module):
    """Token ids ``[batch, length]`` -> embeddings + positions -> encoder blocks -> mean pool -> head."""

    def __init__(
        self,
        vocab_size: int,
        length: int,
        n_outputs: int,
        *,
        d_model: int = 64,
        heads: int = 4,
        layers: int = 2,
        ff_mult: int = 4,
        dropout: float = 0.1,
        activation: str = "gelu",
        init: str = "default",
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.positions: torch.Tensor
        self.register_buffer("positions", sinusoidal_encoding(length, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            EncoderBlock(d_model, heads, ff_mult, dropout, activation) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, n_outputs)
        initialize(self, init, activation)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding(tokens) + self.positions[: tokens.shape[1]]
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))
