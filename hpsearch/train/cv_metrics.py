"""What a k-fold trial reports: the mean over its folds, and the spread of a metric over them.

Importing this module does not import torch: the objective glue writes the spread as user attributes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math


def mean_metrics(folds: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """The mean over ``folds`` of every metric (in the first fold's order)."""
    return {name: math.fsum(f[name] for f in folds) / len(folds) for name in folds[0]}


def fold_std(values: Sequence[float]) -> float:
    """The spread of a metric over the folds: its standard deviation over the k folds (ddof 0, as
    scikit-learn's ``cross_val_score(...).std()``)."""
    mean = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
