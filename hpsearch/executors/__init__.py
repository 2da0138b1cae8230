"""Executor registry: ``executor.kind`` → a factory taking the number of workers."""

from __future__ import annotations

from collections.abc import Callable

from hpsearch.executors.base import Executor, TrialHandler, TrialJob
from hpsearch.executors.local import LocalExecutor

_REGISTRY: dict[str, Callable[[int], Executor]] = {"local": LocalExecutor}


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def make_executor(kind: str, workers: int) -> Executor:
    return _REGISTRY[kind](workers)


__all__ = ["Executor", "LocalExecutor", "TrialHandler", "TrialJob", "make_executor", "names"]
