"""A dry run before the real one: what would fail every trial fails here, once, in one line.

It loads the data and builds the model (and its learning-rate groups) for the corner
configurations of the space, so a target that is not numeric, a model that cannot read the data, or
a user builder that raises is reported before any worker starts.
"""

from __future__ import annotations

from hpsearch.errors import ConfigError, DataError, HpsearchError, SpecError
from hpsearch.space import corner_configs
from hpsearch.spec import StudySpec, knob_path
from hpsearch.train import build_train_config, check_data, load_dataset

# Models are cheap to build, but a space can have many corners; these cover every categorical choice
# of typical spaces.
_MAX_BUILDS = 64


def preflight(spec: StudySpec) -> None:
    """Check the data file, load the data, and build the model for corner configurations."""
    from hpsearch.train.models import build_model_for
    from hpsearch.train.optim.groups import param_groups

    check_data(spec.data)
    try:
        data = load_dataset(spec.data)
    except HpsearchError:
        raise
    except Exception as exc:  # noqa: BLE001 - user data code may raise anything
        raise DataError(f"loading the data failed: {type(exc).__name__}: {exc}") from exc
    for config in corner_configs(spec.space, _MAX_BUILDS) or [{}]:
        knobs = {**spec.train, **config}
        try:
            train_config = build_train_config(spec.model, knobs, task=spec.task, monitor=spec.metric,
                                              maximize=spec.maximize, seed=spec.seed)
            param_groups(build_model_for(train_config.model, data), train_config)
        except ConfigError as exc:
            raise SpecError(knob_path(exc.key, config), exc.message) from exc
        except HpsearchError:
            raise
        except Exception as exc:  # noqa: BLE001 - user model code may raise anything
            raise SpecError("model", f"building the model failed: {type(exc).__name__}: {exc}") from exc
