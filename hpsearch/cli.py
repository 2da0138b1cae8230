"""Command line: ``hpsearch run|validate|status|best|predict|export|report|dashboard|submit|lr-range STUDY.yaml``.

User errors become one line on stderr and exit status 2 (``--debug`` shows the traceback); a stage
stopped by failing trials exits 1; a storage that cannot be reached or written exits 3; an
interrupted run exits 130 and resumes when run again. ``hpsearch dashboard`` serves until Ctrl-C or
SIGTERM and then exits 0.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
import contextlib
import json
import logging
import os
import queue
import select
import signal
import sys
import threading
from typing import Any, TextIO

from hpsearch import __version__
from hpsearch.errors import (
    HpsearchError,
    RunAbortedError,
    StageFailedError,
    StorageUnavailableError,
    one_line,
)
from hpsearch.signals import on_stop_signals
from hpsearch.values import spec_int

EXIT_USAGE = 2
EXIT_STAGE_FAILED = 1
EXIT_STORAGE = 3  # the storage stayed unreachable past its retries, or is full or read-only
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("study", metavar="STUDY.yaml", help="the study file")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a study-file value by dotted path, e.g. --set stages.0.trials=5 (value parsed as YAML)")
    common.add_argument("--debug", action="store_true", help="show tracebacks and Optuna's log")
    parser = argparse.ArgumentParser(prog="hpsearch", description="Coarse-to-fine hyperparameter search for PyTorch models.")
    parser.add_argument("--version", action="version", version=f"hpsearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", parents=[common], help="run (or resume) every stage of a study")
    run.add_argument("--force-resume", action="store_true",
                     help="resume although the study file changed the metric, direction, seed, data, model or train "
                          "of a started stage (recorded on the stage)")
    sub.add_parser("validate", parents=[common], help="check a study file and its data without running anything")
    sub.add_parser("status", parents=[common], help="per stage: trials by state, best value and parameters")
    best = sub.add_parser("best", parents=[common], help="the best trial as JSON")
    best.add_argument("--config", action="store_true",
                      help="print instead a study file (YAML) that trains exactly the best trial again")
    predict = sub.add_parser("predict", parents=[common], help="predict new rows with a kept model (keep: best|all)")
    predict.add_argument("--input", required=True, metavar="FILE", help="rows to predict: FILE.csv or FILE.parquet")
    predict.add_argument("--out", required=True, metavar="FILE", help="FILE.csv or FILE.parquet: the rows and their predictions")
    predict.add_argument("--trial", metavar="N", help="the model of trial N (default: the study's best trial)")
    predict.add_argument("--stage", metavar="NAME", help="the stage of --trial, or whose best trial to use")
    export = sub.add_parser("export", parents=[common], help="write one row per trial to a CSV or Parquet file")
    export.add_argument("--out", required=True, metavar="FILE", help="FILE.csv or FILE.parquet")
    report = sub.add_parser("report", parents=[common], help="write a self-contained HTML report (DIR/index.html)")
    report.add_argument("--out", required=True, metavar="DIR", help="the folder to write index.html into")
    dashboard = sub.add_parser("dashboard", parents=[common],
                               help="serve optuna-dashboard on the study's storage, read-only, until Ctrl-C")
    # Values are checked by hpsearch.dashboard: a bad one is one line naming the option.
    dashboard.add_argument("--host", default="127.0.0.1",
                           help="address to listen on (default 127.0.0.1; another one warns: no authentication)")
    dashboard.add_argument("--port", default="8080", help="port to listen on (default 8080)")
    lr_range = sub.add_parser("lr-range", parents=[common],
                              help="learning-rate range test: suggest the lr range from one short run per lr sweep")
    # Values are checked by hpsearch.lr_range: a bad one is one line naming the option.
    lr_range.add_argument("--min", default="1e-8", help="the sweep's first lr (default 1e-8)")
    lr_range.add_argument("--max", default="10", help="the sweep's last lr (default 10)")
    lr_range.add_argument("--steps", default="200", help="optimizer steps, one per lr (default 200, at least 10)")
    lr_range.add_argument("--repeats", default="3", help="repeats, each from its own seed (default 3)")
    lr_range.add_argument("--out", metavar="DIR", help="folder for curves.csv and lr_range.png (default lr-range-NAME)")
    submit = sub.add_parser("submit", parents=[common], help="submit a SLURM job array whose tasks all run the study")
    submit.add_argument("--slurm", action="store_true", help="submit to SLURM with sbatch (the only scheduler so far)")
    # Values are checked by hpsearch.slurm, so a bad one is one line naming the option, like every other error.
    submit.add_argument("--array", metavar="N", help="number of array tasks, each running hpsearch run")
    submit.add_argument("--gpus-per-task", metavar="G", help="GPUs for each task")
    submit.add_argument("--cpus-per-task", metavar="C", help="CPUs for each task")
    submit.add_argument("--time", metavar="T", help="time limit of each task start, in sbatch's format (e.g. 2:00:00)")
    submit.add_argument("--partition", metavar="P", help="SLURM partition")
    submit.add_argument("--account", metavar="A", help="SLURM account")
    submit.add_argument("--nodelist", metavar="HOST", help="run every task on this node (allows SQLite on its local disk)")
    submit.add_argument("--dry-run", action="store_true", help="print the sbatch script without submitting it")
    return parser


def main(argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    stdout, stderr = stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    _configure_logging(args.debug)
    try:
        return _COMMANDS[args.command](args, stdout, stderr)
    except (StageFailedError, RunAbortedError) as exc:
        if args.debug:
            raise
        stderr.write(f"hpsearch: error: {one_line(exc)}\n")
        return EXIT_STAGE_FAILED
    except StorageUnavailableError as exc:
        if args.debug:
            raise
        stderr.write(f"hpsearch: error: {one_line(exc)}\n")
        return EXIT_STORAGE
    except HpsearchError as exc:
        if args.debug:
            raise
        stderr.write(f"hpsearch: error: {one_line(exc)}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        stderr.write("hpsearch: interrupted; finished trials are saved, run the same command again to resume\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if not _reader_left(stdout):
            raise  # a pipe of ours (a worker's) broke: not the reader of our output
        # `hpsearch status ... | head`: the reader left; nothing is wrong with the study.
        if stdout is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _reader_left(stdout: TextIO) -> bool:
    """Is ``stdout`` a pipe whose reader has gone (the write end then polls as an error)?"""
    try:
        fd = stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False  # not a file: the broken pipe was another one
    if not hasattr(select, "poll"):
        return True  # no way to tell here (Windows): take it as the reader's
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _configure_logging(debug: bool) -> None:
    import optuna

    # Progress is ours to show; Optuna's per-trial INFO lines would repeat it.
    optuna.logging.set_verbosity(logging.INFO if debug else logging.WARNING)


def _load(args: argparse.Namespace) -> Any:
    from hpsearch.spec import load_spec

    return load_spec(args.study, args.overrides)


def _storage(spec: Any, create: bool = False) -> Any:
    from hpsearch.storage import open_storage, resolve_url

    return open_storage(resolve_url(spec.storage), create=create)


def _checked_storage(spec: Any) -> Any:
    """The study's storage (read only), once the study file is known to match its started stages."""
    from hpsearch import identity

    storage = _storage(spec)
    identity.check(spec, storage)
    return storage


def _run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from hpsearch import guard, identity
    from hpsearch.preflight import preflight
    from hpsearch.progress import ProgressListener
    from hpsearch.stages import run_study
    from hpsearch.storage import mask_url, resolve_url

    spec = _load(args)
    if guard.needs_guard(spec, stdout, stderr):  # Ray can end this process abruptly: run under a guard
        return guard.run_guarded(_run_argv(args), spec, lambda: _storage(spec), stderr)
    preflight(spec)
    storage = _storage(spec, create=True)
    if not args.force_resume:
        identity.check(spec, storage)  # a refusal is the only line (run_study checks again, for API callers)
    stderr.write(f"hpsearch: study {spec.name} in {mask_url(resolve_url(spec.storage))}\n")
    stop = threading.Event()
    listener = ProgressListener(stderr)
    with _stop_on_signals(stop):
        try:
            run_study(spec, storage, listener, stop, force_resume=args.force_resume)
        except StorageUnavailableError:
            listener.close()
            raise  # no summary: reading it would fail too, and hide the line that says why
        except BaseException:
            listener.close()  # the bar's line ends before the table, and the bar is not drawn again
            _summary(spec, storage, stdout)
            raise
        _summary(spec, storage, stdout)
    return 0


def _run_argv(args: argparse.Namespace) -> list[str]:
    """The arguments of this ``hpsearch run``, for the guarded child to run."""
    return ["run", args.study, *(f"--set={o}" for o in args.overrides), *(["--force-resume"] if args.force_resume else []),
            *(["--debug"] if args.debug else [])]


def _summary(spec: Any, storage: Any, stdout: TextIO) -> None:
    from hpsearch import results

    stdout.write(results.format_status(results.status(spec, storage), spec.direction) + "\n")


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C and SIGTERM (a batch scheduler's stop) ask the run to stop cleanly; a second Ctrl-C forces it.

    The handler runs in the main thread between two bytecodes, possibly while that thread holds
    ``stop``'s own lock (inside ``stop.wait``): calling ``stop.set()`` there could deadlock. So it
    only puts the signal on a SimpleQueue (whose put is reentrant) and a thread sets ``stop``.
    """
    signals: queue.SimpleQueue[int | None] = queue.SimpleQueue()

    def handle(signum: int, frame: object) -> None:
        if stop.is_set() and signum == signal.SIGINT:  # is_set takes no lock
            raise KeyboardInterrupt
        signals.put(signum)

    def relay() -> None:
        while signals.get() is not None:
            stop.set()

    relay_thread = threading.Thread(target=relay, name="hpsearch-signals", daemon=True)
    relay_thread.start()
    try:
        with on_stop_signals(handle):
            yield
    finally:
        signals.put(None)
        relay_thread.join()


def _validate(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from hpsearch.preflight import preflight

    spec = _load(args)
    preflight(spec)
    budget = sum(s.trials for s in spec.stages)
    stdout.write(f"{args.study}: ok ({spec.name}: {len(spec.stages)} stage(s), {budget} trials, "
                 f"{len(spec.space)} searched parameter(s), {spec.direction} {spec.metric})\n")
    return 0


def _status(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from hpsearch import lr_range_stage, results
    from hpsearch.storage import mask_url, resolve_url

    spec = _load(args)
    storage = _checked_storage(spec)
    stdout.write(f"study {spec.name} in {mask_url(resolve_url(spec.storage))}, {spec.direction} {spec.metric}\n")
    rows = results.status(spec, storage)
    stdout.write(results.format_status(rows, spec.direction) + "\n")
    for extra in (results.format_overrides(spec), results.format_spaces(spec, rows),
                  lr_range_stage.format_status(spec, storage)):
        if extra:
            stdout.write(extra + "\n")
    stdout.write(results.format_processes(results.live_processes(spec, storage)) + "\n")
    return 0


def _best(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from hpsearch import results

    spec = _load(args)
    if args.config:
        import yaml

        config = results.best_config(spec, _checked_storage(spec))
        stdout.write(f"# {config.pop('_comment')}\n" + yaml.safe_dump(config, sort_keys=False))
        return 0
    stdout.write(json.dumps(results.best_record(spec, _checked_storage(spec)), indent=2) + "\n")
    return 0


def _predict(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from hpsearch import predict

    trial = None if args.trial is None else spec_int(args.trial, "--trial", minimum=0)
    spec = _load(args)
    kept, rows = predict.predict_file(spec, _checked_storage(spec), args.input, args.out, trial=trial,
                                      stage=args.stage)
    stderr.write(f"hpsearch: wrote {rows} prediction(s) of trial {kept.trial} of stage {kept.stage} to {args.out}\n")
    return 0


def _export(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from hpsearch import results

    spec = _load(args)
    rows = results.export(spec, _checked_storage(spec), args.out)
    stderr.write(f"hpsearch: wrote {rows} trial(s) to {args.out}\n")
    return 0


def _report(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from hpsearch import report

    report.require_plotly()  # before anything is read: the missing package is the one line to show
    spec = _load(args)
    path = report.write_report(spec, _checked_storage(spec), args.out)
    stderr.write(f"hpsearch: wrote the report to {path}\n")
    return 0


def _dashboard(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from hpsearch import dashboard
    from hpsearch.artifacts import artifact_dir
    from hpsearch.storage import open_storage, resolve_url

    port = dashboard.parse_port(args.port)
    dashboard.require_dashboard()  # before anything is read: the missing package is the one line to show
    spec = _load(args)
    storage = dashboard.read_only(open_storage(resolve_url(spec.storage), create=False))
    server = dashboard.DashboardServer(dashboard.wsgi_app(storage, artifact_dir(spec)), args.host, port)
    if not dashboard.is_loopback(args.host):
        stderr.write(f"hpsearch: warning: --host {args.host} lets other machines reach the dashboard, "
                     "which has no authentication\n")
    stderr.write(f"hpsearch: dashboard of study {spec.name} at {server.url} (read-only; Ctrl-C stops it)\n")
    stderr.flush()
    stop = threading.Event()
    code = 0
    with _stop_on_signals(stop):
        try:
            server.serve(stop)
        except KeyboardInterrupt:  # a second Ctrl-C while it stops
            code = EXIT_INTERRUPTED
    stderr.write("hpsearch: dashboard stopped\n")
    return code


def _submit(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from hpsearch import slurm
    from hpsearch.preflight import preflight
    from hpsearch.storage import resolve_url

    if not args.slurm:
        raise slurm.SlurmError("hpsearch submit needs a scheduler: add --slurm (the only one so far)")
    if args.array is None:
        raise slurm.SlurmError("--array N is required: the number of tasks that run the study together")
    options = slurm.parse_options(array=args.array, gpus_per_task=args.gpus_per_task, cpus_per_task=args.cpus_per_task,
                                  time=args.time, partition=args.partition, account=args.account,
                                  nodelist=args.nodelist)
    spec = _load(args)
    preflight(spec)
    slurm.check_overrides(args.overrides)
    slurm.check_storage(resolve_url(spec.storage), options)
    script = slurm.render_script(study=os.path.abspath(args.study), name=spec.name, overrides=args.overrides,
                                 options=options, python=sys.executable, workdir=os.getcwd())
    stdout.write(script)
    if not args.dry_run:
        stdout.write(f"submitted batch job {slurm.submit(script)}\n")
    return 0


def _lr_range(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from pathlib import Path

    from hpsearch import lr_range
    from hpsearch.preflight import preflight

    settings = lr_range.option_settings(args.min, args.max, args.steps, args.repeats)
    spec = _load(args)
    out = Path(args.out) if args.out else lr_range.default_out(spec)
    preflight(spec)
    tested = lr_range.run(spec, settings)
    stdout.write(lr_range.format_results(spec, settings, tested) + "\n")
    written = lr_range.write_outputs(spec, tested, out)
    stderr.write(f"hpsearch: wrote the curves to {written.curves}"
                 + (f" and the plot to {written.plot}\n" if written.plot else f"; {written.note}\n"))
    return 0


_COMMANDS = {"run": _run, "validate": _validate, "status": _status, "best": _best, "predict": _predict,
             "export": _export, "report": _report, "dashboard": _dashboard,
             "submit": _submit, "lr-range": _lr_range}
