"""The metrics ``train`` reports each epoch, and how they are computed on the validation split.

Importing this module does not import torch: the spec layer asks ``reported_metrics`` at parse time.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from hpsearch.errors import ConfigError, one_of

if TYPE_CHECKING:
    import torch

    from hpsearch.train.data import Dataset

TASKS = ("regression", "classification")

_REPORTED: Mapping[str, Mapping[str, str]] = {
    "regression": {
        "train_loss": "minimize",
        "val_mse": "minimize",
        "val_rmse": "minimize",
        "val_mae": "minimize",
        "val_r2": "maximize",
    },
    "classification": {
        "train_loss": "minimize",
        "val_loss": "minimize",
        "val_accuracy": "maximize",
        "val_f1": "maximize",  # macro F1: every class counts equally, however rare
    },
}


def reported_metrics(task: str) -> Mapping[str, str]:
    """Metric name -> natural direction (``"minimize"`` or ``"maximize"``) for every metric of an epoch."""
    if task not in _REPORTED:
        raise ConfigError("task", f"unknown task {task!r}; {one_of(TASKS)}")
    return dict(_REPORTED[task])


def validation_metrics(outputs: torch.Tensor, data: Dataset) -> dict[str, float]:
    """Metrics of the model's validation ``outputs``; regression metrics are in the target's original units."""
    import torch
    import torch.nn.functional as F

    y = data.y_val.to(outputs.device)
    if data.task == "classification":
        loss = F.cross_entropy(outputs, y)
        pred = outputs.argmax(dim=1)
        accuracy = (pred == y).double().mean()
        f1 = macro_f1(pred, y, outputs.shape[1])
        return {"val_loss": loss.item(), "val_accuracy": accuracy.item(), "val_f1": f1}
    # float64 so that metrics of similar models are not swamped by rounding of large targets
    pred = outputs.squeeze(-1).double() * data.target_std + data.target_mean
    true = y.double() * data.target_std + data.target_mean
    err = pred - true
    mse = err.square().mean()
    sst = (true - true.mean()).square().sum()
    r2 = 1.0 - err.square().sum() / sst if sst.item() > 0 else torch.zeros((), dtype=torch.float64)
    return {
        "val_mse": mse.item(),
        "val_rmse": mse.sqrt().item(),
        "val_mae": err.abs().mean().item(),
        "val_r2": float(r2),
    }


def macro_f1(pred: torch.Tensor, true: torch.Tensor, n_classes: int) -> float:
    """The mean F1 over the classes that occur in ``true`` or ``pred`` (as scikit-learn's ``average="macro"``)."""
    import torch

    hits = torch.bincount(true[pred == true], minlength=n_classes).double()
    predicted = torch.bincount(pred, minlength=n_classes).double()
    actual = torch.bincount(true, minlength=n_classes).double()
    present = (predicted + actual) > 0
    return (2 * hits[present] / (predicted + actual)[present]).mean().item()
