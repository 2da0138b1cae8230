"""SLURM job arrays: ``hpsearch submit STUDY.yaml --slurm --array N``.

Every array task runs ``hpsearch run`` on the same study and shared storage, so N tasks work as one
run. SLURM is asked for SIGTERM shortly before the time limit; ``hpsearch run`` then fails its
running trials as interrupted and exits 130, and the task requeues itself so its next start resumes
the study. Nothing here imports Optuna or talks to the database: the options are parsed once
(:func:`parse_options`), the script is a pure function of them (:func:`render_script`), and
:func:`submit` hands it to ``sbatch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import re
import shlex
import subprocess

from sqlalchemy.engine import make_url
import sqlalchemy.exc

from hpsearch.errors import HpsearchError

# Time to fail the running trials and exit before the limit (SLURM may signal up to a minute earlier
# still); a time limit under 8 minutes gets a quarter of it instead.
SIGNAL_LEAD_S = 120
# `hpsearch run` exits with this after SIGTERM (cli.EXIT_INTERRUPTED); the task requeues on it.
EXIT_INTERRUPTED = 130
_SBATCH_TIMEOUT_S = 60
# sbatch's own --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S.
_TIME = re.compile(r"^(?:(?P<d>\d+)-(?P<dh>\d+)(?::(?P<dm>\d+)(?::(?P<ds>\d+))?)?"
                   r"|(?P<a>\d+)(?::(?P<b>\d+)(?::(?P<c>\d+))?)?)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TIME_FORMATS = "MINUTES, MINUTES:SECONDS, HOURS:MINUTES:SECONDS, DAYS-HOURS, DAYS-HOURS:MINUTES or DAYS-HOURS:MINUTES:SECONDS"


class SlurmError(HpsearchError):
    """A ``submit --slurm`` option is invalid, the study cannot run as an array, or sbatch failed."""


@dataclass(frozen=True)
class SlurmOptions:
    """What ``hpsearch submit --slurm`` asks SLURM for; built by :func:`parse_options`."""

    array: int
    gpus_per_task: int = 0
    cpus_per_task: int | None = None
    time: str | None = None
    time_s: int | None = None
    partition: str | None = None
    account: str | None = None
    nodelist: str | None = None

    @property
    def signal_lead_s(self) -> int:
        """Seconds before the time limit at which SLURM sends SIGTERM."""
        if self.time_s is None:
            return SIGNAL_LEAD_S
        return max(1, min(SIGNAL_LEAD_S, self.time_s // 4))


def parse_options(*, array: str, gpus_per_task: str | None = None, cpus_per_task: str | None = None,
                  time: str | None = None, partition: str | None = None, account: str | None = None,
                  nodelist: str | None = None) -> SlurmOptions:
    """Check the command line's strings and return typed options; a bad value is one :class:`SlurmError`."""
    time_s = None if time is None else _time_seconds(time)
    return SlurmOptions(
        array=_count("--array", array, minimum=1),
        gpus_per_task=0 if gpus_per_task is None else _count("--gpus-per-task", gpus_per_task, minimum=0),
        cpus_per_task=None if cpus_per_task is None else _count("--cpus-per-task", cpus_per_task, minimum=1),
        time=None if time is None else time.strip(),
        time_s=time_s,
        partition=_name("--partition", partition),
        account=_name("--account", account),
        nodelist=_name("--nodelist", nodelist, what="one node's host name"),
    )


def check_storage(url: str, options: SlurmOptions) -> None:
    """Refuse SQLite for an array whose tasks may land on different nodes.

    Tasks on several nodes reach one SQLite file only over a network filesystem, whose locks SQLite
    cannot trust: writes get lost or the file corrupts. One task, or every task pinned to one node
    (``--nodelist``) with the file on that node's disk, is safe.
    """
    try:
        backend = make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError:
        return  # `hpsearch run` reports a malformed URL with its own message
    if backend == "sqlite" and options.array > 1 and options.nodelist is None:
        raise SlurmError(
            f"--array {options.array}: the tasks may run on several nodes, and SQLite on a network filesystem "
            "loses data; use PostgreSQL or MySQL (export HPSEARCH_STORAGE=postgresql://user@host/db), "
            "or pin the array to one node with --nodelist HOST and keep the SQLite file on its local disk"
        )


def check_overrides(overrides: Sequence[str]) -> None:
    """Refuse a ``--set storage=...`` that carries a password: the script is a file others may read."""
    for override in overrides:
        key, _, value = override.partition("=")
        if key.strip() != "storage":
            continue
        try:
            password = make_url(value.strip().strip("'\"")).password
        except sqlalchemy.exc.ArgumentError:
            continue
        if password:
            raise SlurmError("--set storage=...: its password would be written into the job script; "
                             "export HPSEARCH_STORAGE instead (sbatch passes the environment to the tasks)")


def render_script(*, study: str, name: str, overrides: Sequence[str], options: SlurmOptions,
                  python: str, workdir: str) -> str:
    """The sbatch script of the array: each task runs ``python -m hpsearch run STUDY --set ...``.

    ``study`` and ``workdir`` should be absolute; ``name`` (the study's name) becomes the job name.
    """
    sbatch = [
        f"--job-name={name}",
        f"--array=0-{options.array - 1}",
        f"--chdir={_sbatch_value('the working directory', workdir)}",
        "--output=slurm-%A_%a.out",
        # A requeued task appends, so the output file keeps every start.
        "--open-mode=append",
        "--ntasks=1",
        "--requeue",
        f"--signal=B:TERM@{options.signal_lead_s}",
    ]
    if options.cpus_per_task is not None:
        sbatch.append(f"--cpus-per-task={options.cpus_per_task}")
    if options.gpus_per_task:
        sbatch.append(f"--gpus-per-task={options.gpus_per_task}")
    for option, value in (("time", options.time), ("partition", options.partition),
                          ("account", options.account), ("nodelist", options.nodelist)):
        if value is not None:
            sbatch.append(f"--{option}={value}")
    # hpsearch runs in the batch step itself, not under srun: srun turns the SIGTERM that SLURM sends
    # at the time limit or on preemption into a SIGKILL of its step, which would leave trials RUNNING.
    run = " ".join(shlex.quote(word) for word in [
        python, "-m", "hpsearch", "run", study, *(w for o in overrides for w in ("--set", o))
    ])
    header = "\n".join(f"#SBATCH {line}" for line in sbatch)
    return _SCRIPT.format(header=header, run=run, interrupted=EXIT_INTERRUPTED)


def submit(script: str, sbatch: str = "sbatch") -> str:
    """Submit ``script`` with ``sbatch --parsable`` and return the job id."""
    try:
        done = subprocess.run([sbatch, "--parsable"], input=script, text=True, capture_output=True,
                              timeout=_SBATCH_TIMEOUT_S, check=False)
    except FileNotFoundError:
        raise SlurmError(f"{sbatch} not found: run hpsearch submit --slurm where SLURM's commands are "
                         "installed (a login node), or add --dry-run to only print the script") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{sbatch} did not answer within {_SBATCH_TIMEOUT_S} s; is slurmctld up? (sinfo)") from None
    lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    if done.returncode != 0:
        reason = lines[-1].strip() if lines else "no output"
        raise SlurmError(f"sbatch failed (exit {done.returncode}): {reason}")
    # --parsable prints "JOBID" or "JOBID;CLUSTER".
    job_id = done.stdout.strip().splitlines()[-1].split(";")[0] if done.stdout.strip() else ""
    if not job_id.isdigit():
        raise SlurmError(f"sbatch printed no job id: {done.stdout.strip()!r}")
    return job_id


def _count(option: str, text: str, minimum: int) -> int:
    if not re.fullmatch(r"\d+", text.strip()) or int(text) < minimum:
        raise SlurmError(f"{option} {text}: must be a whole number >= {minimum}")
    return int(text)


def _time_seconds(text: str) -> int:
    match = _TIME.match(text.strip())
    if match is None:
        raise SlurmError(f"--time {text}: not a SLURM time limit; use {_TIME_FORMATS} (e.g. 90, 1:30:00, 2-00)")
    g = {k: int(v) for k, v in match.groupdict().items() if v is not None}
    if "d" in g:
        seconds = g["d"] * 86400 + g["dh"] * 3600 + g.get("dm", 0) * 60 + g.get("ds", 0)
    elif "c" in g:
        seconds = g["a"] * 3600 + g["b"] * 60 + g["c"]
    else:
        seconds = g["a"] * 60 + g.get("b", 0)
    if seconds <= 0:
        raise SlurmError(f"--time {text}: must be longer than 0; use {_TIME_FORMATS}")
    return seconds


def _sbatch_value(what: str, text: str) -> str:
    """``text`` as sbatch reads it from an ``#SBATCH`` line: double quotes keep spaces together."""
    if any(c in text for c in '"\\\n'):
        raise SlurmError(f"{what} {text!r} cannot be written into an #SBATCH line (it holds a quote, "
                         "backslash or newline); submit from a directory without them")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _name(option: str, text: str | None, what: str = "a SLURM name") -> str | None:
    if text is None:
        return None
    if not _NAME.match(text):
        raise SlurmError(f"{option} {text!r}: must be {what}: letters, digits, '.', '_' and '-'")
    return text


# {run} is quoted word by word; everything else is fixed text. The task reports how hpsearch ended on
# its last line, so the output file tells what happened even without SLURM accounting.
_SCRIPT = """\
#!/bin/bash
{header}
# Written by `hpsearch submit --slurm`. Every task runs `hpsearch run` on the same study and storage
# (HPSEARCH_STORAGE comes from the environment sbatch passes on). Shortly before the time limit SLURM
# sends SIGTERM to this script, which hands it on; hpsearch fails its running trials as interrupted and
# exits {interrupted}, and the task requeues itself, so its next start resumes the study. To stop a task
# that way by hand: scancel --batch --signal=TERM JOBID_TASK (a plain --signal reaches job steps only).

task="${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}"
echo "hpsearch-task $task start ${{SLURM_RESTART_COUNT:-0}} on $(hostname)"
{run} &
child=$!
trap 'kill -TERM "$child" 2>/dev/null' TERM
# `wait` returns early when the trap runs; wait again until hpsearch has really exited.
while true; do
  wait "$child"
  status=$?
  kill -0 "$child" 2>/dev/null || break
done
echo "hpsearch-task $task exit $status"
# Requeue only while the task still runs (the early signal, or one sent by hand): after scancel or
# the time limit itself SLURM is already ending it (COMPLETING), and a requeue would undo a cancel.
if [ "$status" -eq {interrupted} ] && [ "$(squeue -h -j "$task" -o %T 2>/dev/null)" = RUNNING ]; then
  scontrol requeue "$task"
fi
exit "$status"
"""
