"""Helpers for the optimizer, schedule, regularization and loop tests (unique module name on sys.path)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import contextlib
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from hpsearch.train import TrainConfig, build_train_config


class Recorder:
    def __init__(self) -> None:
        self.history: list[tuple[int, dict[str, float]]] = []

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        self.history.append((epoch, dict(metrics)))
        return False

    def losses(self) -> list[float]:
        return [m["train_loss"] for _, m in self.history]


def make_config(knobs: Mapping[str, Any], *, hidden: tuple[int, ...] = (16,), **kw: Any) -> TrainConfig:
    args: dict[str, Any] = {"task": "regression", "monitor": "val_rmse", "maximize": False, "seed": 0, **kw}
    return build_train_config({"kind": "mlp", "hidden": list(hidden)}, {"device": "cpu", **knobs}, **args)


@contextlib.contextmanager
def watch_steps() -> Iterator[list[dict[str, Any]]]:
    """Yield a list that receives, before each optimizer step, its group lrs and global grad norm (a global torch hook, removed after)."""
    seen: list[Any] = []

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item() if grads else None
        seen.append({"lrs": [g["lr"] for g in optimizer.param_groups], "grad_norm": norm})

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()
