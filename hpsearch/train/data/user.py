"""User data: ``data: {python: "mypkg.data:load", task: classification, ...options}``.

The function is called as ``load(seed, **options)`` (``seed`` is the study's seed; ``options`` are the
section's other keys) and returns one of:

- ``(x, y)`` arrays or tensors: hpsearch splits them by ``val_fraction`` and ``seed``;
- ``(x_train, y_train, x_val, y_val)``: a split of your own;
- a :class:`~hpsearch.train.data.Dataset`, used as it is (its ``task`` must match the section's).

With ``cv_folds``, only ``(x, y)`` can be cut into folds; a split of the loader's own is refused.

Float ``x`` become float32 features (``[n, f]``) or images (``[n, c, h, w]``); integer ``x`` are token
ids ``[n, length]``. Classification labels are integers ``0 .. k-1``; regression targets are numbers.
The module is imported with the working directory on ``sys.path`` (see :mod:`hpsearch.train.imports`).
"""

from __future__ import annotations

from hpsearch.errors import DataError
from hpsearch.train.data import DataConfig, Dataset
from hpsearch.train.data.folds import Folds
from hpsearch.train.data.tensors import fold_arrays, from_arrays, split_arrays
from hpsearch.train.imports import load_callable, thaw


def load_user_data(cfg: DataConfig) -> Dataset | Folds:
    assert cfg.python is not None  # only called for a python source
    load = load_callable("python", cfg.python)
    out = load(cfg.seed, **{k: thaw(v) for k, v in cfg.options})
    where = f"data.python {cfg.python}"
    if cfg.cv_folds is not None:
        if isinstance(out, tuple) and len(out) == 2:
            return fold_arrays(*out, cfg.task, cfg.cv_folds, cfg.seed, where=where)
        raise DataError(f"data.cv_folds: {where} returned a split of its own ({_kind(out)}); "
                        "return (x, y) for hpsearch to cut into folds, or drop cv_folds")
    if isinstance(out, Dataset):
        if out.task != cfg.task:
            raise DataError(f"{where} returned a {out.task} Dataset but data.task is {cfg.task}")
        return out
    if isinstance(out, tuple) and len(out) == 2:
        return split_arrays(*out, cfg.task, cfg.val_fraction, cfg.seed, where=where)
    if isinstance(out, tuple) and len(out) == 4:
        return from_arrays(*out, cfg.task, where=where)
    raise DataError(
        f"{where} must return (x, y), (x_train, y_train, x_val, y_val) or a Dataset, got {type(out).__name__}"
    )


def _kind(out: object) -> str:
    if isinstance(out, tuple):
        return f"a tuple of {len(out)}"
    return type(out).__name__
