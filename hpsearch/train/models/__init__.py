"""Model registry: kind -> how its ``model:`` section is parsed and how the network is built.

Built-in kinds: ``mlp`` (tabular features, or flattened images), ``cnn`` (images), ``transformer``
(token sequences) and ``python`` (a user's builder, see :mod:`hpsearch.train.models.user`). Importing
this module does not import torch; builders import it when called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch.errors import ConfigError, one_of
from hpsearch.train.imports import thaw
from hpsearch.train.models.inputs import FEATURES, IMAGES, TOKENS, ModelInputs
from hpsearch.train.models.kinds import (
    CNN_KNOBS,
    MLP_KNOBS,
    TRANSFORMER_KNOBS,
    CnnConfig,
    MlpConfig,
    TransformerConfig,
    build_cnn,
    build_mlp,
    build_transformer,
    parse_cnn,
    parse_mlp,
    parse_transformer,
)
from hpsearch.train.models.user import PythonModelConfig, build_user_model, parse_user_model, user_knobs

if TYPE_CHECKING:
    import torch

    from hpsearch.train.data import Dataset


@dataclass(frozen=True)
class ModelSpec:
    """A model kind.

    ``parse(section, knobs)`` reads the ``model:`` section and the knobs that ``knobs(section)``
    names (a knob overrides the section) and returns a frozen config; ``build(config, inputs)``
    returns the network for :class:`ModelInputs`. ``accepts`` lists the input kinds it can read.
    """

    kind: str
    fields: tuple[str, ...]
    scalar_knobs: tuple[str, ...]
    parse: Callable[[Mapping[str, Any], Mapping[str, Any]], Any]
    build: Callable[[Any, ModelInputs], torch.nn.Module]
    accepts: tuple[str, ...] = (FEATURES,)
    knobs_of: Callable[[Mapping[str, Any]], tuple[str, ...]] | None = None  # knobs that depend on the section

    def knobs(self, section: Mapping[str, Any]) -> tuple[str, ...]:
        """The knob names ``train:`` and ``space:`` may set for this ``model:`` section."""
        return self.knobs_of(section) if self.knobs_of is not None else self.scalar_knobs


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    if spec.kind in _REGISTRY:
        raise ValueError(f"model kind {spec.kind!r} is already registered")
    _REGISTRY[spec.kind] = spec


def models() -> Mapping[str, ModelSpec]:
    """Every registered model kind."""
    return dict(_REGISTRY)


def model_kind(section: Mapping[str, Any]) -> Any:
    """The kind a ``model:`` section names: ``kind``, else ``python`` when it names a builder, else ``mlp``."""
    if "python" in section:
        if section.get("kind", "python") != "python":
            raise ConfigError("model.python", f"names a user model, so kind must be python or left out, got {section['kind']!r}")
        return "python"
    kind = section.get("kind", "mlp")
    if not isinstance(kind, str):  # a list or mapping here would be looked up in the registry, and fail unhashable
        raise ConfigError("model.kind", f"must be a model kind such as mlp, got {kind!r}")
    return kind


def config_section(config: Any) -> dict[str, Any]:
    """The ``model:`` section that parses back to ``config`` (:func:`parse_section`): what a saved
    model keeps of its network, as plain data."""
    section: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.name == "options":  # a user model's options: its own keys in the section
            section.update({k: thaw(v) for k, v in value})
        else:
            section[f.name] = list(value) if isinstance(value, tuple) else value
    return section


def parse_section(section: Mapping[str, Any]) -> Any:
    """The frozen config of a ``model:`` section on its own (no knobs from ``train:`` or ``space:``)."""
    kind = model_kind(section)
    if kind not in _REGISTRY:
        raise ConfigError("model.kind", f"unknown model kind {kind!r}; {one_of(sorted(_REGISTRY))}")
    return _REGISTRY[kind].parse(section, {})


def build_model(config: Any, n_features: int, n_outputs: int) -> torch.nn.Module:
    """The network for tabular inputs of ``n_features`` columns (see :func:`build_model_for`)."""
    return _REGISTRY[config.kind].build(config, ModelInputs((n_features,), n_outputs))


def build_model_for(config: Any, data: Dataset) -> torch.nn.Module:
    """The network for ``data``'s shapes; a kind that cannot read the data's inputs is a ConfigError."""
    return build_network(config, ModelInputs.of(data))


def build_network(config: Any, inputs: ModelInputs) -> torch.nn.Module:
    """The network of ``config`` for inputs and outputs of these shapes (see :func:`build_model_for`)."""
    spec = _REGISTRY[config.kind]
    if inputs.kind not in spec.accepts:
        readers = sorted(k for k, s in _REGISTRY.items() if inputs.kind in s.accepts)
        raise ConfigError(
            "model.kind", f"{config.kind} cannot read {inputs.kind} {list(inputs.input_shape)}; {one_of(readers)}"
        )
    return spec.build(config, inputs)


register(ModelSpec("mlp", ("hidden", *MLP_KNOBS), MLP_KNOBS, parse_mlp, build_mlp, (FEATURES, IMAGES)))
register(ModelSpec("cnn", CNN_KNOBS, CNN_KNOBS, parse_cnn, build_cnn, (IMAGES,)))
register(ModelSpec("transformer", TRANSFORMER_KNOBS, TRANSFORMER_KNOBS, parse_transformer, build_transformer, (TOKENS,)))
register(
    ModelSpec(
        "python", ("python",), (), parse_user_model, build_user_model, (FEATURES, IMAGES, TOKENS), user_knobs
    )
)

__all__ = [
    "CnnConfig",
    "MlpConfig",
    "ModelInputs",
    "ModelSpec",
    "PythonModelConfig",
    "TransformerConfig",
    "build_model",
    "build_model_for",
    "build_network",
    "config_section",
    "model_kind",
    "models",
    "parse_section",
    "register",
]
