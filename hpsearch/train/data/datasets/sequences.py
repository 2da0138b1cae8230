"""``is_sorted``: a synthetic sequence task that only order can solve.

Each row is ``length`` token ids in ``0 .. vocab - 1``. Half the rows are sorted (label 1); the other
half are sorted rows with two tokens of different value swapped (label 0). A swap keeps every token's
count, so a bag of words cannot tell the classes apart: a model must compare tokens by position.
"""

from __future__ import annotations

import numpy as np

_MAX_DRAWS = 32  # redraws of the swapped pair, for rows whose first pair had equal tokens


def is_sorted(rows: int, length: int, vocab: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids ``[rows, length]`` (int64) and labels ``[rows]`` (int64), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    tokens = np.sort(rng.integers(0, vocab, (rows, length)), axis=1)
    labels = rng.integers(0, 2, rows)
    pending = np.flatnonzero(labels == 0)
    for _ in range(_MAX_DRAWS):
        if pending.size == 0:
            break
        i = rng.integers(0, length, pending.size)
        j = (i + rng.integers(1, length, pending.size)) % length  # a different position
        a, b = tokens[pending, i], tokens[pending, j]
        swap = a != b
        tokens[pending[swap], i[swap]], tokens[pending[swap], j[swap]] = b[swap], a[swap]
        pending = pending[~swap]
    labels[pending] = 1  # rows of one repeated token cannot be unsorted: they stay sorted
    return tokens.astype(np.int64), labels.astype(np.int64)
