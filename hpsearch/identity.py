"""What makes a study's trials comparable: stored on each stage when it starts, checked on every later use.

A stage records the study file it started from (after ``--set``), the part of it that decides how
its trials train and rank (:data:`FIXED`), and the versions that ran it. A later ``hpsearch run``,
``status``, ``best`` or ``export`` whose study file changed any of :data:`FIXED` is refused in one
line, as a changed ``space`` is: its trials would be trained or ranked differently from the stored
ones. Budgets, stage samplers and pruners, the executor, ``train.device`` and the storage may change freely.
``hpsearch run --force-resume`` goes on with the change and records it on each started stage.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
import datetime
from importlib import metadata
import json
import platform
from typing import Any

import optuna

from hpsearch import __version__
from hpsearch.errors import SpecError
from hpsearch.spec import StageSpec, StudySpec

ATTR_STUDY_FILE = "study_file"  # the study file the stage started from, after --set
ATTR_FIXED = "study_fixed"  # its FIXED part, as compared
ATTR_VERSIONS = "versions"  # hpsearch, Optuna, torch and Python of the run that started the stage
ATTR_FORCED = "forced_resumes"  # [{"at": ..., "changes": [...]}]: runs that went on with a changed FIXED part

# The study file's keys that decide how trials train and rank. ``seed`` too: it splits the data.
FIXED = ("metric", "direction", "seed", "data", "model", "train")
# Knobs of ``train`` that say where a trial runs, not how it trains: free to change, like the executor
# (a study started on CPUs goes on on a GPU).
PLACEMENT = ("device",)


def fixed_part(spec: StudySpec, stage: StageSpec) -> dict[str, Any]:
    """``spec``'s :data:`FIXED` part for ``stage``, as JSON would store it (tuples as lists); a stage
    that overrides ``train`` knobs has them as ``stage_train``."""
    raw = spec.resolved
    part = {"metric": spec.metric, "direction": spec.direction, "seed": spec.seed, "data": raw.get("data"),
            "model": raw.get("model", {"kind": "mlp"}), "train": raw.get("train", {})}
    if stage.train:
        part["stage_train"] = dict(stage.train)
    return dict(json.loads(json.dumps(part, default=str)))


def versions() -> dict[str, str | None]:
    """The versions that run a stage; torch's read from its metadata, without importing it."""
    try:
        torch = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch = None
    return {"hpsearch": __version__, "optuna": optuna.__version__, "torch": torch, "python": platform.python_version()}


def changes(before: Any, now: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """``(dotted path, "old → new")`` for every value that differs between ``before`` and ``now``."""
    if isinstance(before, Mapping) and isinstance(now, Mapping):
        for key in sorted(set(before) | set(now), key=str):
            yield from changes(before.get(key, _ABSENT), now.get(key, _ABSENT), f"{path}.{key}" if path else str(key))
    elif before != now:
        yield path, f"{_show(before)} → {_show(now)}"


_ABSENT = object()


def _unplaced(part: Mapping[str, Any]) -> dict[str, Any]:
    """``part`` without the :data:`PLACEMENT` knobs of ``train`` and ``stage_train``."""
    out = dict(part)
    for key in ("train", "stage_train"):
        if isinstance(out.get(key), Mapping):
            out[key] = {k: v for k, v in out[key].items() if k not in PLACEMENT}
    return out


def _show(value: Any) -> str:
    return "(none)" if value is _ABSENT else json.dumps(value, default=str)


def check(spec: StudySpec, storage: optuna.storages.BaseStorage, force: bool = False) -> None:
    """Refuse ``spec`` if a started stage of it was started from a different :data:`FIXED` part.

    With ``force`` (``hpsearch run --force-resume``), go on: each such stage records the change
    and takes the new part as its own.

    Raises:
        SpecError: naming the first changed value, old → new, and how to go on.
    """
    ids = {s.study_name: s._study_id for s in storage.get_all_studies()}
    for stage in spec.stages:
        study_id = ids.get(spec.study_name(stage))
        if study_id is None:
            continue
        now = fixed_part(spec, stage)
        attrs = storage.get_study_user_attrs(study_id)
        before = attrs.get(ATTR_FIXED)
        if before is None:
            continue  # started by an older hpsearch: recorded when this run starts it
        changed = list(changes(_unplaced(before), _unplaced(now)))
        if not changed:
            continue
        if not force:
            path, what = changed[0]
            more = f" (and {len(changed) - 1} more change(s))" if len(changed) > 1 else ""
            raise SpecError(path, f"changed since stage {stage.name} of study {spec.name} started ({what}){more}; "
                                  "restore it, give the changed study a new name, or run with --force-resume "
                                  "to go on with the change (recorded on the stage)")
        forced = [*attrs.get(ATTR_FORCED, []),
                  {"at": datetime.datetime.now().isoformat(timespec="seconds"), "changes": [f"{p}: {w}" for p, w in changed]}]
        storage.set_study_user_attr(study_id, ATTR_FORCED, forced)
        storage.set_study_user_attr(study_id, ATTR_STUDY_FILE, dict(spec.resolved))
        storage.set_study_user_attr(study_id, ATTR_FIXED, now)


def record(study: optuna.Study, spec: StudySpec, stage: StageSpec) -> None:
    """Store what the stage starts from, unless it is stored already (a resumed stage keeps its own)."""
    if ATTR_FIXED in study.user_attrs:
        return
    study.set_user_attr(ATTR_STUDY_FILE, dict(spec.resolved))
    study.set_user_attr(ATTR_VERSIONS, versions())
    study.set_user_attr(ATTR_FIXED, fixed_part(spec, stage))  # last: a stage with it has the others
