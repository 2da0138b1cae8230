"""Parameter groups: which parameters train at which lr, and which get weight decay.

Learning-rate groups. A model may define ``lr_groups(self) -> dict[str, list[Parameter]]`` naming
its groups (parameters it leaves out form the group ``rest``). Otherwise there are two: ``head``,
the parameters of the last submodule in ``named_modules()`` order that holds parameters of its own
(the output layer of an MLP), and ``body``, everything else. ``lr_multipliers``/``head_lr_ratio``
set a group's rate as a multiple of the base lr; naming a group the model lacks is a ConfigError.

Weight decay, as in nanoGPT: tensors with two or more dimensions (weights of linear and conv
layers, embeddings) are decayed; biases and normalization scales/shifts (1-D) are not. The same
split decides what ``l1`` penalizes.

Every torch group carries ``lr_scale`` (its multiplier), which the loop multiplies by the base lr
and the schedule's factor before each step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpsearch.errors import ConfigError, did_you_mean
from hpsearch.train.optim import optimizers

if TYPE_CHECKING:
    import torch

    from hpsearch.train.config import TrainConfig


def decays(param: torch.Tensor) -> bool:
    """Whether weight decay and l1 apply to ``param``: matrices and higher, not biases or norms."""
    return param.dim() >= 2


def lr_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """The model's lr groups (``model.lr_groups()`` or head/body), trainable parameters only."""
    custom = getattr(model, "lr_groups", None)
    if callable(custom):
        return _complete(model, {str(k): list(v) for k, v in custom().items()})
    head: list[torch.nn.Parameter] = []
    for _, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if own:
            head = own
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    return {"body": body, "head": head}


def _complete(model: torch.nn.Module, groups: dict[str, list[torch.nn.Parameter]]) -> dict[str, list[Any]]:
    seen: set[int] = set()
    for name, params in groups.items():
        for p in params:
            if id(p) in seen:
                raise ValueError(
                    f"{type(model).__name__}.lr_groups() lists a parameter twice (again in {name!r})"
                )
            seen.add(id(p))
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    if rest:
        groups["rest"] = groups.get("rest", []) + rest
    return {name: [p for p in params if p.requires_grad] for name, params in groups.items()}


def param_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """torch parameter groups for ``config``'s optimizer: lr groups split into decayed/not decayed."""
    named = lr_groups(model)
    multipliers = dict(config.lr_multipliers)
    for group in multipliers:
        if group not in named:
            hint = did_you_mean(group, named)
            source = " (head_lr_ratio sets the group head)" if group == "head" else ""
            raise ConfigError(
                "lr_multipliers",
                f"unknown parameter group {group!r}{source}{hint}; this model's groups: {', '.join(sorted(named))}",
            )
    lr = config.base_lr
    if not optimizers()[config.optimizer.name].param_groups:
        params = [p for params in named.values() for p in params]
        return [{"params": params, "lr": lr, "lr_scale": 1.0, "name": "all"}]
    decay = config.optimizer.weight_decay
    groups = []
    for name, params in named.items():
        scale = multipliers.get(name, 1.0)
        for suffix, members, wd in (
            ("decay", [p for p in params if decays(p)], decay),
            ("no_decay", [p for p in params if not decays(p)], 0.0),
        ):
            if members:
                groups.append(
                    {
                        "params": members,
                        "lr": lr * scale,
                        "weight_decay": wd,
                        "lr_scale": scale,
                        "name": f"{name}/{suffix}",
                    }
                )
    return groups
