"""Local executor: ``workers`` long-lived processes on this machine, each training one trial at a time,
or with ``fuse: N`` a pack of up to N trials at once (:mod:`hpsearch.executors.packs`).

Processes are spawned (not forked: the parent may hold threads and open database connections) and
kept for the whole run, so each pays for importing torch and loading the data once. A worker talks
to the parent over a pipe: for each trial it trains it sends every epoch's metrics and waits for
the word to go on or stop, then sends the result. A worker that dies fails its trials and is replaced.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
from hpsearch.executors.packs import PackQueue

_JOIN_S = 5.0
_RETRY_UNSTARTED = 3  # workers in a row that die before their trials begin: then the trials fail as lost


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    jobs: dict[int, TrialJob] = field(default_factory=dict)  # the trials it trains, by key
    started: bool = False  # its trials have begun there (their "start" came back)


class LocalExecutor(Executor):
    """Runs trials in ``workers`` spawned processes; torch threads are split evenly between them.

    With ``fuse`` > 1 it holds up to ``workers * fuse`` trials: submitted trials wait until
    :meth:`poll`, which hands each idle worker a pack (see :func:`hpsearch.executors.packs.next_pack`).
    """

    def __init__(self, workers: int, threads_per_worker: int | None = None, fuse: int = 1) -> None:
        self.capacity = workers * fuse
        self._processes = workers
        self._fuse = fuse
        self._threads = threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
        self._ctx = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._pending = PackQueue(fuse)
        self._deaths_before_start = 0  # in a row: workers that cannot start at all fail their trials

    def running(self) -> int:
        return len(self._pending) + sum(len(w.jobs) for w in self._workers)

    def submit(self, job: TrialJob) -> None:
        if self.free_slots() <= 0:
            raise RuntimeError("submit() needs a free slot")
        self._pending.add(job)
        if self._fuse == 1:  # else at the next poll, once the caller has submitted all it can
            self._dispatch()

    def _dispatch(self) -> None:
        """Hand the waiting trials to idle workers, starting workers up to ``workers``."""
        dead = 0
        while self._pending:
            worker = next((w for w in self._workers if not w.jobs), None)
            if worker is None:
                if len(self._workers) >= self._processes:
                    return
                worker = self._start_worker()
            pack = self._pending.take()
            try:
                worker.conn.send(pack)
            except OSError:  # it died while idle (the OOM killer, a signal): a new one takes the pack
                self._pending.put_back(pack)
                self._replace(worker)
                dead += 1
                if dead > self._processes:  # not one worker stays alive: leave the trials waiting
                    return
                continue
            worker.jobs, worker.started = {job.key: job for job in pack}, False

    def poll(self, handler: TrialHandler, timeout: float) -> None:
        self._dispatch()
        # A worker is ready when it sent something (its pipe) or when it died (its sentinel).
        waitables: dict[Any, _Worker] = {}
        for w in self._workers:
            if w.jobs:
                waitables[w.conn] = waitables[w.process.sentinel] = w
        for ready in wait(list(waitables), timeout):
            worker = waitables[ready]
            if worker.jobs:
                self._serve(worker, handler)
        self._dispatch()

    def _serve(self, worker: _Worker, handler: TrialHandler) -> None:
        # Only the pipe's own errors mean the worker died: an OSError of the handler's (a full disk
        # while it writes) is the run's, and must not pass for a dead worker that took its trials along.
        try:
            # Drain everything this worker has said; a report must be answered before it goes on.
            while worker.jobs and (_pipe(worker.conn.poll) or not worker.process.is_alive()):
                kind, key, *body = _pipe(worker.conn.recv)
                if kind == "report":
                    answer = handler.on_report(key, *body)
                    _pipe(worker.conn.send, answer)
                elif kind == "reports":  # a pack's epoch: every member's report, one answer each
                    answers = [handler.on_report(*report) for report in body[0]]
                    _pipe(worker.conn.send, answers)
                elif kind == "start":
                    worker.started, self._deaths_before_start = True, 0
                    handler.on_start(key, body[0])
                elif kind == "result":
                    worker.jobs.pop(key)
                    handler.on_result(key, body[0])
                else:  # an error of one trial, or (key None) of the pack: every trial not ended yet
                    for failed in [key] if key is not None else list(worker.jobs):
                        worker.jobs.pop(failed)
                        handler.on_error(failed, body[0], body[1])
        except _WorkerGone:
            lost = list(worker.jobs)
            if not worker.started and self._deaths_before_start < _RETRY_UNSTARTED:
                # It died idle, before its new trials began (killed): another worker takes them.
                self._deaths_before_start += 1
                self._pending.put_back(list(worker.jobs.values()))
                lost = []
            self._replace(worker)
            for key in lost:
                handler.on_error(key, f"worker process died (exit code {worker.process.exitcode})", "", lost=True)

    def _start_worker(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=_worker_main, args=(child, self._threads), daemon=True, name="hpsearch-worker")
        process.start()
        child.close()
        worker = _Worker(process, parent)
        self._workers.append(worker)
        return worker

    def _replace(self, worker: _Worker) -> None:
        worker.jobs = {}
        worker.conn.close()
        worker.process.join(_JOIN_S)
        self._workers.remove(worker)

    def close(self) -> None:
        self._pending.clear()
        for w in self._workers:
            if not w.jobs:
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


class _WorkerGone(Exception):
    """The pipe to a worker broke: it died."""


def _pipe(call: Any, *args: Any) -> Any:
    """``call(*args)`` on a worker's pipe; its end (EOF, a broken pipe) as :class:`_WorkerGone`."""
    try:
        return call(*args)
    except (EOFError, OSError):
        raise _WorkerGone from None


class _PipeEvents:
    """The worker's side of its trials' reports: send the metrics, wait for go on / stop; send results."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def report(self, key: int, epoch: int, metrics: Mapping[str, float]) -> bool:
        try:
            self._conn.send(("report", key, epoch, dict(metrics)))
            return bool(self._conn.recv())
        except (EOFError, OSError):
            raise _ParentGone from None

    def report_many(self, reports: Any) -> list[bool]:
        try:
            self._conn.send(("reports", None, [(key, epoch, dict(metrics)) for key, epoch, metrics in reports]))
            return list(self._conn.recv())
        except (EOFError, OSError):
            raise _ParentGone from None

    def result(self, key: int, result: Any) -> None:
        try:
            self._conn.send(("result", key, result))
        except (EOFError, OSError):
            raise _ParentGone from None


def _worker_main(conn: Connection, threads: int) -> None:
    # Ctrl-C reaches the whole process group; the parent alone decides what happens to trials.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    from hpsearch.executors.packs import train_jobs
    from hpsearch.train.data import load_data

    torch.set_num_threads(threads)
    datasets: dict[Any, Any] = {}
    events = _PipeEvents(conn)
    while True:
        try:
            jobs = conn.recv()
        except (EOFError, OSError):
            return
        if jobs is None:
            return
        try:
            placement = {"worker_host": socket.gethostname(), "worker_pid": os.getpid(),
                         **({"pack": len(jobs)} if len(jobs) > 1 else {})}  # trained with pack - 1 others
            for job in jobs:
                conn.send(("start", job.key, placement))
            data = jobs[0].data
            if data not in datasets:
                datasets.clear()  # one study, one dataset: keep memory flat
                datasets[data] = load_data(data)  # a Dataset, or k-fold Folds
            train_jobs(jobs, datasets[data], events)
            continue
        except _ParentGone:
            return
        except HpsearchError as exc:
            message: tuple[Any, ...] = ("error", None, str(exc), "")
        except Exception as exc:  # noqa: BLE001 - any failure of user code fails only its trials
            message = ("error", None, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        try:
            conn.send(message)
        except (EOFError, OSError):
            return
