"""Starting or joining Ray for the Ray executor: within seconds, or one clear error instead of a hang.

``address: null`` starts an embedded Ray on this machine (``ray.init(address="local")``: never a
cluster that ``RAY_ADDRESS`` or an earlier ``ray start`` points to), without its web dashboard unless
asked. ``auto`` or ``HOST:PORT`` joins a running cluster: the address is first checked with a TCP
connect and a Ray client probe in a child process, both with short time limits, since ``ray.init``
itself retries an unreachable head for minutes.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
from dataclasses import dataclass
import logging
import math
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

import ray

from hpsearch.errors import ExecutorError
from hpsearch.executors.base import ExecutorSpec

_CONNECT_S = 3.0  # a TCP connect to the head's port
_PROBE_S = 10.0  # a Ray client in a child process must reach the head's GCS
_PROBE = "import sys; from ray._raylet import GcsClient; GcsClient(address=sys.argv[1])"
_TOKEN_HINT = ("; the cluster uses token authentication: export RAY_AUTH_MODE=token and its token "
               "(RAY_AUTH_TOKEN, or the file ~/.ray/auth_token)")


@dataclass
class RaySession:
    """This process's connection to Ray. ``owned``: made here, so :meth:`close` ends it."""

    owned: bool
    embedded: bool

    def close(self) -> None:
        """Stop the embedded Ray (or leave the cluster, which keeps running); idempotent."""
        if self.owned:
            self.owned = False
            if self.node_lost() is not None:
                _end_lost_node()
            ray.shutdown()

    def node_lost(self) -> str | None:
        """Why the embedded Ray node is gone (its raylet exited: killed, or out of memory), else None.

        Asked of the raylet process itself: Ray's own verdict comes only when this process next touches
        the node's object store, and then Ray ends this process at once (exit 1), with no word of why.
        """
        if not (self.owned and self.embedded):
            return None
        for info in _node_processes().get("raylet", []):
            code = info.process.poll()
            if code is not None:
                how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
                return f"its raylet {how}"
        return None


def _node_processes() -> dict[str, Any]:
    """The embedded node's processes by type, as Ray keeps them (a private attribute: empty if it moved)."""
    node = getattr(ray._private.worker, "_global_node", None)  # noqa: SLF001 - no public way to the raylet's pid
    return dict(getattr(node, "all_processes", None) or {})


def _end_lost_node() -> None:
    """Stop what is left of a node whose raylet died (GCS, agents, workers), without asking it anything."""
    node: Any = getattr(ray._private.worker, "_global_node", None)  # noqa: SLF001
    if node is not None:
        with contextlib.suppress(Exception):
            node.kill_all_processes(check_alive=False, allow_graceful=False)


def connect(spec: ExecutorSpec) -> RaySession:
    """Start the embedded Ray or join the cluster ``spec.address`` names; reuse a Ray this process already runs.

    Raises:
        ExecutorError: Ray did not start, or the cluster cannot be reached or joined.
    """
    if ray.is_initialized():  # the caller's own ray.init (a notebook, a script): theirs to end
        return RaySession(owned=False, embedded=False)
    with _keep_sigterm_handler():
        if spec.address is None:
            _start_embedded(spec.dashboard)
        else:
            _join(spec.address)
    return RaySession(owned=True, embedded=spec.address is None)


def worker_room(cpus: float, gpus: float) -> tuple[int, list[tuple[float, float]]]:
    """How many workers of ``cpus`` CPUs and ``gpus`` GPUs the live nodes hold at once, and each node's (CPU, GPU)."""
    room, nodes = 0, []
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            nodes.append((float(have.get("CPU", 0.0)), float(have.get("GPU", 0.0))))
    for cpu, gpu in nodes:
        fits = math.floor(cpu / cpus + 1e-9)
        room += min(fits, math.floor(gpu / gpus + 1e-9)) if gpus > 0 else fits
    return room, nodes


def describe(nodes: list[tuple[float, float]]) -> str:
    return "; ".join(f"{cpu:g} CPU {gpu:g} GPU" for cpu, gpu in nodes) or "none alive"


def _start_embedded(dashboard: bool) -> None:
    try:
        ray.init(address="local", include_dashboard=dashboard, configure_logging=False, log_to_driver=True,
                 logging_level=logging.WARNING)
    except Exception as exc:
        with contextlib.suppress(Exception):
            ray.shutdown()
        hint = "; Ray's dashboard needs pip install 'ray[default]'" if dashboard and "dashboard" in str(exc) else ""
        raise ExecutorError(f"executor: the local Ray did not start: {_one_line(exc)}{hint}") from exc


def _join(address: str) -> None:
    target = _resolve(address)
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=_CONNECT_S).close()
    except OSError as exc:
        raise ExecutorError(f"executor.address: no Ray head answers at {target} ({exc.strerror or exc}); start one "
                            "with ray start --head, or set address: null to let hpsearch start Ray here") from None
    _probe(target)
    try:
        ray.init(address=target, configure_logging=False, log_to_driver=True, logging_level=logging.WARNING)
    except Exception as exc:
        with contextlib.suppress(Exception):
            ray.shutdown()
        hint = _TOKEN_HINT if "token" in str(exc).lower() else ""
        raise ExecutorError(f"executor.address: joining the Ray cluster at {target} failed: {_one_line(exc)}{hint}") from exc


def _resolve(address: str) -> str:
    """``HOST:PORT`` as given, or for ``auto`` the cluster ``RAY_ADDRESS`` or this machine's ``ray start`` names."""
    if address != "auto":
        return address
    from ray._private import services

    try:
        return str(services.canonicalize_bootstrap_address_or_die("auto"))
    except Exception as exc:  # noqa: BLE001 - Ray says why in its own words
        raise ExecutorError(f"executor.address: auto found no Ray cluster ({_one_line(exc)}); join this machine to one "
                            "with ray start --address=HEAD:PORT, set RAY_ADDRESS, or set address: null") from None


def _probe(target: str) -> None:
    """Reach the head's GCS from a child process, which can be abandoned if it hangs; ray.init cannot."""
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, target], capture_output=True, text=True, timeout=_PROBE_S)
    except subprocess.TimeoutExpired:
        raise ExecutorError(f"executor.address: {target} accepts connections, but no Ray head answered within "
                            f"{_PROBE_S:g} s; is it the port of ray start --head (6379 by default)?") from None
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if "Error" in line]
        reason = lines[-1] if lines else f"exit status {done.returncode}"
        hint = _TOKEN_HINT if "token" in reason.lower() else ""
        raise ExecutorError(f"executor.address: cannot join the Ray cluster at {target}: {reason[:300]}{hint}")


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """ray.init installs its own SIGTERM handler (exit at once); the CLI's clean stop must stay in place."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()).rstrip(".")
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
