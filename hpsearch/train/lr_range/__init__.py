"""The learning-rate range test (Smith, "Cyclical Learning Rates for Training Neural Networks", 2017).

One short run per repeat raises the learning rate exponentially, one optimizer step per lr, while
recording the training loss; the usable range lies between where the loss falls fastest and where
it blows up. :func:`range_test` runs it for a trial's :class:`~hpsearch.train.TrainConfig` (its
model, optimizer and fixed knobs; its ``lr`` and schedule are replaced by the sweep) and returns a
:class:`RangeResult`: the curves and the suggested range, or no suggestion and a line saying why.
How the curves become a range is in :mod:`._analysis`.

Like the rest of the training core it imports neither optuna nor ray, and importing it does not
import torch: :func:`range_test` does, when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import time
from typing import TYPE_CHECKING

from hpsearch.train.lr_range._analysis import Finding, Suggestion, find, suggest
from hpsearch.train.lr_range._settings import MIN_STEPS, RangeSettings, parse_settings, watch_for

if TYPE_CHECKING:
    from hpsearch.train.config import TrainConfig
    from hpsearch.train.data import Dataset


@dataclass(frozen=True)
class RangeCurve:
    """One repeat: the lr and loss of every step it took (it stops at a nan/inf loss or one far above its minimum)."""

    seed: int
    lrs: tuple[float, ...]
    losses: tuple[float, ...]  # each step's batch loss before its update
    smoothed: tuple[float, ...]  # bias-corrected EMA of ``losses`` (inf where a loss was nan or inf)
    diverged: int | None  # the step it diverged at, or None (see hpsearch.train.lr_range._analysis)
    finding: Finding


@dataclass(frozen=True)
class RangeResult:
    """The test of one optimizer: every repeat's curve and the range they suggest (or why none)."""

    optimizer: str
    settings: RangeSettings
    curves: tuple[RangeCurve, ...]
    suggestion: Suggestion | None
    message: str  # how the range was found, or "no suggestion: ..." and what to change
    fused: bool  # the repeats ran as members of one stacked model
    duration_s: float


def curve(seed: int, settings: RangeSettings, losses: list[float]) -> RangeCurve:
    """Analyse one repeat's recorded ``losses``."""
    watch = watch_for(settings)
    for loss in losses:
        watch.add(loss)
    lrs = settings.lrs()[: len(losses)]
    diverged, finding = find(lrs, watch, settings.diverge_factor)
    return RangeCurve(seed, lrs, tuple(losses), tuple(watch.smoothed), diverged, finding)


def range_test(config: TrainConfig, data: Dataset, settings: RangeSettings, *, fuse: bool = False) -> RangeResult:
    """Sweep ``settings``' learning rates ``settings.repeats`` times, repeat r from seed ``config.seed + r``.

    With ``fuse`` and a config that fuses (:func:`hpsearch.train.fused.fusion_key`), the repeats train
    as members of one stacked model; otherwise one after another.
    """
    return range_tests([config], data, settings, fuse=fuse)[0]


def range_tests(configs: Sequence[TrainConfig], data: Dataset, settings: RangeSettings, *,
                fuse: bool = False) -> list[RangeResult]:
    """:func:`range_test` of each config (an optimizer choice each, say), in order.

    With ``fuse``, the repeats of every config that fuses, of whatever optimizer kind, train as the
    members of one stacked model when their structure is the same (:func:`._sweep.mixable`); a
    fused result's ``duration_s`` is its pack's.
    """
    from hpsearch.train.lr_range import _sweep

    keys = [_sweep.mixable(config) if fuse else None for config in configs]  # None: trains alone
    packs: dict[object, list[int]] = {}
    for i, key in enumerate(keys):
        packs.setdefault(("alone", i) if key is None else key, []).append(i)
    results: dict[int, RangeResult] = {}
    for index in packs.values():
        start = time.perf_counter()
        members = [(configs[i], configs[i].seed + r) for i in index for r in range(settings.repeats)]
        fused = len(members) > 1 and keys[index[0]] is not None
        runs = (_sweep.sweep_fused(members, data, settings) if fused
                else [_sweep.sweep(config, data, settings, seed) for config, seed in members])
        duration = time.perf_counter() - start
        for n, i in enumerate(index):
            seeds = [seed for _, seed in members[n * settings.repeats: (n + 1) * settings.repeats]]
            mine = runs[n * settings.repeats: (n + 1) * settings.repeats]
            curves = tuple(curve(seed, settings, losses) for seed, losses in zip(seeds, mine, strict=True))
            suggestion, message = suggest([c.finding for c in curves], settings.max_lr, settings.diverge_factor)
            results[i] = RangeResult(configs[i].optimizer.name, settings, curves, suggestion, message, fused, duration)
    return [results[i] for i in range(len(configs))]


__all__ = ["MIN_STEPS", "Finding", "RangeCurve", "RangeResult", "RangeSettings", "Suggestion", "curve",
           "parse_settings", "range_test", "range_tests", "suggest"]
