"""The Ray actor that trains trials: one trial, or one pack of fused trials, at a time, in a thread,
talking to the driver by return values.

The driver keeps exactly one call outstanding per busy actor. :meth:`TrialWorker.start` launches
the trials and answers at once with where they run; each :meth:`TrialWorker.step` hands the training
thread the driver's answer to its last report (go on or stop) and returns the thread's next event:

- ``("report", key, epoch, metrics)``: an epoch of trial ``key`` ended; the next ``step`` carries the answer;
- ``("reports", None, [(key, epoch, metrics), ...])``: an epoch of a pack ended; the next ``step`` carries
  an answer for each;
- ``("result", key, TrainResult)`` or ``("error", key, message, traceback)``: trial ``key`` is over
  (``key`` None: every trial of the pack not over yet);
- ``("done",)``: every trial started is over.

GPU memory is given back after every trial, so a trial never starts on memory an earlier one held.
This module imports Ray only inside methods: it is loaded by Ray workers, and by the driver only
when the executor's kind is ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import os
import queue
import socket
import sys
import threading
import traceback
from typing import Any

from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.executors.base import TrialJob
from hpsearch.executors.packs import release_gpu_memory

Event = tuple[Any, ...]


class TrialWorker:
    """Trains the trials the driver starts on it; Ray runs it as an actor holding its CPUs and GPU share.

    Args:
        cwd: The driver's working directory: user modules (``model: {python: ...}``) import from it
            when it exists on this node.
        paths: The driver's ``sys.path`` entries; those that exist here are appended to this process's.
        threads: Torch CPU threads for a trial.
        hide_gpus: Make CUDA devices invisible (no GPU was given to this worker; Ray leaves them visible).
    """

    def __init__(self, cwd: str, paths: Sequence[str], threads: int, hide_gpus: bool) -> None:
        if os.path.isdir(cwd):
            os.chdir(cwd)
        sys.path.extend(p for p in paths if p not in sys.path and os.path.isdir(p))
        self._gpus = not hide_gpus
        if hide_gpus:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initializes CUDA
        import torch

        torch.set_num_threads(threads)
        self._events: queue.Queue[Event] = queue.Queue()
        self._answers: queue.Queue[bool | list[bool]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._datasets: dict[Any, Any] = {}

    def placement(self) -> dict[str, Any]:
        """Where this worker runs: answered once it is up, so the driver knows it is ready."""
        import ray

        return {
            "worker_host": socket.gethostname(),
            "worker_pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address(),
            "gpus": [str(g) for g in ray.get_gpu_ids()],
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        }

    def start(self, jobs: Sequence[TrialJob], data: Sequence[Any]) -> Event:
        """Start training ``jobs`` (one trial, or a pack of one fusion key) on the dataset ``data[0]`` (an
        object reference, fetched once per dataset)."""
        if self._thread is not None:
            return ("error", None, "internal: trials started on a busy worker", "")
        try:
            dataset = self._dataset(jobs[0], data[0])
        except Exception as exc:  # noqa: BLE001 - a dataset that cannot be read here fails its trials
            return ("error", None, f"loading the data on the Ray worker failed: {type(exc).__name__}: {exc}",
                    traceback.format_exc())
        where = _cuda_memory() if self._gpus else {}
        self._thread = threading.Thread(target=self._train, args=(jobs, dataset), daemon=True,
                                        name=f"trial-{jobs[0].key}")
        self._thread.start()
        return ("start", {**where, **({"pack": len(jobs)} if len(jobs) > 1 else {})})

    def step(self, answer: bool | list[bool] | None) -> Event:
        """Pass ``answer`` (stop?) to the last report, then wait for the training thread's next event."""
        if answer is not None:
            self._answers.put(answer)
        event = self._events.get()
        if event[0] == "done" or (event[0] == "error" and event[1] is None):
            if self._thread is not None:
                self._thread.join()
                self._thread = None
        return event

    def _dataset(self, job: TrialJob, ref: Any) -> Any:
        if job.data not in self._datasets:
            import ray

            self._datasets.clear()  # one study, one dataset: keep memory flat
            self._datasets[job.data] = ray.get(ref)
        return self._datasets[job.data]

    def _train(self, jobs: Sequence[TrialJob], dataset: Any) -> None:
        from hpsearch.executors.packs import train_jobs

        event: Event = ("done",)
        try:
            device = jobs[0].config.device
            if device.startswith("cuda") and not self._gpus:
                raise ConfigError("device", f"{device} needs a GPU, but this Ray worker was given none; "
                                            "set executor.gpus_per_trial (such as 1 or 0.25), or device auto or cpu")
            train_jobs(jobs, dataset, _QueueEvents(self._events, self._answers))
        except HpsearchError as exc:
            event = ("error", None, str(exc), "")
        except Exception as exc:  # noqa: BLE001 - any failure of user code (CUDA out of memory too) fails only its trials
            event = ("error", None, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        release_gpu_memory()
        self._events.put(event)


class _QueueEvents:
    """The training thread's side of its trials' reports: post the metrics, wait for the driver's answer."""

    def __init__(self, events: queue.Queue[Event], answers: queue.Queue[bool | list[bool]]) -> None:
        self._events, self._answers = events, answers

    def report(self, key: int, epoch: int, metrics: Mapping[str, float]) -> bool:
        self._events.put(("report", key, epoch, {k: float(v) for k, v in metrics.items()}))
        return bool(self._answers.get())

    def report_many(self, reports: Sequence[tuple[int, int, Mapping[str, float]]]) -> list[bool]:
        self._events.put(("reports", None, [(key, epoch, {k: float(v) for k, v in metrics.items()})
                                            for key, epoch, metrics in reports]))
        answers = self._answers.get()
        return answers if isinstance(answers, list) else [answers] * len(reports)

    def result(self, key: int, result: Any) -> None:
        self._events.put(("result", key, result))


def _cuda_memory() -> dict[str, int]:
    """Bytes of CUDA memory this process's tensors hold, and its allocator keeps, now (0 before CUDA is used)."""
    import torch

    if not torch.cuda.is_initialized():
        return {"cuda_memory_at_start": 0, "cuda_reserved_at_start": 0}
    devices = range(torch.cuda.device_count())
    return {"cuda_memory_at_start": sum(torch.cuda.memory_allocated(d) for d in devices),
            "cuda_reserved_at_start": sum(torch.cuda.memory_reserved(d) for d in devices)}
