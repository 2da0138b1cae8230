"""Weight decay groups, l1, elastic net and gradient clipping have the effect they promise."""

from __future__ import annotations

from loop_helpers import make_config, watch_steps
import pytest
import torch
from torch import nn
from train_helpers import synthetic_regression

from hpsearch.train import fit, train
from hpsearch.train.models import build_model
from hpsearch.train.optim import build_optimizer
from hpsearch.train.optim.groups import decays, param_groups
from hpsearch.train.optim.regularize import penalty


def _weights_l1(knobs: dict) -> tuple[float, float]:
    """(sum |w| of weight matrices, sum |b| of biases) after training with ``knobs``."""
    data = synthetic_regression()
    cfg = make_config({"optimizer": "sgd", "lr": 0.05, "epochs": 15, "batch_size": 16, **knobs}, hidden=(32,))
    torch.manual_seed(0)
    model = build_model(cfg.model, data.n_features, data.n_outputs)
    fit(cfg, data, model)
    weights = sum(p.abs().sum().item() for p in model.parameters() if decays(p))
    biases = sum(p.abs().sum().item() for p in model.parameters() if not decays(p))
    return weights, biases


def test_l1_shrinks_the_weights() -> None:
    plain, _ = _weights_l1({})
    sparse, _ = _weights_l1({"l1": 0.01})
    assert sparse < 0.8 * plain, (sparse, plain)


def test_elastic_net_shrinks_more_than_either_part() -> None:
    l1, _ = _weights_l1({"l1": 0.01})
    l2, _ = _weights_l1({"weight_decay": 0.05})
    both, _ = _weights_l1({"l1": 0.01, "weight_decay": 0.05})
    assert both < min(l1, l2)


def test_weight_decay_skips_biases_and_norm_layers() -> None:
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.LayerNorm(8), nn.Linear(8, 1))
    cfg = make_config({"optimizer": "adamw", "weight_decay": 0.1})
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    assert set(groups) == {"body/decay", "body/no_decay", "head/decay", "head/no_decay"}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert ids["body/decay"] == {id(model[0].weight)}
    assert ids["body/no_decay"] == {
        id(p) for p in (model[0].bias, *model[1].parameters(), *model[3].parameters())
    }
    assert ids["head/decay"] == {id(model[4].weight)} and ids["head/no_decay"] == {id(model[4].bias)}
    assert [groups[n]["weight_decay"] for n in sorted(groups)] == [0.1, 0.0, 0.1, 0.0]
    optimizer = build_optimizer(list(groups.values()), cfg.optimizer)
    assert isinstance(optimizer, torch.optim.AdamW)  # decoupled decay is torch's AdamW
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_lbfgs_gets_weight_decay_as_an_l2_penalty_and_others_do_not() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(2.0)
    # 6 weights of value 2 (biases excluded): l1 = 0.1 * 12, l2 = 0.5 * 0.2 * 24
    lbfgs = penalty(model, make_config({"optimizer": "lbfgs", "weight_decay": 0.2, "l1": 0.1}))()
    assert lbfgs is not None and lbfgs.item() == pytest.approx(1.2 + 2.4)
    adam = penalty(model, make_config({"optimizer": "adam", "weight_decay": 0.2, "l1": 0.1}))()
    assert adam is not None and adam.item() == pytest.approx(1.2)
    assert penalty(model, make_config({"optimizer": "adam", "weight_decay": 0.2}))() is None


def test_lbfgs_weight_decay_shrinks_weights() -> None:
    plain, _ = _weights_l1({"optimizer": "lbfgs", "lr": 1.0, "epochs": 3})
    decayed, _ = _weights_l1({"optimizer": "lbfgs", "lr": 1.0, "epochs": 3, "weight_decay": 0.5})
    assert decayed < 0.8 * plain


def test_grad_clip_bounds_the_global_gradient_norm() -> None:
    data = synthetic_regression()
    knobs = {"optimizer": "sgd", "lr": 0.01, "epochs": 2, "batch_size": 16}
    with watch_steps() as free:
        train(make_config(knobs), data)
    with watch_steps() as clipped:
        train(make_config({**knobs, "grad_clip": 0.1}), data)
    assert max(s["grad_norm"] for s in free) > 1.0  # clipping has something to do
    assert max(s["grad_norm"] for s in clipped) <= 0.1 * (1 + 1e-5)
