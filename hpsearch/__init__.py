"""hpsearch: coarse-to-fine hyperparameter search for PyTorch models, with every trial in SQL.

``hpsearch.run(study, overrides=...)`` and ``hpsearch.load(study)`` are the Python API
(:mod:`hpsearch.api`); they are imported on first use, so ``import hpsearch`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = ("run", "load", "Study")


def __getattr__(name: str) -> Any:
    if name in _API:
        from hpsearch import api

        return getattr(api, name)
    raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")


__all__ = ["Study", "__version__", "load", "run"]
