"""User models and data loaded from ``package.module:function`` import paths."""

from __future__ import annotations

from pathlib import Path
import sys
import textwrap

import pytest
import torch

from hpsearch.errors import ConfigError, DataError
from hpsearch.train import build_train_config, knob_names, load_dataset, parse_data_config, train
from hpsearch.train.imports import load_callable
from hpsearch.train.models import model_kind
from hpsearch.train.models.user import PythonModelConfig

BUILD = "studies.user_example.models:build"
LOAD = "studies.user_example.data:load"


def config(model: dict, knobs: dict | None = None, task: str = "classification"):
    monitor = "val_loss" if task == "classification" else "val_rmse"
    return build_train_config(model, {"device": "cpu", **(knobs or {})}, task=task, monitor=monitor,
                              maximize=False, seed=0)


def test_the_worked_example_trains_from_its_import_paths() -> None:
    data = load_dataset(parse_data_config({"python": LOAD, "task": "classification", "rows": 500, "noise": 0.3, "turns": 1.5}, seed=0))
    assert data.input_shape == (2,) and data.n_outputs == 2 and len(data.x_train) == 400
    cfg = config({"python": BUILD, "width": 64, "blocks": 2}, {"epochs": 20, "lr": 0.01})
    assert cfg.model == PythonModelConfig(BUILD, (("blocks", 2), ("width", 64)))
    result = train(cfg, data)
    assert result.best_metrics["val_accuracy"] > 0.7  # chance is 0.5


def test_scalar_options_are_searchable_knobs_that_override_the_section() -> None:
    section = {"python": BUILD, "width": 32, "blocks": 1, "sizes": [1, 2], "extra": {"a": 1}}
    assert model_kind(section) == "python"
    names = knob_names("python", section)
    assert {"width", "blocks", "lr"} <= set(names) and "sizes" not in names and "extra" not in names
    cfg = config(section, {"width": 8})
    assert dict(cfg.model.options)["width"] == 8 and dict(cfg.model.options)["blocks"] == 1
    hash(cfg)  # list and mapping options are frozen, so the config stays hashable
    with pytest.raises(ConfigError) as info:
        config(section, {"depth": 3})
    assert info.value.key == "depth" and "unknown knob" in info.value.message


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("studies.user_example.modelz:build",
         "model.python: cannot import module 'studies.user_example.modelz' (No module named 'studies.user_example.modelz')"),
        ("studies.user_example.models:buld", "model.python: module 'studies.user_example.models' has no attribute 'buld'"),
        ("studies/user_example/models.py", "model.python: must look like package.module:function, got 'studies/user_example/models.py'"),
        ("studies.user_example.models", "model.python: must look like package.module:function"),
        (42, "model.python: must look like package.module:function, got 42"),
    ],
)
def test_bad_model_import_paths_give_one_clear_line(path: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config({"python": path})
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_bad_data_import_path_and_option_names() -> None:
    with pytest.raises(ConfigError, match=r"^python: module 'studies.user_example.data' has no attribute 'lode'$"):
        parse_data_config({"python": "studies.user_example.data:lode", "task": "classification"}, seed=0)
    with pytest.raises(ConfigError) as info:
        parse_data_config({"python": LOAD}, seed=0)
    assert info.value.key == "task"
    with pytest.raises(ConfigError) as info:
        config({"python": BUILD, "lr": 0.1})
    assert info.value.key == "model.lr" and "training knob" in info.value.message
    with pytest.raises(ConfigError) as info:
        config({"python": BUILD, "kind": "mlp"})
    assert info.value.key == "model.python"


@pytest.fixture
def user_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A package ``mypkg`` in a scratch working directory, importable only through the cwd rule."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "things.py").write_text(textwrap.dedent('''
        import numpy as np
        import torch
        from hpsearch.train import Dataset

        def linear(inputs, scale=1.0):
            return torch.nn.Linear(inputs.n_features, inputs.n_outputs)

        def not_a_model(inputs):
            return "model"

        def pair(seed, rows=100):
            rng = np.random.default_rng(seed)
            x = rng.normal(size=(rows, 3))
            return x, x @ np.array([1.0, -2.0, 0.5]) * 100 + 7

        def four(seed):
            x, y = pair(seed)
            return x[:80], y[:80], x[80:], y[80:]

        def dataset(seed):
            x, y = pair(seed)
            y = (y - 7) / 100  # standardized by the user, who says how to undo it
            t = torch.tensor
            return Dataset(t(x[:80]).float(), t(y[:80]).float(), t(x[80:]).float(), t(y[80:]).float(),
                           "regression", ("a", "b", "c"), 1, target_mean=7.0, target_std=100.0)

        def nothing(seed):
            return None

        def tokens(seed):
            return np.arange(40).reshape(10, 4) % 7, np.arange(10) % 2
    '''))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        monkeypatch.delitem(sys.modules, name)
    return tmp_path


@pytest.mark.parametrize("loader", ["pair", "four", "dataset"])
def test_user_data_shapes_are_all_accepted(user_pkg: Path, loader: str) -> None:
    data = load_dataset(parse_data_config({"python": f"mypkg.things:{loader}", "task": "regression"}, seed=0))
    assert data.input_shape == (3,) and len(data.x_train) == 80 and len(data.x_val) == 20
    cfg = config({"python": "mypkg.things:linear", "scale": 2.0}, {"epochs": 60, "lr": 0.05}, task="regression")
    result = train(cfg, data)
    assert result.best_metrics["val_r2"] > 0.95  # a linear target, in original units


def test_user_data_and_model_mistakes(user_pkg: Path) -> None:
    with pytest.raises(DataError, match=r"must return \(x, y\), \(x_train, y_train, x_val, y_val\) or a Dataset, got NoneType"):
        load_dataset(parse_data_config({"python": "mypkg.things:nothing", "task": "regression"}, seed=0))
    with pytest.raises(DataError, match="returned a regression Dataset but data.task is classification"):
        load_dataset(parse_data_config({"python": "mypkg.things:dataset", "task": "classification"}, seed=0))
    tokens = load_dataset(parse_data_config({"python": "mypkg.things:tokens", "task": "classification"}, seed=0))
    assert tokens.x_train.dtype == torch.int64 and tokens.vocab_size == 7 and tokens.n_outputs == 2
    cfg = config({"python": "mypkg.things:not_a_model"}, {"epochs": 1})
    with pytest.raises(ConfigError, match="must return a torch.nn.Module, got str"):
        train(cfg, tokens)


def test_the_working_directory_is_tried_last(user_pkg: Path) -> None:
    assert callable(load_callable("model.python", "mypkg.things:linear"))
    assert sys.path[-1] == str(user_pkg)
