"""A study's trials as one table, read with SQL in chunks: what ``hpsearch export`` writes.

The rows and columns are those of Optuna's ``Study.trials_dataframe(multi_index=False)``, with a
``stage`` column first, list or dict values as text, and the objective's column always ``value``
(Optuna calls it ``value_<metric>`` once the study names its metric, as hpsearch's stages do).
Optuna builds that frame from every trial of a stage as a ``FrozenTrial`` at once: about a minute
and gigabytes at 100,000 trials. Here each stage is read :data:`CHUNK_TRIALS` trials at a time with
plain SQL on Optuna's tables, one row per trial (the database turns Optuna's key-value rows into
columns), and each chunk is written out and dropped, so memory stays flat whatever the number of trials.

The work is split between processes, one per CPU (at most :data:`MAX_WORKERS`): the chunks are
planned first (their trial-id edges), then each process finds the parameter names and attribute keys
of its run of chunks, so that a CSV header can be written before any row, and then reads and writes
its chunks; the parts are joined in order. Trials created after the plan are not exported; a trial
that gains a new parameter or attribute key while the export runs keeps its other columns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
import csv
from dataclasses import dataclass, field
import datetime
import functools
import json
import math
import multiprocessing
import os
from pathlib import Path
import re
import shutil
import threading
from typing import TYPE_CHECKING, Any, TypeVar

from optuna.distributions import BaseDistribution, FloatDistribution, json_to_distribution
from optuna.storages._rdb import models
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from hpsearch.artifacts import PREFIX as ARTIFACTS
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

@dataclass
class Chunk:
    """Consecutive trials of one stage, column by column (``None``: the trial has no such value).

    Attribute columns stay JSON text (``null`` where a trial has none) in ``json`` until they are
    written: a CSV takes numbers as they are, so they are not parsed for it.
    """

    stage: str
    size: int
    columns: dict[str, list[Any]] = field(default_factory=dict)
    json: dict[str, list[str]] = field(default_factory=dict)

    def values(self, name: str) -> list[Any] | None:
        """Column ``name``'s values (JSON parsed); None when the chunk has no such column."""
        if name in self.json:
            return _json_column(self.json[name])
        return self.columns.get(name)


@dataclass(frozen=True)
class StageKeys:
    """What a stage's trials carry, found once before its first trial is read."""

    params: dict[str, tuple[str, ...]]  # name -> the distinct distributions (JSON) it was sampled from
    user_attrs: tuple[str, ...]
    system_attrs: tuple[str, ...]
    params_seen: int = 0  # the largest parameter row id when they were found: later rows may hold others


@dataclass(frozen=True)
class StageSource:
    """A started stage as exported: its study and the columns trials_dataframe gives it."""

    stage: str
    study_id: int
    value_column: str
    columns: list[str]
    keys: StageKeys


def export(storage: RetryingStorage, stages: Sequence[tuple[str, int]], out: Path, workers: int | None = None) -> int:
    """Write the trials of ``stages`` (name, study id) to ``out`` (.csv or .parquet); returns the number of rows.

    ``workers`` processes (default: one per CPU, at most :data:`MAX_WORKERS`) each read and write a
    run of consecutive chunks; see :func:`in_processes`.
    """
    sources, parts = prepare(storage, stages, workers)
    columns = union(s.columns for s in sources)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Written beside it and moved into place: a failed export leaves no half-written file under the name.
    partial = out.with_name(f".{out.name}.partial")
    pieces = [partial.with_name(f"{partial.name}.{i}") for i in range(len(parts))]
    try:
        if out.suffix == ".csv":
            calls = [functools.partial(_csv_part, storage, columns, sources, part, piece)
                     for part, piece in zip(parts, pieces, strict=True)]
            rows = sum(in_processes(storage, calls))
            write_csv(partial, columns, ())  # the header; the parts' rows follow
            with partial.open("ab") as whole:
                for piece in pieces:
                    with piece.open("rb") as text:
                        shutil.copyfileobj(text, whole, 1 << 20)
        else:
            table = _arrow_of_parts(storage, columns, sources, parts)
            pq.write_table(table, partial)
            rows = table.num_rows
        os.replace(partial, out)
    finally:
        for path in (partial, *pieces):
            path.unlink(missing_ok=True)
    return rows


def trials_frame(storage: RetryingStorage, stages: Sequence[tuple[str, int]], workers: int | None = None) -> pd.DataFrame:
    """The trials of ``stages`` (name, study id) as one pandas frame, as :func:`export` writes them."""
    sources, parts = prepare(storage, stages, workers)
    return _arrow_of_parts(storage, union(s.columns for s in sources), sources, parts).to_pandas()


def prepare(storage: RetryingStorage, stages: Sequence[tuple[str, int]],
            workers: int | None) -> tuple[list[StageSource], list[list[Span]]]:
    """The stages' columns, and their chunks as a run of consecutive chunks for each worker.

    The chunks are planned first (a few ids per stage), so that the workers can find the keys of
    their own chunks side by side: that is a scan of every parameter and attribute row.
    """
    spans = [span for stage, study_id in stages
             for span in storage.call_with_retries("plan the export", _spans, storage, study_id)]
    parts = split(spans, _workers(workers))
    found = in_processes(storage, [functools.partial(_keys_of, storage, part) for part in parts])
    keys: dict[int, StageKeys] = {}
    for part in found:
        for study_id, more in part.items():
            keys[study_id] = _merged(keys[study_id], more) if study_id in keys else more
    return [stage_source(storage, stage, study_id, keys.get(study_id)) for stage, study_id in stages], parts


MAX_WORKERS = 4


def _workers(asked: int | None) -> int:
    if asked is not None:
        return max(1, asked)
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _csv_part(storage: RetryingStorage, columns: Sequence[str], sources: Sequence[StageSource], spans: Sequence[Span],
              path: Path) -> int:
    return write_csv(path, columns, read_spans(storage, sources, spans), header=False)


def _arrow_part(storage: RetryingStorage, columns: Sequence[str], sources: Sequence[StageSource],
                spans: Sequence[Span]) -> list[dict[str, pa.Array]]:
    return [arrow_chunk(columns, chunk) for chunk in read_spans(storage, sources, spans)]


def _arrow_of_parts(storage: RetryingStorage, columns: Sequence[str], sources: Sequence[StageSource],
                    parts: Sequence[Sequence[Span]]) -> pa.Table:
    calls = [functools.partial(_arrow_part, storage, columns, sources, part) for part in parts]
    return combined(columns, (chunk for chunks in in_processes(storage, calls) for chunk in chunks))


def stage_source(storage: RetryingStorage, stage: str, study_id: int, keys: StageKeys | None) -> StageSource:
    """The stage's columns from its ``keys`` (None: it has no trials), so that a CSV header can go first."""
    # Always "value": trials_dataframe calls it value_<metric> once the study names its metric, as every
    # stage does (for optuna-dashboard); an export's columns stay what they were.
    value_column = "value"
    if keys is None:  # trials_dataframe of a study without trials has no columns
        return StageSource(stage, study_id, value_column, [], StageKeys({}, (), ()))  # no trials, no columns
    named = [sorted(column_name(kind, key) for key in found)
             for kind, found in (("params", keys.params), ("user_attrs", keys.user_attrs),
                                 ("system_attrs", keys.system_attrs))]
    columns = ["number", value_column, "datetime_start", "datetime_complete", "duration",
               *(name for names in named for name in names), "state"]
    return StageSource(stage, study_id, value_column, columns, keys)


def _keys_of(storage: RetryingStorage, spans: Sequence[Span]) -> dict[int, StageKeys]:
    """The parameters (with their distributions) and attribute keys of the trials of ``spans``, by study."""
    ranges: dict[int, tuple[int, int]] = {}
    for span in spans:
        after, upto = ranges.get(span.study_id, (span.after, span.upto))
        ranges[span.study_id] = (min(after, span.after), max(upto, span.upto))
    return {study_id: storage.call_with_retries("read the trial columns", _range_keys, storage, study_id, after, upto)
            for study_id, (after, upto) in ranges.items()}


def _range_keys(storage: RetryingStorage, study_id: int, after: int, upto: int) -> StageKeys:
    t = _TRIALS.c
    in_range = sa.and_(t.trial_id > after, t.trial_id <= upto)
    with storage.engine.connect() as conn:
        ours = conn.execute(sa.select(sa.func.count()).where(in_range, t.study_id == study_id)).scalar()
        every = conn.execute(sa.select(sa.func.count()).where(in_range)).scalar()

        def distinct(table: sa.Table, *columns: sa.Column[Any]) -> list[Any]:
            query = sa.select(*columns).distinct().where(table.c.trial_id > after, table.c.trial_id <= upto)
            if ours != every:  # other studies' trials in the range: only the study's rows, by a join
                query = query.join(_TRIALS, t.trial_id == table.c.trial_id).where(t.study_id == study_id)
            return list(conn.execute(query).all())

        seen = conn.execute(sa.select(sa.func.max(_PARAMS.c.param_id))).scalar() or 0
        params: dict[str, tuple[str, ...]] = {}
        for name, distribution in distinct(_PARAMS, _PARAMS.c.param_name, _PARAMS.c.distribution_json):
            params[name] = (*params.get(name, ()), distribution)
        user = tuple(key for (key,) in distinct(_USER_ATTRS, _USER_ATTRS.c.key))
        # A kept model's artifact attribute has a key of its own (artifacts:<uuid>): a column for each
        # would grow the file with the study; hpsearch predict and the dashboard find them instead.
        system = tuple(key for (key,) in distinct(_SYSTEM_ATTRS, _SYSTEM_ATTRS.c.key) if not key.startswith(ARTIFACTS))
    return StageKeys(params, user, system, seen)


def _merged(a: StageKeys, b: StageKeys) -> StageKeys:
    params = {name: tuple(dict.fromkeys((*a.params.get(name, ()), *b.params.get(name, ()))))
              for name in (*a.params, *b.params)}
    return StageKeys(params, tuple(dict.fromkeys((*a.user_attrs, *b.user_attrs))),
                     tuple(dict.fromkeys((*a.system_attrs, *b.system_attrs))), min(a.params_seen, b.params_seen))


def column_name(kind: str, key: str) -> str:
    """``params_lr``: trials_dataframe's flattened name (an empty key leaves no trailing ``_``)."""
    return f"{kind}_{key}" if key else kind


def union(column_lists: Iterable[Sequence[str]]) -> list[str]:
    """The columns of stages concatenated: in order of first appearance, as ``pandas.concat`` orders them."""
    seen: dict[str, None] = {STAGE_COLUMN: None}
    for columns in column_lists:
        seen.update(dict.fromkeys(columns))
    return list(seen)


@dataclass(frozen=True)
class Span:
    """The trials of a stage with ids in ``(after, upto]``: one chunk, read with one query."""

    study_id: int
    after: int
    upto: int


def _spans(storage: RetryingStorage, study_id: int) -> list[Span]:
    """The stage's chunks, :data:`CHUNK_TRIALS` trials each, by trial id.

    The edges are found in SQL (every CHUNK_TRIALS-th trial id), so planning reads a few numbers,
    not every trial. Trials created after the plan are not exported.
    """
    t = _TRIALS.c
    numbered = sa.select(t.trial_id, sa.func.row_number().over(order_by=t.trial_id).label("n")).where(
        t.study_id == study_id).subquery()
    edges = sa.select(numbered.c.trial_id).where(numbered.c.n % CHUNK_TRIALS == 0).order_by(numbered.c.trial_id)
    with storage.engine.connect() as conn:
        uptos = list(conn.execute(edges).scalars())
        last = conn.execute(sa.select(sa.func.max(t.trial_id)).where(t.study_id == study_id)).scalar()
    if last is not None and (not uptos or uptos[-1] != last):
        uptos.append(last)
    return [Span(study_id, after, upto) for after, upto in zip([-1, *uptos[:-1]], uptos, strict=True)]


def split(spans: Sequence[Span], workers: int) -> list[list[Span]]:
    """``spans`` as at most ``workers`` runs of consecutive spans, of sizes differing by one at most."""
    count = min(workers, len(spans))
    if count == 0:
        return []
    size, extra = divmod(len(spans), count)
    runs, start = [], 0
    for i in range(count):
        end = start + size + (i < extra)
        runs.append(list(spans[start:end]))
        start = end
    return runs


def read_spans(storage: RetryingStorage, sources: Sequence[StageSource], spans: Iterable[Span]) -> Iterator[Chunk]:
    """The trials of each span in turn, a chunk each, each chunk read with its retries."""
    by_study = {source.study_id: source for source in sources}
    readers: dict[int, _ChunkReader] = {}
    for span in spans:
        reader = readers.get(span.study_id)
        if reader is None:
            reader = readers[span.study_id] = _ChunkReader(by_study[span.study_id])
        yield storage.call_with_retries("read trials to export", reader.read, storage, span.after, span.upto)


T = TypeVar("T")


def in_processes(storage: RetryingStorage, calls: Sequence[Callable[[], T]]) -> list[T]:
    """The results of ``calls``, each run in a process of its own (forked, so they start at once).

    SQLite answers a query while holding Python's GIL, and decoding and writing the rows is Python
    too, so threads would take turns; processes use every core. A call's error is raised here. One
    call, a platform without ``fork``, or a caller with threads of its own runs them in this process.
    """
    # Forking a process that runs other threads can copy a lock one of them holds: then stay in this one.
    if len(calls) <= 1 or "fork" not in multiprocessing.get_all_start_methods() or threading.active_count() > 1:
        return [call() for call in calls]
    context = multiprocessing.get_context("fork")
    children = []
    for call in calls:
        reader, writer = context.Pipe(duplex=False)
        child = context.Process(target=_child, args=(storage, call, writer), name="hpsearch-export", daemon=True)
        child.start()
        writer.close()
        children.append((child, reader))
    outcomes: list[tuple[bool, Any]] = []
    for child, reader in children:
        try:
            outcomes.append(reader.recv())
        except EOFError:
            outcomes.append((False, RuntimeError(f"an export process ended with exit code {child.exitcode}")))
        finally:
            reader.close()
    for child, _ in children:
        child.join()
    for ok, value in outcomes:
        if not ok:
            raise value
    return [value for _, value in outcomes]


def _child(storage: RetryingStorage, call: Callable[[], Any], writer: Any) -> None:
    """In a forked process: run ``call`` and send back its result or its error."""
    storage.engine.dispose(close=False)  # the parent's pooled connections are not for sharing
    try:
        outcome: tuple[bool, Any] = (True, call())
    except BaseException as error:
        outcome = (False, error)
    try:
        writer.send(outcome)
    except Exception as error:  # an error that can't be pickled goes back as its text
        writer.send((False, RuntimeError(f"{type(outcome[1]).__name__}: {outcome[1]}; ({error})")))
    writer.close()


# A SELECT of this many subqueries at most; more keys are read by further SELECTs of the same trials
# (SQLite allows 2,000 result columns, and every database slows down on very wide statements).
_COLUMNS_PER_QUERY = 200


@dataclass(frozen=True)
class _Pick:
    """One exported column read from Optuna's key-value tables: the value of ``key`` in ``table``."""

    column: str
    table: sa.Table
    key: str
    param: str | None = None  # a parameter's name: decoded with its distribution; else JSON text


def _key_value(table: sa.Table) -> tuple[sa.Column[Any], sa.Column[Any]]:
    if table is _PARAMS:
        return table.c.param_name, table.c.param_value
    return table.c.key, table.c.value_json


class _ChunkReader:
    """Reads a stage's trials as one row per trial and decodes them into trials_dataframe's values.

    Optuna keeps a trial's parameters and attributes as one row per key. Turning those rows into
    columns in Python costs a loop step for each of the ~2 million rows of 100,000 trials, so the
    database does it, and the rows come back as columns with one ``zip``. How depends on the database:
    SQLite is fastest with a scalar subquery per key (a lookup in the table's (trial_id, key) index);
    PostgreSQL and MySQL with one ``GROUP BY trial_id`` per table, a ``MAX(CASE ...)`` per key, over
    the chunk's range of that index (3 to 4 times faster there than the subqueries).
    """

    def __init__(self, source: StageSource) -> None:
        self.source = source
        columns = set(source.columns)
        keys = source.keys
        # A parameter with one distribution is decoded with it; the rows that have another (a trial
        # added while the export runs, or a study whose space changed) are read again one by one.
        self.single = {name: json_to_distribution(found[0]) for name, found in keys.params.items() if len(found) == 1}
        self.known = {name: found[0] for name, found in keys.params.items() if len(found) == 1}
        self.picks = [_Pick(column_name("params", name), _PARAMS, name, name) for name in sorted(self.single)]
        for table, kind, found in ((_USER_ATTRS, "user_attrs", keys.user_attrs),
                                   (_SYSTEM_ATTRS, "system_attrs", keys.system_attrs)):
            self.picks.extend(_Pick(column_name(kind, key), table, key) for key in found
                              if column_name(kind, key) in columns)
        self._distributions: dict[str, BaseDistribution] = {}

    def read(self, storage: RetryingStorage, after: int, upto: int) -> Chunk:
        """The trials with ids in ``(after, upto]``."""
        t, v = _TRIALS.c, _VALUES.c
        in_chunk = sa.and_(t.study_id == self.source.study_id, t.trial_id > after, t.trial_id <= upto)
        batches = [self.picks[i:i + _COLUMNS_PER_QUERY] for i in range(0, len(self.picks), _COLUMNS_PER_QUERY)] or [[]]
        with storage.engine.connect() as conn:
            subqueries = conn.dialect.name == "sqlite"
            picked, joins = _picked(batches[0], after, upto, subqueries)
            # Optuna numbers a study's trials in the order of their ids, so id order is number order.
            query = (sa.select(t.trial_id, t.number, t.state, t.datetime_start, t.datetime_complete, v.value,
                               v.value_type, *picked)
                     .select_from(_joined(_TRIALS.outerjoin(_VALUES, sa.and_(
                         v.trial_id == t.trial_id, v.objective == 0, v.trial_id > after, v.trial_id <= upto)), joins))
                     .where(in_chunk).order_by(t.trial_id))
            rows = _driver_rows(conn, query)
            if not rows:
                return Chunk(self.source.stage, 0, {})
            ids, numbers, states, starts, completes, values, value_types, *columns = (
                list(c) for c in zip(*rows, strict=True))
            for batch in batches[1:]:
                picked, joins = _picked(batch, after, upto, subqueries)
                more = _driver_rows(conn, sa.select(t.trial_id, *picked).select_from(_joined(_TRIALS, joins))
                                    .where(in_chunk).order_by(t.trial_id))
                columns.extend(_aligned(ids, more, len(batch)))
            exceptions = self._other_distributions(conn, ids[0], ids[-1])
        chunk = self._trials(ids, numbers, states, starts, completes, values, value_types)
        for pick, column in zip(self.picks, columns, strict=True):
            if pick.param is None:
                chunk.json[pick.column] = column
            else:
                chunk.columns[pick.column] = self._decoded(pick.param, column)
        if exceptions:
            row_of = {trial_id: i for i, trial_id in enumerate(ids)}
            for trial_id, name, distribution_json, value in exceptions:
                row, column_of = row_of.get(trial_id), column_name("params", name)
                # None: a trial of another study in the same id range; or a parameter new since the export began.
                if row is not None and column_of in self.source.columns:
                    external = self._distribution(distribution_json).to_external_repr(value)
                    chunk.columns.setdefault(column_of, [None] * chunk.size)[row] = external
        return chunk

    def _other_distributions(self, conn: Connection, first: int, last: int) -> list[Any]:
        """The parameter rows of trials ``first..last`` that may not be of their parameter's one known
        distribution: those of parameters with several, and rows written after the keys were found.

        The row ids are in every index of the table, so this reads no parameter row it does not return.
        """
        p = _PARAMS.c
        several = [name for name in self.source.keys.params if name not in self.known]
        maybe = [p.param_id > self.source.keys.params_seen, *([p.param_name.in_(several)] if several else [])]
        query = sa.select(p.trial_id, p.param_name, p.distribution_json, p.param_value).where(
            p.trial_id.between(first, last), sa.or_(*maybe))
        rows = _driver_rows(conn, query)
        return [row for row in rows if self.known.get(row[1]) != row[2]]

    def _trials(self, ids: Sequence[int], numbers: Sequence[int], states: Sequence[Any], starts: Sequence[Any],
                completes: Sequence[Any], values: Sequence[float | None], value_types: Sequence[Any]) -> Chunk:
        local_starts, local_completes = _local_times(starts), _local_times(completes)
        columns: dict[str, list[Any]] = {
            "number": list(numbers),
            self.source.value_column: [_value(value, kind) for value, kind in zip(values, value_types, strict=True)],
            "datetime_start": local_starts,
            "datetime_complete": local_completes,
            "duration": [c - s if s is not None and c is not None else None
                         for s, c in zip(local_starts, local_completes, strict=True)],
            "state": [getattr(state, "name", state) for state in states],
        }
        return Chunk(self.source.stage, len(ids), columns)

    def _decoded(self, param: str, column: Sequence[Any]) -> list[Any]:
        distribution = self.single[param]
        if isinstance(distribution, FloatDistribution):
            return list(column)  # its external value is the stored one
        external = distribution.to_external_repr
        return [None if v is None else external(v) for v in column]

    def _distribution(self, distribution_json: str) -> BaseDistribution:
        distribution = self._distributions.get(distribution_json)
        if distribution is None:
            distribution = self._distributions[distribution_json] = json_to_distribution(distribution_json)
        return distribution


def _picked(picks: Sequence[_Pick], after: int, upto: int,
            subqueries: bool) -> tuple[list[sa.ColumnElement[Any]], list[sa.Subquery]]:
    """The columns that read ``picks`` for trials ``(after, upto]``, and the grouped tables to join for them."""
    t = _TRIALS.c
    found: dict[_Pick, sa.ColumnElement[Any]] = {}
    joins: list[sa.Subquery] = []
    if subqueries:
        for pick in picks:
            key, value = _key_value(pick.table)
            found[pick] = sa.select(value).where(pick.table.c.trial_id == t.trial_id, key == pick.key).scalar_subquery()
    else:
        for table in dict.fromkeys(pick.table for pick in picks):
            key, value = _key_value(table)
            mine = [pick for pick in picks if pick.table is table]
            grouped = (sa.select(table.c.trial_id, *(sa.func.max(sa.case((key == pick.key, value))).label(f"v{i}")
                                                     for i, pick in enumerate(mine)))
                       .where(table.c.trial_id > after, table.c.trial_id <= upto).group_by(table.c.trial_id)
                       .subquery())
            joins.append(grouped)
            found.update((pick, grouped.c[f"v{i}"]) for i, pick in enumerate(mine))
    # 'null' for a trial without the key: the texts then join into one JSON array as they are.
    return [found[p] if p.param is not None else sa.func.coalesce(found[p], "null") for p in picks], joins


def _joined(base: sa.FromClause, joins: Sequence[sa.Subquery]) -> sa.FromClause:
    for grouped in joins:
        base = base.outerjoin(grouped, grouped.c.trial_id == _TRIALS.c.trial_id)
    return base


def _aligned(ids: Sequence[int], rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """The columns of ``rows`` (trial id first) in the order of ``ids``; ``None`` where a trial has no row."""
    if [row[0] for row in rows] == list(ids):
        return [list(column) for column in zip(*rows, strict=True)][1:] if rows else [[] for _ in range(width)]
    by_id = {row[0]: row for row in rows}
    return [[by_id[i][k] if i in by_id else None for i in ids] for k in range(1, width + 1)]


def _value(value: float | None, kind: Any) -> float | None:
    """A stored objective value: infinities are stored as a kind with no value."""
    name = getattr(kind, "name", kind)
    if name == "INF_POS":
        return math.inf
    if name == "INF_NEG":
        return -math.inf
    return value


def _driver_rows(conn: Connection, query: sa.Select[Any]) -> list[Any]:
    """The rows of ``query`` as the database driver returns them: tuples, no SQLAlchemy ``Row`` objects.

    Building a ``Row`` for each of the rows of 100,000 trials takes about as long as the database takes
    to read them. The driver's values are plain: text for SQLite's datetimes and enums (see
    :func:`_local_times`, :func:`_value`).
    """
    compiled: Any = query.compile(dialect=conn.dialect)
    params = compiled.construct_params()
    args = tuple(params[name] for name in compiled.positiontup) if compiled.positional else params
    if conn.dialect.name == "postgresql":
        # PostgreSQL compiles a query this wide with its JIT once it expects many rows: over a second
        # per chunk, for queries that run in a tenth of that. Off for this transaction only.
        conn.exec_driver_sql("SET LOCAL jit = off")
    result = conn.exec_driver_sql(str(compiled), args)
    try:
        return list(result.cursor.fetchall())  # the driver's cursor: its rows as they are
    finally:
        result.close()


def _local_times(column: Sequence[datetime.datetime | str | None]) -> list[datetime.datetime | None]:
    """Optuna stores naive UTC and shows trials in naive local time (``TrialModel.datetime_start``).

    SQLite's driver returns the stored text. One UTC offset serves the chunk unless it spans a change
    of the local offset (daylight saving), where each value is converted on its own.
    """
    utc = [datetime.datetime.fromisoformat(v) if isinstance(v, str) else v for v in column]
    present = [v for v in utc if v is not None]
    if not present:
        return utc
    offsets = {_offset(min(present)), _offset(max(present))}
    if len(offsets) == 1:
        shift = offsets.pop()
        return [None if v is None else v + shift for v in utc]
    return [None if v is None else v + _offset(v) for v in utc]


def _offset(utc: datetime.datetime) -> datetime.timedelta:
    local = utc.replace(tzinfo=datetime.timezone.utc).astimezone()
    offset = local.utcoffset()
    return offset if offset is not None else datetime.timedelta(0)


def _json_column(texts: Sequence[str]) -> list[Any]:
    """``json.loads`` of each text, NaN and missing as ``None`` (as pandas writes it), lists and dicts as text.

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

def write_csv(path: Path, columns: Sequence[str], chunks: Iterable[Chunk], header: bool = True) -> int:
    """Write ``columns`` (unless not ``header``) and then each chunk's rows to ``path``; returns the number of rows."""
    rows = 0
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out, lineterminator="\n")
        if header:
            writer.writerow(columns)
        for chunk in chunks:
            empty = [None] * chunk.size
            cells = [_json_cells(chunk.json[name]) if name in chunk.json
                     else _TEXT.get(name, _as_is)(chunk.columns.get(name, empty)) for name in columns[1:]]
            writer.writerows(zip([chunk.stage] * chunk.size, *cells, strict=True))
            rows += chunk.size
    return rows


# JSON text that holds only numbers and nulls: its numbers are already Python's repr, the CSV's text.
_NOT_NUMBERS = re.compile(r"[^0-9eE.+\-nul,]")


def _json_cells(texts: list[str]) -> list[Any]:
    """A JSON column's CSV cells: numbers as their text, null as empty; anything else parsed first."""
    if _NOT_NUMBERS.search(",".join(texts)) is None:
        return [None if text == "null" else text for text in texts]
    return _json_column(texts)


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

def arrow_chunk(columns: Sequence[str], chunk: Chunk) -> dict[str, pa.Array]:
    """A chunk's columns as Arrow arrays, each of the type its own values have."""
    arrays = {STAGE_COLUMN: pa.array([chunk.stage] * chunk.size, pa.string())}
    for name in columns[1:]:
        values = chunk.values(name)
        arrays[name] = pa.nulls(chunk.size) if values is None else _arrow_array(values)
    return arrays


def combined(columns: Sequence[str], chunks: Iterable[dict[str, pa.Array]]) -> pa.Table:
    """Chunks' arrays (:func:`arrow_chunk`) as one table, each column of one type."""
    arrays: dict[str, list[pa.Array]] = {name: [] for name in columns}
    for chunk in chunks:
        for name in columns:
            arrays[name].append(chunk[name])
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

