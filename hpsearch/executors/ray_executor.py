"""Ray executor: trials on long-lived Ray actors, in an embedded local Ray or on a cluster.

Each worker is a :class:`~hpsearch.executors.ray_worker.TrialWorker` actor holding
``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs: Ray sets ``CUDA_VISIBLE_DEVICES`` so it sees
only the GPU it was given, and fractions pack several workers onto one GPU. There are as many
workers as ``workers`` asks for and the nodes hold at once.

The driver alone touches the storage. It keeps one call outstanding per busy worker and waits on
all of them at once: a trial's ``start`` answers where it runs, each ``step`` its next report
(answered go on / stop by the handler, so pruning decides in the driver from the shared storage),
then its result or error. With ``fuse: N`` a worker trains a pack of up to N trials at once
(:mod:`hpsearch.executors.packs`), its members reporting and ending one by one the same way. The driver loads each dataset once and puts it in Ray's object store, so
nodes need no data files. A worker that dies under a trial (killed, node lost) reports the trial
lost, so the stage retries it, and is replaced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import logging
import os
import sys
import time
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from hpsearch.errors import ExecutorError, RunAbortedError
from hpsearch.executors.base import Executor, ExecutorSpec, TrialHandler, TrialJob
from hpsearch.executors.packs import PackQueue
from hpsearch.executors.ray_cluster import RaySession, connect, describe, worker_room
from hpsearch.executors.ray_worker import TrialWorker
from hpsearch.train import DataConfig
from hpsearch.train.data import load_data

_log = logging.getLogger(__name__)
# Trials waiting while no worker is up (all died, none can be placed again) for this long end the run.
_NO_WORKER_S = 300.0
_RETRY_UNSTARTED = 3  # workers in a row that die before their trials begin: then the trials fail as lost
# After a worker dies, how long the embedded node is watched: a raylet whose agent died exits a moment
# after its workers.
_NODE_GRACE_S = 3.0


@dataclass
class _Worker:
    handle: Any  # the actor
    probe: Any  # placement() until the worker is up, then None
    placement: dict[str, Any] = field(default_factory=dict)
    jobs: dict[int, TrialJob] = field(default_factory=dict)  # the trials it trains, by key
    call: Any = None  # the outstanding start() or step() of its trials
    started: bool = False  # its trials have begun there (their "start" came back)


class RayExecutor(Executor):
    """Runs trials on Ray actors; see the module docstring.

    Raises:
        ExecutorError: Ray did not start or its cluster cannot be joined, or no node can hold one worker.
    """

    def __init__(self, spec: ExecutorSpec) -> None:
        self._spec = spec
        self._session: RaySession = connect(spec)
        self._workers: list[_Worker] = []
        self._waiting = PackQueue(spec.fuse)
        self._deaths_before_start = 0  # in a row: workers that cannot start at all fail their trials
        self._data: dict[DataConfig, Any] = {}
        self._last_up = time.monotonic()
        try:
            room = self._room()
            self.capacity = room * spec.fuse
            self._actor = ray.remote(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial,
                                     max_restarts=0)(TrialWorker)
            self._workers = [self._new_worker() for _ in range(room)]
        except BaseException:
            self.close()
            raise

    def _room(self) -> int:
        spec = self._spec
        room, nodes = worker_room(spec.cpus_per_trial, spec.gpus_per_trial)
        need = f"cpus_per_trial {spec.cpus_per_trial:g} and gpus_per_trial {spec.gpus_per_trial:g}"
        if room == 0:
            hint = "; Ray finds no GPU, use gpus_per_trial: 0" if spec.gpus_per_trial > 0 and not any(g for _, g in nodes) else ""
            raise ExecutorError(f"executor: no Ray node can hold one worker with {need} (nodes: {describe(nodes)}){hint}")
        if room < spec.workers:
            _log.warning("executor.workers: %d asked for, but the Ray nodes (%s) hold %d at once with %s; running %d",
                         spec.workers, describe(nodes), room, need, room)
        return min(spec.workers, room)

    def _new_worker(self) -> _Worker:
        handle: Any = self._actor.remote(os.getcwd(), list(sys.path), max(1, int(self._spec.cpus_per_trial)),
                                    self._spec.gpus_per_trial == 0)
        return _Worker(handle, handle.placement.remote())

    def running(self) -> int:
        return len(self._waiting) + sum(len(w.jobs) for w in self._workers)

    def submit(self, job: TrialJob) -> None:
        if self.running() >= self.capacity:
            raise RuntimeError("submit() needs a free slot")
        self._waiting.add(job)
        if self._spec.fuse == 1:  # else at the next poll, once the caller has submitted all it can
            self._dispatch()

    def _dispatch(self) -> None:
        """Start waiting trials on workers that are up and idle, a pack each when fusing."""
        for worker in self._workers:
            if not self._waiting:
                return
            if worker.probe is None and not worker.jobs:
                pack = self._waiting.take()
                worker.jobs, worker.started = {job.key: job for job in pack}, False
                worker.call = worker.handle.start.remote(pack, [self._dataset(pack[0].data)])

    def _dataset(self, data: DataConfig) -> Any:
        """The object reference of ``data``, loaded here and put in the object store once."""
        if data not in self._data:
            self._data.clear()  # one study, one dataset
            self._data[data] = ray.put(load_data(data))  # a Dataset, or k-fold Folds
        return self._data[data]

    def poll(self, handler: TrialHandler, timeout: float) -> None:
        # Answer reports as they come until a trial ends (the caller then starts the next) or time is up.
        self._check_node()
        self._dispatch()
        deadline = time.monotonic() + timeout
        while True:
            pending = {w.call: w for w in self._workers if w.call is not None}
            probes = {w.probe: w for w in self._workers if w.probe is not None}
            refs = [*pending, *probes]
            if not refs:
                self._check_waiting()
                return
            ready, _ = ray.wait(refs, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if ready:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            ended = False
            for ref in ready:
                if ref in probes:
                    self._worker_up(probes[ref])
                else:
                    ended |= self._serve(pending[ref], ref, handler)
            self._dispatch()
            if not ready:
                self._check_waiting()
            if ended or time.monotonic() >= deadline:
                return

    def _worker_up(self, worker: _Worker) -> None:
        try:
            worker.placement = ray.get(worker.probe)
            worker.probe = None
            self._last_up = time.monotonic()
        except RayError as exc:  # it could not start: hpsearch missing on its node, a broken environment
            self._workers.remove(worker)
            self.capacity -= 1
            if self.capacity == 0:
                raise ExecutorError(f"executor: no Ray worker could start: {_reason(exc)}") from None

    def _serve(self, worker: _Worker, ref: Any, handler: TrialHandler) -> bool:
        """Handle one event of ``worker``'s trials and make its next call; True when a trial ended."""
        try:
            event = ray.get(ref)
        except RayActorError as exc:
            self._check_node(_NODE_GRACE_S)  # its node may be dying with it: replacing it would end this process
            where = f"worker_pid {worker.placement.get('worker_pid')} on node {str(worker.placement.get('node_id'))[:12]}"
            lost = list(worker.jobs)
            if not worker.started and self._deaths_before_start < _RETRY_UNSTARTED:
                # It died idle, before its new trials began (killed): another worker takes them.
                self._deaths_before_start += 1
                self._waiting.put_back(list(worker.jobs.values()))
                lost = []
            self._replace(worker)
            for key in lost:
                handler.on_error(key, f"the Ray worker running this trial died ({where}): {_reason(exc)}", "", lost=True)
            return bool(lost)
        except RayError as exc:  # the call itself failed there, e.g. the job could not be unpickled
            failed, worker.jobs, worker.call = list(worker.jobs), {}, None
            for key in failed:
                handler.on_error(key, f"the Ray worker could not run this trial: {_reason(exc)}", str(exc))
            return True
        kind = event[0]
        if kind == "start":
            worker.started, self._deaths_before_start = True, 0
            for key in worker.jobs:
                handler.on_start(key, {**worker.placement, **event[1]})
            worker.call = worker.handle.step.remote(None)
            return False
        if kind == "report":
            worker.call = worker.handle.step.remote(bool(handler.on_report(event[1], event[2], event[3])))
            return False
        if kind == "reports":  # a pack's epoch: every member's report, one answer each
            worker.call = worker.handle.step.remote([bool(handler.on_report(*report)) for report in event[2]])
            return False
        if kind == "result":
            worker.jobs.pop(event[1])
            handler.on_result(event[1], event[2])
            worker.call = worker.handle.step.remote(None)
            return True
        if kind == "error" and event[1] is not None:
            worker.jobs.pop(event[1])
            handler.on_error(event[1], event[2], event[3])
            worker.call = worker.handle.step.remote(None)
            return True
        # "done", or an error of every trial not over yet: the worker is free.
        remaining, worker.jobs, worker.call = list(worker.jobs), {}, None
        for key in remaining:
            if kind == "error":
                handler.on_error(key, event[2], event[3])
            else:
                handler.on_error(key, "internal: the Ray worker ended its trials without a result for this one", "")
        return True

    def _check_node(self, grace_s: float = 0.0) -> None:
        """End the run in one line when the embedded node died (watched for ``grace_s``): the caller then
        fails its trials as lost. Ray would end this process at its next use of the dead node's object store."""
        why = self._session.node_lost()
        deadline = time.monotonic() + grace_s
        while why is None and time.monotonic() < deadline and self._session.embedded:
            time.sleep(0.1)
            why = self._session.node_lost()
        if why is not None:
            raise RunAbortedError(f"executor: the local Ray node died ({why}: killed, or the machine ran out of "
                                f"memory); its trials are failed as lost: run the same command again to resume")

    def _replace(self, worker: _Worker) -> None:
        try:
            ray.kill(worker.handle, no_restart=True)
        except RayError:
            pass  # gone already
        self._workers[self._workers.index(worker)] = self._new_worker()

    def _check_waiting(self) -> None:
        """Trials wait, no worker is up and none has come up for a long time: end the run rather than hang."""
        if any(w.probe is None for w in self._workers):
            self._last_up = time.monotonic()
        elif self._waiting and time.monotonic() - self._last_up > _NO_WORKER_S:
            _, nodes = worker_room(self._spec.cpus_per_trial, self._spec.gpus_per_trial)
            raise ExecutorError(f"executor: no Ray worker has been up for {_NO_WORKER_S:g} s while trials wait; "
                                f"the nodes now: {describe(nodes)}")

    def close(self) -> None:
        for worker in self._workers:
            try:
                ray.kill(worker.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - Ray may be half gone already (interrupted, node lost)
                pass
        self._workers.clear()
        self._waiting.clear()
        self._data.clear()
        self._session.close()


def _reason(exc: BaseException) -> str:
    """The first line of a Ray error that says something (Ray's messages run over many lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]
