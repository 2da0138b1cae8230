"""Study files: YAML plus ``--set`` overrides in, one frozen :class:`StudySpec` out.

This is the only module that handles the raw dictionaries of a study file. Every rule it enforces names
the offending field as a dotted path and says what is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import copy
import dataclasses
from dataclasses import dataclass, field
import json
import math
from pathlib import Path
import re
from typing import Any, Literal, cast

import yaml

from hpsearch import executors, pruners, samplers
from hpsearch.errors import ConfigError, SpecError, StorageError, did_you_mean, one_of
from hpsearch.executors.base import ExecutorSpec
from hpsearch.narrow import top_count
from hpsearch.pruners import PrunerSpec
from hpsearch.space import (
    CategoricalParam,
    FloatParam,
    Space,
    corner_configs,
    count_configs,
    grid_configs,
    numeric_params,
    parse_space,
    space_to_raw,
)
from hpsearch.storage import MAX_NAME_LENGTH, MAX_TEXT_BYTES, check_url
from hpsearch.train import DataConfig, build_train_config, knob_names, parse_data_config, reported_metrics
from hpsearch.train.lr_range import RangeSettings, parse_settings
from hpsearch.train.models import model_kind
from hpsearch.values import key_problem, spec_int, spec_keys, spec_number

TOP_KEYS = (
    "name", "storage", "metric", "direction", "seed", "data", "model", "train", "space",
    "stages", "sampler", "trials", "grid", "max_failures", "executor", "pruner", "timeout", "keep", "artifacts",
)
KEEP = ("best", "all", "none")  # which complete trials keep their trained model (hpsearch.artifacts)
STAGE_KEYS = ("name", "sampler", "trials", "grid", "max_failures", "timeout", "pruner", "narrow", "freeze", "warm_start",
              "history", "startup_trials", "train", "prior_trials", "kind", "repeat")
REPEAT_KEYS = ("max", "min_improvement")
MAX_ROUNDS = 100  # repeat.max: rounds beyond the first
STAGE_KINDS = ("search", "lr_range")  # lr_range: a learning-rate range test that sets later stages' lr range
LR_RANGE_KEYS = ("name", "kind", "min", "max", "steps", "repeats")
PRIOR_TRIALS = ("same", "all", "none")  # which earlier trials a modelling sampler starts from
HISTORY_KEYS = ("recent", "best")
SHORTHAND_KEYS = ("sampler", "trials", "grid", "max_failures", "timeout")
NARROW_KEYS = ("top", "margin", "keep_min")
EXECUTOR_KEYS = ("kind", "workers", "fuse", "address", "gpus_per_trial", "cpus_per_trial", "dashboard")
MAX_FUSE = 4096  # trials in one pack: beyond this even a large GPU gains nothing more per trial
# Caps on budgets: far beyond any real search, low enough that a typo (1e30) is caught, not obeyed.
MAX_TRIALS = 1_000_000  # trials of one stage (and failures, warm starts, history)
MAX_WORKERS = 1024  # trials running at once
MAX_TIMEOUT_S = 366 * 24 * 3600  # a year; longer overflows the clocks that wait on it
MAX_GRID = 1_000_000  # configurations of one grid
MAX_SEED = 2**32 - 1
RAY_ONLY_KEYS = ("address", "gpus_per_trial", "cpus_per_trial", "dashboard")
Direction = Literal["minimize", "maximize"]
DIRECTIONS: tuple[Direction, ...] = ("minimize", "maximize")
DEFAULT_MAX_FAILURES = 10
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_RAY_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})")
# How many corner configurations of a space are checked against the training core before a run.
_VALIDATION_CORNERS = 512


@dataclass(frozen=True)
class NarrowSpec:
    """How a stage derives its space from the previous stage's best trials."""

    top: float | int  # a float in (0, 1): that fraction of the complete trials; an int: that many
    margin: float = 0.1  # widen the span of the top trials by this fraction of it (in log space for log params)
    keep_min: int = 1  # categorical parameters keep at least this many choices, by rank

    def top_count(self, complete: int) -> int:
        """How many of ``complete`` trials form the top set."""
        return top_count(self.top, complete)

    def needs(self) -> int:
        """The fewest complete trials worth narrowing on: the count, or enough for the fraction to pick one."""
        return self.top if isinstance(self.top, int) else math.ceil(1 / self.top - 1e-9)


@dataclass(frozen=True)
class RepeatSpec:
    """A stage that narrows again from its own best trials and runs again: up to ``max`` more rounds,
    while each round improves the best by at least ``min_improvement`` (relative) and the space shrinks."""

    max: int
    min_improvement: float = 0.01


DEFAULT_ROUND_NARROW = NarrowSpec(0.25, 0.1)  # a repeated stage without narrow: its rounds narrow so


@dataclass(frozen=True)
class HistoryLimits:
    """How many past trials of a stage samplers (TPE) and pruners model: the ``recent`` latest finished
    ones and the ``best`` best complete ones. It bounds their cost per trial however large the stage grows."""

    recent: int = 1000
    best: int = 100


@dataclass(frozen=True)
class StageSpec:
    """One stage: an Optuna study run with one sampler up to a budget of finished trials."""

    name: str
    sampler: str
    trials: int  # budget of finished (complete or pruned) trials
    grid: Mapping[str, int] = field(default_factory=dict)  # grid points per numeric parameter
    max_failures: int = DEFAULT_MAX_FAILURES
    timeout: float | None = None  # seconds: no new trial starts after this long in one run
    pruner: PrunerSpec | None = None  # None: the study's pruner
    narrow: NarrowSpec | None = None  # None: the previous stage's space as it is (the original for the first)
    freeze: tuple[str, ...] = ()  # parameters fixed at the previous stage's best value
    warm_start: int = 0  # the previous stage's best N configurations run first
    history: HistoryLimits = HistoryLimits()
    startup_trials: int | None = None  # model-based samplers: random trials before modelling (None: their default)
    train: Mapping[str, Any] = field(default_factory=dict)  # this stage's overrides of the study's train knobs
    prior_trials: str = "same"  # one of PRIOR_TRIALS: the previous stage's trials as the sampler's history
    repeat: RepeatSpec | None = None  # the stage's rounds (on each of them); None: it runs once
    round: int = 1  # 1: the stage as written; k > 1: its k-th round, named NAME.k, narrowed from round k-1
    kind: str = "search"  # one of STAGE_KINDS
    lr_range: RangeSettings | None = None  # kind lr_range: the test's sweep (hpsearch.lr_range_stage)

    @property
    def derived(self) -> bool:
        """Whether this stage's space is derived from the previous stage's trials."""
        return self.narrow is not None or bool(self.freeze)


@dataclass(frozen=True)
class StudySpec:
    """A validated study file. ``model`` and ``train`` stay mappings: the training core owns their vocabulary."""

    name: str
    storage: str | None
    metric: str
    direction: Direction
    seed: int
    data: DataConfig
    model: Mapping[str, Any]
    train: Mapping[str, Any]
    space: Space
    stages: tuple[StageSpec, ...]
    executor: ExecutorSpec
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    keep: str = "best"  # one of KEEP
    artifacts: str | None = None  # where kept models go; None: beside a SQLite file, else ./hpsearch-artifacts
    # The study file as read, after --set: what each stage stores (hpsearch.identity).
    resolved: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def stage_pruner(self, stage: StageSpec) -> PrunerSpec:
        return stage.pruner or self.pruner

    def stage_train(self, stage: StageSpec) -> Mapping[str, Any]:
        """The ``train`` knobs of ``stage``'s trials: the study's, with the stage's overrides."""
        return {**self.train, **stage.train} if stage.train else self.train

    def study_name(self, stage: StageSpec) -> str:
        """The Optuna study name of a stage, e.g. ``car-price/coarse``."""
        return f"{self.name}/{stage.name}"

    @property
    def task(self) -> str:
        return self.data.task

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-5`` (no dot) as a string; read it as the float the user meant.

    A key given twice is refused: YAML keeps the last silently, which hides the first.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # <<: *anchor may repeat keys on purpose
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise _DuplicateKeyError(f"key {key!r} is given twice, on lines {first_line[key]} and {line}; keep one")
                first_line[key] = line
            except TypeError:  # a list or mapping as a key: construct_mapping names it
                continue
        return super().construct_mapping(node, deep=deep)


class _DuplicateKeyError(yaml.YAMLError):
    pass


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


MAX_NESTING = 50  # mappings and lists inside each other: a study file needs a handful


def parse_yaml(text: str, source: str) -> Any:
    try:
        value = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except RecursionError:
        raise SpecError("", f"{source}: is nested more than {MAX_NESTING} levels deep") from None
    except _DuplicateKeyError as exc:
        raise SpecError("", f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError("", f"{source}:{where} is not valid YAML: {problem}") from None
    _check_nesting(value, source)
    return value


def _check_nesting(value: Any, source: str) -> None:
    """Refuse a value that holds itself (a YAML alias such as ``&a [*a]``) or nests past :data:`MAX_NESTING`."""
    todo: list[tuple[Any, int, tuple[int, ...]]] = [(value, 0, ())]
    while todo:  # without recursion: the value may be deeper than Python's stack
        node, depth, inside = todo.pop()
        if not isinstance(node, (dict, list)):
            continue
        if id(node) in inside:
            raise SpecError("", f"{source}: a YAML alias (*name) refers to a value that holds it; write the value out")
        if depth >= MAX_NESTING:
            raise SpecError("", f"{source}: is nested more than {MAX_NESTING} levels deep")
        children = node.values() if isinstance(node, dict) else node
        todo += [(child, depth + 1, (*inside, id(node))) for child in children]


def read_study_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError("", f"study file {path} does not exist") from None
    except UnicodeDecodeError as exc:
        raise SpecError("", f"study file {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                            f"{exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise SpecError("", f"cannot read study file {path}: {exc.strerror}") from None
    raw = parse_yaml(text, str(path))
    if not isinstance(raw, dict):
        raise SpecError("", f"{path} must hold a mapping of keys (name, data, space, ...), got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``--set a.b.0.c=value`` overrides; values are parsed as YAML. Returns a new dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise SpecError("--set", f"expects KEY=VALUE with a dotted KEY such as stages.0.trials=5, got {item!r}")
        value = parse_yaml(text, f"--set {key}")
        parts = key.strip().split(".")
        node: Any = raw
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise SpecError(f"--set {key}", f"{where}: list index must be 0..{len(node) - 1}, got {part!r}")
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, {})
            else:
                raise SpecError(f"--set {key}", f"{'.'.join(parts[:depth])} is a value, not a mapping or list")
    return raw


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> StudySpec:
    """Read, override and validate a study file."""
    return parse_spec(apply_overrides(read_study_file(path), overrides))


def parse_spec(raw: Mapping[str, Any]) -> StudySpec:
    bad_key = key_problem(raw)
    if bad_key:
        raise SpecError(*bad_key)
    spec_keys(raw, TOP_KEYS, "")
    name = _name(raw.get("name"), "name")
    # Trial seeds are seed + n, wrapped to 32 bits (objective.trial_seed): NumPy and user code take no more.
    seed = spec_int(raw.get("seed", 0), "seed", minimum=0, maximum=MAX_SEED)
    storage = _storage(raw.get("storage"))
    data = _data(raw.get("data"), seed)
    metric, direction = _objective(raw, data.task)
    model = _mapping(raw.get("model", {"kind": "mlp"}), "model")
    train = _mapping(raw.get("train", {}), "train")
    _check_set_once(model, train)
    space = parse_space(raw.get("space"))
    _check_space_fits_storage(space)
    _check_space_against_core(space, model, train, data.task, metric, direction, seed)
    stages = _stages(raw, space)
    written = [stage for stage in stages if stage.round == 1]  # as the file lists them (rounds share their train)
    for i, stage in enumerate(written):
        if stage.train:
            path = f"stages.{i}.train" if "stages" in raw else "train"
            _check_stage_train(stage, path, space, model, train, data.task, metric, direction, seed)
    _check_study_names_fit_storage(name, stages, "stages" in raw)
    executor = _executor(raw.get("executor", {}))
    pruner = _pruner(raw.get("pruner"), "pruner") or PrunerSpec()
    keep = raw.get("keep", "best")
    if not isinstance(keep, str) or keep not in KEEP:
        raise SpecError("keep", f"must be one of {', '.join(KEEP)}, got {keep!r}")
    artifacts = raw.get("artifacts")
    if artifacts is not None and (not isinstance(artifacts, str) or not artifacts.strip()):
        raise SpecError("artifacts", f"must be a directory path, got {artifacts!r}")
    return StudySpec(name, storage, metric, direction, seed, data, model, train, space, stages, executor, pruner,
                     keep, artifacts, resolved=copy.deepcopy(dict(raw)))


def _storage(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise SpecError("storage", "must be a database URL such as sqlite:///runs/study.db")
    try:
        check_url(value)
    except StorageError as exc:  # its message begins "storage ...": it names the field
        raise SpecError("", str(exc)) from None
    return value


def _check_set_once(model: Mapping[str, Any], train: Mapping[str, Any]) -> None:
    """A model knob set in model: and in train: would be read from one of them only: refuse it.

    A user model's (``python``) section declares its knobs with their defaults, so there it may be both.
    """
    if "python" in model:
        return
    for key in train:
        if key in model and key not in ("kind", "python"):
            raise SpecError(f"train.{key}", f"is also set in model.{key}; set it in one place")


def _name(value: Any, path: str) -> str:
    if value is None:
        raise SpecError(path, "is required, such as name: car-price")
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise SpecError(path, f"must be letters, digits, '.', '_' or '-' (starting with a letter or digit), got {value!r}")
    return value


def _check_study_names_fit_storage(name: str, stages: Sequence[StageSpec], listed: bool) -> None:
    """Stage studies are named NAME/STAGE; SQL servers refuse names longer than the storage's column.

    Checked for every storage, SQLite too (it would accept them), so that a study file stays portable.
    """
    index, stage = max(enumerate(stages), key=lambda item: len(item[1].name))
    full = len(name) + 1 + len(stage.name)
    if full > MAX_NAME_LENGTH:
        where = "name" if len(name) >= len(stage.name) or not listed else f"stages.{index}.name"
        raise SpecError(where, f"the Optuna study of stage {stage.name[:20]!r} would be named NAME/STAGE, {full} characters; "
                               f"the storage holds names of at most {MAX_NAME_LENGTH}: shorten name or the stage's name")


def _check_space_fits_storage(space: Space) -> None:
    """Parameter names and the space as stored with each stage must fit Optuna's SQL columns."""
    for p in space:
        if len(p.name) > MAX_NAME_LENGTH:
            raise SpecError(f"space.{p.name[:20]}...", f"a parameter name of {len(p.name)} characters; "
                                                      f"the storage holds names of at most {MAX_NAME_LENGTH}")
    # Stored as a JSON string inside a JSON attribute: quotes are escaped, so this is the larger form.
    stored = len(json.dumps(json.dumps(space_to_raw(space), sort_keys=True)).encode())
    if stored > MAX_TEXT_BYTES:
        raise SpecError("space", f"is {stored} bytes as stored with each stage; MySQL and MariaDB hold at most "
                                 f"{MAX_TEXT_BYTES}: use fewer or shorter categorical choices")


def _mapping(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be a mapping, got {type(value).__name__}")
    return dict(value)


def _data(raw: Any, seed: int) -> DataConfig:
    if raw is None:
        raise SpecError("data", "is required, such as {csv: data.csv, target: price, task: regression}")
    try:
        return parse_data_config(_mapping(raw, "data"), seed=seed)
    except ConfigError as exc:
        raise SpecError(f"data.{exc.key}" if exc.key else "data", exc.message) from None


def _objective(raw: Mapping[str, Any], task: str) -> tuple[str, Direction]:
    metrics = reported_metrics(task)
    metric = raw.get("metric", "val_rmse" if task == "regression" else "val_loss")
    if not isinstance(metric, str) or metric not in metrics:  # a list here is a typo, not a key to look up
        raise SpecError(
            "metric",
            f"{metric!r} is not reported by the training core for task {task}"
            f"{did_you_mean(str(metric), metrics)}; {one_of(metrics)}",
        )
    natural = metrics[metric]
    direction = raw.get("direction", natural)
    if direction not in DIRECTIONS:
        raise SpecError("direction", f"unknown direction {direction!r}; {one_of(DIRECTIONS)}")
    if direction != natural:
        better = "larger" if natural == "maximize" else "smaller"
        raise SpecError("direction", f"{metric} is better when {better}: use {natural} or leave direction out (got {direction})")
    return str(metric), cast(Direction, direction)


def _check_space_against_core(
    space: Space, model: Mapping[str, Any], train: Mapping[str, Any], task: str, metric: str, direction: str, seed: int
) -> None:
    try:
        allowed = knob_names(model_kind(model), model)  # a user model's knobs depend on its section
    except ConfigError as exc:  # its keys already read model.<field>
        raise SpecError(exc.key or "model", exc.message) from None
    for p in space:
        if p.name not in allowed:
            raise SpecError(
                f"space.{p.name}",
                f"is not a knob of the training core{did_you_mean(p.name, allowed)}; allowed: {', '.join(allowed)}",
            )
        if p.name in train:
            raise SpecError(f"space.{p.name}", f"is also fixed in train.{p.name}; set it in one place")
        if p.name in model and model_kind(model) != "python":  # a user model's section declares its knobs
            raise SpecError(f"space.{p.name}", f"is also fixed in model.{p.name}; set it in one place")
    passing, failing = [], []
    for config in corner_configs(space, _VALIDATION_CORNERS) or [{}]:
        try:
            build_train_config(model, {**train, **config}, task=task, monitor=metric,
                               maximize=direction == "maximize", seed=seed)
            passing.append(config)
        except ConfigError as exc:
            failing.append((config, exc))
    if failing:
        config, first = failing[0]
        hint = _when_hint(space, first.key, passing, [c for c, e in failing if e.key == first.key]) if first.key in config else ""
        raise SpecError(knob_path(first.key, config), first.message + hint)


def _check_stage_train(stage: StageSpec, path: str, space: Space, model: Mapping[str, Any], train: Mapping[str, Any],
                       task: str, metric: str, direction: str, seed: int) -> None:
    """A stage's ``train`` overrides, checked as the study's ``train`` is, merged over it; errors name the stage's key."""
    try:
        _check_space_against_core(space, model, {**train, **stage.train}, task, metric, direction, seed)
    except SpecError as exc:
        key = exc.path.removeprefix("train.")
        if key in stage.train or key.split(".")[0] in stage.train:
            raise SpecError(f"{path}.{key}", exc.message) from None
        raise


def knob_path(key: str, config: Mapping[str, Any]) -> str:
    if key in config:
        return f"space.{key}"
    return key if key.startswith("model") else f"train.{key}"


def _when_hint(space: Space, key: str, passing: Sequence[Mapping[str, Any]], failing: Sequence[Mapping[str, Any]]) -> str:
    """Suggest the ``when`` that would make ``key`` exist only where the training core accepts it."""
    passing = [c for c in passing if key in c]
    for p in space:
        if not isinstance(p, CategoricalParam) or p.name == key:
            continue
        good = [v for v in p.choices if any(c.get(p.name) == v for c in passing)]
        bad = {c.get(p.name) for c in failing}
        if good and not bad & set(good):
            return f"; make it conditional: when: {{{p.name}: [{', '.join(map(str, good))}]}}"
    return ""


def _stages(raw: Mapping[str, Any], space: Space) -> tuple[StageSpec, ...]:
    if "stages" in raw:
        extra = [k for k in SHORTHAND_KEYS if k in raw]
        if extra:
            raise SpecError(extra[0], "goes inside a stage when stages: is given (top-level sampler/trials is the one-stage shorthand)")
        items = raw["stages"]
        if not isinstance(items, list) or not items:
            raise SpecError("stages", "must be a non-empty list such as [{name: coarse, sampler: random, trials: 30}]")
        _check_lr_range_stages(items, space)
        stages = [r for i, item in enumerate(items)
                  for r in _rounds(_stage(item, f"stages.{i}", space, default_name=None, first=i == 0))]
    elif "sampler" in raw:
        shorthand = {k: raw[k] for k in SHORTHAND_KEYS if k in raw}
        stages = _rounds(_stage(shorthand, "", space, default_name="main", first=True))
    else:
        raise SpecError("stages", "is required (or the shorthand sampler: + trials:), such as stages: [{name: coarse, sampler: random, trials: 30}]")
    names = [s.name for s in stages]
    for i, n in enumerate(names):
        if names.index(n) != i:
            what = "stage names must be unique (a repeated stage's rounds are named NAME.2, NAME.3, ...)"
            raise SpecError(f"stages.{i}.name", f"{n!r} is used by stage {names.index(n)} too; {what}")
    return tuple(stages)


def _stage(raw: Any, path: str, space: Space, default_name: str | None, first: bool) -> StageSpec:
    def at(key: str) -> str:
        return f"{path}.{key}" if path else key

    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be a mapping such as {name: coarse, sampler: random, trials: 30}")
    if raw.get("kind", "search") != "search":
        return _lr_range_stage(raw, path, default_name)
    spec_keys(raw, STAGE_KEYS, path)
    name = _name(raw.get("name", default_name), at("name"))
    sampler = raw.get("sampler")
    if sampler is None:
        raise SpecError(at("sampler"), f"is required; {one_of(samplers.names())}")
    if sampler not in samplers.names():
        raise SpecError(at("sampler"), f"unknown sampler {sampler!r}{did_you_mean(str(sampler), samplers.names())}; {one_of(samplers.names())}")
    grid = _grid(raw.get("grid"), at("grid"), space, sampler)
    if "trials" in raw:
        trials = spec_int(raw["trials"], at("trials"), minimum=1, maximum=MAX_TRIALS)
    elif sampler == "grid":
        trials = len(grid_configs(space, grid))
    else:
        raise SpecError(at("trials"), "is required: the number of finished trials this stage runs")
    max_failures = spec_int(raw.get("max_failures", DEFAULT_MAX_FAILURES), at("max_failures"), minimum=1,
                            maximum=MAX_TRIALS)
    timeout = None
    if raw.get("timeout") is not None:
        timeout = float(spec_number(raw["timeout"], at("timeout")))
        if timeout <= 0:
            raise SpecError(at("timeout"), f"must be a number of seconds > 0, got {raw['timeout']!r}")
        if timeout > MAX_TIMEOUT_S:
            raise SpecError(at("timeout"), f"must be at most {MAX_TIMEOUT_S} seconds (a year), got {raw['timeout']!r}")
    pruner = _pruner(raw.get("pruner"), at("pruner"))
    for key in ("narrow", "freeze", "warm_start"):
        if first and raw.get(key) is not None:
            raise SpecError(at(key), "needs a previous stage to work from; the first stage searches the space as written")
    narrow = _narrow(raw.get("narrow"), at("narrow"))
    freeze = _freeze(raw.get("freeze"), at("freeze"), space)
    warm_start = spec_int(raw.get("warm_start", 0), at("warm_start"), minimum=0, maximum=MAX_TRIALS)
    history = _history(raw.get("history"), at("history"))
    startup = None
    if raw.get("startup_trials") is not None:
        if sampler not in samplers.MODELLING:
            raise SpecError(at("startup_trials"), f"applies only to the samplers that model past trials "
                                                  f"({', '.join(samplers.MODELLING)}), not {sampler}")
        startup = spec_int(raw["startup_trials"], at("startup_trials"), minimum=0, maximum=MAX_TRIALS)
    train = _mapping(raw.get("train", {}), at("train"))
    for key in train:
        if any(p.name == key for p in space):
            raise SpecError(f"{at('train')}.{key}", f"is searched in space.{key}; a stage overrides fixed knobs only")
    prior = raw.get("prior_trials", "same")
    if prior not in PRIOR_TRIALS:
        raise SpecError(at("prior_trials"), f"must be one of {', '.join(PRIOR_TRIALS)}, got {prior!r}")
    if first and "prior_trials" in raw:
        raise SpecError(at("prior_trials"), "needs a previous stage to take trials from")
    return StageSpec(name, sampler, trials, grid, max_failures, timeout, pruner, narrow, freeze, warm_start, history,
                     startup, train, prior, _repeat(raw.get("repeat"), at("repeat")))


def _repeat(raw: Any, path: str) -> RepeatSpec | None:
    if raw is None:
        return None
    raw = _mapping(raw, path)
    spec_keys(raw, REPEAT_KEYS, path)
    if "max" not in raw:
        raise SpecError(f"{path}.max", "is required: the most rounds to run after the first, such as 3")
    rounds = spec_int(raw["max"], f"{path}.max", minimum=1, maximum=MAX_ROUNDS)
    improvement = float(spec_number(raw.get("min_improvement", 0.01), f"{path}.min_improvement"))
    if not 0 <= improvement < 1:
        raise SpecError(f"{path}.min_improvement", f"must be a fraction in [0, 1) such as 0.01, got {raw['min_improvement']!r}")
    return RepeatSpec(rounds, improvement)


def _rounds(stage: StageSpec) -> list[StageSpec]:
    """``stage`` and, if it repeats, its later rounds (each narrowed from the one before)."""
    if stage.repeat is None:
        return [stage]
    later = [dataclasses.replace(stage, name=f"{stage.name}.{k}", round=k, narrow=stage.narrow or DEFAULT_ROUND_NARROW)
             for k in range(2, stage.repeat.max + 2)]
    return [stage, *later]


def _lr_range_stage(raw: Mapping[str, Any], path: str, default_name: str | None) -> StageSpec:
    """A ``kind: lr_range`` stage: a learning-rate range test, no trials of its own."""
    kind = raw.get("kind")
    if kind not in STAGE_KINDS:
        raise SpecError(f"{path}.kind", f"unknown stage kind {kind!r}{did_you_mean(str(kind), STAGE_KINDS)}; {one_of(STAGE_KINDS)}")
    for key in raw:
        if key in STAGE_KEYS and key not in LR_RANGE_KEYS:
            raise SpecError(f"{path}.{key}", f"is not for kind: lr_range, which takes {', '.join(LR_RANGE_KEYS)}")
    spec_keys(raw, LR_RANGE_KEYS, path)
    defaults = RangeSettings()
    try:
        settings = parse_settings(raw.get("min", defaults.min_lr), raw.get("max", defaults.max_lr),
                                  raw.get("steps", defaults.steps), raw.get("repeats", defaults.repeats))
    except ConfigError as exc:
        raise SpecError(f"{path}.{exc.key}", exc.message) from None
    return StageSpec(_name(raw.get("name", default_name), f"{path}.name"), "lr_range", 0, kind="lr_range",
                     lr_range=settings)


def _check_lr_range_stages(items: Sequence[Any], space: Space) -> None:
    """An lr_range stage needs a float ``lr`` in space and a search stage after it, which cannot derive
    anything from it (it has no trials)."""
    kinds = [item.get("kind", "search") if isinstance(item, Mapping) else "search" for item in items]
    for i, kind in enumerate(kinds):
        if kind != "lr_range":
            continue
        if not any(isinstance(p, FloatParam) and p.name == "lr" for p in space):
            raise SpecError(f"stages.{i}.kind", "lr_range sets the searched lr range of later stages: space needs "
                                                "lr: {type: float, low: ..., high: ..., log: true}")
        if "search" not in kinds[i + 1:]:
            raise SpecError(f"stages.{i}.kind", "lr_range sets the lr range of later stages: add a search stage after it")
        after = items[i + 1] if i + 1 < len(items) else None
        if kinds[i + 1] == "search" and isinstance(after, Mapping):
            for key in ("narrow", "freeze", "warm_start", "prior_trials"):
                if after.get(key) is not None:
                    raise SpecError(f"stages.{i + 1}.{key}", f"needs a previous search stage with trials; stage {i} "
                                                             "is an lr range test: it searches its lr range as given")


def _history(raw: Any, path: str) -> HistoryLimits:
    if raw is None:
        return HistoryLimits()
    raw = _mapping(raw, path)
    spec_keys(raw, HISTORY_KEYS, path)
    default = HistoryLimits()
    return HistoryLimits(spec_int(raw.get("recent", default.recent), f"{path}.recent", minimum=1, maximum=MAX_TRIALS),
                         spec_int(raw.get("best", default.best), f"{path}.best", minimum=1, maximum=MAX_TRIALS))


def _narrow(raw: Any, path: str) -> NarrowSpec | None:
    if raw is None:
        return None
    raw = _mapping(raw, path)
    spec_keys(raw, NARROW_KEYS, path)
    if "top" not in raw:
        raise SpecError(f"{path}.top", "is required: a fraction such as 0.25 (the best quarter) or a count such as 5")
    top = raw["top"]
    if (isinstance(top, bool) or not isinstance(top, (int, float)) or not math.isfinite(top) or top <= 0
            or (isinstance(top, float) and top > 1) or top > MAX_TRIALS):
        raise SpecError(f"{path}.top", f"must be a fraction in (0, 1] such as 0.25, or a count >= 1 such as 5, got {top!r}")
    margin = float(spec_number(raw.get("margin", 0.1), f"{path}.margin"))
    if margin < 0:
        raise SpecError(f"{path}.margin", f"must be >= 0 (a fraction of the top trials' span), got {margin}")
    keep_min = spec_int(raw.get("keep_min", 1), f"{path}.keep_min", minimum=1)
    return NarrowSpec(top, margin, keep_min)


def _freeze(raw: Any, path: str, space: Space) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    names = [p.name for p in space]
    for i, item in enumerate(items):
        if item not in names:
            raise SpecError(f"{path}.{i}", f"{item!r} is not a parameter of space{did_you_mean(str(item), names)}; "
                                           f"parameters: {', '.join(names) or 'none'}")
    return tuple(dict.fromkeys(str(i) for i in items))


def _pruner(raw: Any, path: str) -> PrunerSpec | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = {"kind": raw}
    raw = _mapping(raw, path)
    kind = raw.get("kind")
    if kind is None:
        raise SpecError(f"{path}.kind", f"is required; {one_of(pruners.names())}")
    if kind not in pruners.names():
        raise SpecError(f"{path}.kind", f"unknown pruner {kind!r}{did_you_mean(str(kind), pruners.names())}; {one_of(pruners.names())}")
    schema = pruners.OPTIONS[kind]
    spec_keys(raw, (*pruners.COMMON_KEYS, *schema), path, what=f"key for pruner {kind}")
    options: dict[str, Any] = {}
    for key, option in schema.items():
        value = raw.get(key, option.default)
        if value is None and option.default is not None:
            raise SpecError(f"{path}.{key}", f"must be a number ({option.doc}), got null; leave it out for {option.default:g}")
        if value is not None:
            value = spec_number(value, f"{path}.{key}", integer=option.kind is int)
            if option.minimum is not None and value < option.minimum:
                raise SpecError(f"{path}.{key}", f"must be >= {option.minimum:g}, got {value}")
        options[key] = value
    if kind == "threshold" and options["lower"] is None and options["upper"] is None:
        raise SpecError(path, "pruner threshold needs lower, upper or both, such as {kind: threshold, upper: 1000}")
    if kind == "threshold" and None not in (options["lower"], options["upper"]) and options["lower"] > options["upper"]:
        raise SpecError(f"{path}.lower", f"must be at most upper ({options['upper']:g}), got {options['lower']:g}")
    if kind == "hyperband" and options["max_resource"] and options["min_resource"] > options["max_resource"]:
        raise SpecError(f"{path}.min_resource", f"must be at most max_resource ({options['max_resource']}), "
                                                f"got {options['min_resource']}")
    if kind == "percentile" and options["percentile"] > 100:
        raise SpecError(f"{path}.percentile", f"must be in [0, 100], got {options['percentile']}")
    patient = raw.get("patient")
    if patient is not None:
        patient = spec_int(patient, f"{path}.patient", minimum=0)
    min_delta = float(spec_number(raw.get("min_delta", 0.0), f"{path}.min_delta"))
    if min_delta < 0:
        raise SpecError(f"{path}.min_delta", f"must be >= 0, got {min_delta}")
    if "min_delta" in raw and patient is None:
        raise SpecError(f"{path}.min_delta", "only applies with patient: N")
    return pruners.PrunerSpec(str(kind), options, patient, min_delta)


def _grid(raw: Any, path: str, space: Space, sampler: str) -> dict[str, int]:
    if sampler != "grid":
        if raw is not None:
            raise SpecError(path, "is only for sampler: grid")
        return {}
    raw = {} if raw is None else _mapping(raw, path)
    numeric = {p.name for p in numeric_params(space)}
    for key in raw:
        if key not in numeric:
            raise SpecError(f"{path}.{key}", f"names no numeric parameter of space{did_you_mean(str(key), numeric)}; numeric parameters: {', '.join(sorted(numeric)) or 'none'}")
    points = {str(k): spec_int(v, f"{path}.{k}", minimum=1, maximum=MAX_GRID) for k, v in raw.items()}
    missing = sorted(numeric - set(points))
    if missing:
        raise SpecError(f"{path}.{missing[0]}", f"sampler grid needs a number of points for each numeric parameter, such as grid: {{{missing[0]}: 5}}")
    if count_configs(space, points, MAX_GRID + 1) > MAX_GRID:
        raise SpecError(path, f"makes more than {MAX_GRID} configurations, the most one grid runs; use fewer points")
    return points


def _executor(raw: Any) -> ExecutorSpec:
    raw = _mapping(raw, "executor")
    spec_keys(raw, EXECUTOR_KEYS, "executor")
    kind = raw.get("kind", "local")
    if kind not in executors.names():
        raise SpecError("executor.kind", f"unknown executor {kind!r}{did_you_mean(str(kind), executors.names())}; {one_of(executors.names())}")
    workers = spec_int(raw.get("workers", 1), "executor.workers", minimum=1, maximum=MAX_WORKERS)
    fuse = spec_int(raw.get("fuse", 1), "executor.fuse", minimum=1)
    if fuse > MAX_FUSE:
        raise SpecError("executor.fuse", f"must be at most {MAX_FUSE} trials in one pack, got {fuse}")
    if kind != "ray":
        for key in RAY_ONLY_KEYS:
            if key in raw:
                raise SpecError(f"executor.{key}", "is only for kind: ray")
    address = None if raw.get("address") is None else _ray_address(raw["address"])
    gpus = float(spec_number(raw.get("gpus_per_trial", 0), "executor.gpus_per_trial"))
    if gpus < 0 or (gpus > 1 and not gpus.is_integer()):
        raise SpecError("executor.gpus_per_trial", f"must be 0, a fraction of one GPU such as 0.25, or a whole number, got {gpus:g}")
    cpus = float(spec_number(raw.get("cpus_per_trial", 1), "executor.cpus_per_trial"))
    if cpus <= 0:
        raise SpecError("executor.cpus_per_trial", f"must be > 0, got {cpus:g}")
    dashboard = raw.get("dashboard", False)
    if not isinstance(dashboard, bool):
        raise SpecError("executor.dashboard", f"must be true or false, got {dashboard!r}")
    if dashboard and address is not None:
        raise SpecError("executor.dashboard", "starts the dashboard of the Ray that hpsearch starts (address: null); "
                                              "a cluster's dashboard is its head's: ray start --head --include-dashboard=true")
    return ExecutorSpec(str(kind), workers, address, gpus, cpus, dashboard, fuse)


def _ray_address(value: Any) -> str:
    """``auto`` or ``HOST:PORT`` (an IPv6 host in brackets), as ``executor.address`` allows."""
    text = value.strip() if isinstance(value, str) else ""
    match = _RAY_ADDRESS.fullmatch(text)
    if text != "auto" and (match is None or not 0 < int(match.group(2)) < 65536):
        raise SpecError("executor.address", "must be null (hpsearch starts a local Ray), auto (the cluster this machine "
                                            f"joined with ray start) or HOST:PORT of a Ray head such as 10.0.0.5:6379, got {value!r}")
    return text

