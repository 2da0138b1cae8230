"""The PyTorch training core: data loading, model, optimizer and schedule registries, the epoch loop.

Imports neither optuna nor ray, and importing this package (or ``config``/``data``) does not import
torch: only ``train``/``fit`` and ``load_dataset`` do, when called.

Where things live:

- ``config`` (:class:`TrainConfig`, a trial's knobs parsed once) and ``knobs`` (what ``train:`` and
  ``space:`` may set);
- ``data/``: the ``data:`` section and loading it (:func:`load_dataset`): tabular files, arrays, user
  loaders, the built-in data sets;
- ``models/``: the model registry (kind -> config and builder), the networks, user models, and the
  stacked MLP that fused packs train;
- ``optim/``: optimizers, lr schedules, batch-size lr scaling, parameter groups, penalties, and the
  stacked optimizers of fused packs;
- ``loop`` (:func:`train`, :func:`fit`), ``cv`` (:func:`train_folds`: k-fold cross-validation),
  ``fused/`` (which trials fuse, and training a pack),
  ``metrics`` and ``result`` (what a run reports).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hpsearch.train.config import TrainConfig, build_train_config, knob_names
from hpsearch.train.data import DataConfig, Dataset, check_data, load_dataset, parse_data_config
from hpsearch.train.knobs import OPTIMIZER_KNOBS, SCHEDULE_KNOBS, TRAIN_KNOBS, Knob
from hpsearch.train.metrics import reported_metrics
from hpsearch.train.models import MlpConfig, ModelSpec, models
from hpsearch.train.models.inputs import ModelInputs
from hpsearch.train.optim import OptimizerConfig, OptimizerSpec, optimizers
from hpsearch.train.optim.scaling import LrScaling
from hpsearch.train.optim.schedules import ScheduleConfig, ScheduleSpec, schedules
from hpsearch.train.result import Reporter, StopReason, TrainResult

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch


def train(config: TrainConfig, data: Dataset, reporter: Reporter | None = None) -> TrainResult:
    """Train the model ``config`` describes on ``data``, calling ``reporter`` after every epoch."""
    from hpsearch.train.loop import train as _train

    return _train(config, data, reporter)


def train_folds(config: TrainConfig, folds: Sequence[Dataset], reporter: Reporter | None = None) -> TrainResult:
    """k-fold cross-validation: train ``config`` on each of ``folds`` in lockstep, reporting the mean curve."""
    from hpsearch.train.cv import train_folds as _train_folds

    return _train_folds(config, folds, reporter)


def fit(
    config: TrainConfig, data: Dataset, model: torch.nn.Module, reporter: Reporter | None = None
) -> TrainResult:
    """Train a given ``model`` in place; it ends holding the weights of the best epoch."""
    from hpsearch.train.loop import fit as _fit

    return _fit(config, data, model, reporter)


__all__ = [
    "OPTIMIZER_KNOBS",
    "SCHEDULE_KNOBS",
    "TRAIN_KNOBS",
    "DataConfig",
    "Dataset",
    "Knob",
    "LrScaling",
    "MlpConfig",
    "ModelInputs",
    "ModelSpec",
    "OptimizerConfig",
    "OptimizerSpec",
    "Reporter",
    "ScheduleConfig",
    "ScheduleSpec",
    "StopReason",
    "TrainConfig",
    "TrainResult",
    "build_train_config",
    "check_data",
    "fit",
    "knob_names",
    "load_dataset",
    "models",
    "optimizers",
    "parse_data_config",
    "reported_metrics",
    "schedules",
    "train",
    "train_folds",
]
