"""The executor interface: where trials run, separate from which configuration runs next.

The stage runner submits :class:`TrialJob` objects and calls :meth:`Executor.poll`, which hands what
the trials report back to a :class:`TrialHandler` in the caller's thread. Only the caller touches
the storage, so the trials themselves need no database connection.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol

from hpsearch.train import DataConfig, TrainConfig, TrainResult


@dataclass(frozen=True)
class ExecutorSpec:
    """The ``executor:`` section of a study file, validated (by :mod:`hpsearch.spec`)."""

    kind: str = "local"
    workers: int = 1
    address: str | None = None  # ray: None starts an embedded Ray; "auto" or "HOST:PORT" joins a cluster
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    dashboard: bool = False  # ray: start Ray's web dashboard with the embedded Ray
    fuse: int = 1  # trials a worker trains at once as one batched model (hpsearch.train.fused)


@dataclass(frozen=True)
class TrialJob:
    """One trial to train. ``key`` identifies it in the handler's callbacks (the trial number)."""

    key: int
    config: TrainConfig
    data: DataConfig
    params: Mapping[str, Any] = field(default_factory=dict)  # the sampled parameters, for logs and reports


class TrialHandler(Protocol):
    """Receives what running trials report; called by :meth:`Executor.poll` in the caller's thread."""

    def on_report(self, key: int, epoch: int, metrics: Mapping[str, float]) -> bool:
        """An epoch finished; return True to stop the trial now (pruned)."""

    def on_result(self, key: int, result: TrainResult) -> None:
        """The trial finished training."""

    def on_error(self, key: int, message: str, detail: str, lost: bool = False) -> None:
        """The trial raised, or (``lost``) its worker died under it; ``detail`` holds a traceback when there is one.

        A lost trial did nothing wrong itself (a killed process, a node gone), so the caller may retry it.
        """

    def on_start(self, key: int, placement: Mapping[str, Any]) -> None:
        """Where the trial runs (host, node, GPU), known once the executor placed it."""


class Executor(ABC):
    """Runs up to :attr:`capacity` trials at once."""

    capacity: int

    @abstractmethod
    def running(self) -> int:
        """Number of submitted trials that have not finished."""

    def free_slots(self) -> int:
        return self.capacity - self.running()

    @abstractmethod
    def submit(self, job: TrialJob) -> None:
        """Start ``job``; requires a free slot."""

    @abstractmethod
    def poll(self, handler: TrialHandler, timeout: float) -> None:
        """Wait up to ``timeout`` seconds and dispatch every event that arrived to ``handler``."""

    @abstractmethod
    def close(self) -> None:
        """Stop all workers; trials still running are abandoned (the caller records them)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
