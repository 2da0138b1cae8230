"""Coarse to fine: derive a stage's search space from the best trials of the stage before it.

Pure functions of a space and ranked parameter sets, with no Optuna in them, so they are tested on
synthetic trials. Ranges shrink to the span of the top trials widened by a margin (in log space for
``log`` parameters), never beyond the space as written and never below a minimum width; categoricals
keep the choices the top trials used; ``freeze`` pins a parameter to the best trial's value. A
conditional parameter takes its top set from the trials in which it exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
from decimal import Decimal
import math
from typing import Any

from hpsearch.space import CategoricalParam, Choice, Condition, FloatParam, IntParam, Param, Space, is_active

Params = Mapping[str, Any]
# The narrowest a range gets, as a fraction of its written width: top values that are (nearly)
# equal must not collapse the range to a point the sampler cannot move in.
MIN_WIDTH = 0.1


def top_count(top: float, candidates: int) -> int:
    """How many of ``candidates`` ranked trials form the top set: ``top`` is a fraction (float) or a count (int)."""
    if isinstance(top, int):
        return min(top, candidates)
    return min(candidates, max(1, math.ceil(top * candidates)))


def narrow_space(
    original: Space,
    ranked: Sequence[Params],
    top: float,
    margin: float | None,
    keep_min: int = 1,
    freeze: Sequence[str] = (),
) -> Space:
    """The space searched next, from ``ranked`` (the complete trials' params, best first).

    Args:
        original: the space as written in the study file; narrowed ranges never leave it.
        ranked: every complete trial's parameters, best first.
        top: the top set: a fraction (float) or a count (int) of the ranked trials that have the parameter.
        margin: widen each range by this fraction of the top set's span, to at least ``MIN_WIDTH``
            of the written range; ``None`` leaves ranges and choices as they are (only ``freeze`` applies).
        keep_min: categoricals keep at least this many choices, by the rank of their best trial.
        freeze: parameters pinned to their value in the best trial that has them.
    """
    if not ranked:
        raise ValueError("narrow_space needs at least one ranked trial")
    kept: list[Param] = []
    for written in original:
        pruned = _prune_conditions(written, {p.name: p for p in kept})
        if pruned is None:
            continue  # its parent lost every choice that made it exist
        param: Param = pruned
        if param.name in freeze:
            param = _frozen(param, ranked)
        elif margin is not None:
            # A conditional parameter ranks only the trials in which it exists: the top trials
            # overall may hold one or none of them.
            having = [t[param.name] for t in ranked if param.name in t]
            if having:
                param = _narrowed(param, having[: top_count(top, len(having))], ranked, margin, keep_min)
        kept.append(param)
    return tuple(kept)


def _prune_conditions(param: Param, kept: Mapping[str, Param]) -> Param | None:
    """``param`` with conditions limited to the choices its parents still have; None if it can never exist."""
    conditions = []
    for c in param.when:
        parent = kept.get(c.param)
        if not isinstance(parent, CategoricalParam):
            return None
        values = tuple(v for v in c.values if v in parent.choices)
        if not values:
            return None
        conditions.append(Condition(c.param, values))
    return dataclasses.replace(param, when=tuple(conditions))


def _frozen(param: Param, ranked: Sequence[Params]) -> Param:
    value = next((t[param.name] for t in ranked if param.name in t), None)
    if value is None:
        return param  # no complete trial had it: nothing to pin it to
    if isinstance(param, CategoricalParam):
        return dataclasses.replace(param, choices=(value,))
    if isinstance(param, IntParam):
        return dataclasses.replace(param, low=int(value), high=int(value), log=False, step=1)
    return dataclasses.replace(param, low=float(value), high=float(value), log=False, step=None)


def _narrowed(param: Param, values: Sequence[Any], ranked: Sequence[Params], margin: float, keep_min: int) -> Param:
    if isinstance(param, CategoricalParam):
        return dataclasses.replace(param, choices=_kept_choices(param, values, ranked, keep_min))
    low, high = _span(param, [float(v) for v in values], margin)
    if isinstance(param, IntParam):
        int_low, int_high = _int_bounds(param, low, high)
        return dataclasses.replace(param, low=int_low, high=int_high)
    if param.step is not None:
        low, high = _snap(param.low, param.high, param.step, low, high)
    return dataclasses.replace(param, low=low, high=high)


def _span(param: FloatParam | IntParam, values: Sequence[float], margin: float) -> tuple[float, float]:
    """The top values' span widened by ``margin`` (to the minimum width), inside the param's range."""
    to, back = (math.log, math.exp) if param.log else (float, float)
    lo, hi = to(min(values)), to(max(values))
    floor, ceiling = to(param.low), to(param.high)
    pad = max(margin * (hi - lo), (MIN_WIDTH * (ceiling - floor) - (hi - lo)) / 2)
    low, high = lo - pad, hi + pad
    # At an edge of the written range, the width cut off there goes to the other side.
    low, high = max(floor, low - max(0.0, high - ceiling)), min(ceiling, high + max(0.0, floor - low))
    # exp(log(v)) may miss v by an ulp: the top values themselves always stay inside, and a range that
    # reaches a written bound takes that bound exactly (else status shows 1e-06 as 1.0000000000000004e-06).
    low = param.low if low <= floor else max(param.low, min(back(low), min(values)))
    high = param.high if high >= ceiling else min(param.high, max(back(high), max(values)))
    return low, high


def _snap(orig_low: float, orig_high: float, step: float, low: float, high: float) -> tuple[float, float]:
    """Widen [low, high] outwards to the step grid anchored at ``orig_low``; keep at least one step."""
    n_low = math.floor((low - orig_low) / step + 1e-9)
    n_high = math.ceil((high - orig_low) / step - 1e-9)
    n_max = math.floor((orig_high - orig_low) / step + 1e-9)
    if n_high == n_low:  # zero width: take a neighbouring grid point
        n_high, n_low = (n_high + 1, n_low) if n_high < n_max else (n_high, max(0, n_low - 1))
    return _grid_point(orig_low, step, n_low), _grid_point(orig_low, step, min(n_high, n_max))


def _grid_point(low: float, step: float, n: int) -> float:
    """``low + n * step`` in decimal, as written: 0.3, not 0.30000000000000004, which Optuna would take off the grid."""
    return float(Decimal(str(low)) + n * Decimal(str(step)))


def _int_bounds(param: IntParam, low: float, high: float) -> tuple[int, int]:
    step = 1 if param.log else param.step  # Optuna: an int range is either log or stepped
    lo, hi = _snap(param.low, param.high, step, math.floor(low), math.ceil(high))
    return int(round(lo)), int(round(hi))


def _kept_choices(param: CategoricalParam, values: Sequence[Any], ranked: Sequence[Params], keep_min: int) -> tuple[Choice, ...]:
    """Choices the top trials used, topped up to ``keep_min`` by the rank of each choice's best trial."""
    keep = set(map(repr, values))
    by_rank = [t[param.name] for t in ranked if param.name in t] + list(param.choices)
    for value in by_rank:
        if len(keep) >= keep_min:
            break
        keep.add(repr(value))
    return tuple(c for c in param.choices if repr(c) in keep)


def contains(space: Space, params: Params) -> bool:
    """Whether ``params`` is a configuration of ``space``: exactly its active parameters, each in range."""
    chosen: dict[str, Any] = {}
    for p in space:
        if not is_active(p, chosen):
            continue
        if p.name not in params or not _inside(p, params[p.name]):
            return False
        chosen[p.name] = params[p.name]
    return set(chosen) == set(params)


def _inside(param: Param, value: Any) -> bool:
    if isinstance(param, CategoricalParam):
        return any(value == c and type(value) is type(c) for c in param.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not param.low <= value <= param.high:
        return False
    step = param.step if not param.log else None
    if step:
        k = (value - param.low) / step
        return abs(k - round(k)) < 1e-6
    return True
