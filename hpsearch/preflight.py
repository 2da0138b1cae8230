"""A dry run before the real one: what would fail every trial fails here, once, in one line.

It loads the data and builds the model (and its learning-rate groups) for the corner
configurations of the space, so a target that is not numeric, a model that cannot read the data, or
a user builder that raises is reported before any worker starts. Data that would train to a wrong
result (an inf target, one class) and a CUDA device this machine does not have are refused too.
"""

from __future__ import annotations

from typing import Any

from hpsearch.errors import ConfigError, DataError, HpsearchError, SpecError
from hpsearch.executors.base import ExecutorSpec
from hpsearch.space import corner_configs
from hpsearch.spec import StudySpec, knob_path
from hpsearch.train import build_train_config, check_data, load_dataset
from hpsearch.train.data.checks import check_dataset

# Models are cheap to build, but a space can have many corners; these cover every categorical choice
# of typical spaces.
_MAX_BUILDS = 64


def preflight(spec: StudySpec) -> None:
    """Check the data file, load the data, and build the model for corner configurations."""
    from hpsearch.train.models import build_model_for, model_kind
    from hpsearch.train.optim.groups import param_groups

    check_data(spec.data)
    try:
        data = load_dataset(spec.data)
    except HpsearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - user data code may raise anything
        raise DataError(f"loading the data failed: {type(exc).__name__}: {exc}") from exc
    except SystemExit as exc:  # user data code: it would end hpsearch with no word of why
        raise DataError(f"loading the data called sys.exit({exc.code!r})") from None
    check_dataset(data, f"data {spec.data.path}")
    checked_devices: set[str] = set()
    checked_output = False
    for config in corner_configs(spec.space, _MAX_BUILDS) or [{}]:
        knobs = {**spec.train, **config}
        try:
            train_config = build_train_config(spec.model, knobs, task=spec.task, monitor=spec.metric,
                                              maximize=spec.maximize, seed=spec.seed)
            model = build_model_for(train_config.model, data)
            param_groups(model, train_config)
            if not checked_output and model_kind(spec.model) == "python":
                checked_output = True
                _check_output(model, data)
        except ConfigError as exc:
            raise SpecError(knob_path(exc.key, config), exc.message) from exc
        except HpsearchError:
            raise
        except Exception as exc:  # noqa: BLE001 - user model code may raise anything
            raise SpecError("model", f"building the model failed: {type(exc).__name__}: {exc}") from exc
        except SystemExit as exc:
            raise SpecError("model", f"building the model called sys.exit({exc.code!r})") from None
        if train_config.device not in checked_devices:
            checked_devices.add(train_config.device)
            _check_device(train_config.device, spec.executor, knob_path("device", config))


def _check_output(model: Any, data: Any) -> None:
    """A user model's output for two training rows has the shape the loss needs, or every trial would fail."""
    import torch

    with torch.no_grad():
        out = model.eval()(data.x_train[:2])
    want = (2, data.n_outputs)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != want and not (data.task == "regression" and shape == (2,)):
        what = f"a tensor of shape {list(shape)}" if shape is not None else f"a {type(out).__name__}"
        raise SpecError("model.python", f"the model returns {what} for a batch of 2 rows; a {data.task} model must "
                                        f"return [batch, {data.n_outputs}] ({'one value' if data.task == 'regression' else 'one score a class'} a row)")


def _check_device(device: str, executor: ExecutorSpec, path: str) -> None:
    """A CUDA device must exist where trials run: here, unless they run on a Ray cluster's machines."""
    from hpsearch.train.loop import resolve_device

    if not device.startswith("cuda"):
        return
    if executor.kind == "ray" and executor.gpus_per_trial == 0:
        raise SpecError(path, f"{device} needs a GPU, but executor.gpus_per_trial is 0, so Ray gives trials none; "
                              "set executor.gpus_per_trial (such as 1 or 0.25), or device auto or cpu")
    if executor.kind == "ray" and executor.address is not None:
        return  # the cluster's workers have the GPUs, not necessarily this machine
    try:
        resolve_device(device)
    except ConfigError as exc:
        raise SpecError(path, exc.message) from None
