"""A small convolutional network for small images such as the 8x8 digits."""

from __future__ import annotations

from torch import nn

from hpsearch.train.models.blocks import initialize, make_activation


def cnn(
    input_shape: tuple[int, ...],
    n_outputs: int,
    *,
    channels: int = 32,
    blocks: int = 2,
    kernel_size: int = 3,
    dropout: float = 0.0,
    batch_norm: bool = True,
    activation: str = "relu",
    init: str = "default",
) -> nn.Sequential:
    """``blocks`` conv blocks (conv, batch norm, activation, 2x2 max pool while the image is larger
    than 2x2, dropout); the channels double with each block. Global average pooling, then a linear head."""
    in_channels, height, width = input_shape
    layers: list[nn.Module] = []
    c_in, c_out = in_channels, channels
    for _ in range(blocks):
        layers.append(nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(make_activation(activation))
        if min(height, width) > 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        c_in, c_out = c_out, c_out * 2
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, n_outputs)]
    model = nn.Sequential(*layers)
    initialize(model, init, activation)
    return model
