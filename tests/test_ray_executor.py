"""The Ray executor on a real Ray: an embedded local one, and a two-node cluster on loopback.

Runs go through the real CLI in a separate process, as a user runs them; the storage is read back
with Optuna. Nothing here mocks Ray.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import math
import os
from pathlib import Path
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import optuna
from optuna.trial import FrozenTrial, TrialState
import pytest

from hpsearch.errors import SpecError
from hpsearch.spec import parse_spec
from hpsearch.storage import open_storage
from tests.helpers import base_study, cli, cli_process, running_trial, start_run, write_study

STORAGE = "sqlite:///runs/cars.db"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def _ray_study(trials: int = 4, epochs: int = 6, **executor: object) -> dict[str, object]:
    study = base_study(executor={"kind": "ray", "workers": 2, **executor})
    study["stages"][0]["trials"] = trials
    study["train"] = {"epochs": epochs, "patience": None, "device": "cpu"}
    return study


def _slow_study(trials: int = 3) -> dict[str, object]:
    """Trials of a few seconds (300 epochs of batch 8), long enough to be caught running."""
    study = _ray_study(trials=trials, epochs=300)
    study["space"]["batch_size"]["choices"] = [8]  # type: ignore[index]
    return study


def _trials(storage: str = STORAGE) -> list[FrozenTrial]:
    try:
        return optuna.load_study(study_name="cars/coarse", storage=open_storage(storage)).get_trials()
    except KeyError:  # the run has not created the study yet
        return []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_embedded_ray_runs_the_study_records_every_curve_and_prunes(workdir: Path) -> None:
    study = _ray_study(trials=10, epochs=8)
    study["pruner"] = {"kind": "median", "startup_trials": 2}
    study["space"] = {"lr": {"type": "float", "low": 1e-5, "high": 0.3, "log": True}}  # with sgd, small lr is bad
    study["train"]["optimizer"] = "sgd"  # type: ignore[index]
    path = write_study(workdir, study)
    done = cli_process("run", str(path), cwd=workdir)
    assert done.returncode == 0, done.stderr
    trials = _trials()
    assert len(trials) == 10 and all(t.state in FINISHED for t in trials)
    for t in trials:
        curve = t.intermediate_values
        assert sorted(curve) == list(range(1, t.user_attrs["epochs_run"] + 1))  # every epoch, from 1
        assert t.user_attrs["worker_pid"] != t.user_attrs["pid"]  # trained on a worker, told by the driver
        assert t.user_attrs["node_id"] and t.user_attrs["gpus"] == []
        if t.state is TrialState.COMPLETE:
            assert t.value == pytest.approx(min(curve.values()))  # the best epoch's metric
    pruned = [t for t in trials if t.user_attrs["stop_reason"] == "pruned"]
    # The median pruner may stop a trial at any epoch, its last included; some stop early.
    assert pruned and all(t.state is TrialState.PRUNED for t in pruned)
    assert any(len(t.intermediate_values) < 8 for t in pruned)
    workers = min(2, os.cpu_count() or 1)  # a worker holds one CPU
    assert len({t.user_attrs["worker_pid"] for t in trials}) == workers  # kept for the whole run


def test_a_killed_worker_fails_its_trial_which_runs_again_and_the_stage_completes(workdir: Path) -> None:
    path = write_study(workdir, _slow_study(trials=3))
    process = start_run(path, workdir)
    victim = running_trial(process)
    os.kill(victim.user_attrs["worker_pid"], signal.SIGKILL)
    _, err = process.communicate(timeout=180)
    assert process.returncode == 0, err
    trials = {t.number: t for t in _trials()}
    lost = trials[victim.number]
    assert lost.state is TrialState.FAIL and "Ray worker running this trial died" in lost.user_attrs["fail_reason"]
    retries = [t for t in trials.values() if t.user_attrs.get("retry_of") == victim.number]
    assert len(retries) == 1 and retries[0].params == lost.params and retries[0].state in FINISHED
    assert retries[0].user_attrs["worker_pid"] != victim.user_attrs["worker_pid"]  # on the replacement worker
    assert sum(t.state in FINISHED for t in trials.values()) == 3  # the full budget
    assert not [t for t in trials.values() if t.state is TrialState.RUNNING]


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process under ``pid``, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            with contextlib.suppress(OSError):
                found.append((child, (Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode()))
                todo.append(child)
    return found


def test_a_dead_ray_node_ends_the_run_in_one_line_and_no_trial_stays_running(workdir: Path) -> None:
    # Its raylet killed, as the kernel's OOM killer may. (A killed agent takes the raylet with it too, but
    # then Ray itself ends this process at once, before hpsearch can see why: not covered yet.)
    victim = "raylet"
    path = write_study(workdir, _slow_study(trials=4))
    process = start_run(path, workdir)
    running_trial(process)
    killed = [pid for pid, command in _descendants(process.pid) if victim in command.split(" ", 1)[0]]
    assert killed, f"no {victim} process under the run"
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    _, err = process.communicate(timeout=180)
    ours = [line for line in err.splitlines() if line.startswith("hpsearch: error:")]
    assert process.returncode == 1, err
    assert len(ours) == 1 and "the local Ray node died" in ours[0] and "Traceback" not in err, err
    trials = _trials()
    assert trials and not [t for t in trials if t.state is TrialState.RUNNING]


def test_a_killed_ray_agent_ends_the_run_in_one_line_and_no_trial_stays_running(workdir: Path) -> None:
    """Ray ends its driver from C++ when an agent dies with the raylet: the guard process of hpsearch run
    (hpsearch.guard) fails the trials its child left running and says so."""
    path = write_study(workdir, _slow_study(trials=4))
    process = start_run(path, workdir)
    running_trial(process)
    # Ray names its agents' processes ray::DashboardAgent and ray::RuntimeEnvAgent.
    agents = [pid for pid, command in _descendants(process.pid) if command.startswith("ray::") and "Agent" in command]
    assert agents, [c for _, c in _descendants(process.pid)]
    for pid in agents:
        os.kill(pid, signal.SIGKILL)
    _, err = process.communicate(timeout=180)
    ours = [line for line in err.splitlines() if line.startswith("hpsearch: error:")]
    assert process.returncode == 1, err
    assert len(ours) == 1 and "Traceback" not in err, err
    assert "trial(s) running, now failed as lost" in ours[0] or "the local Ray node died" in ours[0], err
    trials = _trials()
    assert trials and not [t for t in trials if t.state is TrialState.RUNNING]
    assert all(t.user_attrs.get("lost") for t in trials if t.state is TrialState.FAIL)


def test_sigterm_stops_a_ray_run_cleanly_and_a_killed_run_resumes(workdir: Path) -> None:
    path = write_study(workdir, _slow_study(trials=3))
    process = start_run(path, workdir)
    running_trial(process)
    process.terminate()  # ray.init installs its own SIGTERM handler; the CLI's must still be the one that runs
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err and not [t for t in _trials() if t.state is TrialState.RUNNING]
    process = start_run(path, workdir)
    running_trial(process)
    process.kill()  # its embedded Ray goes with it; nothing of it may stop the next run
    process.communicate(timeout=30)
    done = cli_process("run", str(path), "--set", "train.epochs=3", "--force-resume", cwd=workdir)  # finish quickly
    assert done.returncode == 0, done.stderr
    trials = _trials()
    assert any("abandoned" in t.user_attrs.get("fail_reason", "") for t in trials)
    assert sum(t.state in FINISHED for t in trials) == 3
    assert not [t for t in trials if t.state is TrialState.RUNNING]


@pytest.fixture
def ray_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A head and a worker node, one CPU each, on this machine; stopped afterwards by their own processes only.

    ``ray stop`` would stop every Ray on the machine, an embedded one of another run included, so each
    node runs under ``ray start --block`` in a process group of its own, ended by SIGTERM (then SIGKILL).
    """
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the cluster's own token, not ~/.ray/auth_token
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    temp = tempfile.mkdtemp(prefix="hpr", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    address = f"127.0.0.1:{_free_port()}"
    ray = str(Path(sys.executable).with_name("ray"))
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", f"--temp-dir={temp}",
              "--disable-usage-stats", "--block"]
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        for name, args in (("head", ["--head", f"--port={address.split(':')[1]}", "--include-dashboard=false"]),
                           ("worker", [f"--address={address}"])):
            log = Path(temp) / f"{name}.log"
            with log.open("wb") as out:
                nodes.append(subprocess.Popen([ray, "start", *args, *common], stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
            _wait_for(lambda log=log: "Ray runtime started" in log.read_text(errors="replace"), f"ray {name} node", log)
        yield address
    finally:
        for node in nodes:
            node.terminate()
        for node in nodes:
            try:
                node.wait(timeout=40)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)  # whatever of this node is left, and nothing else
            node.wait()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for(condition: object, what: str, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not start: {log.read_text(errors='replace')[-2000:]}")


def test_a_study_with_an_address_runs_its_trials_on_both_nodes_of_a_cluster(workdir: Path, ray_cluster: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_study(workdir, _ray_study(trials=6, epochs=20, address=ray_cluster))
    done = cli_process("run", str(path), cwd=workdir)
    assert done.returncode == 0, done.stderr
    trials = _trials()
    assert len(trials) == 6 and all(t.state in FINISHED for t in trials)
    assert len({t.user_attrs["node_id"] for t in trials}) == 2  # one worker per one-CPU node
    # auto: the cluster RAY_ADDRESS names; a bigger budget resumes the stage there
    monkeypatch.setenv("RAY_ADDRESS", ray_cluster)
    done = cli_process("run", str(path), "--set", "executor.address=auto", "--set", "stages.0.trials=7", cwd=workdir)
    assert done.returncode == 0, done.stderr
    assert sum(t.state in FINISHED for t in _trials()) == 7


def test_an_unreachable_address_is_one_line_within_seconds(workdir: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"  # closed: nothing listens there now
    path = write_study(workdir, _ray_study(address=address))
    start = time.monotonic()
    done = cli_process("run", str(path), cwd=workdir, timeout=60)
    assert time.monotonic() - start < 15  # a hang check, not a speed claim
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [f"hpsearch: error: executor.address: no Ray head answers at {address} (Connection refused); "
                      "start one with ray start --head, or set address: null to let hpsearch start Ray here"]
    assert _trials() == []  # no trial was asked for


def test_an_address_that_is_not_a_ray_head_is_one_line_not_a_hang(workdir: Path) -> None:
    with socket.socket() as server:  # accepts connections and never answers, as a wrong service might
        server.bind(("127.0.0.1", 0))
        server.listen()
        threading.Thread(target=lambda: [server.accept() for _ in range(8)], daemon=True).start()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        path = write_study(workdir, _ray_study(address=address))
        start = time.monotonic()
        done = cli_process("run", str(path), cwd=workdir, timeout=90)
        assert time.monotonic() - start < 30
    assert done.returncode == 2
    assert f"hpsearch: error: executor.address: {address} accepts connections, but no Ray head answered" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_gpu_share_where_ray_finds_no_gpu_is_one_clear_line(workdir: Path) -> None:
    path = write_study(workdir, _ray_study(gpus_per_trial=0.25))
    code, _, err = cli("run", str(path))
    assert code == 2
    line = err.splitlines()[-1]
    assert line.startswith("hpsearch: error: executor: no Ray node can hold one worker with cpus_per_trial 1 "
                           "and gpus_per_trial 0.25 (nodes: ")
    assert line.endswith(" CPU 0 GPU); Ray finds no GPU, use gpus_per_trial: 0")


@pytest.mark.parametrize(("executor", "path", "message"), [
    ({"address": "head"}, "executor.address", "or HOST:PORT of a Ray head such as 10.0.0.5:6379, got 'head'"),
    ({"address": "10.0.0.5:99999"}, "executor.address", "got '10.0.0.5:99999'"),
    ({"address": 6379}, "executor.address", "got 6379"),
    ({"address": "auto", "dashboard": True}, "executor.dashboard", "a cluster's dashboard is its head's"),
    ({"gpus_per_trial": 1.5}, "executor.gpus_per_trial", "a fraction of one GPU such as 0.25, or a whole number"),
    ({"cpus_per_trial": 0}, "executor.cpus_per_trial", "must be > 0"),
])
def test_ray_executor_settings_are_checked_when_the_file_is_read(executor: dict[str, object], path: str,
                                                                 message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(base_study(executor={"kind": "ray", **executor}))
    assert caught.value.path == path and message in caught.value.message


def test_ray_settings_parse_into_the_executor_spec() -> None:
    spec = parse_spec(base_study(executor={"kind": "ray", "workers": 8, "address": " 10.0.0.5:6379 ",
                                           "gpus_per_trial": 0.25, "cpus_per_trial": 2})).executor
    assert (spec.kind, spec.workers, spec.address, spec.gpus_per_trial, spec.cpus_per_trial, spec.dashboard) == (
        "ray", 8, "10.0.0.5:6379", 0.25, 2.0, False)
    assert math.isclose(parse_spec(base_study(executor={"kind": "ray", "gpus_per_trial": 2})).executor.gpus_per_trial, 2)
