"""Executor registry: ``executor.kind`` → a factory taking the executor section of the study file."""

from __future__ import annotations

from collections.abc import Callable

from hpsearch.executors.base import Executor, ExecutorSpec, TrialHandler, TrialJob
from hpsearch.executors.local import LocalExecutor


def _local(spec: ExecutorSpec) -> Executor:
    return LocalExecutor(spec.workers, fuse=spec.fuse)


def _ray(spec: ExecutorSpec) -> Executor:
    from hpsearch.executors.ray_executor import RayExecutor  # imports ray: only when a study asks for it

    return RayExecutor(spec)


_REGISTRY: dict[str, Callable[[ExecutorSpec], Executor]] = {"local": _local, "ray": _ray}


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def make_executor(spec: ExecutorSpec) -> Executor:
    return _REGISTRY[spec.kind](spec)


__all__ = ["Executor", "ExecutorSpec", "LocalExecutor", "TrialHandler", "TrialJob", "make_executor", "names"]
