"""Contract tests over the model, activation and init registries, and the model kinds' rules."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.metrics import f1_score
import torch
from train_helpers import synthetic_classification

from hpsearch.errors import ConfigError
from hpsearch.train import (
    Dataset,
    build_train_config,
    knob_names,
    load_dataset,
    models,
    parse_data_config,
    train,
)
from hpsearch.train.metrics import macro_f1
from hpsearch.train.models import build_model_for
from hpsearch.train.models.kinds import CnnConfig, MlpConfig, TransformerConfig
from hpsearch.train.models.knobs import activations, inits

USER_BUILD = "studies.user_example.models:build"


def _images(n: int = 64) -> Dataset:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    x[:, 0, 2, 2] += y.float()  # a pixel that tells the class
    return Dataset(x[:48], y[:48], x[48:], y[48:], "classification", (), 3, classes=("a", "b", "c"))


def _tokens(n: int = 64) -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 8, (n, 6), generator=g)
    y = (x[:, 0] > x[:, -1]).long()
    return Dataset(x[:48], y[:48], x[48:], y[48:], "classification", (), 2, classes=("0", "1"), vocab_size=8)


# One small example per kind; a kind registered without an example fails the contract test below.
EXAMPLES: dict[str, tuple[dict[str, Any], Any]] = {
    "mlp": ({"kind": "mlp", "hidden": [16]}, synthetic_classification),
    "cnn": ({"kind": "cnn", "channels": 8, "blocks": 2}, _images),
    "transformer": ({"kind": "transformer", "d_model": 16, "heads": 2, "layers": 1, "dropout": 0.0}, _tokens),
    "python": ({"python": USER_BUILD, "width": 16, "blocks": 1}, synthetic_classification),
}


def _losses(model: dict[str, Any], data: Dataset, knobs: dict[str, Any] | None = None) -> list[float]:
    cfg = build_train_config(
        model, {"device": "cpu", "epochs": 12, "lr": 0.01, "batch_size": 16, **(knobs or {})},
        task="classification", monitor="val_loss", maximize=False, seed=0,
    )
    history: list[float] = []

    class Recorder:
        def report(self, epoch: int, metrics: Any) -> bool:
            history.append(metrics["train_loss"])
            return False

    train(cfg, data, Recorder())
    return history


@pytest.mark.parametrize("kind", sorted(models()))
def test_every_model_kind_lowers_the_training_loss(kind: str) -> None:
    assert kind in EXAMPLES, f"add an example for model kind {kind!r} to EXAMPLES"
    section, make_data = EXAMPLES[kind]
    losses = _losses(section, make_data())
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("activation", sorted(activations()))
def test_every_activation_trains(activation: str) -> None:
    losses = _losses({"kind": "mlp", "hidden": [16]}, synthetic_classification(), {"activation": activation})
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("init", sorted(inits()))
@pytest.mark.parametrize("kind", ["mlp", "cnn", "transformer"])
def test_every_init_trains_every_builtin_kind(init: str, kind: str) -> None:
    section, make_data = EXAMPLES[kind]
    losses = _losses({**section, "init": init}, make_data())
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("init", ["kaiming", "xavier"])
def test_init_changes_the_weights_and_zeroes_biases(init: str) -> None:
    data = synthetic_classification()
    built = {}
    for name in ("default", init):
        cfg = build_train_config({"kind": "mlp", "hidden": [256], "init": name}, {}, task="classification",
                                 monitor="val_loss", maximize=False, seed=0)
        torch.manual_seed(0)
        built[name] = build_model_for(cfg.model, data)
    first = built[init][1]
    assert torch.equal(first.bias, torch.zeros_like(first.bias))
    default_std, std = built["default"][1].weight.std().item(), first.weight.std().item()
    expected = np.sqrt(2 / 4) if init == "kaiming" else np.sqrt(2) * np.sqrt(2 / (4 + 256))  # relu gain
    assert std == pytest.approx(expected, rel=0.15) and abs(std - default_std) > 0.1 * std


def test_mlp_shape_knobs() -> None:
    def mlp(model: dict[str, Any], knobs: dict[str, Any] | None = None) -> MlpConfig:
        return build_train_config(model, knobs or {}, task="regression", monitor="val_rmse", maximize=False,
                                  seed=0).model

    assert mlp({"layers": 3, "width": 32}).hidden == (32, 32, 32)
    assert mlp({"hidden": [64, 32]}, {"width": 8}).hidden == (8, 8)  # a searched width keeps the depth
    assert mlp({"hidden": [64, 32]}, {"layers": 0}).hidden == ()
    cfg = mlp({"kind": "mlp", "activation": "tanh", "batch_norm": True}, {"init": "xavier", "dropout": 0.2})
    assert (cfg.activation, cfg.batch_norm, cfg.init, cfg.dropout) == ("tanh", True, "xavier", 0.2)
    model = build_model_for(cfg, Dataset(torch.zeros(4, 3), torch.zeros(4), torch.zeros(2, 3), torch.zeros(2),
                                         "regression", ("a", "b", "c"), 1))
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Flatten", *["Linear", "BatchNorm1d", "Tanh", "Dropout"] * 2, "Linear"]


def test_model_knobs_are_knob_names() -> None:
    assert {"layers", "width", "activation", "init", "batch_norm", "dropout"} <= set(knob_names("mlp"))
    assert {"channels", "blocks", "kernel_size", "batch_norm"} <= set(knob_names("cnn"))
    assert {"d_model", "heads", "layers", "ff_mult", "dropout"} <= set(knob_names("transformer"))
    assert "width" not in knob_names("transformer")


def test_defaults_of_new_kinds() -> None:
    def model(section: dict[str, Any]) -> Any:
        return build_train_config(section, {}, task="classification", monitor="val_loss", maximize=False,
                                  seed=0).model

    assert model({"kind": "cnn"}) == CnnConfig()
    assert model({"kind": "transformer"}) == TransformerConfig()
    hash(model({"kind": "transformer"}))


@pytest.mark.parametrize(
    ("model", "knobs", "key", "fragment"),
    [
        ({"kind": "transformer", "d_model": 30, "heads": 4}, {}, "model.heads", "d_model (30) must be divisible by heads (4)"),
        ({"kind": "transformer"}, {"d_model": 48, "heads": 5}, "heads", "d_model (48) must be divisible by heads (5)"),
        ({"kind": "mlp"}, {"activation": "relu6"}, "activation", "unknown activation 'relu6' (did you mean 'relu'?); one of: elu, gelu"),
        ({"kind": "cnn", "init": "he"}, {}, "model.init", "unknown init 'he'; one of: default, kaiming, xavier"),
        ({"kind": "mlp", "batch_norm": "yes"}, {}, "model.batch_norm", "must be true or false, got 'yes'"),
        ({"kind": "mlp", "hidden": [8], "layers": 2}, {}, "model.hidden", "either hidden or layers + width"),
        ({"kind": "mlp"}, {"width": 0}, "width", "must be in [1, 1000000], got 0"),
        ({"kind": "cnn", "kernel_size": 4}, {}, "model.kernel_size", "must be odd"),
        ({"kind": "cnn", "blocks": 0}, {}, "model.blocks", "must be in [1, 8]"),
        ({"kind": "cnn", "hidden": [3]}, {}, "model.hidden", "unknown key"),
        ({"kind": "transformer"}, {"dropout": 1.5}, "dropout", "must be in [0, 1)"),
        ({"kind": "cnn"}, {"width": 8}, "width", "unknown knob"),
    ],
)
def test_model_errors_name_the_field(model: dict, knobs: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_train_config(model, knobs, task="classification", monitor="val_loss", maximize=False, seed=0)
    assert info.value.key == key and fragment in info.value.message, info.value


def test_a_kind_that_cannot_read_the_data_says_which_can() -> None:
    cfg = build_train_config({"kind": "cnn"}, {}, task="classification", monitor="val_loss", maximize=False, seed=0)
    with pytest.raises(ConfigError) as info:
        build_model_for(cfg.model, synthetic_classification())
    assert info.value.key == "model.kind"
    assert info.value.message == "cnn cannot read features [4]; one of: mlp, python"


def test_cnn_learns_digits_well_above_chance() -> None:
    data = load_dataset(parse_data_config({"builtin": "digits", "augment": "shift"}, seed=0))
    cfg = build_train_config(
        {"kind": "cnn", "channels": 16}, {"device": "cpu", "epochs": 3, "lr": 0.005, "batch_size": 64},
        task="classification", monitor="val_accuracy", maximize=True, seed=0,
    )
    result = train(cfg, data)
    assert result.best_metrics["val_accuracy"] > 0.6  # chance is 0.1
    assert result.best_metrics["val_f1"] > 0.5


def test_transformer_learns_the_sequence_task() -> None:
    data = load_dataset(parse_data_config({"builtin": "is_sorted", "rows": 2000}, seed=0))
    cfg = build_train_config(
        {"kind": "transformer", "d_model": 32, "heads": 4, "layers": 2, "ff_mult": 2, "dropout": 0.0},
        {"device": "cpu", "epochs": 8, "lr": 0.003, "batch_size": 32},
        task="classification", monitor="val_accuracy", maximize=True, seed=0,
    )
    result = train(cfg, data)
    assert result.best_metrics["val_accuracy"] > 0.7  # the classes are balanced: chance is 0.5


def test_macro_f1_matches_scikit_learn() -> None:
    g = torch.Generator().manual_seed(0)
    for k in (2, 5):
        true = torch.randint(0, k, (200,), generator=g)
        pred = torch.where(torch.rand(200, generator=g) < 0.6, true, torch.randint(0, k, (200,), generator=g))
        pred[pred == k - 1] = 0  # a class that is never predicted still counts
        assert macro_f1(pred, true, k + 1) == pytest.approx(f1_score(true, pred, average="macro"))
