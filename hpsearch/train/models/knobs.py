"""Knobs several model kinds share: the activation and init registries and how a knob is read.

A model knob may be set in the ``model:`` section or, because it is searchable, under ``train:`` or
``space:``; the knob wins. A study file may set a built-in model's knob in one place only (hpsearch.spec
refuses both); a user model's section declares its knobs, so ``space:`` searches them there.
Errors name ``model.<knob>`` or ``<knob>``, whichever the user wrote.
Importing this module does not import torch: the factories import it when called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch.errors import ConfigError
from hpsearch.values import as_choice, as_float, as_int

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class ActivationSpec:
    """``module`` is the ``torch.nn`` class; ``gain`` is its name for ``torch.nn.init.calculate_gain``."""

    name: str
    module: str
    gain: str


@dataclass(frozen=True)
class InitSpec:
    """``apply(weight, activation)`` initializes one weight in place; biases are zeroed unless ``keeps_bias``."""

    name: str
    apply: Callable[[torch.Tensor, ActivationSpec], None]
    keeps_bias: bool = False


_ACTIVATIONS: dict[str, ActivationSpec] = {}
_INITS: dict[str, InitSpec] = {}


def register_activation(spec: ActivationSpec) -> None:
    if spec.name in _ACTIVATIONS:
        raise ValueError(f"activation {spec.name!r} is already registered")
    _ACTIVATIONS[spec.name] = spec


def register_init(spec: InitSpec) -> None:
    if spec.name in _INITS:
        raise ValueError(f"init {spec.name!r} is already registered")
    _INITS[spec.name] = spec


def activations() -> Mapping[str, ActivationSpec]:
    return dict(_ACTIVATIONS)


def inits() -> Mapping[str, InitSpec]:
    return dict(_INITS)


def _kaiming(weight: torch.Tensor, activation: ActivationSpec) -> None:
    import torch

    # kaiming_normal_ knows only the gains calculate_gain knows; elu/gelu are close enough to relu
    torch.nn.init.kaiming_normal_(weight, a=0.01 if activation.gain == "leaky_relu" else 0.0,
                                  nonlinearity=activation.gain)  # type: ignore[arg-type]


def _xavier(weight: torch.Tensor, activation: ActivationSpec) -> None:
    import torch

    param = 0.01 if activation.gain == "leaky_relu" else None
    gain = torch.nn.init.calculate_gain(activation.gain, param)  # type: ignore[arg-type]
    torch.nn.init.xavier_uniform_(weight, gain=gain)


def _default(weight: torch.Tensor, activation: ActivationSpec) -> None:
    """PyTorch's own initialization, already applied when the layer was built."""


for _spec in (
    ActivationSpec("relu", "ReLU", "relu"),
    ActivationSpec("leaky_relu", "LeakyReLU", "leaky_relu"),
    ActivationSpec("elu", "ELU", "relu"),
    ActivationSpec("gelu", "GELU", "relu"),
    ActivationSpec("tanh", "Tanh", "tanh"),
    ActivationSpec("sigmoid", "Sigmoid", "sigmoid"),
):
    register_activation(_spec)
register_init(InitSpec("kaiming", _kaiming))
register_init(InitSpec("xavier", _xavier))
register_init(InitSpec("default", _default, keeps_bias=True))


class KnobReader:
    """Reads one model's knobs: a knob (from ``train:``/``space:``) overrides the ``model:`` section."""

    def __init__(self, section: Mapping[str, Any], knobs: Mapping[str, Any]) -> None:
        self._section = section
        self._knobs = knobs

    def given(self, name: str) -> bool:
        return name in self._knobs or name in self._section

    def raw(self, name: str, default: Any) -> tuple[str, Any]:
        """The key to report errors under, and the raw value."""
        if name in self._knobs:
            return name, self._knobs[name]
        return f"model.{name}", self._section.get(name, default)

    def integer(self, name: str, default: int, low: int = 1, high: int | None = None) -> int:
        key, value = self.raw(name, default)
        number = as_int(key, value)
        if number < low or (high is not None and number > high):
            bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise ConfigError(key, f"must be {bound}, got {value!r}")
        return number

    def dropout(self, name: str = "dropout", default: float = 0.0) -> float:
        key, value = self.raw(name, default)
        rate = as_float(key, value)
        if not 0.0 <= rate < 1.0:
            raise ConfigError(key, f"must be in [0, 1), got {value!r}")
        return rate

    def flag(self, name: str, default: bool) -> bool:
        key, value = self.raw(name, default)
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value

    def activation(self, default: str = "relu") -> str:
        key, value = self.raw("activation", default)
        return as_choice(key, value, _ACTIVATIONS, what="activation")

    def init(self, default: str = "default") -> str:
        key, value = self.raw("init", default)
        return as_choice(key, value, _INITS, what="init")
