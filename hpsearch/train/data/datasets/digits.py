"""``digits``: scikit-learn's bundled 8x8 handwritten digits as ``[N, 1, 8, 8]`` images in [0, 1],
and the random-shift augmentation for image batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch

Augment = Callable[["torch.Tensor", "torch.Generator"], "torch.Tensor"]


def digits() -> tuple[np.ndarray, np.ndarray]:
    """Images ``[1797, 1, 8, 8]`` float32 and labels ``[1797]`` int64 (the digit)."""
    import numpy as np
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    return images, bunch.target.astype(np.int64)


def random_shift(max_shift: int) -> Augment:
    """An augmentation that shifts each image by up to ``max_shift`` pixels per axis, zero-filled
    (a random crop of the zero-padded image), drawing the shifts from the loop's generator."""

    def shift(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        n, _, height, width = images.shape
        offsets = torch.randint(0, 2 * max_shift + 1, (2, n), generator=generator).to(images.device)
        padded = F.pad(images, (max_shift,) * 4)
        rows = (offsets[0][:, None] + torch.arange(height, device=images.device))[:, None, :, None]
        cols = (offsets[1][:, None] + torch.arange(width, device=images.device))[:, None, None, :]
        batch = torch.arange(n, device=images.device)[:, None, None, None]
        channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        return padded[batch, channel, rows, cols]

    return shift
