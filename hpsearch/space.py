"""Search-space parameters: parsing, suggestion through an Optuna trial, and grid enumeration.

A space is an ordered tuple of parameters. A parameter may carry ``when`` conditions on other
categorical parameters; it exists in a trial only when every condition holds, and the space lists
it after them, whatever order the file used.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import dataclasses
from dataclasses import dataclass
from decimal import Decimal
import itertools
import math
from typing import TYPE_CHECKING, Any

from hpsearch.errors import SpecError, did_you_mean, one_of
from hpsearch.values import spec_keys, spec_number

if TYPE_CHECKING:
    import optuna

Choice = None | bool | int | float | str
PARAM_TYPES = ("float", "int", "categorical")


@dataclass(frozen=True)
class Condition:
    """The parameter exists only when ``param`` took one of ``values``."""

    param: str
    values: tuple[Choice, ...]


@dataclass(frozen=True)
class FloatParam:
    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None
    when: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class IntParam:
    name: str
    low: int
    high: int
    log: bool = False
    step: int = 1
    when: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class CategoricalParam:
    name: str
    choices: tuple[Choice, ...]
    when: tuple[Condition, ...] = ()


Param = FloatParam | IntParam | CategoricalParam
Space = tuple[Param, ...]

_KEYS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}


def parse_space(raw: Any, path: str = "space") -> Space:
    """Parse the ``space:`` mapping of a study file into parameters, each after those its ``when`` names."""
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise SpecError(path, f"must be a mapping of parameter name to definition, got {type(raw).__name__}")
    params = [_parse_param(str(name), body, f"{path}.{name}") for name, body in raw.items()]
    categorical = {p.name: p for p in params if isinstance(p, CategoricalParam)}
    params = [_resolve_when(p, raw[p.name].get("when"), f"{path}.{p.name}.when", categorical) for p in params]
    return _parents_first(params, path)


def _parse_param(name: str, body: Any, path: str) -> Param:
    if not isinstance(body, Mapping):
        raise SpecError(path, "must be a mapping such as {type: float, low: 1.0e-5, high: 1.0, log: true}")
    kind = body.get("type")
    if kind is None:
        raise SpecError(f"{path}.type", f"is required; {one_of(PARAM_TYPES)}")
    if kind not in PARAM_TYPES:
        raise SpecError(f"{path}.type", f"unknown type {kind!r}{did_you_mean(str(kind), PARAM_TYPES)}; {one_of(PARAM_TYPES)}")
    spec_keys(body, _KEYS[kind], path, what=f"key for a {kind} parameter")
    if kind == "categorical":
        return _parse_categorical(name, body, path)
    return _parse_numeric(name, kind, body, path)


def _parse_categorical(name: str, body: Mapping[str, Any], path: str) -> Param:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise SpecError(f"{path}.choices", "must be a non-empty list, such as [sgd, adam]")
    for i, choice in enumerate(choices):
        if choice is not None and not isinstance(choice, (bool, int, float, str)):
            raise SpecError(f"{path}.choices.{i}", f"must be a string, number, boolean or null, got {choice!r}")
    # 16 and 16.0 are one value to a knob (a batch size of 16 either way): duplicates too.
    same = {(float(c) if isinstance(c, (int, float)) and not isinstance(c, bool) else repr(c)) for c in choices}
    if len(same) != len(choices):
        raise SpecError(f"{path}.choices", f"has duplicates: {choices}; list each value once")
    return CategoricalParam(name, tuple(choices))


def _parse_numeric(name: str, kind: str, body: Mapping[str, Any], path: str) -> Param:
    for key in ("low", "high"):
        if key not in body:
            raise SpecError(f"{path}.{key}", f"is required for a {kind} parameter")
    low = spec_number(body["low"], f"{path}.low", integer=kind == "int")
    high = spec_number(body["high"], f"{path}.high", integer=kind == "int")
    log = body.get("log", False)
    if not isinstance(log, bool):
        raise SpecError(f"{path}.log", f"must be true or false, got {log!r}")
    if low > high:
        raise SpecError(path, f"low <= high must hold, but got low={low}, high={high}")
    if log and low <= 0:
        raise SpecError(f"{path}.low", f"must be > 0 when log is true, got {low}")
    step = body.get("step")
    if step is not None:
        step = spec_number(step, f"{path}.step", integer=kind == "int")
        if step <= 0:
            raise SpecError(f"{path}.step", f"must be > 0, got {step}")
        if log:
            raise SpecError(f"{path}.step", "cannot be combined with log: true (Optuna samples either on a log scale or on a step grid)")
        _check_step_fits(low, high, step, path)
    if kind == "int":
        return IntParam(name, int(low), int(high), log, int(step or 1))
    return FloatParam(name, float(low), float(high), log, None if step is None else float(step))


def _check_step_fits(low: float, high: float, step: float, path: str) -> None:
    """``high - low`` must be a whole number of steps: Optuna would silently lower ``high`` to the last step."""
    steps = (high - low) / step
    if abs(steps - round(steps)) > 1e-9 * max(1.0, steps):  # float noise (a stored, narrowed space) is no gap
        # In decimal, as written: low 0.1 plus two steps of 0.3 shows as 0.7, not 0.7000000000000001.
        shown = Decimal(str(low)) + math.floor(steps) * Decimal(str(step))
        raise SpecError(f"{path}.step", f"{step:g} does not divide high - low = {high - low:g} into whole steps; "
                                         f"make high {shown:f} (or choose a step that divides the range)")


def _resolve_when(param: Param, raw: Any, path: str, categorical: Mapping[str, CategoricalParam]) -> Param:
    if raw is None:
        return param
    if not isinstance(raw, Mapping) or not raw:
        raise SpecError(path, "must be a mapping such as {optimizer: [momentum]}")
    parents = {name: p for name, p in categorical.items() if name != param.name}
    conditions = []
    for parent, values in raw.items():
        if parent not in parents:
            raise SpecError(
                f"{path}.{parent}",
                "must name another categorical parameter of space"
                + did_you_mean(str(parent), parents)
                + (f"; candidates: {', '.join(parents)}" if parents else "; there is none"),
            )
        values = tuple(values) if isinstance(values, list) else (values,)
        if not values:
            raise SpecError(f"{path}.{parent}", f"lists no value, so {param.name} would never be searched; "
                                                f"name one or more of {', '.join(map(str, parents[parent].choices))}")
        for value in values:
            if value not in parents[parent].choices:
                raise SpecError(f"{path}.{parent}", f"{value!r} is not a choice of {parent}; {one_of(parents[parent].choices)}")
        conditions.append(Condition(str(parent), values))
    return dataclasses.replace(param, when=tuple(conditions))


def _parents_first(params: Sequence[Param], path: str) -> Space:
    """Order ``params`` so that each comes after the parameters its ``when`` names (else as declared)."""
    ordered: list[Param] = []
    todo = list(params)
    while todo:
        done = {p.name for p in ordered}
        ready = [p for p in todo if all(c.param in done for c in p.when)]
        if not ready:
            names = " -> ".join(p.name for p in todo)
            raise SpecError(f"{path}.{todo[0].name}.when", f"conditions form a cycle among: {names}")
        ordered.extend(ready)
        todo = [p for p in todo if p not in ready]
    return tuple(ordered)


def is_active(param: Param, chosen: Mapping[str, Any]) -> bool:
    """Whether ``param`` exists given the values chosen so far (its parents come first)."""
    return all(c.param in chosen and chosen[c.param] in c.values for c in param.when)


def suggest(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """Ask ``trial`` for a value of every active parameter, in declaration order."""
    chosen: dict[str, Any] = {}
    for p in space:
        if not is_active(p, chosen):
            continue
        if isinstance(p, FloatParam):
            chosen[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log, step=p.step)
        elif isinstance(p, IntParam):
            chosen[p.name] = trial.suggest_int(p.name, p.low, p.high, log=p.log, step=p.step)
        else:
            chosen[p.name] = trial.suggest_categorical(p.name, p.choices)
    return chosen


def distribution(param: Param) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution :func:`suggest` asks ``param`` from."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(param, FloatParam):
        return FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    if isinstance(param, IntParam):
        return IntDistribution(param.low, param.high, log=param.log, step=param.step)
    return CategoricalDistribution(param.choices)


def numeric_params(space: Space) -> tuple[Param, ...]:
    return tuple(p for p in space if not isinstance(p, CategoricalParam))


def grid_values(param: Param, points: int) -> tuple[Choice, ...]:
    """The values a grid takes for ``param``: its choices, or ``points`` spaced values (log-spaced when ``log``)."""
    if isinstance(param, CategoricalParam):
        return param.choices
    if points == 1:
        values = [math.sqrt(param.low * param.high) if param.log else (param.low + param.high) / 2]
    elif param.log:
        ratio = math.log(param.high / param.low)
        values = [param.low * math.exp(ratio * i / (points - 1)) for i in range(points)]
    else:
        values = [param.low + (param.high - param.low) * i / (points - 1) for i in range(points)]
    if isinstance(param, IntParam):
        snapped = [param.low + round((v - param.low) / param.step) * param.step for v in values]
        return tuple(sorted({min(param.high, max(param.low, int(v))) for v in snapped}))
    if points > 1:
        values[-1] = param.high  # exp/log round-off must not push the last point out of range
    if param.step is not None:
        values = [param.low + round((v - param.low) / param.step) * param.step for v in values]
    return tuple(dict.fromkeys(min(param.high, max(param.low, float(v))) for v in values))


def grid_configs(space: Space, points: Mapping[str, int]) -> list[dict[str, Any]]:
    """Every distinct configuration of the grid; a conditional parameter varies only where it exists."""
    return list(_expand(space, points, 0, {}))


def _expand(space: Space, points: Mapping[str, int], i: int, chosen: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if i == len(space):
        yield dict(chosen)
        return
    param = space[i]
    if not is_active(param, chosen):
        yield from _expand(space, points, i + 1, chosen)
        return
    for value in grid_values(param, points.get(param.name, 0)):
        chosen[param.name] = value
        yield from _expand(space, points, i + 1, chosen)
    del chosen[param.name]


def count_configs(space: Space, points: Mapping[str, int], limit: int) -> int:
    """How many configurations :func:`grid_configs` makes, counting no further than ``limit``."""
    return sum(1 for _ in itertools.islice(_expand(space, points, 0, {}), limit))


def corner_configs(space: Space, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` configurations covering every categorical combination and both ends of each range.

    Used to validate a space against the training core before any trial runs.
    """
    corners = {p.name: 2 for p in numeric_params(space)}
    return list(itertools.islice(_expand(space, corners, 0, {}), limit))


def space_to_raw(space: Space) -> dict[str, dict[str, Any]]:
    """``space`` in the study file's format (JSON-ready): what :func:`parse_space` reads back."""
    raw: dict[str, dict[str, Any]] = {}
    for p in space:
        if isinstance(p, CategoricalParam):
            body: dict[str, Any] = {"type": "categorical", "choices": list(p.choices)}
        else:
            body = {"type": "int" if isinstance(p, IntParam) else "float", "low": p.low, "high": p.high}
            if p.log:
                body["log"] = True
            if p.step is not None and not (isinstance(p, IntParam) and p.step == 1):
                body["step"] = p.step
        if p.when:
            body["when"] = {c.param: list(c.values) for c in p.when}
        raw[p.name] = body
    return raw


def describe(param: Param) -> str:
    """A short human form: ``1e-05..0.1 log``, ``[sgd, adam]``, ``16..256 step 16``."""
    if isinstance(param, CategoricalParam):
        return "[" + ", ".join(map(str, param.choices)) + "]"
    text = f"{param.low:.4g}" if param.low == param.high else f"{param.low:.4g}..{param.high:.4g}"
    if param.log:
        text += " log"
    elif param.step is not None and not (isinstance(param, IntParam) and param.step == 1):
        text += f" step {param.step:g}"
    return text
