"""k-fold cross-validation splits: ``data: {cv_folds: k}``.

The rows are shuffled by the study's seed (as the single split shuffles them) and cut into ``k``
disjoint blocks whose sizes differ by at most one; fold ``i`` validates on block ``i`` and trains on
the others, so every row is validated exactly once. Every fold trains on the same number of rows,
``n - ceil(n / k)``: where ``k`` does not divide ``n``, a fold whose block is one row short leaves one
training row out (the last of the others in shuffled order). Folds then take the same optimizer
steps per epoch, and the folds of a trial can train side by side in one fused pack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hpsearch.errors import DataError

if TYPE_CHECKING:
    from hpsearch.train.data import Dataset


@dataclass(frozen=True, eq=False)
class Folds:
    """The ``k`` datasets of k-fold cross-validation, each preprocessed on its own training rows only."""

    datasets: tuple[Dataset, ...]

    def __len__(self) -> int:
        return len(self.datasets)


def fold_rows(n: int, k: int, seed: int, where: str = "the data") -> list[tuple[np.ndarray, np.ndarray]]:
    """Sorted (training, validation) row indices of each of ``k`` folds of ``n`` rows (see the module)."""
    if not 2 <= k <= n:
        raise DataError(f"data.cv_folds: {k} folds need at least {k} rows; {where} has {n}")
    blocks = np.array_split(np.random.default_rng(seed).permutation(n), k)
    n_train = n - len(blocks[0])  # array_split puts the longer blocks first
    folds = []
    for i, block in enumerate(blocks):
        rest = np.concatenate([b for j, b in enumerate(blocks) if j != i])[:n_train]
        folds.append((np.sort(rest), np.sort(block)))
    return folds

