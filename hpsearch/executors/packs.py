"""Fused trials on the executors' side: grouping submitted trials into packs, and training a pack in a worker.

With ``executor.fuse: N`` a worker trains up to N trials of one fusion key at once
(:mod:`hpsearch.train.fused`). The executor keeps submitted trials until it can hand them out,
then gives each idle worker the largest group of one key (oldest first among equals); a trial that
cannot fuse goes alone. In the worker each member reports and ends on its own, exactly as a trial
trained alone does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import gc
import logging
from typing import Any, Protocol

from hpsearch.executors.base import TrialJob
from hpsearch.train import Dataset, TrainResult, train, train_folds
from hpsearch.train.data.folds import Folds
from hpsearch.train.fused import fusion_key, train_pack, unfused_reason

_logger = logging.getLogger(__name__)


class PackEvents(Protocol):
    """What a worker tells its executor about the members of the pack it trains."""

    def report(self, key: int, epoch: int, metrics: Mapping[str, float]) -> bool:
        """Member ``key`` ended an epoch; True: stop it (pruned)."""

    def report_many(self, reports: Sequence[tuple[int, int, Mapping[str, float]]]) -> list[bool]:
        """Several members ended an epoch, as (key, epoch, metrics); for each, True: stop it (pruned)."""

    def result(self, key: int, result: TrainResult) -> None:
        """Member ``key`` finished training."""


def next_pack(pending: Sequence[TrialJob], fuse: int) -> list[TrialJob]:
    """The trials to hand the next idle worker: up to ``fuse`` of the key most trials share.

    Among keys of equal count the one of the oldest trial goes first; a trial that cannot fuse goes
    alone, in its turn.
    """
    if not pending:
        return []
    if fuse <= 1:
        return [pending[0]]
    groups: dict[Any, list[TrialJob]] = {}
    for job in pending:
        key = fusion_key(job.config)
        groups.setdefault(("alone", job.key) if key is None else key, []).append(job)
    largest = max(groups.values(), key=len)  # max keeps the first of equals: the oldest trial's group
    return largest[:fuse]


class PackQueue:
    """Submitted trials waiting for a worker, handed out as packs (:func:`next_pack`).

    When fusing, the first trial that must train alone for a reason says why, in one line.
    """

    def __init__(self, fuse: int) -> None:
        self.fuse = fuse
        self._jobs: list[TrialJob] = []
        self._told: set[str] = set()

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: TrialJob) -> None:
        self._jobs.append(job)

    def clear(self) -> None:
        self._jobs.clear()

    def put_back(self, pack: Sequence[TrialJob]) -> None:
        """Wait again, first in line (``pack`` came from :meth:`take` and could not be handed out)."""
        self._jobs[:0] = pack

    def take(self) -> list[TrialJob]:
        """The next pack (empty when nothing waits), no longer waiting."""
        pack = next_pack(self._jobs, self.fuse)
        if self.fuse > 1:
            for reason in {r for job in pack if (r := unfused_reason(job.config)) is not None} - self._told:
                _logger.warning("%s", reason)
                self._told.add(reason)
        chosen = {job.key for job in pack}
        self._jobs = [job for job in self._jobs if job.key not in chosen]
        return pack


def train_jobs(jobs: Sequence[TrialJob], data: Dataset | Folds, events: PackEvents) -> None:
    """Train ``jobs``: one alone, or a pack of one fusion key, telling ``events`` as each member goes.

    With k-fold ``data`` a trial alone trains its folds in lockstep (:func:`train_folds`), and a pack
    of N trials is N x k stacked networks.

    A pack that runs out of GPU memory before any member reported is split in two and each half
    trained in turn, so its trials are not failed for it.
    """
    if len(jobs) == 1:
        key, config = jobs[0].key, jobs[0].config
        reporter = _Reporter(events, key)
        events.result(key, train_folds(config, data.datasets, reporter) if isinstance(data, Folds)
                      else train(config, data, reporter))
        return
    reported = [False]
    keys = [job.key for job in jobs]

    def report_epoch(items: Sequence[tuple[int, int, Mapping[str, float]]]) -> list[bool]:
        reported[0] = True  # one message for the pack's epoch: one round trip to the executor, not one a member
        return events.report_many([(keys[i], epoch, metrics) for i, epoch, metrics in items])

    try:
        train_pack([job.config for job in jobs], data, on_end=lambda i, result: events.result(keys[i], result),
                   report_epoch=report_epoch)
    except Exception as exc:
        if reported[0] or not _out_of_memory(exc):
            raise
        half = len(jobs) // 2
        _logger.info("a pack of %d trials ran out of GPU memory; training it as two packs of %d and %d",
                     len(jobs), half, len(jobs) - half)
        release_gpu_memory()
        train_jobs(jobs[:half], data, events)
        train_jobs(jobs[half:], data, events)


class _Reporter:
    def __init__(self, events: PackEvents, key: int) -> None:
        self._events, self._key = events, key

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        return self._events.report(self._key, epoch, metrics)


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def release_gpu_memory() -> None:
    """Free what finished trials held on the GPU: its tensors, cuBLAS's workspaces, the allocator's cache.

    cuBLAS keeps its workspaces (tens of MiB per GPU) in torch's allocator after a matrix product;
    they would be the next trial's memory at start and the other workers' loss on a shared GPU.
    """
    import torch

    if torch.cuda.is_initialized():
        gc.collect()  # tensors kept alive by reference cycles (a traceback's frames, a model's hooks)
        clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear_workspaces is not None:
            clear_workspaces()
        torch.cuda.empty_cache()
