"""From loss curves to a suggested lr range: pure functions of the recorded losses (no torch).

Per repeat, on the loss smoothed by a bias-corrected EMA (:class:`Watch`):

- the **start** is the mean loss of the sweep's first 5% of steps, where the lr is too small to move;
- the loss **fell** when its smoothed minimum (after the start window) lies below the start by
  ``MIN_DROP`` of it, or by three standard deviations of the smoothed loss's noise at the start if
  that is more (small batches of a small data set make a noisy loss);
- the **divergence point** is the first step whose loss is nan/inf, or whose smoothed loss exceeds
  ``diverge_factor`` times its minimum so far (fastai's rule), or, once the loss fell, climbs back
  above the start (training now does worse than not training: bounded losses such as cross-entropy
  of a batch-normed network saturate near chance level and may never reach 4x their minimum);
- the **descent** is the lr where the smoothed loss last crossed, on its way to its minimum, the
  level halfway between the start and the minimum: the middle of the fall, where a sigmoid-shaped
  fall is steepest. Unlike the largest slope it is not picked out by one noisy minibatch.

Over the repeats that fell and diverged (at least half of them), the medians (in log space) of those
lrs give ``high`` = divergence lr / ``DIVIDE`` and ``low`` = descent lr / ``DIVIDE``, and at most
``high`` / ``DIVIDE``, so the range spans a decade or more. The divergence point lies beyond the
largest stable lr (SGD on a quadratic of curvature L: 2/L; its loss cannot rise before), so a tenth
of it lies below that limit, where the loss still falls steadily: fastai's ``lr_min`` (the lr of
the minimum / 10) sits there too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
import math
import statistics

DIVIDE = 10.0  # high = divergence lr / DIVIDE; low = descent lr / DIVIDE, and at most high / DIVIDE
MIN_DROP = 0.1  # the smoothed minimum must lie this fraction below the start for the loss to have fallen
START_FRACTION = 20  # the start is the mean loss of the first 1/START_FRACTION of the steps

NEVER_FELL = "never fell"
NEVER_DIVERGED = "never diverged"


def start_steps(steps: int) -> int:
    """How many first steps the start level averages."""
    return max(3, steps // START_FRACTION)


class Watch:
    """Smooths the losses one step at a time and says when the sweep may stop.

    It stops at a loss that is nan/inf or a smoothed loss above ``factor`` times its minimum (after
    the start window): nothing after that can change the analysis. It goes on past a loss that
    merely climbed back above its start, so the curve shows where the climb leads.
    """

    def __init__(self, beta: float, factor: float, head: int) -> None:
        self.beta, self.factor, self.head = beta, factor, head
        self.smoothed: list[float] = []
        self.raw_head: list[float] = []
        self._average, self._best = 0.0, math.inf

    def add(self, loss: float) -> bool:
        """Record the next step's loss; True when the sweep should stop here."""
        if not math.isfinite(loss):
            self.smoothed.append(math.inf)
            return True
        i = len(self.smoothed) + 1
        self._average = self.beta * self._average + (1 - self.beta) * loss
        value = self._average / (1 - self.beta**i)
        self.smoothed.append(value)
        if i <= self.head:
            self.raw_head.append(loss)
            return False
        if value > self.factor * self._best:
            return True
        self._best = min(self._best, value)
        return False

    @property
    def start(self) -> float:
        """The mean loss of the start window."""
        return statistics.fmean(self.raw_head) if self.raw_head else math.inf

    @property
    def fall(self) -> float:
        """How far below the start the smoothed loss must get to have fallen: ``MIN_DROP`` of the start,
        or three standard deviations of the smoothed loss's noise at the start, whichever is more."""
        spread = statistics.stdev(self.raw_head) if len(self.raw_head) > 1 else 0.0
        noise = spread * math.sqrt((1 - self.beta) / (1 + self.beta))  # an EMA's share of white noise
        return max(MIN_DROP * abs(self.start), 3 * noise)


@dataclass(frozen=True)
class Finding:
    """What one repeat's curve shows: the lrs of its descent, minimum and divergence."""

    descent: float | None
    minimum: float | None
    diverged: float | None
    problem: str | None  # NEVER_FELL or NEVER_DIVERGED; None when it gives a range

    @property
    def usable(self) -> bool:
        return self.problem is None


def find(lrs: Sequence[float], watch: Watch, factor: float) -> tuple[int | None, Finding]:
    """Read one repeat's smoothed curve: the step it diverged at (None if it did not) and what it shows."""
    smoothed, head, start = watch.smoothed, watch.head, watch.start
    diverged = diverged_at(smoothed, head, start, start - watch.fall, factor)
    alive = smoothed[:diverged] if diverged is not None else smoothed
    divergence = lrs[diverged] if diverged is not None else None
    if len(alive) <= head:
        return diverged, Finding(None, None, divergence, NEVER_FELL)
    lowest = min(range(head, len(alive)), key=alive.__getitem__)
    if not alive[lowest] <= start - watch.fall:
        return diverged, Finding(None, lrs[lowest], divergence, NEVER_FELL)
    level = (start + alive[lowest]) / 2
    above = [i for i in range(lowest) if alive[i] > level]
    descent = lrs[above[-1] + 1] if above else lrs[0]
    if divergence is None:
        return diverged, Finding(descent, lrs[lowest], None, NEVER_DIVERGED)
    return diverged, Finding(descent, lrs[lowest], divergence, None)


def diverged_at(smoothed: Sequence[float], head: int, start: float, fallen: float, factor: float) -> int | None:
    """The first step after the start window whose smoothed loss is inf, above ``factor`` times the
    minimum so far, or, once it fell to ``fallen``, back above ``start``."""
    best = math.inf
    for i in range(head, len(smoothed)):
        value = smoothed[i]
        if not math.isfinite(value) or value > factor * best or (best <= fallen and value > start):
            return i
        best = min(best, value)
    return None


@dataclass(frozen=True)
class Suggestion:
    """The suggested ``lr`` range and where each end came from."""

    low: float
    high: float
    low_from: str
    high_from: str


def suggest(findings: Sequence[Finding], max_lr: float, factor: float) -> tuple[Suggestion | None, str]:
    """The range the ``findings`` of one optimizer's repeats suggest, and a line that says how (or why none)."""
    usable = [f for f in findings if f.usable]
    n = len(findings)
    if not usable or len(usable) * 2 < n:
        problem, count = Counter(f.problem for f in findings if not f.usable).most_common(1)[0]
        return None, _why_none(problem, count, n, max_lr, factor, findings)
    descent = _log_median([f.descent for f in usable])
    divergence = _log_median([f.diverged for f in usable])
    high = divergence / DIVIDE
    low, low_from = descent / DIVIDE, f"descent at {descent:.3g} / {DIVIDE:g}"
    if low > high / DIVIDE:
        low, low_from = high / DIVIDE, f"high / {DIVIDE:g} (the descent, at {descent:.3g}, lies within a decade of it)"
    of = f" (medians of {len(usable)} repeats)" if len(usable) > 1 else ""
    suggestion = Suggestion(low, high, low_from, f"divergence at {divergence:.3g} / {DIVIDE:g}")
    return suggestion, f"lr {low:.3g}..{high:.3g}: low from {low_from}, high from {suggestion.high_from}{of}"


def _why_none(problem: str | None, count: int, n: int, max_lr: float, factor: float,
              findings: Sequence[Finding]) -> str:
    which = "every repeat" if count == n else f"{count} of {n} repeats"
    if problem == NEVER_DIVERGED:
        return (f"no suggestion: the loss never diverged up to the sweep's max lr {max_lr:g} in {which} "
                f"(its smoothed value stayed below {factor:g}x its minimum, and below its start once it fell); "
                "raise the max lr")
    ends = [f.diverged for f in findings if f.problem == NEVER_FELL and f.diverged is not None]
    where = f"before it diverged at lr {_log_median(ends):.3g}" if ends else f"up to the sweep's max lr {max_lr:g}"
    return (f"no suggestion: the loss never fell clearly below its start (by {MIN_DROP:.0%} of it, or 3x its noise) "
            f"{where} in {which}; "
            "lower the min lr, take more steps, or check the data and the model")


def _log_median(values: Sequence[float | None]) -> float:
    return math.exp(statistics.median(math.log(v) for v in values if v is not None))
