"""Batch-size scaling of the learning rate: the searched ``lr`` is the rate at ``reference_batch``.

With ``rule: linear`` a trial with batch size b trains at ``lr * b / reference_batch`` (Goyal et
al.'s rule for SGD), with ``sqrt`` at ``lr * sqrt(b / reference_batch)`` (the rule usually quoted for
Adam), with ``none`` at ``lr``. Scaling makes ``lr`` and ``batch_size`` independent search axes.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

RULES = ("linear", "none", "sqrt")


@dataclass(frozen=True)
class LrScaling:
    rule: str = "none"
    reference_batch: int = 32

    def scale(self, lr: float, batch_size: int) -> float:
        """The effective rate for ``batch_size`` of a searched ``lr``."""
        ratio = batch_size / self.reference_batch
        if self.rule == "linear":
            return lr * ratio
        if self.rule == "sqrt":
            return lr * math.sqrt(ratio)
        return lr
