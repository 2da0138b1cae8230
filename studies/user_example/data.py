"""Two interleaved spirals: hpsearch calls ``load(seed, **options)`` with the ``data:`` section's options."""

from __future__ import annotations

import numpy as np


def load(seed: int, rows: int = 1000, noise: float = 0.8, turns: float = 2.5) -> tuple[np.ndarray, np.ndarray]:
    """Returns ``(x, y)``: float features ``[rows, 2]`` and class labels 0/1; hpsearch splits them
    by ``val_fraction`` and the study's ``seed``. (Returning ``(x_train, y_train, x_val, y_val)``
    or a ``hpsearch.train.Dataset`` works too.)"""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, rows)
    t = rng.uniform(0.25, 1.0, rows) * turns * 2 * np.pi
    angle = t + np.pi * labels
    radius = t / (turns * 2 * np.pi) * 4
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    x += rng.normal(0.0, noise * 0.3, x.shape)
    return x.astype(np.float32), labels
