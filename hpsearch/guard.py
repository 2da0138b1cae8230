"""A run on an embedded Ray node runs as the child of a small guard process.

Ray ends its driver process from C++, where no Python handler runs, when the node's object store goes
away under it: its agent or raylet killed, the machine out of memory. Such a run could neither say
why it ended nor fail its running trials. The guard starts the run as a child (in a session of its
own, so that Ctrl-C reaches the child once, through the guard; the child is killed with the guard),
forwards SIGINT and SIGTERM to it, and waits. When the child ends leaving trials RUNNING (it was killed, or Ray ended it), the guard
fails them as lost, as a later run would, and says so in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import contextlib
import ctypes
import os
import signal
import subprocess
import sys
from typing import Any, TextIO

import optuna

from hpsearch.errors import HpsearchError
from hpsearch.signals import on_stop_signals
from hpsearch.spec import StudySpec

GUARDED = "HPSEARCH_GUARDED"  # set in the child: it runs the study itself
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def needs_guard(spec: StudySpec, stdout: TextIO, stderr: TextIO) -> bool:
    """Whether ``hpsearch run`` should run ``spec`` under a guard: an embedded Ray node, a process of
    its own (not the in-process CLI of a test or the Python API), and not a guarded child already."""
    if spec.executor.kind != "ray" or spec.executor.address is not None or os.environ.get(GUARDED) == "1":
        return False
    if not sys.platform.startswith("linux"):
        return False  # the child could outlive a killed guard (no PR_SET_PDEATHSIG): run unguarded
    return stdout is sys.stdout and stderr is sys.stderr


def run_guarded(argv: Sequence[str], spec: StudySpec, storage: Callable[[], Any], stderr: TextIO) -> int:
    """Run ``hpsearch ARGV`` as a child and return its exit status; 1 when it ended leaving trials running.

    ``storage`` opens the study's storage, once the child is over (it may never have created it).
    """
    child = subprocess.Popen([sys.executable, "-m", "hpsearch", *argv], env={**os.environ, GUARDED: "1"},
                             start_new_session=True, preexec_fn=_die_with_parent)
    with _forwarding(child):
        code = child.wait()
    failed = _fail_left_running(spec, storage)
    if not failed and code >= 0:
        return code
    how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
    stderr.write(f"hpsearch: error: the run ended abruptly ({how}) with {failed} trial(s) running, now failed as "
                 "lost; if it ran Ray, its node may have died (an agent killed, or out of memory: see "
                 "/tmp/ray/session_latest/logs); run the same command again to resume\n")
    return 1


def _die_with_parent() -> None:
    """In the child, before it runs: a SIGKILL when the guard dies, so killing ``hpsearch run`` kills the run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@contextlib.contextmanager
def _forwarding(child: subprocess.Popen[bytes]) -> Iterator[None]:
    """SIGINT and SIGTERM to the guard go to the child (which stops cleanly; a second Ctrl-C forces it)."""

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    with on_stop_signals(forward):
        yield


def _fail_left_running(spec: StudySpec, open_storage: Callable[[], Any]) -> int:
    """Fail the trials of ``spec``'s stages whose run is gone (the child, by now); how many."""
    from hpsearch.stages import fail_abandoned

    try:
        storage = open_storage()
        names = {s.study_name for s in storage.get_all_studies()}
    except HpsearchError:
        return 0  # no storage (the child refused the study), or none reachable: nothing this guard can do
    failed = 0
    for stage in spec.stages:
        if spec.study_name(stage) in names:
            failed += len(fail_abandoned(optuna.load_study(study_name=spec.study_name(stage), storage=storage)))
    return failed
