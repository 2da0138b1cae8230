"""A study's trials as one table, read with SQL in chunks: what ``hpsearch export`` writes.

The rows and columns are those of Optuna's ``Study.trials_dataframe(multi_index=False)``, with a
``stage`` column first and list or dict values as text. Optuna builds that frame from every trial of
a stage as a ``FrozenTrial`` at once: about a minute and gigabytes at 100,000 trials. Here each stage
is read :data:`CHUNK_TRIALS` trials at a time with plain SQL on Optuna's tables, and each chunk is
written out and dropped, so memory stays flat whatever the number of trials.

The columns are found first (the distinct parameter names and attribute keys of each stage), so a
CSV header can be written before any row. A trial that gains a new parameter or attribute key while
the export runs keeps its other columns; the new one is left out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
import csv
from dataclasses import dataclass, field
import datetime
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages._rdb import models
from optuna.study.study import _SYSTEM_ATTR_METRIC_NAMES
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hpsearch.retrying import RetryingStorage

if TYPE_CHECKING:
    import pandas as pd

CHUNK_TRIALS = 5_000
STAGE_COLUMN = "stage"

_TRIALS = models.TrialModel.__table__
_VALUES = models.TrialValueModel.__table__
_PARAMS = models.TrialParamModel.__table__
_USER_ATTRS = models.TrialUserAttributeModel.__table__
_SYSTEM_ATTRS = models.TrialSystemAttributeModel.__table__
# Column-name prefixes, as trials_dataframe flattens them ("params_lr").
_KINDS = ((_PARAMS, _PARAMS.c.param_name, "params"), (_USER_ATTRS, _USER_ATTRS.c.key, "user_attrs"),
          (_SYSTEM_ATTRS, _SYSTEM_ATTRS.c.key, "system_attrs"))


@dataclass
class Chunk:
    """Consecutive trials of one stage, column by column (``None``: the trial has no such value)."""

    stage: str
    size: int
    columns: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class StageSource:
    """A started stage as exported: its study and the columns trials_dataframe gives it."""

    stage: str
    study_id: int
    value_column: str
    columns: list[str]


def export(storage: RetryingStorage, stages: Sequence[tuple[str, int]], out: Path) -> int:
    """Write the trials of ``stages`` (name, study id) to ``out`` (.csv or .parquet); returns the number of rows."""
    sources = [stage_source(storage, stage, study_id) for stage, study_id in stages]
    columns = union(s.columns for s in sources)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside it and moved into place: a failed export leaves no half-written file under the name.
    partial = out.with_name(f".{out.name}.partial")
    try:
        if out.suffix == ".csv":
            rows = write_csv(partial, columns, read_stages(storage, sources))
        else:
            table = arrow_table(columns, read_stages(storage, sources))
            pq.write_table(table, partial)
            rows = table.num_rows
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    return rows


def trials_frame(storage: RetryingStorage, stages: Sequence[tuple[str, int]]) -> pd.DataFrame:
    """The trials of ``stages`` (name, study id) as one pandas frame, as :func:`export` writes them."""
    sources = [stage_source(storage, stage, study_id) for stage, study_id in stages]
    return arrow_table(union(s.columns for s in sources), read_stages(storage, sources)).to_pandas()


def stage_source(storage: RetryingStorage, stage: str, study_id: int) -> StageSource:
    """The stage's columns, found before any trial is read so that a CSV header can go first."""
    # trials_dataframe names the value column after the objective once it has a name (Study.set_metric_names).
    names = storage.get_study_system_attrs(study_id).get(_SYSTEM_ATTR_METRIC_NAMES)
    value_column = f"value_{names[0]}" if names else "value"
    return StageSource(stage, study_id, value_column, stage_columns(storage, study_id, value_column))


def read_stages(storage: RetryingStorage, sources: Iterable[StageSource]) -> Iterator[Chunk]:
    """The trials of each stage in turn, in chunks."""
    for s in sources:
        yield from read_stage(storage, s.stage, s.study_id, s.columns, s.value_column)


def column_name(kind: str, key: str) -> str:
    """``params_lr``: trials_dataframe's flattened name (an empty key leaves no trailing ``_``)."""
    return f"{kind}_{key}" if key else kind


def stage_columns(storage: RetryingStorage, study_id: int, value_column: str) -> list[str]:
    """The columns trials_dataframe gives the study: none without trials, names sorted within each kind."""

    def read() -> list[str]:
        with storage.engine.connect() as conn:
            if conn.execute(sa.select(_TRIALS.c.trial_id).where(_TRIALS.c.study_id == study_id).limit(1)).first() is None:
                return []
            named = [sorted(column_name(kind, key) for key in _distinct_keys(conn, table, key_column, study_id))
                     for table, key_column, kind in _KINDS]
        return ["number", value_column, "datetime_start", "datetime_complete", "duration",
                *(name for names in named for name in names), "state"]

    return storage.call_with_retries("read the trial columns", read)


def _distinct_keys(conn: Connection, table: sa.Table, key_column: sa.Column[Any], study_id: int) -> list[str]:
    query = (sa.select(key_column).distinct().join(_TRIALS, _TRIALS.c.trial_id == table.c.trial_id)
             .where(_TRIALS.c.study_id == study_id))
    return list(conn.execute(query).scalars())


def union(column_lists: Iterable[Sequence[str]]) -> list[str]:
    """The columns of stages concatenated: in order of first appearance, as ``pandas.concat`` orders them."""
    seen: dict[str, None] = {STAGE_COLUMN: None}
    for columns in column_lists:
        seen.update(dict.fromkeys(columns))
    return list(seen)


def read_stage(storage: RetryingStorage, stage: str, study_id: int, columns: Sequence[str],
               value_column: str) -> Iterator[Chunk]:
    """The trials of the study in order of number, :data:`CHUNK_TRIALS` at a time, each read with its retries."""
    reader = _ChunkReader(stage, study_id, frozenset(columns), value_column)
    after = -1
    while True:
        chunk, after = storage.call_with_retries("read trials to export", reader.read, storage, after, CHUNK_TRIALS)
        if chunk is None:
            return
        yield chunk


class _ChunkReader:
    """Decodes Optuna's rows into trials_dataframe's values; keeps the distributions it has parsed."""

    def __init__(self, stage: str, study_id: int, columns: frozenset[str], value_column: str) -> None:
        self.stage, self.study_id, self.columns, self.value_column = stage, study_id, columns, value_column
        self._distributions: dict[str, BaseDistribution] = {}

    def read(self, storage: RetryingStorage, after: int, limit: int) -> tuple[Chunk | None, int]:
        """The trials after trial id ``after`` (at most ``limit``), and the last trial id read."""
        t = _TRIALS.c
        # Optuna numbers a study's trials in the order of their ids, so id order is number order.
        query = (sa.select(t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete)
                 .where(t.study_id == self.study_id, t.trial_id > after).order_by(t.trial_id).limit(limit))
        with storage.engine.connect() as conn:
            trials = conn.execute(query).all()
            if not trials:
                return None, after
            chunk = self._trials(trials)
            row_of = {row.trial_id: i for i, row in enumerate(trials)}
            first, last = trials[0].trial_id, trials[-1].trial_id
            self._values(conn, chunk, row_of, first, last)
            self._params(conn, chunk, row_of, first, last)
            for table, kind in ((_USER_ATTRS, "user_attrs"), (_SYSTEM_ATTRS, "system_attrs")):
                self._attrs(conn, table, kind, chunk, row_of, first, last)
        return chunk, last

    def _trials(self, trials: Sequence[sa.Row[Any, Any, Any, Any, Any]]) -> Chunk:
        starts = [_local_time(row.datetime_start) for row in trials]
        completes = [_local_time(row.datetime_complete) for row in trials]
        columns: dict[str, list[Any]] = {
            "number": [row.number for row in trials],
            self.value_column: [None] * len(trials),
            "datetime_start": starts,
            "datetime_complete": completes,
            "duration": [c - s if s is not None and c is not None else None for s, c in zip(starts, completes, strict=True)],
            "state": [row.state.name for row in trials],
        }
        return Chunk(self.stage, len(trials), columns)

    def _values(self, conn: Connection, chunk: Chunk, row_of: dict[int, int], first: int, last: int) -> None:
        v = _VALUES.c
        query = sa.select(v.trial_id, v.value, v.value_type).where(v.trial_id.between(first, last), v.objective == 0)
        column = chunk.columns[self.value_column]
        for trial_id, value, value_type in conn.execute(query).all():
            row = row_of.get(trial_id)  # None: a trial of another study in the same id range
            if row is not None:
                column[row] = models.TrialValueModel.stored_repr_to_value(value, value_type)

    def _params(self, conn: Connection, chunk: Chunk, row_of: dict[int, int], first: int, last: int) -> None:
        p = _PARAMS.c
        query = sa.select(p.trial_id, p.param_name, p.distribution_json, p.param_value).where(p.trial_id.between(first, last))
        rows = ((trial_id, (name, distribution), value) for trial_id, name, distribution, value in _driver_rows(conn, query))
        for (name, distribution_json), (at, internals) in _grouped(rows, row_of).items():
            external = self._distribution(distribution_json).to_external_repr
            self._fill(chunk, column_name("params", name), at, [external(v) for v in internals])

    def _attrs(self, conn: Connection, table: sa.Table, kind: str, chunk: Chunk, row_of: dict[int, int],
               first: int, last: int) -> None:
        a = table.c
        query = sa.select(a.trial_id, a.key, a.value_json).where(a.trial_id.between(first, last))
        for key, (at, texts) in _grouped(_driver_rows(conn, query), row_of).items():
            self._fill(chunk, column_name(kind, key), at, _json_column(texts))

    def _fill(self, chunk: Chunk, name: str, at: list[int], values: list[Any]) -> None:
        """Put ``values`` in rows ``at`` of column ``name``, unless the column appeared after the export began."""
        if name in self.columns:
            column = chunk.columns.setdefault(name, [None] * chunk.size)
            for row, value in zip(at, values, strict=True):
                column[row] = value

    def _distribution(self, distribution_json: str) -> BaseDistribution:
        distribution = self._distributions.get(distribution_json)
        if distribution is None:
            distribution = self._distributions[distribution_json] = json_to_distribution(distribution_json)
        return distribution


def _driver_rows(conn: Connection, query: sa.Select[Any]) -> list[Any]:
    """The rows of ``query`` as the database driver returns them: tuples, no SQLAlchemy ``Row`` objects.

    Only for columns that need no conversion (integers, floats, text). Building a ``Row`` for each of
    the ~2 million parameter and attribute rows of 100,000 trials takes about as long as the database
    takes to read them.
    """
    compiled: Any = query.compile(dialect=conn.dialect)
    params = compiled.construct_params()
    args = [params[name] for name in compiled.positiontup] if compiled.positional else params
    cursor = conn.connection.cursor()
    try:
        cursor.execute(str(compiled), args)
        return list(cursor.fetchall())
    finally:
        cursor.close()


K = TypeVar("K")
V = TypeVar("V")


def _grouped(rows: Iterable[tuple[int, K, V]], row_of: dict[int, int]) -> dict[K, tuple[list[int], list[V]]]:
    """``(trial id, key, value)`` rows as key -> (chunk rows, values), leaving out trials of other studies."""
    groups: dict[K, tuple[list[int], list[V]]] = {}
    for trial_id, key, value in rows:
        row = row_of.get(trial_id)
        if row is None:  # a trial of another study in the same id range
            continue
        group = groups.get(key)
        if group is None:
            group = groups[key] = ([], [])
        group[0].append(row)
        group[1].append(value)
    return groups


def _local_time(utc: datetime.datetime | None) -> datetime.datetime | None:
    """Optuna stores naive UTC and shows trials in naive local time (``TrialModel.datetime_start``)."""
    if utc is None:
        return None
    return utc.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


def _json_column(texts: list[str]) -> list[Any]:
    """``json.loads`` of each text, NaN as ``None`` (missing, as pandas writes it), lists and dicts as text.

    The texts are parsed as one JSON array (each is a complete JSON value): a json.loads call for each
    of the ~15 attributes of 100,000 trials would take most of an export's time. A column with a list or
    dict is all text, as ``hpsearch export`` has always written it.
    """
    joined = "[" + ",".join(texts) + "]"
    values: list[Any] = json.loads(joined)
    if "NaN" in joined:
        values = [None if isinstance(v, float) and math.isnan(v) else v for v in values]
    # A list or dict needs a bracket inside the array; only then are the values looked at one by one.
    if ("[" in joined[1:-1] or "{" in joined) and any(isinstance(v, (list, dict)) for v in values):
        values = [None if v is None else str(v) for v in values]
    return values


# CSV: appended chunk by chunk, in pandas' text for each value.

def write_csv(path: Path, columns: Sequence[str], chunks: Iterable[Chunk]) -> int:
    """Write ``columns`` and then each chunk's rows to ``path``; returns the number of rows."""
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for chunk in chunks:
            empty = [None] * chunk.size
            cells = [_TEXT.get(name, _as_is)(chunk.columns.get(name, empty)) for name in columns[1:]]
            writer.writerows(zip([chunk.stage] * chunk.size, *cells, strict=True))
            rows += chunk.size
    return rows


def _as_is(column: list[Any]) -> list[Any]:
    return column  # the csv module writes None as empty, floats as repr(): pandas' text


def _datetimes_text(column: list[datetime.datetime | None]) -> list[str | None]:
    """pandas' text: microseconds on every value of a column where any has them."""
    spec = "microseconds" if any(v is not None and v.microsecond for v in column) else "seconds"
    return [None if v is None else v.isoformat(sep=" ", timespec=spec) for v in column]


def _durations_text(column: list[datetime.timedelta | None]) -> list[str | None]:
    """pandas' ``Timedelta`` text: ``0 days 00:00:01``, ``-1 days +23:59:59``; ``.123456`` on all or none."""
    fraction = any(v is not None and v.microseconds for v in column)
    texts: list[str | None] = []
    for value in column:
        if value is None:
            texts.append(None)
            continue
        hours, rest = divmod(value.seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        text = f"{value.days} days {'+' if value.days < 0 else ''}{hours:02d}:{minutes:02d}:{seconds:02d}"
        texts.append(f"{text}.{value.microseconds:06d}" if fraction else text)
    return texts


_TEXT: dict[str, Callable[[list[Any]], list[Any]]] = {
    "datetime_start": _datetimes_text, "datetime_complete": _datetimes_text, "duration": _durations_text,
}


# Parquet: chunks kept as Arrow arrays (a few dozen MB at 100,000 trials) and written at the end.

def arrow_table(columns: Sequence[str], chunks: Iterable[Chunk]) -> pa.Table:
    """The chunks as one Arrow table, each column of one type as pandas would infer it over all rows."""
    arrays: dict[str, list[pa.Array]] = {name: [] for name in columns}
    for chunk in chunks:
        arrays[STAGE_COLUMN].append(pa.array([chunk.stage] * chunk.size, pa.string()))
        for name in columns[1:]:
            values = chunk.columns.get(name)
            arrays[name].append(pa.nulls(chunk.size) if values is None else _arrow_array(values))
    return pa.table({name: _one_type(parts) for name, parts in arrays.items()})


def _arrow_array(values: list[Any]) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed kinds (1 and "a"): text, as in a CSV
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def _one_type(parts: list[pa.Array]) -> pa.ChunkedArray:
    """The chunks' arrays of a column as one type: ints with floats are floats; other mixes are text."""
    types = {a.type for a in parts} - {pa.null()}
    if not types:
        return pa.chunked_array(parts, pa.null())
    if len(types) == 1 or types == {pa.int64(), pa.float64()}:
        target = pa.float64() if len(types) > 1 else types.pop()
        return pa.chunked_array([a.cast(target) for a in parts], target)
    texts = [pa.array([None if v is None else str(v) for v in a.to_pylist()], pa.string()) for a in parts]
    return pa.chunked_array(texts, pa.string())

