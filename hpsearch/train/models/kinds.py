"""The built-in model kinds' configs: how each is parsed from the ``model:`` section and knobs, and built.

Importing this module does not import torch; each ``build_*`` imports its network when called.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch.errors import ConfigError
from hpsearch.train.models.inputs import ModelInputs
from hpsearch.train.models.knobs import KnobReader
from hpsearch.values import as_int, check_keys

if TYPE_CHECKING:
    from torch import nn

MAX_LAYERS = 1000  # a sane cap: larger sizes only exhaust memory before anything is said
MAX_WIDTH = 1_000_000
MLP_KNOBS = ("dropout", "layers", "width", "activation", "init", "batch_norm")
CNN_KNOBS = ("dropout", "channels", "blocks", "kernel_size", "activation", "init", "batch_norm")
TRANSFORMER_KNOBS = ("dropout", "d_model", "heads", "layers", "ff_mult", "activation", "init")


@dataclass(frozen=True)
class MlpConfig:
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.0
    kind: str = "mlp"
    activation: str = "relu"
    init: str = "default"
    batch_norm: bool = False


def parse_mlp(section: Mapping[str, Any], knobs: Mapping[str, Any]) -> MlpConfig:
    check_keys(section, ("kind", "hidden", *MLP_KNOBS), prefix="model.")
    read = KnobReader(section, knobs)
    hidden = _hidden(section.get("hidden", MlpConfig.hidden))
    if "hidden" in section and ("layers" in section or "width" in section):
        raise ConfigError("model.hidden", "give either hidden or layers + width, not both")
    if read.given("layers") or read.given("width"):
        # layers + width describe equal widths; a knob missing here keeps the shape of `hidden`
        layers = read.integer("layers", len(hidden), low=0, high=MAX_LAYERS)
        width = read.integer("width", hidden[0] if hidden else 64, high=MAX_WIDTH)
        hidden = (width,) * layers
    return MlpConfig(
        hidden=hidden,
        dropout=read.dropout(),
        activation=read.activation(),
        init=read.init(),
        batch_norm=read.flag("batch_norm", False),
    )


def _hidden(raw: Any) -> tuple[int, ...]:
    if isinstance(raw, (str, bytes)) or not isinstance(raw, (list, tuple)):
        raise ConfigError("model.hidden", f"must be a list of layer widths such as [64, 32], got {raw!r}")
    hidden = tuple(as_int("model.hidden", h) for h in raw)
    if any(h < 1 for h in hidden):
        raise ConfigError("model.hidden", f"every width must be >= 1, got {list(raw)!r}")
    if len(hidden) > MAX_LAYERS or any(h > MAX_WIDTH for h in hidden):
        raise ConfigError("model.hidden", f"at most {MAX_LAYERS} layers of at most {MAX_WIDTH} units each")
    return hidden


def build_mlp(config: MlpConfig, inputs: ModelInputs) -> nn.Module:
    from hpsearch.train.models.mlp import mlp

    return mlp(
        inputs.n_features, inputs.n_outputs, config.hidden, dropout=config.dropout,
        activation=config.activation, batch_norm=config.batch_norm, init=config.init,
    )


@dataclass(frozen=True)
class CnnConfig:
    channels: int = 32
    blocks: int = 2
    kernel_size: int = 3
    dropout: float = 0.0
    batch_norm: bool = True
    activation: str = "relu"
    init: str = "default"
    kind: str = "cnn"


def parse_cnn(section: Mapping[str, Any], knobs: Mapping[str, Any]) -> CnnConfig:
    check_keys(section, ("kind", *CNN_KNOBS), prefix="model.")
    read = KnobReader(section, knobs)
    key, raw_kernel = read.raw("kernel_size", CnnConfig.kernel_size)
    kernel_size = read.integer("kernel_size", CnnConfig.kernel_size, high=9)
    if kernel_size % 2 == 0:
        raise ConfigError(key, f"must be odd so the image keeps its size, got {raw_kernel!r}")
    return CnnConfig(
        channels=read.integer("channels", CnnConfig.channels, high=1024),
        blocks=read.integer("blocks", CnnConfig.blocks, high=8),
        kernel_size=kernel_size,
        dropout=read.dropout(),
        batch_norm=read.flag("batch_norm", CnnConfig.batch_norm),
        activation=read.activation(),
        init=read.init(),
    )


def build_cnn(config: CnnConfig, inputs: ModelInputs) -> nn.Module:
    from hpsearch.train.models.cnn import cnn

    return cnn(
        inputs.input_shape, inputs.n_outputs, channels=config.channels, blocks=config.blocks,
        kernel_size=config.kernel_size, dropout=config.dropout, batch_norm=config.batch_norm,
        activation=config.activation, init=config.init,
    )


@dataclass(frozen=True)
class TransformerConfig:
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    ff_mult: int = 4
    dropout: float = 0.1
    activation: str = "gelu"
    init: str = "default"
    kind: str = "transformer"


def parse_transformer(section: Mapping[str, Any], knobs: Mapping[str, Any]) -> TransformerConfig:
    check_keys(section, ("kind", *TRANSFORMER_KNOBS), prefix="model.")
    read = KnobReader(section, knobs)
    d_model = read.integer("d_model", TransformerConfig.d_model, high=4096)
    heads = read.integer("heads", TransformerConfig.heads, high=256)
    if d_model % heads:
        key = read.raw("heads", None)[0]
        raise ConfigError(key, f"d_model ({d_model}) must be divisible by heads ({heads})")
    return TransformerConfig(
        d_model=d_model,
        heads=heads,
        layers=read.integer("layers", TransformerConfig.layers, high=48),
        ff_mult=read.integer("ff_mult", TransformerConfig.ff_mult, high=16),
        dropout=read.dropout(default=TransformerConfig.dropout),
        activation=read.activation(TransformerConfig.activation),
        init=read.init(),
    )


def build_transformer(config: TransformerConfig, inputs: ModelInputs) -> nn.Module:
    from hpsearch.train.models.transformer import TransformerClassifier

    (length,) = inputs.input_shape
    return TransformerClassifier(
        inputs.vocab_size, length, inputs.n_outputs, d_model=config.d_model, heads=config.heads,
        layers=config.layers, ff_mult=config.ff_mult, dropout=config.dropout,
        activation=config.activation, init=config.init,
    )
