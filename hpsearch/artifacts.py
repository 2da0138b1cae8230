"""Kept models: a complete trial's best-epoch network, stored as an Optuna artifact beside the storage.

``keep: best`` (the default) keeps the model of each stage's best trial only, ``keep: all`` that of
every complete trial, ``keep: none`` nothing. A model is one file (:class:`~hpsearch.train.checkpoint.TrainedModel`:
weights, network config, the fitted encoding of the data's rows) in Optuna's
``FileSystemArtifactStore``. Its ``ArtifactMeta`` is the trial's system attribute ``artifacts:<id>``,
as ``optuna.artifacts.upload_artifact`` records it, so optuna-dashboard lists it; it is written in
the transaction that completes the trial, so no model ever names a trial that did not complete.

Where: ``artifacts: DIR`` in the study file; by default ``<db>-artifacts/`` beside a SQLite file,
and ``./hpsearch-artifacts/`` for a database server (on a cluster, name a directory every node sees).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any
import uuid

from optuna.artifacts import FileSystemArtifactStore
from optuna.artifacts._protocol import ArtifactStore
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages._rdb import models
from optuna.trial import TrialState
import sqlalchemy as sa

from hpsearch.errors import HpsearchError
from hpsearch.spec import StudySpec
from hpsearch.storage import resolve_url, sqlite_path

if TYPE_CHECKING:
    from hpsearch.objective import Ending
    from hpsearch.retrying import RetryingStorage
    from hpsearch.train import TrainResult
    from hpsearch.train.checkpoint import TrainedModel

_log = logging.getLogger(__name__)
ATTR_NOT_KEPT = "model_not_kept"  # on a trial whose model could not be written: why
PREFIX = "artifacts:"  # optuna.artifacts' system attribute prefix: the dashboard reads these
MODEL_FILE = "model.pt"
MIMETYPE = "application/octet-stream"
_ATTRS = models.TrialSystemAttributeModel.__table__
_TRIALS = models.TrialModel.__table__
_VALUES = models.TrialValueModel.__table__


def artifact_dir(spec: StudySpec) -> Path:
    """The directory of ``spec``'s kept models (see the module's docstring)."""
    if spec.artifacts is not None:
        return Path(spec.artifacts)
    db = sqlite_path(resolve_url(spec.storage))
    return db.with_name(f"{db.stem}-artifacts") if db is not None else Path("hpsearch-artifacts")


def artifact_store(spec: StudySpec, create: bool = False) -> FileSystemArtifactStore:
    """The study's artifact store, for optuna-dashboard and :mod:`optuna.artifacts` as well."""
    directory = artifact_dir(spec)
    if create:
        directory.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(directory))


class KeptModels:
    """A stage's models as its trials complete: written with the trial, and (``keep: best``) the
    stage's older ones removed once a better trial completes."""

    def __init__(self, spec: StudySpec, storage: RetryingStorage, study_id: int, maximize: bool) -> None:
        self._spec, self._storage, self._study_id, self._maximize = spec, storage, study_id, maximize
        self._store: ArtifactStore | None = None
        self._written: list[tuple[Ending, str]] = []

    def attach(self, ending: Ending, result: TrainResult, best: float | None, meta: dict[str, Any]) -> Ending:
        """``ending`` with its model written to the store and recorded in its write, if it keeps one:
        a complete trial's, and with ``keep: best`` only one at least as good as ``best`` (the stage's so far)."""
        if result.model is None or ending.state is not TrialState.COMPLETE or ending.value is None:
            return ending
        if self._spec.keep == "none" or (self._spec.keep == "best" and not self._as_good(ending.value, best)):
            return ending
        artifact_id = str(uuid.uuid4())
        model: TrainedModel = replace(result.model, meta=meta)
        try:
            if self._store is None:
                self._store = artifact_store(self._spec, create=True)
            self._store.write(artifact_id, io.BytesIO(model.to_bytes()))
        except OSError as exc:  # a full disk, a folder not writable: the trial completes without its model
            _log.warning("trial %d: its model was not kept: %s", ending.recorder.number, exc)
            attrs = {**ending.write.user_attrs, ATTR_NOT_KEPT: f"{artifact_dir(self._spec)}: {exc.strerror or exc}"}
            return replace(ending, write=replace(ending.write, user_attrs=attrs))
        row = {"trial_id": ending.write.trial_id, "key": PREFIX + artifact_id,
               # The attribute's value is a JSON string, as upload_artifact sets it: JSON twice over.
               "value_json": json.dumps(json.dumps(_meta(artifact_id)))}
        self._written.append((ending, artifact_id))
        write = replace(ending.write, statements=[*ending.write.statements, sa.insert(_ATTRS).values(**row)])
        return replace(ending, write=write)

    def _as_good(self, value: float, best: float | None) -> bool:
        return best is None or (value >= best if self._maximize else value <= best)

    def settle(self) -> None:
        """After the endings were written: drop the files of trials another run had failed (their write
        was skipped) and, with ``keep: best``, the models of trials worse than the stage's best."""
        written, self._written = self._written, []
        if not written or self._store is None:
            return
        for ending, artifact_id in written:
            if ending.recorder.gone:
                _remove(self._store, [artifact_id])
        if self._spec.keep == "best":
            _remove(self._store, self._storage.call_with_retries("drop the worse models", self._drop_worse))

    def _drop_worse(self) -> list[str]:
        """Delete the model records of the stage's trials worse than its best; their artifact ids.

        Only trials strictly worse than the best read in this transaction lose theirs: a better one
        completed by another run meanwhile keeps its model, and the last run to write cleans up.
        """
        best = sa.func.min(_VALUES.c.value) if not self._maximize else sa.func.max(_VALUES.c.value)
        best_value = (sa.select(best).select_from(_VALUES.join(_TRIALS, _TRIALS.c.trial_id == _VALUES.c.trial_id))
                      .where(_TRIALS.c.study_id == self._study_id, _TRIALS.c.state == TrialState.COMPLETE)
                      .scalar_subquery())
        worse = _VALUES.c.value > best_value if not self._maximize else _VALUES.c.value < best_value
        query = (sa.select(_ATTRS.c.trial_system_attribute_id, _ATTRS.c.key)
                 .select_from(_ATTRS.join(_TRIALS, _TRIALS.c.trial_id == _ATTRS.c.trial_id)
                              .join(_VALUES, _VALUES.c.trial_id == _ATTRS.c.trial_id))
                 .where(_TRIALS.c.study_id == self._study_id, _ATTRS.c.key.startswith(PREFIX), worse))
        with self._storage.engine.begin() as conn:
            rows = conn.execute(query).all()
            if rows:
                conn.execute(sa.delete(_ATTRS).where(_ATTRS.c.trial_system_attribute_id.in_([r[0] for r in rows])))
        return [key[len(PREFIX):] for _, key in rows]


@dataclass(frozen=True)
class KeptModel:
    """Where a trial's model is: the stage, the trial's number and the artifact."""

    stage: str
    trial: int
    artifact_id: str


def kept_models(storage: RetryingStorage, stages: Sequence[tuple[str, int]]) -> list[KeptModel]:
    """Every kept model of the started ``stages`` (``(name, study_id)``), by stage then trial number."""
    found: list[KeptModel] = []
    for name, study_id in stages:
        query = (sa.select(_TRIALS.c.number, _ATTRS.c.key)
                 .select_from(_ATTRS.join(_TRIALS, _TRIALS.c.trial_id == _ATTRS.c.trial_id))
                 .where(_TRIALS.c.study_id == study_id, _ATTRS.c.key.startswith(PREFIX))
                 .order_by(_TRIALS.c.number))

        def read(query: sa.Select[Any] = query) -> list[Any]:
            with storage.engine.connect() as conn:
                return list(conn.execute(query).all())

        rows = storage.call_with_retries("read the kept models", read)
        found += [KeptModel(name, number, key[len(PREFIX):]) for number, key in rows]
    return found


def load_model(spec: StudySpec, kept: KeptModel) -> TrainedModel:
    """The model file of ``kept``, read from the study's artifact store."""
    from hpsearch.train.checkpoint import TrainedModel

    path = artifact_dir(spec) / kept.artifact_id
    if not path.is_file():
        raise HpsearchError(f"the model of trial {kept.trial} of stage {kept.stage} is recorded but its file "
                            f"{path} is missing; is artifacts: the directory the run wrote to?")
    return TrainedModel.load(path)


def _meta(artifact_id: str) -> dict[str, Any]:
    from optuna.artifacts import ArtifactMeta

    return asdict(ArtifactMeta(artifact_id=artifact_id, filename=MODEL_FILE, mimetype=MIMETYPE, encoding=None))


def _remove(store: ArtifactStore, artifact_ids: Sequence[str]) -> None:
    for artifact_id in artifact_ids:
        try:
            store.remove(artifact_id)
        except ArtifactNotFound:  # another run removed it first
            pass
