"""What a model builder is told about the data: shapes, not tensors."""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpsearch.train.data import Dataset

FEATURES, IMAGES, TOKENS = "features", "images", "tokens"


@dataclass(frozen=True)
class ModelInputs:
    """The shape of one example and of the output.

    Attributes:
        input_shape: One example's shape: ``(n_features,)`` for tabular data, ``(channels, height,
            width)`` for images, ``(length,)`` for token sequences.
        n_outputs: 1 for regression, the number of classes for classification.
        task: ``"regression"`` or ``"classification"``.
        vocab_size: Token ids are ``0 .. vocab_size - 1``; 0 when the inputs are not tokens.
    """

    input_shape: tuple[int, ...]
    n_outputs: int
    task: str = "regression"
    vocab_size: int = 0

    @property
    def n_features(self) -> int:
        """Numbers per example (an image's pixels count one each)."""
        return math.prod(self.input_shape)

    @property
    def kind(self) -> str:
        if self.vocab_size:
            return TOKENS
        return IMAGES if len(self.input_shape) == 3 else FEATURES

    @classmethod
    def of(cls, data: Dataset) -> ModelInputs:
        return cls(data.input_shape, data.n_outputs, data.task, data.vocab_size)
