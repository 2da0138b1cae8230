"""The learning-rate range test of a study: which configs it tests, running them, and what it prints and writes.

The test trains the study's data, model and fixed ``train`` knobs through the training core
(:mod:`hpsearch.train.lr_range`). Searched parameters other than ``lr`` are held at the middle of their
range (log ranges at their geometric middle, a categorical of numbers at its median choice, any other
categorical at its first choice), except ``optimizer``: each of its choices is tested. When the study
fuses trials (``executor.fuse`` > 1) an MLP's repeats train as members of one pack.

Used by ``hpsearch lr-range`` and by the ``kind: lr_range`` stage (:mod:`hpsearch.lr_range_stage`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
import math
from pathlib import Path
from typing import Any

from hpsearch.errors import ConfigError, HpsearchError, SpecError
from hpsearch.space import CategoricalParam, FloatParam, IntParam, Param, is_active
from hpsearch.spec import StudySpec
from hpsearch.train.config import TrainConfig, build_train_config
from hpsearch.train.lr_range import RangeResult, RangeSettings, Suggestion, parse_settings, range_tests

CURVES_FILE = "curves.csv"
PLOT_FILE = "lr_range.png"


class RangeOptionError(HpsearchError):
    """A bad ``hpsearch lr-range`` option: the message names it."""


def option_settings(min_lr: str, max_lr: str, steps: str, repeats: str) -> RangeSettings:
    """The command's options as settings; a bad one is one line naming its option (``--min``, ...)."""
    try:
        return parse_settings(min_lr, max_lr, steps, repeats)
    except ConfigError as exc:
        raise RangeOptionError(f"--{exc.key} {exc.message}") from None


def default_out(spec: StudySpec) -> Path:
    return Path(f"lr-range-{spec.name}")


@dataclass(frozen=True)
class Probe:
    """One configuration the test sweeps: the parameters it fixes and its training config."""

    optimizer: str
    params: dict[str, Any]  # the searched parameters (not lr) at the values the test holds them
    config: TrainConfig


def probes(spec: StudySpec, settings: RangeSettings) -> list[Probe]:
    """One probe per optimizer choice (or the study's one optimizer)."""
    optimizer = next((p for p in spec.space if p.name == "optimizer"), None)
    choices = list(optimizer.choices) if isinstance(optimizer, CategoricalParam) else [None]
    found = []
    for choice in choices:
        params = held_params(spec, {} if choice is None else {"optimizer": choice})
        try:
            config = build_train_config(spec.model, {**spec.train, **params, "lr": settings.min_lr}, task=spec.task,
                                        monitor=spec.metric, maximize=spec.maximize, seed=spec.seed)
        except ConfigError as exc:
            held = ", ".join(f"{k}={v}" for k, v in params.items())
            raise SpecError(f"space.{exc.key}" if exc.key in params else exc.key,
                            f"{exc.message} (the lr range test holds {held})") from None
        found.append(Probe(config.optimizer.name, params, config))
    return found


def held_params(spec: StudySpec, fixed: dict[str, Any]) -> dict[str, Any]:
    """Every active searched parameter but ``lr`` at its middle value, ``fixed`` ones as given."""
    chosen: dict[str, Any] = {}
    for p in spec.space:
        if p.name == "lr" or not is_active(p, chosen):
            continue
        chosen[p.name] = fixed[p.name] if p.name in fixed else middle(p)
    return chosen


def middle(param: Param) -> Any:
    """The value the test holds ``param`` at."""
    if isinstance(param, CategoricalParam):
        numbers = [c for c in param.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        return sorted(numbers)[(len(numbers) - 1) // 2] if len(numbers) == len(param.choices) else param.choices[0]
    mid = math.sqrt(param.low * param.high) if param.log else (param.low + param.high) / 2
    if isinstance(param, IntParam):
        return min(param.high, param.low + round((mid - param.low) / param.step) * param.step)
    assert isinstance(param, FloatParam)  # the three kinds of Param
    if param.step is not None:
        mid = min(param.high, param.low + round((mid - param.low) / param.step) * param.step)
    return mid


@dataclass(frozen=True)
class Tested:
    probe: Probe
    result: RangeResult


def run(spec: StudySpec, settings: RangeSettings) -> list[Tested]:
    """Run the test of every probe on the study's data."""
    from hpsearch.train import load_dataset

    found = probes(spec, settings)
    data = load_dataset(spec.data)
    fuse = spec.executor.fuse > 1
    results = range_tests([p.config for p in found], data, settings, fuse=fuse)
    return [Tested(p, r) for p, r in zip(found, results, strict=True)]


def combined(results: list[RangeResult]) -> tuple[Suggestion | None, str]:
    """The lr range for every optimizer tested: the span of the ranges found; none if no optimizer has one.

    An optimizer whose test found no range (its loss too noisy to call a fall, say) is named in the
    message; the others' span stands for it, as the later stages narrow lr further anyway.
    """
    missing = [r for r in results if r.suggestion is None]
    found = [r for r in results if r.suggestion is not None]
    if not found:
        return None, "; ".join(f"{r.optimizer}: {r.message}" for r in missing)
    without = (f"; {', '.join(r.optimizer for r in missing)} found none, so the others' range stands for "
               f"{'it' if len(missing) == 1 else 'them'}") if missing else ""
    ranges = [r.suggestion for r in found if r.suggestion is not None]
    if len(ranges) == 1:
        return ranges[0], found[0].message + without
    low = min(ranges, key=lambda s: s.low)
    high = max(ranges, key=lambda s: s.high)
    lowest = found[ranges.index(low)].optimizer
    highest = found[ranges.index(high)].optimizer
    suggestion = Suggestion(low.low, high.high, f"{lowest}'s {low.low_from}", f"{highest}'s {high.high_from}")
    return suggestion, f"lr {low.low:.3g}..{high.high:.3g}: the span of every optimizer's range{without}"


def format_results(spec: StudySpec, settings: RangeSettings, tested: list[Tested]) -> str:
    """What ``hpsearch lr-range`` prints: one line per optimizer, then the range for the study file."""
    lines = [f"lr range test of study {spec.name}: lr {settings.min_lr:g}..{settings.max_lr:g} in {settings.steps} steps, "
             f"{settings.repeats} repeat(s) from seed {spec.seed}"]
    for t in tested:
        r = t.result
        held = ", ".join(f"{k}={_short(v)}" for k, v in t.probe.params.items() if k != "optimizer")
        how = f"fused, {r.duration_s:.1f} s the pack" if r.fused else f"one after another, {r.duration_s:.1f} s"
        lines.append(f"  {r.optimizer}{f' ({held})' if held else ''}: {r.message} [{how}]")
    suggestion, message = combined([t.result for t in tested])
    if suggestion is None:
        lines.append("no suggested lr range: see above")
    else:
        if any(t.result.suggestion is None for t in tested):
            lines.append(f"  ({message.split('; ', 1)[1]})")
        lines.append(f"suggested lr: low {suggestion.low:.3g} ({suggestion.low_from}), "
                     f"high {suggestion.high:.3g} ({suggestion.high_from})")
        lines.append(f"  space:  lr: {{type: float, low: {suggestion.low:.3g}, high: {suggestion.high:.3g}, log: true}}")
    return "\n".join(lines)


def write_curves(results: list[RangeResult], path: Path) -> None:
    """Every step of every repeat as a CSV row: optimizer, repeat, seed, step, lr, loss, smoothed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["optimizer", "repeat", "seed", "step", "lr", "loss", "smoothed"])
        for r in results:
            for repeat, c in enumerate(r.curves):
                for step, (lr, loss, smoothed) in enumerate(zip(c.lrs, c.losses, c.smoothed, strict=True)):
                    out.writerow([r.optimizer, repeat, c.seed, step, f"{lr:.6g}", f"{loss:.6g}", f"{smoothed:.6g}"])


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class Written:
    curves: Path
    plot: Path | None
    note: str | None  # why there is no plot


def write_outputs(spec: StudySpec, tested: list[Tested], out: Path) -> Written:
    """The curves (CSV) and the plot (PNG, when matplotlib is installed) in the folder ``out``."""
    from hpsearch.lr_range_plot import plot
    from hpsearch.outputs import writing

    results = [t.result for t in tested]
    curves = out / CURVES_FILE
    writing(curves, "--out", lambda: write_curves(results, curves))
    image = out / PLOT_FILE
    chosen, _ = combined(results)
    note = writing(image, "--out", lambda: plot(results, image, f"lr range test of {spec.name}", chosen))
    return Written(curves, None if note else image, note)
