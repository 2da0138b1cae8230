"""Fused trials: several small trials of one structure trained as one batched model.

:func:`fusion_key` says which trials can share a pack, :func:`unfused_reason` why one cannot, and
:func:`train_pack` trains a pack, each member as it would train alone (see :mod:`.pack`). Like the
rest of the training core it imports neither optuna nor ray, and importing it does not import torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from hpsearch.train.fused.key import FUSABLE_OPTIMIZERS, fusion_key, unfused_reason

if TYPE_CHECKING:
    from hpsearch.train.config import TrainConfig
    from hpsearch.train.data import Dataset
    from hpsearch.train.data.folds import Folds
    from hpsearch.train.result import Reporter, TrainResult


def train_pack(configs: Sequence[TrainConfig], data: Dataset | Folds, reporters: Sequence[Reporter | None] | None = None,
               on_end: Callable[[int, TrainResult], None] | None = None,
               report_epoch: Callable[[Sequence[tuple[int, int, Mapping[str, float]]]], Sequence[bool]] | None = None,
               ) -> list[TrainResult]:
    """Train trials of one fusion key together (with k-fold ``data``, each on every fold); see
    :func:`hpsearch.train.fused.pack.train_pack`."""
    from hpsearch.train.fused.pack import train_pack as _train_pack

    return _train_pack(configs, data, reporters, on_end, report_epoch)


__all__ = ["FUSABLE_OPTIMIZERS", "fusion_key", "train_pack", "unfused_reason"]
