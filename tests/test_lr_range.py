"""``hpsearch lr-range`` and the ``kind: lr_range`` stage, end to end on cars93."""

from __future__ import annotations

import csv
from pathlib import Path
import time
from typing import Any

import optuna
import pytest

from hpsearch import lr_range_plot
from hpsearch.errors import StorageError
from hpsearch.lr_range_stage import ATTR_CURVES, ATTR_LR_RANGE
from hpsearch.space import parse_space
from hpsearch.stages import ATTR_SPACE
from hpsearch.storage import open_storage
from tests.helpers import base_study, cli, cli_process, running_trial, start_run, write_study

STORAGE = "sqlite:///runs/cars.db"


def _range_study(**range_options: Any) -> dict[str, Any]:
    return base_study(
        train={"epochs": 30, "device": "cpu"},
        stages=[{"name": "range", "kind": "lr_range", "repeats": 2, **range_options},
                {"name": "coarse", "sampler": "random", "trials": 6},
                {"name": "fine", "sampler": "tpe", "trials": 2, "narrow": {"top": 2}}])


def _attrs(stage: str) -> dict[str, Any]:
    return optuna.load_study(study_name=f"cars/{stage}", storage=open_storage(STORAGE)).user_attrs


@pytest.mark.parametrize("fuse", [1, 8])
def test_the_command_prints_a_range_per_optimizer_and_writes_the_curves_and_the_plot(workdir: Path, fuse: int) -> None:
    path = write_study(workdir, base_study(executor={"kind": "local", "workers": 1, "fuse": fuse}))
    code, out, err = cli("lr-range", str(path), "--steps", "120", "--repeats", "2", "--out", "found")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("lr range test of study cars: lr 1e-08..10 in 120 steps, 2 repeat(s)")
    for optimizer in ("sgd", "momentum", "adam"):
        line = next(x for x in lines if x.startswith(f"  {optimizer} "))
        assert ("high from divergence at" in line and "low from" in line) or "no suggestion:" in line
        assert ("[fused, " in line) == (fuse > 1), line  # every optimizer's repeats in one pack
    assert "momentum=0.725" in out  # a parameter conditional on the optimizer is held at its middle too
    assert lines[-2].startswith("suggested lr: low ") or lines[-1] == "no suggested lr range: see above"
    with (workdir / "found" / "curves.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["optimizer"] for r in rows} == {"sgd", "momentum", "adam"}
    assert {r["repeat"] for r in rows} == {"0", "1"}
    sgd = [r for r in rows if r["optimizer"] == "sgd" and r["repeat"] == "0"]
    assert [int(r["step"]) for r in sgd] == list(range(len(sgd))) and float(sgd[0]["lr"]) == pytest.approx(1e-8)
    assert (workdir / "found" / "lr_range.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert err == "hpsearch: wrote the curves to found/curves.csv and the plot to found/lr_range.png\n"


def test_without_matplotlib_the_curves_are_written_and_one_line_says_why_there_is_no_plot(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lr_range_plot, "available", lambda: False)
    path = write_study(workdir, base_study(space={"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}))
    code, out, err = cli("lr-range", str(path), "--steps", "60", "--repeats", "1")
    assert code == 0, err
    assert (workdir / "lr-range-cars" / "curves.csv").exists() and not (workdir / "lr-range-cars" / "lr_range.png").exists()
    assert err == f"hpsearch: wrote the curves to lr-range-cars/curves.csv; {lr_range_plot.PLOT_MISSING}\n"


@pytest.mark.parametrize(("args", "start"), [
    (("--min", "1", "--max", "0.1"), "--min must be below max"),
    (("--min", "0.1", "--max", "0.1"), "--min must be below max"),
    (("--min=-1e-3",), "--min must be a finite learning rate > 0"),
    (("--max", "ten"), "--max must be a learning rate > 0"),
    (("--steps", "9"), "--steps must be in 10..100000, got 9"),
    (("--steps", "2e2"), "--steps must be a whole number"),
    (("--repeats", "0"), "--repeats must be in 1..64, got 0"),
])
def test_bad_arguments_are_one_line_naming_the_option(workdir: Path, args: tuple[str, ...], start: str) -> None:
    path = write_study(workdir, base_study())
    code, out, err = cli("lr-range", str(path), *args)
    assert code == 2 and out == ""
    assert err.startswith(f"hpsearch: error: {start}") and err.count("\n") == 1
    assert not (workdir / "lr-range-cars").exists()


@pytest.mark.parametrize(("stages", "space", "path", "words"), [
    ([{"name": "r", "kind": "lr_rnage"}, {"name": "c", "sampler": "random", "trials": 2}], None,
     "stages.0.kind", "unknown stage kind 'lr_rnage' (did you mean 'lr_range'?)"),
    ([{"name": "r", "kind": "lr_range", "trials": 5}, {"name": "c", "sampler": "random", "trials": 2}], None,
     "stages.0.trials", "is not for kind: lr_range"),
    ([{"name": "r", "kind": "lr_range", "steps": 5}, {"name": "c", "sampler": "random", "trials": 2}], None,
     "stages.0.steps", "must be in 10..100000"),
    ([{"name": "r", "kind": "lr_range", "min": 1, "max": 0.5}, {"name": "c", "sampler": "random", "trials": 2}], None,
     "stages.0.min", "must be below max"),
    ([{"name": "c", "sampler": "random", "trials": 2}, {"name": "r", "kind": "lr_range"}], None,
     "stages.1.kind", "add a search stage after it"),
    ([{"name": "r", "kind": "lr_range"}, {"name": "c", "sampler": "random", "trials": 2, "narrow": {"top": 1}}], None,
     "stages.1.narrow", "stage 0 is an lr range test"),
    ([{"name": "r", "kind": "lr_range"}, {"name": "c", "sampler": "random", "trials": 2}],
     {"batch_size": {"type": "categorical", "choices": [16, 32]}}, "stages.0.kind", "space needs lr"),
])
def test_a_bad_lr_range_stage_is_one_line_naming_the_field(workdir: Path, stages: list[dict[str, Any]],
                                                          space: dict[str, Any] | None, path: str, words: str) -> None:
    study = base_study(stages=stages, **({"space": space} if space else {}))
    code, _, err = cli("validate", str(write_study(workdir, study)))
    assert code == 2, err
    assert err.startswith(f"hpsearch: error: {path}: ") and words in err and err.count("\n") == 1


def test_the_stage_sets_the_lr_range_of_later_stages_and_resumes_after_sigkill_without_testing_again(
        workdir: Path) -> None:
    path = write_study(workdir, _range_study())
    process = start_run(path, workdir)
    running_trial(process, "cars/coarse", STORAGE, timeout=180)  # the range test is over: coarse trials run
    process.kill()
    process.communicate(timeout=30)
    result = _attrs("range")[ATTR_LR_RANGE]
    assert result["lr"] is not None, result["message"]
    low, high = result["lr"]["low"], result["lr"]["high"]
    assert 0 < low <= high / 10
    assert [o["optimizer"] for o in result["optimizers"]] == ["sgd", "momentum", "adam"]
    curves = _attrs("range")[ATTR_CURVES + "adam"]
    assert len(curves["seeds"]) == 2 and 10 < len(curves["losses"][0]) <= 200

    done = cli_process("run", str(path), "--set", "stages.0.max=1", cwd=workdir)  # a changed test is said so
    assert done.returncode == 0, done.stderr
    assert "stage range: skipped, its lr range test finished in an earlier run: lr " in done.stderr
    assert "it ran with max 10 (now 1): the stored result stands" in done.stderr
    assert "lr range test, sgd" not in done.stderr  # not tested again
    assert _attrs("range")[ATTR_LR_RANGE] == result
    lr = next(p for p in parse_space(_attrs("coarse")[ATTR_SPACE]) if p.name == "lr")
    assert (lr.low, lr.high) == (low, high)
    trials = optuna.load_study(study_name="cars/coarse", storage=open_storage(STORAGE)).get_trials()
    assert all(low <= t.params["lr"] <= high for t in trials if "lr" in t.params)
    fine = next(p for p in parse_space(_attrs("fine")[ATTR_SPACE]) if p.name == "lr")
    assert low <= fine.low <= fine.high <= high  # narrowing works inside the tested range

    code, out, _ = cli("status", str(path))
    assert code == 0
    assert f"lr range test range: lr {low:.3g}..{high:.3g}" in out
    code, _, err = cli("run", str(path))
    assert code == 0 and "is done" in err and "--set stages.1.trials=N" in err  # the range stage has no trials

    code, _, err = cli("report", str(path), "--out", "report")
    assert code == 0, err
    page = (workdir / "report" / "index.html").read_text(encoding="utf-8")
    assert "Learning-rate range test" in page and f"lr range test range: lr {low:.3g}..{high:.3g}" in page
    # No empty figures or notes of a stage without trials.
    assert not any(f"range: {note}" in page for note in ("importances", "no complete trial", "not started"))
    assert "space of coarse (as written -> searched):\n  lr 0.0001..0.1 log -> " in out
    assert "space of range (as written -> searched)" not in out


def test_a_run_killed_during_the_test_tests_again(workdir: Path) -> None:
    path = write_study(workdir, _range_study(steps=2000, repeats=3))
    process = start_run(path, workdir)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the range stage's study exists: the test has begun
        try:
            optuna.load_study(study_name="cars/range", storage=open_storage(STORAGE))
            break
        except (StorageError, KeyError):  # no database or study yet
            time.sleep(0.2)
    time.sleep(1.0)
    process.kill()
    process.communicate(timeout=30)
    assert ATTR_LR_RANGE not in _attrs("range")  # nothing recorded as finished
    code, out, _ = cli("status", str(path))
    assert code == 0 and "lr range test range: not finished" in out


def test_an_optimizer_without_a_range_leaves_the_others_range_standing() -> None:
    from hpsearch.lr_range import combined
    from hpsearch.train.lr_range import RangeResult, RangeSettings, Suggestion

    def result(optimizer: str, suggestion: Suggestion | None, message: str) -> RangeResult:
        return RangeResult(optimizer, RangeSettings(), (), suggestion, message, fused=False, duration_s=0.0)

    sgd = result("sgd", None, "no suggestion: the loss never fell clearly")
    adam = result("adam", Suggestion(1e-4, 1e-2, "descent", "divergence"), "lr 0.0001..0.01")
    momentum = result("momentum", Suggestion(1e-3, 1e-1, "descent", "divergence"), "lr 0.001..0.1")
    found, message = combined([sgd, adam, momentum])
    assert found is not None and (found.low, found.high) == (1e-4, 1e-1)
    assert message.endswith("sgd found none, so the others' range stands for it")
    assert combined([sgd])[0] is None and combined([sgd])[1] == "sgd: no suggestion: the loss never fell clearly"
    assert combined([adam]) == (adam.suggestion, "lr 0.0001..0.01")
