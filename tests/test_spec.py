"""Study-file parsing: the user contract, overrides, and one clear error for each kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.errors import SpecError
from hpsearch.space import CategoricalParam, FloatParam
from hpsearch.spec import NarrowSpec, apply_overrides, load_spec, parse_spec, parse_yaml
from tests.helpers import base_study, write_study


def test_quickstart_study_parses() -> None:
    root = Path(__file__).resolve().parents[1]
    spec = load_spec(root / "studies" / "car_price.yaml")
    assert spec.name == "car-price"
    assert [s.name for s in spec.stages] == ["coarse", "fine"]
    assert [s.trials for s in spec.stages] == [20, 10]
    fine = spec.stages[1]
    assert fine.narrow == NarrowSpec(top=0.25, margin=0.1) and fine.warm_start == 3 and fine.derived
    assert spec.pruner.kind == "median" and spec.pruner.options["startup_trials"] == 5
    assert spec.direction == "minimize"
    assert spec.executor.workers == 2
    momentum = next(p for p in spec.space if p.name == "momentum")
    assert momentum.when[0].param == "optimizer" and momentum.when[0].values == ("momentum",)
    assert spec.study_name(spec.stages[0]) == "car-price/coarse"


def test_yaml_exponent_without_dot_is_a_number() -> None:
    raw = parse_yaml("low: 1e-5\nhigh: 1E2\nchoices: [1e-3, 5e-4]\nname: 1e5x\n", "t")
    assert raw["low"] == pytest.approx(1e-5) and isinstance(raw["low"], float)
    assert raw["high"] == 100.0
    assert raw["choices"] == [1e-3, 5e-4]
    assert raw["name"] == "1e5x"
    spec = parse_spec(base_study(space={"lr": {"type": "float", "low": "1e-5", "high": 1, "log": True}}))
    lr = spec.space[0]
    assert isinstance(lr, FloatParam) and lr.low == pytest.approx(1e-5) and lr.high == 1.0


def test_shorthand_sampler_and_trials_make_one_stage() -> None:
    raw = base_study()
    del raw["stages"]
    raw.update(sampler="tpe", trials=7)
    spec = parse_spec(raw)
    assert len(spec.stages) == 1
    assert (spec.stages[0].sampler, spec.stages[0].trials, spec.stages[0].max_failures) == ("tpe", 7, 10)


def test_direction_defaults_to_the_metric_nature() -> None:
    spec = parse_spec(base_study(metric="val_r2"))
    assert spec.direction == "maximize"


def test_overrides_by_dotted_path() -> None:
    raw = apply_overrides(base_study(), ["stages.0.trials=5", "executor.workers=1", "space.lr.high=0.5",
                                         "train.lr_note=x", "space.batch_size.choices=[8, 64]"])
    assert raw["stages"][0]["trials"] == 5
    assert raw["executor"]["workers"] == 1
    assert raw["space"]["lr"]["high"] == 0.5
    assert raw["space"]["batch_size"]["choices"] == [8, 64]
    fresh = apply_overrides({"name": "x"}, ["executor.workers=3"])
    assert fresh["executor"] == {"workers": 3}


@pytest.mark.parametrize(
    ("override", "path"),
    [("stages.3.trials=5", "--set stages.3.trials"), ("name.x=1", "--set name.x"), ("trials", "--set")],
)
def test_bad_overrides(override: str, path: str) -> None:
    with pytest.raises(SpecError) as info:
        apply_overrides(base_study(), [override])
    assert info.value.path == path


def _error(raw: dict) -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    return info.value


def test_missing_name() -> None:
    raw = base_study()
    del raw["name"]
    assert _error(raw).path == "name"


def test_misspelled_top_level_key_names_it_and_suggests() -> None:
    raw = base_study()
    raw["stagse"] = raw.pop("stages")
    err = _error(raw)
    assert err.path == "stagse"
    assert "did you mean 'stages'" in err.message and "allowed:" in err.message


def test_misspelled_nested_keys() -> None:
    raw = base_study()
    raw["space"]["lr"]["hihg"] = 1
    err = _error(raw)
    assert err.path == "space.lr.hihg" and "did you mean 'high'" in err.message
    raw = base_study(stages=[{"name": "coarse", "sampler": "random", "trails": 4}])
    assert _error(raw).path == "stages.0.trails"
    raw = base_study(executor={"kind": "local", "worker": 2})
    assert _error(raw).path == "executor.worker"


def test_low_above_high() -> None:
    raw = base_study()
    raw["space"]["lr"] = {"type": "float", "low": 1.0, "high": 0.1}
    err = _error(raw)
    assert err.path == "space.lr" and "low <= high" in err.message and "low=1.0" in err.message


def test_log_needs_positive_low_and_excludes_step() -> None:
    raw = base_study()
    raw["space"]["lr"] = {"type": "float", "low": 0.0, "high": 0.1, "log": True}
    assert _error(raw).path == "space.lr.low"
    raw["space"]["lr"] = {"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1}
    assert _error(raw).path == "space.lr.step"


def test_unknown_sampler() -> None:
    err = _error(base_study(stages=[{"name": "a", "sampler": "tpee", "trials": 3}]))
    assert err.path == "stages.0.sampler" and "did you mean 'tpe'" in err.message and "grid" in err.message


def test_unknown_optimizer_in_space_and_in_train() -> None:
    raw = base_study()
    raw["space"]["optimizer"]["choices"] = ["sgd", "momentum", "adamm"]
    err = _error(raw)
    assert err.path == "space.optimizer" and "adamm" in err.message and "adam" in err.message
    raw = base_study()
    del raw["space"]["optimizer"], raw["space"]["momentum"]
    raw["train"]["optimizer"] = "rmsprp"
    err = _error(raw)
    assert err.path == "train.optimizer" and "rmsprp" in err.message


def test_unknown_knob_in_space() -> None:
    raw = base_study()
    raw["space"]["learning_rate"] = {"type": "float", "low": 0.1, "high": 0.2}
    err = _error(raw)
    assert err.path == "space.learning_rate" and "allowed:" in err.message


def test_knob_both_fixed_and_searched() -> None:
    raw = base_study()
    raw["train"]["lr"] = 0.01
    err = _error(raw)
    assert err.path == "space.lr" and "train.lr" in err.message


def test_conditional_knob_without_when_is_rejected() -> None:
    raw = base_study()
    del raw["space"]["momentum"]["when"]
    err = _error(raw)
    assert err.path == "space.momentum" and "when" in err.message


def test_when_must_name_an_earlier_categorical_and_its_choices() -> None:
    raw = base_study()
    raw["space"]["momentum"]["when"] = {"optimiser": ["momentum"]}
    err = _error(raw)
    assert err.path == "space.momentum.when.optimiser" and "did you mean 'optimizer'" in err.message
    raw["space"]["momentum"]["when"] = {"optimizer": ["nesterovv"]}
    assert "not a choice of optimizer" in _error(raw).message


def test_metric_not_reported_by_the_core() -> None:
    err = _error(base_study(metric="val_acc"))
    assert err.path == "metric" and "val_rmse" in err.message


def test_direction_against_the_metric_is_rejected() -> None:
    err = _error(base_study(metric="val_r2", direction="minimize"))
    assert err.path == "direction" and "maximize" in err.message


def test_grid_needs_points_for_numeric_parameters() -> None:
    err = _error(base_study(stages=[{"name": "g", "sampler": "grid", "grid": {"lr": 3}}]))
    assert err.path == "stages.0.grid.momentum"
    spec = parse_spec(base_study(stages=[{"name": "g", "sampler": "grid", "grid": {"lr": 3, "momentum": 2}}]))
    # lr 3 x batch 2 x (sgd + adam + momentum x 2) = 24 distinct configurations
    assert spec.stages[0].trials == 24


def test_data_keys_are_checked_with_the_section_path() -> None:
    raw = base_study()
    raw["data"]["tagret"] = raw["data"].pop("target")
    err = _error(raw)
    assert err.path == "data.tagret" and "did you mean 'target'" in err.message


def test_study_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    path = write_study(tmp_path, base_study())
    assert load_spec(path, ["stages.0.trials=9"]).stages[0].trials == 9


def test_categorical_params_keep_their_choices() -> None:
    spec = parse_spec(base_study())
    batch = next(p for p in spec.space if p.name == "batch_size")
    assert isinstance(batch, CategoricalParam) and batch.choices == (16, 32)


def test_when_may_name_a_parameter_declared_later_and_cycles_are_rejected() -> None:
    raw = base_study()
    space = raw["space"]
    raw["space"] = {"momentum": space["momentum"], "lr": space["lr"], "optimizer": space["optimizer"]}
    order = [p.name for p in parse_spec(raw).space]
    assert order.index("optimizer") < order.index("momentum")
    raw["space"] = {
        "optimizer": {**space["optimizer"], "when": {"schedule": ["step"]}},
        "schedule": {"type": "categorical", "choices": ["constant", "step"], "when": {"optimizer": ["sgd"]}},
    }
    err = _error(raw)
    assert "cycle" in err.message and err.path.endswith(".when")
