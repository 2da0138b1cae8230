"""Local executor: ``workers`` long-lived processes on this machine, one trial each at a time.

Processes are spawned (not forked: the parent may hold threads and open database connections) and
kept for the whole run, so each pays for importing torch and loading the data once. A worker talks
to the parent over a pipe: it sends every epoch's metrics and waits for the word to go on or stop,
then sends the result. A worker that dies fails its trial and is replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
import multiprocessing
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
import os
import signal
import socket
import traceback
from typing import Any

from hpsearch.errors import HpsearchError
from hpsearch.executors.base import Executor, TrialHandler, TrialJob

_JOIN_S = 5.0


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    job: TrialJob | None = None


class LocalExecutor(Executor):
    """Runs trials in ``workers`` spawned processes; torch threads are split evenly between them."""

    def __init__(self, workers: int, threads_per_worker: int | None = None) -> None:
        self.capacity = workers
        self._threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []

    def running(self) -> int:
        return sum(w.job is not None for w in self._workers)

    def submit(self, job: TrialJob) -> None:
        worker = next((w for w in self._workers if w.job is None), None)
        if worker is None:
            if len(self._workers) >= self.capacity:
                raise RuntimeError("submit() needs a free slot")
            worker = self._start_worker()
        worker.job = job
        worker.conn.send(job)

    def poll(self, handler: TrialHandler, timeout: float) -> None:
        # A worker is ready when it sent something (its pipe) or when it died (its sentinel).
        waitables: dict[Any, _Worker] = {}
        for w in self._workers:
            if w.job is not None:
                waitables[w.conn] = waitables[w.process.sentinel] = w
        for ready in wait(list(waitables), timeout):
            worker = waitables[ready]
            if worker.job is not None:
                self._serve(worker, handler)

    def _serve(self, worker: _Worker, handler: TrialHandler) -> None:
        job = worker.job
        assert job is not None
        try:
            # Drain everything this worker has said; a report must be answered before it goes on.
            while worker.job is not None and (worker.conn.poll() or not worker.process.is_alive()):
                kind, *body = worker.conn.recv()
                if kind == "report":
                    worker.conn.send(handler.on_report(job.key, *body))
                    continue
                if kind == "start":
                    handler.on_start(job.key, body[0])
                    continue
                worker.job = None
                if kind == "result":
                    handler.on_result(job.key, body[0])
                else:
                    handler.on_error(job.key, body[0], body[1])
        except (EOFError, OSError):
            self._replace(worker)
            handler.on_error(job.key, f"worker process died (exit code {worker.process.exitcode})", "", lost=True)

    def _start_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child, self._threads), daemon=True, name="hpsearch-worker")
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self._workers.append(worker)
        return worker

    def _replace(self, worker: _Worker) -> None:
        worker.job = None
        worker.conn.close()
        worker.process.join(_JOIN_S)
        self._workers.remove(worker)

    def close(self) -> None:
        for w in self._workers:
            if w.job is None:
                try:
                    w.conn.send(None)  # ask an idle worker to leave
                except OSError:
                    pass
            else:
                w.process.terminate()  # a running trial is abandoned; the caller records it
        for w in self._workers:
            w.process.join(_JOIN_S)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(_JOIN_S)
            w.conn.close()
        self._workers.clear()


class _ParentGone(Exception):
    pass


class _PipeReporter:
    """The worker's side of a trial's reports: send the metrics, wait for go on / stop."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def report(self, epoch: int, metrics: Mapping[str, float]) -> bool:
        try:
            self._conn.send(("report", epoch, dict(metrics)))
            return bool(self._conn.recv())
        except (EOFError, OSError):
            raise _ParentGone from None


def _worker_main(conn: Connection, threads: int) -> None:
    # Ctrl-C reaches the whole process group; the parent alone decides what happens to trials.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from hpsearch.train import load_dataset, train

    torch.set_num_threads(threads)
    datasets: dict[Any, Any] = {}
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        try:
            conn.send(("start", {"worker_host": socket.gethostname(), "worker_pid": os.getpid()}))
            if job.data not in datasets:
                datasets.clear()  # one study, one dataset: keep memory flat
                datasets[job.data] = load_dataset(job.data)
            result = train(job.config, datasets[job.data], _PipeReporter(conn))
            message: tuple[Any, ...] = ("result", result)
        except _ParentGone:
            return
        except HpsearchError as exc:
            message = ("error", str(exc), "")
        except Exception as exc:  # noqa: BLE001 - any failure of user code fails only its trial
            message = ("error", f"{type(exc).__name__}: {exc}", traceback.format_exc())
        try:
            conn.send(message)
        except (EOFError, OSError):
            return
