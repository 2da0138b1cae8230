"""User models: ``model: {python: "mypkg.models:build", width: 64, ...}``.

The function is called as ``build(inputs, **options)`` and returns a ``torch.nn.Module`` whose output
is ``[batch, n_outputs]`` (classification logits) or ``[batch, 1]`` (regression):

- ``inputs`` is a :class:`~hpsearch.train.models.inputs.ModelInputs`: ``n_features``, ``n_outputs``,
  ``input_shape``, ``task`` and ``vocab_size`` (for token data).
- ``options`` are every other key of the ``model:`` section, as plain YAML values.

Searchable options: every scalar option (a number, string, bool or null) is also a knob, so ``space:``
or ``train:`` may name it and then override the section's value; declare an option in the section,
with its default, to make it searchable. An option may not reuse a training, optimizer or schedule
knob's name (``lr``, ``gamma``, ...).
The module is imported with the working directory on ``sys.path`` (see :mod:`hpsearch.train.imports`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpsearch.errors import ConfigError
from hpsearch.train.imports import check_import_path, freeze, is_scalar, load_callable, thaw
from hpsearch.train.models.inputs import ModelInputs

if TYPE_CHECKING:
    from torch import nn

_OWN_KEYS = ("kind", "python")


@dataclass(frozen=True)
class PythonModelConfig:
    python: str
    options: tuple[tuple[str, Any], ...] = ()
    kind: str = "python"


def user_knobs(section: Mapping[str, Any]) -> tuple[str, ...]:
    """The section's scalar options: the names ``space:`` and ``train:`` may set."""
    return tuple(str(k) for k, v in section.items() if k not in _OWN_KEYS and is_scalar(v))


def parse_user_model(section: Mapping[str, Any], knobs: Mapping[str, Any]) -> PythonModelConfig:
    from hpsearch.train.config import (  # config imports this module
        OPTIMIZER_KNOBS,
        SCHEDULE_KNOBS,
        TRAIN_KNOBS,
    )

    path = check_import_path("model.python", section.get("python"))
    load_callable("model.python", path)  # a wrong path fails when the study is checked, not in a trial
    for key in section:
        if key in TRAIN_KNOBS or key in OPTIMIZER_KNOBS or key in SCHEDULE_KNOBS:
            raise ConfigError(f"model.{key}", "is a training knob; set it under train: or space:")
    options = {str(k): v for k, v in section.items() if k not in _OWN_KEYS}
    options.update({k: knobs[k] for k in user_knobs(section) if k in knobs})
    return PythonModelConfig(python=path, options=tuple(sorted((k, freeze(v)) for k, v in options.items())))


def build_user_model(config: PythonModelConfig, inputs: ModelInputs) -> nn.Module:
    from torch import nn

    build = load_callable("model.python", config.python)
    model = build(inputs, **{k: thaw(v) for k, v in config.options})
    if not isinstance(model, nn.Module):
        raise ConfigError("model.python", f"{config.python} must return a torch.nn.Module, got {type(model).__name__}")
    return model
