"""The Python API: run a study and read its results back, as the CLI does.

    import hpsearch

    study = hpsearch.run("studies/car_price.yaml", overrides={"stages.0.trials": 10})
    study.best()                    # {"stage", "trial", "value", "params", "metrics"}, as `hpsearch best`
    study.trials()                  # one row per trial of every stage (pandas), as `hpsearch export`
    study.trials(curves=True)       # the learning curves in long form: stage, trial, state, epoch, value
    study.best_model().predict_frame(rows)   # the best trial's kept model predicts a pandas frame
    study.report("report/")         # report/index.html, as `hpsearch report` (needs hpsearch[report])

    hpsearch.load("studies/car_price.yaml")   # the same object for a study run before (reads only)

A study is a path to a study file or a mapping of the same keys; ``overrides`` are ``--set`` values,
as a mapping of dotted keys to values or as ``KEY=VALUE`` strings. Errors are the CLI's, as
exceptions: :class:`~hpsearch.errors.SpecError` for a bad study, and so on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import json
from pathlib import Path
import threading
from typing import TYPE_CHECKING, Any

from hpsearch import identity, results
from hpsearch.retrying import RetryingStorage
from hpsearch.spec import StudySpec, apply_overrides, parse_spec, read_study_file
from hpsearch.storage import mask_url, open_storage, resolve_url

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial
    import pandas as pd

    from hpsearch.stages import RunListener
    from hpsearch.train.checkpoint import TrainedModel

StudyArg = str | Path | Mapping[str, Any]
Overrides = Mapping[str, Any] | Sequence[str]


def run(study: StudyArg, overrides: Overrides = (), *, force_resume: bool = False,
        listener: RunListener | None = None, stop: threading.Event | None = None) -> Study:
    """Run (or resume) every stage of ``study``, as ``hpsearch run`` does, and return it for reading.

    ``stop``, when set (from another thread), stops the run cleanly: running trials are failed as
    interrupted and ``KeyboardInterrupt`` is raised, and a later ``run`` resumes.
    """
    from hpsearch.preflight import preflight
    from hpsearch.stages import run_study

    spec = _spec(study, overrides)
    preflight(spec)
    storage = open_storage(resolve_url(spec.storage), create=True)
    run_study(spec, storage, listener, stop, force_resume=force_resume)
    return Study(spec, storage)


def load(study: StudyArg, overrides: Overrides = ()) -> Study:
    """A study run before, for reading; refused, as by ``hpsearch status``, if its file changed what
    its started stages train or rank by."""
    spec = _spec(study, overrides)
    storage = open_storage(resolve_url(spec.storage))
    identity.check(spec, storage)
    return Study(spec, storage)


class Study:
    """A study and its storage: what ``hpsearch status``, ``best`` and ``export`` read, as Python objects."""

    def __init__(self, spec: StudySpec, storage: RetryingStorage) -> None:
        self.spec = spec
        self.storage = storage

    @property
    def name(self) -> str:
        return self.spec.name

    def __repr__(self) -> str:
        return f"<hpsearch.Study {self.spec.name} in {mask_url(resolve_url(self.spec.storage))}>"

    def status(self) -> list[results.StageStatus]:
        """Per stage: whether it started, trials by state, its best trial, its stored space."""
        return results.status(self.spec, self.storage)

    def best(self) -> dict[str, Any]:
        """The best trial over all stages: ``{"stage", "trial", "value", "params", "metrics"}``."""
        return results.best_record(self.spec, self.storage)

    def best_trial(self) -> FrozenTrial:
        """The best complete trial over all stages, as Optuna's ``FrozenTrial``."""
        return results.overall_best(self.spec, self.storage)[1]

    def best_model(self) -> TrainedModel:
        """The best trial's kept model (``keep: best`` or ``all``): ``.network()`` is the trained torch
        module, ``.predict_frame(rows)`` predicts a pandas frame of rows like the study's data file."""
        from hpsearch import predict

        return predict.load_model(self.spec, self.storage)[1]

    def model(self, trial: int, stage: str | None = None) -> TrainedModel:
        """The kept model of trial ``trial`` (of ``stage``, needed when two stages kept a trial of that number)."""
        from hpsearch import predict

        return predict.load_model(self.spec, self.storage, trial, stage)[1]

    def trials(self, curves: bool = False) -> pd.DataFrame:
        """One row per trial of every started stage (``stage`` first, then Optuna's ``trials_dataframe``
        columns); with ``curves``, the learning curves in long form instead: one row per trial and
        epoch, columns ``stage``, ``trial``, ``state``, ``epoch`` and the metric's name."""
        if curves:
            return results.curves_frame(self.spec, self.storage)
        return results.trials_frame(self.spec, self.storage)

    def report(self, out_dir: str | Path) -> Path:
        """Write the self-contained HTML report, as ``hpsearch report --out out_dir``; returns its index.html."""
        from hpsearch import report  # here: plotly is an extra

        return report.write_report(self.spec, self.storage, out_dir)


def _spec(study: StudyArg, overrides: Overrides) -> StudySpec:
    raw = dict(study) if isinstance(study, Mapping) else read_study_file(study)
    if isinstance(overrides, Mapping):
        # JSON is YAML: each value goes through the same parser as a --set value.
        overrides = [f"{key}={json.dumps(value)}" for key, value in overrides.items()]
    elif isinstance(overrides, str):
        overrides = [overrides]
    return parse_spec(apply_overrides(raw, overrides))
