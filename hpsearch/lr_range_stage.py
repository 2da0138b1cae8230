"""The ``kind: lr_range`` stage: a learning-rate range test whose range the later stages search.

The stage runs the test of :mod:`hpsearch.lr_range` in the run's own process (it trains no trials)
and stores on its Optuna study, as user attributes: each optimizer's curves (``lr_range_curves/NAME``:
the seeds and each step's loss; the lrs follow from the settings), then the result (``lr_range``: the
suggested range, where each end came from, each optimizer's line). The result is written last, so
a stage that has it is finished: a later run, or one after a crash or SIGKILL, does not test again.

Later stages search ``lr`` over the suggested range in place of the study file's; narrowing and
freezing then work inside it. With no suggestion (the loss never fell, or never diverged, for some
optimizer) they search the range as written, and the stage says why. The stage also stores the space
it hands on as its ``space``, so ``hpsearch status`` and the report show the change as a narrowing.
"""

from __future__ import annotations

from collections.abc import Mapping
import dataclasses
import threading
from typing import TYPE_CHECKING, Any

import optuna

from hpsearch import lr_range
from hpsearch.space import FloatParam, Space, space_to_raw
from hpsearch.spec import StudySpec

if TYPE_CHECKING:
    from hpsearch.stages import RunListener

KIND = "lr_range"
ATTR_LR_RANGE = "lr_range"  # the result; written last
ATTR_CURVES = "lr_range_curves/"  # + optimizer name: {"seeds": [...], "losses": [[...], ...]}


def run_range_stage(spec: StudySpec, index: int, storage: optuna.storages.BaseStorage, listener: RunListener,
                    stop: threading.Event) -> None:
    """Run stage ``index`` (an lr range test) unless an earlier run finished it."""
    from hpsearch import identity
    from hpsearch.stages import ATTR_SPACE, open_stage_study, stage_space
    from hpsearch.train import load_dataset
    from hpsearch.train.lr_range import range_tests

    stage = spec.stages[index]
    study = open_stage_study(spec, stage, storage)
    settings = stage.lr_range or lr_range.RangeSettings()
    done = study.user_attrs.get(ATTR_LR_RANGE)
    if done is not None:
        listener.on_stage_skipped(stage, f"its lr range test finished in an earlier run: {done['message']}"
                                  + _changed(done.get("settings", {}), _settings(settings)))
        return
    stage_space(spec, index, storage, study)  # refuses a space changed since the stage started
    identity.record(study, spec, stage)
    probes = lr_range.probes(spec, settings)
    data = load_dataset(spec.data)
    tested = []
    fuse = spec.executor.fuse > 1  # then every optimizer's repeats train as one pack, where they fuse
    for group in [probes] if fuse else [[p] for p in probes]:
        if stop.is_set():  # between two tests: one runs to its end (seconds)
            raise KeyboardInterrupt
        for probe, result in zip(group, range_tests([p.config for p in group], data, settings, fuse=fuse), strict=True):
            tested.append(lr_range.Tested(probe, result))
            study.set_user_attr(ATTR_CURVES + result.optimizer, {
                "seeds": [c.seed for c in result.curves], "losses": [[_short(x) for x in c.losses] for c in result.curves]})
            listener.on_note(stage, f"lr range test, {result.optimizer}: {result.message}")
    suggestion, message = lr_range.combined([t.result for t in tested])
    record = {
        "lr": None if suggestion is None else {"low": suggestion.low, "high": suggestion.high,
                                               "low_from": suggestion.low_from, "high_from": suggestion.high_from},
        "message": message if suggestion is not None else f"no suggestion, lr searched as written: {message}",
        "settings": _settings(settings),
        "optimizers": [{"optimizer": t.result.optimizer, "message": t.result.message, "fused": t.result.fused,
                        "held": dict(t.probe.params), "duration_s": round(t.result.duration_s, 3)}
                       for t in tested],
    }
    study.set_user_attr(ATTR_SPACE, space_to_raw(with_range(spec.space, record)))
    study.set_user_attr(ATTR_LR_RANGE, record)  # last: the stage is finished
    listener.on_note(stage, f"lr range test: {record['message']}")


def _settings(settings: lr_range.RangeSettings) -> dict[str, Any]:
    return {"min": settings.min_lr, "max": settings.max_lr, "steps": settings.steps, "repeats": settings.repeats}


def _changed(stored: Mapping[str, Any], now: Mapping[str, Any]) -> str:
    """What a finished test's settings and the study file's differ in, said, so a change is not silently lost."""
    differ = [f"{key} {stored[key]:g} (now {now[key]:g})" for key in now if key in stored and stored[key] != now[key]]
    if not differ:
        return ""
    return (f"; it ran with {', '.join(differ)}: the stored result stands (give the study a new name "
            "to test again)")


def _short(value: float) -> float:
    """A loss with 6 significant digits: the curves of a few optimizers fit a user attribute on any database."""
    return float(f"{value:.6g}")


def with_range(space: Space, record: dict[str, Any] | None) -> Space:
    """``space`` with ``lr`` over the range ``record`` suggests (``space`` itself when it suggests none)."""
    found = None if record is None else record.get("lr")
    if not found:
        return space
    return tuple(dataclasses.replace(p, low=found["low"], high=found["high"])
                 if isinstance(p, FloatParam) and p.name == "lr" else p for p in space)


def base_space(spec: StudySpec, index: int, storage: optuna.storages.BaseStorage) -> Space:
    """The space stage ``index`` starts from: the study file's, with ``lr`` from the nearest earlier lr_range stage."""
    earlier = [s for s in spec.stages[:index] if s.kind == KIND]
    if not earlier:
        return spec.space
    try:
        study_id = storage.get_study_id_from_name(spec.study_name(earlier[-1]))
    except KeyError:
        return spec.space
    return with_range(spec.space, storage.get_study_user_attrs(study_id).get(ATTR_LR_RANGE))


def stored_result(storage: optuna.storages.BaseStorage, study_id: int) -> dict[str, Any] | None:
    """The stored result of an lr_range stage's study, or None before it finished."""
    found = storage.get_study_user_attrs(study_id).get(ATTR_LR_RANGE)
    return found if isinstance(found, dict) else None


def format_status(spec: StudySpec, storage: optuna.storages.BaseStorage) -> str:
    """A line per lr_range stage for ``hpsearch status``: its result, or that it has not run."""
    lines = []
    for stage in spec.stages:
        if stage.kind != KIND:
            continue
        try:
            study_id = storage.get_study_id_from_name(spec.study_name(stage))
        except KeyError:
            lines.append(f"lr range test {stage.name}: not run yet")
            continue
        result = stored_result(storage, study_id)
        lines.append(f"lr range test {stage.name}: " + ("not finished" if result is None else result["message"]))
        for item in [] if result is None else result["optimizers"]:
            lines.append(f"  {item['optimizer']}: {item['message']}")
    return "\n".join(lines)
