"""Bad input: one line naming what is wrong and what is allowed, exit status 2, no traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.helpers import base_study, cli, cli_process, write_study


def _drop(key: str) -> Any:
    def edit(study: dict[str, Any]) -> None:
        del study[key]
    return edit


def _set(path: str, value: Any) -> Any:
    def edit(study: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = study
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    return edit


def _rename(section: str, old: str, new: str) -> Any:
    def edit(study: dict[str, Any]) -> None:
        node = study[section] if section else study
        node[new] = node.pop(old)
    return edit


CASES = [
    ("missing name", _drop("name"), "name: is required"),
    ("missing data", _drop("data"), "data: is required"),
    ("misspelled key", _rename("", "executor", "exeutor"), "exeutor: unknown key (did you mean 'executor'?)"),
    ("misspelled data key", _rename("data", "target", "traget"), "data.traget: unknown key"),
    ("low above high", _set("space.lr", {"type": "float", "low": 0.5, "high": 0.1}), "low <= high must hold"),
    ("unknown sampler", _set("stages.0.sampler", "bayes"), "stages.0.sampler: unknown sampler 'bayes'"),
    ("unknown optimizer", _set("space.optimizer.choices", ["sgd", "momentum", "adamax2"]), "unknown optimizer 'adamax2'"),
    ("missing data file", _set("data.csv", "data/nope.csv"), "data file data/nope.csv does not exist"),
    ("target not in data", _set("data.target", "Prise"), "target column 'Prise' is not in"),
    ("metric not reported", _set("metric", "val_accuracy"), "metric: 'val_accuracy' is not reported"),
    ("unknown executor", _set("executor.kind", "slurmm"), "executor.kind: unknown executor 'slurmm'"),
    ("bad storage url", _set("storage", "not a url"), "is not a database URL"),
    ("model cannot read the data", _set("model", {"kind": "cnn"}), "model.kind: cnn cannot read features"),
    ("narrow on the first stage", _set("stages.0.narrow", {"top": 0.5}),
     "stages.0.narrow: needs a previous stage to work from"),
    ("narrow top out of range", _set("stages", [{"name": "a", "sampler": "random", "trials": 2},
                                                {"name": "b", "sampler": "tpe", "trials": 2, "narrow": {"top": 1.5}}]),
     "stages.1.narrow.top: must be a fraction in (0, 1] such as 0.25, or a count >= 1 such as 5, got 1.5"),
    ("freeze names no parameter", _set("stages", [{"name": "a", "sampler": "random", "trials": 2},
                                                  {"name": "b", "sampler": "tpe", "trials": 2, "freeze": ["lrr"]}]),
     "stages.1.freeze.0: 'lrr' is not a parameter of space (did you mean 'lr'?)"),
    ("negative timeout", _set("stages.0.timeout", -5), "stages.0.timeout: must be a number of seconds > 0"),
    ("unknown pruner", _set("pruner", {"kind": "median", "n_startup": 3}), "pruner.n_startup: unknown key for pruner median"),
    ("ray key on local", _set("executor.address", "auto"), "executor.address: is only for kind: ray"),
]


@pytest.mark.parametrize(("edit", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line_and_exit_2(workdir: Path, edit: Any, expected: str) -> None:
    study = base_study()
    edit(study)
    path = write_study(workdir, study)
    command = "status" if expected.endswith("database URL") else "run"
    code, out, err = cli(command, str(path))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("hpsearch: error: "), err
    assert expected in err
    assert "Traceback" not in err
    assert not Path("runs/cars.db").exists() or command == "status"


def test_validate_accepts_a_good_study_and_runs_nothing(workdir: Path) -> None:
    path = write_study(workdir, base_study())
    code, out, err = cli("validate", str(path))
    assert code == 0, err
    assert "ok" in out and "1 stage(s)" in out
    assert not Path("runs").exists()


def test_bad_set_override(workdir: Path) -> None:
    path = write_study(workdir, base_study())
    code, _, err = cli("validate", str(path), "--set", "stages.4.trials=2")
    assert code == 2 and "--set stages.4.trials" in err


def test_as_a_process_no_traceback_unless_debug(workdir: Path) -> None:
    study = base_study()
    study["space"]["lr"]["high"] = 1e-9
    path = write_study(workdir, study)
    plain = cli_process("validate", str(path), cwd=workdir)
    assert plain.returncode == 2
    assert plain.stderr.strip() == "hpsearch: error: space.lr: low <= high must hold, but got low=0.0001, high=1e-09"
    debug = cli_process("validate", str(path), "--debug", cwd=workdir)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "SpecError" in debug.stderr


def test_data_that_would_fail_every_trial_is_caught_before_any_trial(workdir: Path) -> None:
    frame = pd.read_csv("data/cars93.csv")
    frame["Price"] = "about " + frame["Price"].astype(str)
    frame.to_csv("data/cars93.csv", index=False)
    path = write_study(workdir, base_study())
    code, _, err = cli("run", str(path))
    assert code == 2
    assert err == "hpsearch: error: target column 'Price' must be numeric for regression, got dtype str\n"
    assert not Path("runs").exists()


def test_reading_commands_do_not_create_a_database(workdir: Path) -> None:
    path = write_study(workdir, base_study())
    for command in (["status"], ["best"], ["export", "--out", "t.csv"]):
        code, _, err = cli(command[0], str(path), *command[1:])
        assert code == 2 and "does not exist yet" in err, err
    assert not Path("runs").exists()
