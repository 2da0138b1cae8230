"""The learning-rate range test of the training core: a quadratic with a known stable limit, divergence,
the cases with no suggestion, the analysis of synthetic curves, and fused repeats against solo ones."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hpsearch.errors import ConfigError
from hpsearch.train import Dataset, TrainConfig, build_train_config
from hpsearch.train.lr_range import RangeSettings, curve, parse_settings, range_test, range_tests
from hpsearch.train.lr_range._analysis import NEVER_DIVERGED, NEVER_FELL, Watch


def _quadratic(n: int = 64, d: int = 5, seed: int = 0) -> tuple[Dataset, float]:
    """Linear regression under MSE: a quadratic in the weights. Full-batch SGD on it diverges above
    2/L, L the largest eigenvalue of its Hessian (2/n)·AᵀA, A the inputs with a column of ones (the bias)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.array([3.0, 1.0, 1.0, 0.5, 0.2])
    y = x @ rng.normal(size=d) + 0.1 * rng.normal(size=n)
    a = np.hstack([x, np.ones((n, 1))])
    curvature = float(np.linalg.eigvalsh(2 / n * a.T @ a).max())
    t = torch.tensor
    data = Dataset(t(x, dtype=torch.float32), t(y, dtype=torch.float32), t(x, dtype=torch.float32),
                   t(y, dtype=torch.float32), "regression", tuple(f"x{i}" for i in range(d)), 1)
    return data, 2 / curvature


def _sgd(batch_size: int, **knobs: object) -> TrainConfig:
    return build_train_config({"kind": "mlp", "hidden": []}, {"optimizer": "sgd", "batch_size": batch_size,
                                                              "device": "cpu", **knobs},
                              task="regression", monitor="val_rmse", maximize=False, seed=0)


def test_the_suggested_high_lies_at_or_below_sgds_stable_limit_on_a_quadratic_and_within_ten_times_of_it() -> None:
    data, limit = _quadratic()
    result = range_test(_sgd(64), data, RangeSettings())
    assert result.suggestion is not None, result.message
    assert limit / 10 <= result.suggestion.high <= limit
    assert result.suggestion.low <= result.suggestion.high / 10  # a decade at least
    assert "divergence at" in result.suggestion.high_from and "high from" in result.message


@pytest.mark.parametrize("steps", [100, 400])
def test_the_limit_holds_for_finer_and_coarser_sweeps(steps: int) -> None:
    data, limit = _quadratic(seed=1)
    result = range_test(_sgd(64), data, parse_settings(1e-6, 100, steps, 2))
    assert result.suggestion is not None and limit / 10 <= result.suggestion.high <= limit


def test_a_diverging_run_is_detected_past_the_limit_and_the_sweep_stops_there() -> None:
    data, limit = _quadratic()
    settings = RangeSettings(steps=200)
    result = range_test(_sgd(64), data, settings)
    for c in result.curves:
        assert c.diverged is not None
        assert c.lrs[c.diverged] > limit  # the loss of SGD on a quadratic cannot rise below 2/L
        assert len(c.losses) < settings.steps  # stopped: nothing after the blow-up was trained
        assert c.smoothed[c.diverged] > 4 * min(c.smoothed) or not math.isfinite(c.losses[-1])


def test_a_loss_that_turns_nan_or_inf_diverges_at_once() -> None:
    data, _ = _quadratic()
    result = range_test(_sgd(64), data, parse_settings(1e3, 1e30, 50, 1))
    c = result.curves[0]
    assert not math.isfinite(c.losses[-1]) or c.smoothed[-1] > 4 * min(c.smoothed[3:-1])
    assert c.diverged == len(c.losses) - 1
    assert result.suggestion is None and "never fell" in result.message


def test_a_model_that_never_diverges_within_max_gets_a_clear_line_and_no_suggestion() -> None:
    data, limit = _quadratic()
    result = range_test(_sgd(64), data, parse_settings(1e-5, limit / 4, 200, 2))
    assert result.suggestion is None
    assert result.message.startswith("no suggestion: the loss never diverged up to the sweep's max lr")
    assert "raise the max lr" in result.message
    assert all(c.finding.problem == NEVER_DIVERGED and c.diverged is None for c in result.curves)


def test_a_loss_that_never_falls_gets_a_clear_line_and_no_suggestion() -> None:
    data, _ = _quadratic()
    result = range_test(_sgd(64), data, parse_settings(1e-12, 1e-9, 100, 2))  # too small to move the weights
    assert result.suggestion is None
    assert result.message.startswith("no suggestion: the loss never fell clearly below its start")
    assert "lower the min lr" in result.message
    assert all(c.finding.problem == NEVER_FELL for c in result.curves)


def test_each_repeat_trains_from_its_own_seed() -> None:
    data, _ = _quadratic()
    result = range_test(_sgd(64, seed=7), data, parse_settings(1e-6, 100, 60, 3))
    assert [c.seed for c in result.curves] == [7, 8, 9]
    assert result.curves[0].losses[0] != result.curves[1].losses[0]  # other initial weights


def test_the_smoothed_loss_is_a_bias_corrected_average() -> None:
    watch = Watch(beta=0.9, factor=4.0, head=3)
    for _ in range(5):
        watch.add(2.0)
    assert watch.smoothed == pytest.approx([2.0] * 5)  # no pull towards 0 at the start
    assert watch.start == 2.0


def _settings(steps: int) -> RangeSettings:
    return parse_settings(1e-6, 1.0, steps, 1)


def test_a_bounded_loss_that_climbs_back_above_its_start_has_diverged() -> None:
    # cross-entropy at chance is ~2.3: it falls to 1.0 and climbs back to 3.0, never 4x its minimum
    n = 120
    losses = [2.3] * 40 + [2.3 - 1.3 * i / 40 for i in range(40)] + [1.0 + 2.0 * i / 40 for i in range(40)]
    c = curve(0, _settings(n), losses)
    assert c.diverged is not None and losses[c.diverged] > 2.0
    assert c.finding.problem is None and c.finding.descent is not None
    assert c.lrs[40] < c.finding.descent < c.lrs[80]  # the middle of the fall


def test_noise_at_the_start_is_not_taken_for_a_fall() -> None:
    rng = np.random.default_rng(0)
    losses = list(1.0 + 0.5 * rng.standard_normal(200).clip(-1.5, 1.5))
    c = curve(0, _settings(200), losses)
    assert c.finding.problem == NEVER_FELL


@pytest.mark.parametrize(("args", "key"), [
    ((1.0, 0.1, 200, 3), "min"), ((1e-8, 1e-8, 200, 3), "min"), ((-1, 1, 200, 3), "min"), ((1e-8, "x", 200, 3), "max"),
    ((1e-8, 10, 9, 3), "steps"), ((1e-8, 10, 2.5, 3), "steps"), ((1e-8, 10, 200, 0), "repeats"),
])
def test_bad_settings_name_the_setting(args: tuple[object, ...], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings(*args)
    assert err.value.key == key


def test_fused_repeats_follow_their_solo_runs(cars: Dataset) -> None:
    config = build_train_config({"kind": "mlp", "hidden": [16]}, {"optimizer": "adam", "batch_size": 16,
                                                                  "device": "cpu", "dropout": 0.1},
                                task="regression", monitor="val_rmse", maximize=False, seed=3)
    settings = parse_settings(1e-6, 10, 100, 3)
    solo = range_test(config, cars, settings)
    fused = range_test(config, cars, settings, fuse=True)
    assert fused.fused and not solo.fused
    for a, b in zip(solo.curves, fused.curves, strict=True):
        assert a.seed == b.seed
        n = min(len(a.losses), len(b.losses)) - 3  # rounding may move the last steps of a blow-up
        assert np.allclose(a.losses[:n], b.losses[:n], rtol=1e-4, atol=1e-6)
    assert (solo.suggestion is None) == (fused.suggestion is None)


def test_optimizer_choices_fuse_into_one_pack_and_follow_their_solo_runs(cars: Dataset) -> None:
    """The tests of a searched optimizer's choices (held knobs of their own) train as members of one
    stacked model, each kind stepped by its own optimizer over its rows, and each as it would alone."""
    knobs = [{"optimizer": "sgd"}, {"optimizer": "adam", "beta1": 0.8}, {"optimizer": "momentum", "momentum": 0.7},
             {"optimizer": "adam"}]
    configs = [build_train_config({"kind": "mlp", "hidden": [16]}, {**k, "batch_size": 16, "device": "cpu",
                                                                   "dropout": 0.1},
                                  task="regression", monitor="val_rmse", maximize=False, seed=3) for k in knobs]
    settings = parse_settings(1e-6, 10, 100, 2)
    fused = range_tests(configs, cars, settings, fuse=True)
    assert [r.optimizer for r in fused] == ["sgd", "adam", "momentum", "adam"] and all(r.fused for r in fused)
    assert len({r.duration_s for r in fused}) == 1  # one pack
    for config, together in zip(configs, fused, strict=True):
        alone = range_test(config, cars, settings)
        assert not alone.fused
        for a, b in zip(alone.curves, together.curves, strict=True):
            assert a.seed == b.seed
            n = min(len(a.losses), len(b.losses)) - 3  # rounding may move the last steps of a blow-up
            assert n > 10 and np.allclose(a.losses[:n], b.losses[:n], rtol=1e-4, atol=1e-6), config.optimizer.name
