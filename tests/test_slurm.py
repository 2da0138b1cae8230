"""``hpsearch submit --slurm``: the rendered script, its refusals, and real job arrays on a one-node SLURM.

The script tests need no SLURM (a fake ``sbatch`` on PATH stands in where one is called). The array
tests start a real slurmctld + slurmd on this machine (tests/slurm_cluster.py) and a study on the real
PostgreSQL; where either cannot be had they skip, except under ``HPSEARCH_REQUIRE_SERVICES=1`` (CI).
"""

from __future__ import annotations

from collections.abc import Iterator
import json
import os
from pathlib import Path
import re
import shlex
import socket
import subprocess
import sys
import time
from typing import Any
import uuid

import optuna
from optuna.trial import FrozenTrial, TrialState
import pytest
from sqlalchemy.engine import make_url

from hpsearch.errors import StorageError
from hpsearch.slurm import SlurmError, parse_options, render_script
from hpsearch.storage import open_storage
from tests.helpers import ROOT, base_study, cli, write_study
from tests.servers import POSTGRES, require_server, unavailable
from tests.slurm_cluster import ClusterUnavailable, SlurmCluster

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


# --- The script, without SLURM ---------------------------------------------------------------


def _render(*, study: str = "/work/s.yaml", overrides: tuple[str, ...] = (), **options: str) -> str:
    return render_script(study=study, name="cars", overrides=overrides, options=parse_options(**options),
                         python="/opt/py/bin/python", workdir="/work")


def _sbatch_lines(script: str) -> list[str]:
    return [line.removeprefix("#SBATCH ") for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_script_asks_for_the_options_given() -> None:
    script = _render(array="3", gpus_per_task="2", cpus_per_task="4", time="1:30:00", partition="gpu",
                     account="ml-lab", nodelist="node7")
    assert script.startswith("#!/bin/bash\n")
    lines = _sbatch_lines(script)
    for expected in ("--job-name=cars", "--array=0-2", "--chdir=/work", "--output=slurm-%A_%a.out", "--requeue",
                     "--signal=B:TERM@120", "--gpus-per-task=2", "--cpus-per-task=4", "--time=1:30:00",
                     "--partition=gpu", "--account=ml-lab", "--nodelist=node7"):
        assert expected in lines, (expected, lines)
    # The task runs hpsearch with this interpreter, hands SIGTERM on, and requeues itself when stopped.
    assert "\n/opt/py/bin/python -m hpsearch run /work/s.yaml &\n" in script
    assert "trap 'kill -TERM \"$child\" 2>/dev/null' TERM" in script
    assert 'task="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' in script
    assert ('if [ "$status" -eq 130 ] && [ "$(squeue -h -j "$task" -o %T 2>/dev/null)" = RUNNING ]; then\n'
            '  scontrol requeue "$task"') in script


def test_script_without_options_asks_only_for_the_array() -> None:
    lines = _sbatch_lines(_render(array="1"))
    assert "--array=0-0" in lines
    assert not [line for line in lines if re.match(r"--(gpus|cpus|time|partition|account|nodelist)", line)]


@pytest.mark.parametrize(("time", "lead"), [("60", 120), ("8", 120), ("2", 30), ("0:20", 5), ("1-00", 120)])
def test_the_signal_comes_before_the_time_limit(time: str, lead: int) -> None:
    assert f"--signal=B:TERM@{lead}" in _sbatch_lines(_render(array="2", time=time))


def test_paths_and_overrides_are_quoted_for_the_shell(tmp_path: Path) -> None:
    study = "/data/my studies/it's.yaml"
    overrides = ("name=a b", "space.lr.high=$(touch /tmp/pwned)", "stages.0.trials=3")
    script = _render(study=study, overrides=overrides, array="2")
    run_line = next(line for line in script.splitlines() if " -m hpsearch run " in line)
    argv = shlex.split(run_line.removesuffix(" &"))
    assert argv[argv.index("run") + 1:] == [study, "--set", "name=a b", "--set", "space.lr.high=$(touch /tmp/pwned)",
                                            "--set", "stages.0.trials=3"]
    done = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr


def test_a_working_directory_with_spaces_is_kept_together() -> None:
    script = render_script(study="/w d/s.yaml", name="cars", overrides=(), options=parse_options(array="1"),
                           python="/p", workdir="/w d")
    assert '--chdir="/w d"' in _sbatch_lines(script)


@pytest.mark.parametrize(("args", "message"), [
    (["--array", "0"], "--array 0: must be a whole number >= 1"),
    (["--array", "two"], "--array two: must be a whole number >= 1"),
    (["--array", "2", "--time", "1:xx"], "--time 1:xx: not a SLURM time limit; use MINUTES"),
    (["--array", "2", "--time", "0"], "--time 0: must be longer than 0"),
    (["--array", "2", "--gpus-per-task", "-1"], "--gpus-per-task -1: must be a whole number >= 0"),
    (["--array", "2", "--cpus-per-task", "0"], "--cpus-per-task 0: must be a whole number >= 1"),
    (["--array", "2", "--partition", "a b"], "--partition 'a b': must be a SLURM name"),
    (["--array", "2", "--nodelist", "n1,n2"], "--nodelist 'n1,n2': must be one node's host name"),
    (["--array", "2", "--set", "storage=postgresql://u:topsecret@127.0.0.1/db"],
     "--set storage=...: its password would be written into the job script; export HPSEARCH_STORAGE"),
    ([], "--array N is required"),
])
def test_bad_options_are_one_line(workdir: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str) -> None:
    monkeypatch.setenv("HPSEARCH_STORAGE", POSTGRES)
    path = write_study(workdir, base_study())
    code, out, err = cli("submit", str(path), "--slurm", "--dry-run", *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and message in err, err
    assert "topsecret" not in err and "Traceback" not in err


def test_submit_needs_a_scheduler(workdir: Path) -> None:
    code, _, err = cli("submit", str(write_study(workdir, base_study())), "--array", "2")
    assert code == 2 and err == "hpsearch: error: hpsearch submit needs a scheduler: add --slurm (the only one so far)\n"


def test_sqlite_is_refused_for_an_array_that_may_span_nodes(workdir: Path) -> None:
    path = write_study(workdir, base_study())  # storage: sqlite:///runs/cars.db
    code, out, err = cli("submit", str(path), "--slurm", "--array", "3", "--dry-run")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "SQLite on a network filesystem loses data; use PostgreSQL or MySQL" in err
    assert "--nodelist HOST" in err
    for allowed in (["--array", "1"], ["--array", "3", "--nodelist", "node7"]):
        code, out, err = cli("submit", str(path), "--slurm", "--dry-run", *allowed)
        assert code == 0, err
        assert out.startswith("#!/bin/bash\n")


def test_storage_from_the_environment_decides_and_its_password_stays_out(workdir: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_study(workdir, base_study())
    monkeypatch.setenv("HPSEARCH_STORAGE", "postgresql+psycopg2://bob:hunter2@db.example/hp")
    code, out, err = cli("submit", str(path), "--slurm", "--array", "4", "--dry-run")
    assert code == 0, err
    assert "hunter2" not in out and "db.example" not in out
    assert "--array=0-3" in _sbatch_lines(out)
    assert f"--chdir={workdir}" in _sbatch_lines(out)
    assert f"{shlex.quote(sys.executable)} -m hpsearch run {shlex.quote(str(path))} &" in out


def _fake_sbatch(directory: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> Path:
    """An ``sbatch`` first on PATH that runs ``body``; it records that it was called in ``called``."""
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\ncat > {directory / 'called'}\n{body}\n")
    sbatch.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return directory / "called"


def test_submit_prints_the_script_then_the_job_id(workdir: Path, tmp_path_factory: pytest.TempPathFactory,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    called = _fake_sbatch(tmp_path_factory.mktemp("fake"), monkeypatch, 'echo "4242;cluster"')
    path = write_study(workdir, base_study())
    code, out, err = cli("submit", str(path), "--slurm", "--array", "1")
    assert code == 0, err
    script, last = out.rsplit("\n", 2)[0] + "\n", out.splitlines()[-1]
    assert last == "submitted batch job 4242"
    assert called.read_text() == script


def test_a_failing_sbatch_is_one_line(workdir: Path, tmp_path_factory: pytest.TempPathFactory,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_sbatch(tmp_path_factory.mktemp("fake"), monkeypatch,
                 'echo "sbatch: error: invalid partition specified: gpu" >&2; exit 1')
    code, _, err = cli("submit", str(write_study(workdir, base_study())), "--slurm", "--array", "1")
    assert code == 2
    assert err == "hpsearch: error: sbatch failed (exit 1): sbatch: error: invalid partition specified: gpu\n"


def test_a_missing_sbatch_is_one_line(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(workdir / "nowhere"))
    code, out, err = cli("submit", str(write_study(workdir, base_study())), "--slurm", "--array", "1")
    assert code == 2 and out.startswith("#!/bin/bash")
    assert err.startswith("hpsearch: error: sbatch not found") and err.count("\n") == 1 and "--dry-run" in err


def test_a_broken_study_is_refused_before_anything_is_submitted(workdir: Path, tmp_path_factory: pytest.TempPathFactory,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    called = _fake_sbatch(tmp_path_factory.mktemp("fake"), monkeypatch, "echo 1")
    study = base_study()
    study["data"]["target"] = "Prise"
    code, out, err = cli("submit", str(write_study(workdir, study)), "--slurm", "--array", "1")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "target column 'Prise' is not in" in err
    assert not called.exists()


def test_options_are_parsed_once_into_a_frozen_value() -> None:
    options = parse_options(array="2", time="10")
    assert (options.array, options.time_s, options.signal_lead_s) == (2, 600, 120)
    with pytest.raises(AttributeError):
        options.array = 3  # type: ignore[misc]
    with pytest.raises(SlurmError, match="--array"):
        parse_options(array="-1")


# --- Real arrays on a one-node SLURM -----------------------------------------------------------


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    try:
        cluster = SlurmCluster.start()
    except (ClusterUnavailable, OSError, subprocess.SubprocessError) as exc:
        unavailable(f"no SLURM test cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def postgres() -> str:
    """The real PostgreSQL; its URL's password (ignored by trust authentication) must stay out of the script."""
    require_server(POSTGRES)
    return POSTGRES


def _submit(cluster: SlurmCluster, path: Path, workdir: Path, url: str, *args: str) -> str:
    """``hpsearch submit --slurm`` as a user runs it: a separate process with HPSEARCH_STORAGE set."""
    env = {**cluster.env, "PYTHONPATH": str(ROOT), "HPSEARCH_STORAGE": url}
    done = subprocess.run([sys.executable, "-m", "hpsearch", "submit", str(path), "--slurm", *args], cwd=workdir,
                          env=env, text=True, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    password = make_url(url).password
    assert not password or password not in done.stdout
    match = re.search(r"^submitted batch job (\d+)$", done.stdout, re.MULTILINE)
    assert match, done.stdout
    return match.group(1)


def _task_logs(workdir: Path, job: str, tasks: int) -> dict[int, str]:
    return {i: (workdir / f"slurm-{job}_{i}.out").read_text() for i in range(tasks)}


def _exits(log: str, job: str, task: int) -> list[int]:
    """Each start's exit status, as the task's own script reported it."""
    return [int(s) for s in re.findall(rf"^hpsearch-task {job}_{task} exit (\d+)$", log, re.MULTILINE)]


def _check_tasks_succeeded(workdir: Path, job: str, tasks: int) -> dict[int, str]:
    logs = _task_logs(workdir, job, tasks)
    for task, log in logs.items():
        exits = _exits(log, job, task)
        assert exits and exits[-1] == 0, f"task {task} of job {job}:\n{log}"
    return logs


def _check_stages(name: str, url: str, budgets: dict[str, int]) -> None:
    """Each stage has exactly its budget of finished trials, none RUNNING, no configuration twice."""
    for stage, budget in budgets.items():
        trials = optuna.load_study(study_name=f"{name}/{stage}", storage=url).get_trials()
        finished = [t for t in trials if t.state in FINISHED]
        assert len(finished) == budget, (stage, [(t.number, t.state.name) for t in trials])
        assert not [t.number for t in trials if t.state is TrialState.RUNNING], stage
        configs = [json.dumps(t.params, sort_keys=True) for t in finished]
        assert len(set(configs)) == len(configs), (stage, configs)


def _delete(name: str, url: str, stages: list[str]) -> None:
    for stage in stages:
        try:
            optuna.delete_study(study_name=f"{name}/{stage}", storage=url)
        except KeyError:
            pass


def _array_study(workdir: Path, name: str, stages: list[dict[str, Any]], epochs: int = 3) -> Path:
    study = base_study(name=name, stages=stages)
    study["train"] = {"epochs": epochs, "patience": None, "device": "cpu"}
    if epochs > 3:
        study["space"]["batch_size"]["choices"] = [8]  # more steps per epoch: a trial takes a few seconds
    study["executor"] = {"kind": "local", "workers": 1}
    return write_study(workdir, study)


@pytest.mark.timeout(600)
def test_an_array_of_two_runs_one_stage(slurm: SlurmCluster, postgres: str, workdir: Path) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    path = _array_study(workdir, name, [{"name": "coarse", "sampler": "random", "trials": 6}])
    try:
        job = _submit(slurm, path, workdir, postgres, "--array", "2", "--time", "10")
        slurm.wait_done(job, timeout=400)
        _check_tasks_succeeded(workdir, job, 2)
        _check_stages(name, postgres, {"coarse": 6})
    finally:
        _delete(name, postgres, ["coarse"])


@pytest.mark.timeout(600)
def test_an_array_of_three_finishes_a_two_stage_study(slurm: SlurmCluster, postgres: str, workdir: Path) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    stages = [{"name": "coarse", "sampler": "random", "trials": 8},
              {"name": "fine", "sampler": "tpe", "trials": 6, "narrow": {"top": 0.25}, "warm_start": 2}]
    path = _array_study(workdir, name, stages)
    try:
        job = _submit(slurm, path, workdir, postgres, "--array", "3")
        slurm.wait_done(job, timeout=500)
        _check_tasks_succeeded(workdir, job, 3)
        _check_stages(name, postgres, {"coarse": 8, "fine": 6})
        warm = [t for t in optuna.load_study(study_name=f"{name}/fine", storage=postgres).get_trials()
                if "warm_start_of" in t.user_attrs]
        assert len({t.user_attrs["warm_start_of"] for t in warm}) == len(warm) == 2
    finally:
        _delete(name, postgres, ["coarse", "fine"])


def _running_trial_of_a_task(cluster: SlurmCluster, job: str, name: str, url: str,
                             timeout: float = 240) -> tuple[FrozenTrial, str]:
    """A RUNNING trial and the array task (``JOB_TASK``) whose ``hpsearch run`` runs it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            storage = open_storage(url, create=False)
            trials = optuna.load_study(study_name=f"{name}/coarse", storage=storage).get_trials()
        except (StorageError, KeyError):  # no database or study yet
            trials = []
        for trial in trials:
            if trial.state is TrialState.RUNNING and "worker_pid" in trial.user_attrs:
                task = _array_task_of(trial.user_attrs.get("pid"), trial.user_attrs["worker_pid"])
                if task is not None and task.startswith(f"{job}_"):
                    return trial, task
        time.sleep(0.3)
    raise AssertionError(f"no trial of {name}/coarse seen running in a task of job {job}")


def _array_task_of(*pids: object) -> str | None:
    """``JOB_TASK`` from the environment of the run process (or of the worker's parent), on this machine."""
    candidates = [p for p in pids if isinstance(p, int)]
    for pid in list(candidates):
        try:
            candidates.append(int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]))
        except (OSError, ValueError, IndexError):
            pass
    for pid in candidates:
        try:
            environ = dict(item.split("=", 1) for item in
                           Path(f"/proc/{pid}/environ").read_text(errors="replace").split("\0") if "=" in item)
        except OSError:
            continue
        if "SLURM_ARRAY_JOB_ID" in environ and "SLURM_ARRAY_TASK_ID" in environ:
            return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return None


# --batch signals the task's script only, as SLURM's signal before the time limit does
# (--signal=B:TERM@...), and the script hands it on; --full signals hpsearch too. A plain
# `scancel --signal=TERM` reaches job steps only, and a task runs hpsearch in its batch step.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("scancel", [["--batch", "--signal=TERM"], ["--full", "--signal=TERM"]], ids=["batch", "full"])
def test_scancel_signal_term_mid_trial_loses_nothing(slurm: SlurmCluster, postgres: str, workdir: Path,
                                                     scancel: list[str]) -> None:
    name = f"t{uuid.uuid4().hex[:10]}"
    # Long enough trials (a few seconds) that the signal lands inside one.
    path = _array_study(workdir, name, [{"name": "coarse", "sampler": "random", "trials": 8}], epochs=60)
    try:
        job = _submit(slurm, path, workdir, postgres, "--array", "2")
        trial, task = _running_trial_of_a_task(slurm, job, name, postgres)
        slurm.run("scancel", *scancel, task)
        slurm.wait_done(job, timeout=450)
        logs = _check_tasks_succeeded(workdir, job, 2)
        index = int(task.split("_")[1])
        # The signalled task stopped with 130, requeued itself, and its next start exited 0.
        assert _exits(logs[index], job, index)[0] == 130, logs[index]
        assert logs[index].count(f"hpsearch-task {task} start ") == 2, logs[index]
        _check_stages(name, postgres, {"coarse": 8})
        stopped = optuna.load_study(study_name=f"{name}/coarse", storage=postgres).trials[trial.number]
        assert stopped.state is not TrialState.RUNNING
    finally:
        _delete(name, postgres, ["coarse"])


@pytest.mark.timeout(600)
def test_scancel_ends_a_task_for_good_and_leaves_nothing_running(slurm: SlurmCluster, workdir: Path) -> None:
    # SQLite is fine for one task; the run fails its trials when SLURM's SIGTERM arrives.
    path = _array_study(workdir, "cars", [{"name": "coarse", "sampler": "random", "trials": 8}], epochs=60)
    url = "sqlite:///runs/cars.db"
    job = _submit(slurm, path, workdir, url, "--array", "1")
    trial, task = _running_trial_of_a_task(slurm, job, "cars", url)
    slurm.run("scancel", job)
    slurm.wait_done(job, timeout=120)
    log = _task_logs(workdir, job, 1)[0]
    assert _exits(log, job, 0) == [130] and log.count("hpsearch-task ") == 2, log  # one start, not requeued
    trials = optuna.load_study(study_name="cars/coarse", storage=url).get_trials()
    assert not [t.number for t in trials if t.state is TrialState.RUNNING]
    assert trials[trial.number].state is TrialState.FAIL


@pytest.mark.timeout(600)
def test_ray_inside_an_allocation_runs_the_study_and_stops(slurm: SlurmCluster, workdir: Path) -> None:
    # One node here, so the head alone; the script starts a worker per further node the same way.
    path = _array_study(workdir, "cars", [{"name": "coarse", "sampler": "random", "trials": 4}])
    port = _free_port()
    env = {**slurm.env, "PYTHONPATH": str(ROOT), "HPSEARCH_PYTHON": sys.executable, "RAY_PORT": str(port),
           "RAY_HEAD_IP": "127.0.0.1"}
    env.pop("HPSEARCH_STORAGE", None)  # SQLite in the working directory: hpsearch, Ray's driver, is its only writer
    env.pop("RAY_AUTH_TOKEN", None)
    done = subprocess.run(["sbatch", "--parsable", "--nodes=1", str(ROOT / "scripts" / "slurm_ray.sh"), str(path),
                           "--set", "stages.0.trials=4"], cwd=workdir, env=env, text=True, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().split(";")[0]
    slurm.wait_done(job, timeout=400)
    log = (workdir / f"slurm-ray-{job}.out").read_text()
    assert "slurm_ray.sh: 1 Ray node(s) up" in log and "slurm_ray.sh: hpsearch exited with 0" in log, log
    trials = optuna.load_study(study_name="cars/coarse", storage="sqlite:///runs/cars.db").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert all("node_id" in t.user_attrs for t in trials)  # they ran on the Ray cluster's workers
    with pytest.raises(OSError):  # and the Ray head is gone
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
