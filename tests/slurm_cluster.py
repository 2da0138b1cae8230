"""A real single-node SLURM cluster on this machine, for the ``hpsearch submit --slurm`` tests.

Everything lives in one temporary folder: slurm.conf and cgroup.conf, the controller's state, the
node's spool, the logs, and a private munged with its own key and socket, so nothing under /etc or
/run is touched and a system SLURM or munge on the machine is left alone. Clients find the cluster
through ``SLURM_CONF``; jobs inherit it, so ``scontrol requeue`` inside a job reaches it too.
Debian's ``slurm-wlm`` and ``munge`` provide the daemons; the daemons run as root (``SlurmUser=root``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import os
from pathlib import Path
import re
import shutil
import socket
import subprocess
import tempfile
import time

_PROGRAMS = ("mungekey", "munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel")
# Daemons live in sbin, which a user's PATH may lack.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
_START_TIMEOUT_S = 60


class ClusterUnavailable(RuntimeError):
    """The daemons are missing or did not come up; the message says why (with their log's tail)."""


class SlurmCluster:
    """Start with :meth:`start`, stop with :meth:`stop`; :attr:`env` reaches it from a client or job."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.node = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.env: dict[str, str] = {**os.environ, "SLURM_CONF": str(self.conf), "PATH": _SEARCH_PATH}
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    @classmethod
    def start(cls) -> SlurmCluster:
        missing = [p for p in _PROGRAMS if shutil.which(p, path=_SEARCH_PATH) is None]
        if missing:
            raise ClusterUnavailable(f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)")
        if os.geteuid() != 0:
            raise ClusterUnavailable("the test cluster runs its daemons as root (SlurmUser=root); run the tests as root")
        cluster = cls(Path(tempfile.mkdtemp(prefix="hpsearch-slurm-")))
        try:
            cluster._write_config()
            cluster._start_daemons()
            cluster._wait_idle()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def run(self, *args: str, timeout: float = 30) -> str:
        """Run a SLURM client command against this cluster and return its stdout."""
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def wait_done(self, job_id: str, timeout: float) -> None:
        """Wait until no task of ``job_id`` is pending or running (requeued tasks included)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.run("squeue", "-h", "-j", job_id, "-o", "%i %t").strip():
                return
            time.sleep(1)
        queue = self.run("squeue", "-h", "-j", job_id, "-o", "%i %t %r")
        raise AssertionError(f"job {job_id} still queued after {timeout:.0f} s:\n{queue}")

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged (only the ones started here)."""
        if "slurmctld" in self._processes:
            try:
                self.run("scancel", "--user", str(os.geteuid()), timeout=10)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and self.run("squeue", "-h", timeout=10).strip():
                    time.sleep(0.5)
            except (RuntimeError, subprocess.TimeoutExpired):
                pass  # stopping anyway; a job's processes end with their slurmstepd
        for name in ("slurmd", "slurmctld", "munged"):
            process = self._processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 15) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def _write_config(self) -> None:
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir()
        (self.root / "munge").chmod(0o755)  # munged wants its socket's folder reachable by all
        ctld_port, slurmd_port = _free_port(), _free_port()
        cpus = os.cpu_count() or 1
        socket_path = self.root / "munge" / "munge.sock"
        # cred_expire also sets how long a requeued job waits before it may start again (120 s by default).
        settings: Mapping[str, object] = {
            "ClusterName": "hpsearchtest",
            "SlurmctldHost": f"{self.node}(127.0.0.1)",
            "SlurmctldPort": ctld_port,
            "SlurmdPort": slurmd_port,
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={socket_path},cred_expire=10",
            "StateSaveLocation": self.root / "state",
            "SlurmdSpoolDir": self.root / "spool",
            "SlurmctldPidFile": self.root / "slurmctld.pid",
            "SlurmdPidFile": self.root / "slurmd.pid",
            "SlurmctldLogFile": self.root / "log" / "slurmctld.log",
            "SlurmdLogFile": self.root / "log" / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
            "MpiDefault": "none",
            "SwitchType": "switch/none",
            "SchedulerType": "sched/builtin",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",
            "ReturnToService": 2,
            "MailProg": "/bin/true",
            "SlurmdTimeout": 300,
            "InactiveLimit": 0,
            "KillWait": 30,  # SLURM's default
            "MinJobAge": 600,  # finished jobs stay visible to scontrol for a while
            "NodeName": f"{self.node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
            # FORCE:4 lets up to four tasks share a core, so an array of 3 runs at once on two cores.
            "PartitionName": f"debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
        }
        self.conf.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        (self.root / "cgroup.conf").write_text(_cgroup_conf())

    def _start_daemons(self) -> None:
        munge = self.root / "munge"
        key = self.root / "munge.key"
        subprocess.run(["mungekey", "--create", f"--keyfile={key}"], env=self.env, check=True, capture_output=True)
        key.chmod(0o600)
        log = self.root / "log"
        # Foreground daemons stay children of this process, so stop() ends exactly these.
        self._spawn("munged", ["munged", "--foreground", "--force", f"--key-file={key}",
                               f"--socket={munge / 'munge.sock'}", f"--pid-file={munge / 'munged.pid'}",
                               f"--log-file={log / 'munged.log'}", f"--seed-file={munge / 'munged.seed'}"])
        self._wait_for(lambda: (munge / "munge.sock").exists(), "munged did not create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i"])
        self._wait_for(lambda: self._answers("scontrol", "ping"), "slurmctld does not answer scontrol ping")
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.node])

    def _wait_idle(self) -> None:
        self._wait_for(lambda: self._answers("sinfo", "-h", "-n", self.node, "-o", "%t", expect="idle"),
                       f"node {self.node} did not become idle")

    def _spawn(self, name: str, argv: list[str]) -> None:
        out = open(self.root / "log" / f"{name}.stdout", "wb")  # noqa: SIM115 - kept open for the daemon's life
        self._processes[name] = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                 stdin=subprocess.DEVNULL)

    def _answers(self, *args: str, expect: str | None = None) -> bool:
        try:
            done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=10, check=False)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0 and (expect is None or done.stdout.strip() == expect)

    def _wait_for(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            for name, process in self._processes.items():
                if process.poll() is not None:
                    raise ClusterUnavailable(f"{name} exited with {process.returncode}:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.5)
        raise ClusterUnavailable(f"{what} within {_START_TIMEOUT_S} s:\n{self.log_tail()}")


def _cgroup_conf() -> str:
    """No cgroups are used (proctrack/linuxproc, task/none); slurmd still loads a cgroup plugin.

    SLURM 23.02 and later can turn it off; 22.05 (Debian 12) cannot, and autodetect loads the one the
    machine has without touching it.
    """
    done = subprocess.run(["slurmd", "-V"], env={**os.environ, "PATH": _SEARCH_PATH}, capture_output=True, text=True,
                          check=False)
    match = re.search(r"(\d+)\.(\d+)", done.stdout)
    version = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    plugin = "disabled" if version >= (23, 2) else "autodetect"
    return f"CgroupPlugin={plugin}\nIgnoreSystemd=yes\nCgroupAutomount=no\n"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
