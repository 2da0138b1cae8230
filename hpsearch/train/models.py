"""Model registry: kind -> how its ``model:`` section is parsed and how the network is built.

Importing this module does not import torch; builders import it when called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch.errors import ConfigError
from hpsearch.train._validate import as_float, as_int, check_keys

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class MlpConfig:
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.0
    kind: str = "mlp"


@dataclass(frozen=True)
class ModelSpec:
    """A model kind.

    ``parse(section, knobs)`` reads the ``model:`` section (without ``kind``) and the knobs named in
    ``scalar_knobs`` (a knob overrides the section) and returns a frozen config; ``build(config,
    n_features, n_outputs)`` returns the network.
    """

    kind: str
    fields: tuple[str, ...]
    scalar_knobs: tuple[str, ...]
    parse: Callable[[Mapping[str, Any], Mapping[str, Any]], Any]
    build: Callable[[Any, int, int], torch.nn.Module]


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    if spec.kind in _REGISTRY:
        raise ValueError(f"model kind {spec.kind!r} is already registered")
    _REGISTRY[spec.kind] = spec


def models() -> Mapping[str, ModelSpec]:
    """Every registered model kind."""
    return dict(_REGISTRY)


def build_model(config: Any, n_features: int, n_outputs: int) -> torch.nn.Module:
    return _REGISTRY[config.kind].build(config, n_features, n_outputs)


def _parse_dropout(key: str, value: Any) -> float:
    dropout = as_float(key, value)
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(key, f"must be in [0, 1), got {value!r}")
    return dropout


def _parse_mlp(section: Mapping[str, Any], knobs: Mapping[str, Any]) -> MlpConfig:
    check_keys(section, ("kind", "hidden", "dropout"), prefix="model.")
    hidden_raw = section.get("hidden", MlpConfig.hidden)
    if isinstance(hidden_raw, (str, bytes)) or not isinstance(hidden_raw, (list, tuple)):
        raise ConfigError(
            "model.hidden", f"must be a list of layer widths such as [64, 32], got {hidden_raw!r}"
        )
    hidden = tuple(as_int("model.hidden", h) for h in hidden_raw)
    if any(h < 1 for h in hidden):
        raise ConfigError("model.hidden", f"every width must be >= 1, got {list(hidden_raw)!r}")
    if "dropout" in knobs:
        dropout = _parse_dropout("dropout", knobs["dropout"])
    else:
        dropout = _parse_dropout("model.dropout", section.get("dropout", MlpConfig.dropout))
    return MlpConfig(hidden=hidden, dropout=dropout)


def _build_mlp(config: MlpConfig, n_features: int, n_outputs: int) -> torch.nn.Module:
    from torch import nn

    layers: list[nn.Module] = []
    width = n_features
    for h in config.hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        width = h
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)


register(
    ModelSpec(
        kind="mlp",
        fields=("hidden", "dropout"),
        scalar_knobs=("dropout",),
        parse=_parse_mlp,
        build=_build_mlp,
    )
)
