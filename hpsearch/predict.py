"""``hpsearch predict``: a kept model's answers for new rows, written beside them.

The rows are read as the study's data file was (CSV or Parquet), encoded by the model's own fitted
encoding (:class:`~hpsearch.train.data.encoding.TabularEncoding`) and written back with the
columns ``prediction`` (and ``p_<class>`` per class for a classification).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hpsearch import artifacts, results
from hpsearch.artifacts import KeptModel
from hpsearch.errors import DataError, HpsearchError
from hpsearch.retrying import RetryingStorage
from hpsearch.spec import StudySpec

if TYPE_CHECKING:
    import pandas as pd

    from hpsearch.train.checkpoint import TrainedModel

SUFFIXES = (".csv", ".parquet")


def load_model(spec: StudySpec, storage: RetryingStorage, trial: int | None = None,
               stage: str | None = None) -> tuple[KeptModel, TrainedModel]:
    """The kept model of trial ``trial`` (of ``stage``), or of the study's best trial."""
    kept = results.find_model(spec, storage, trial, stage)
    return kept, artifacts.load_model(spec, kept)


def predict_file(spec: StudySpec, storage: RetryingStorage, source: str | Path, out: str | Path,
                 trial: int | None = None, stage: str | None = None) -> tuple[KeptModel, int]:
    """Predict the rows of ``source`` into ``out``; the model used and the number of rows."""
    source, out = Path(source), Path(out)
    _check_suffix(source, "--input")
    _check_suffix(out, "--out")
    if not source.is_file():
        raise DataError(f"--input {source}: {'is a directory' if source.is_dir() else 'does not exist'}")
    if not out.parent.is_dir():
        raise DataError(f"--out {out}: the directory {out.parent} does not exist")
    kept, model = load_model(spec, storage, trial, stage)
    frame = _read(source)
    answers = model.predict_frame(frame, where=f"--input {source}")
    written = frame.join(answers)
    try:
        written.to_csv(out, index=False) if out.suffix == ".csv" else written.to_parquet(out, index=False)
    except OSError as exc:
        raise DataError(f"--out {out}: cannot write it ({exc.strerror or exc})") from None
    return kept, len(written)


def _check_suffix(path: Path, option: str) -> None:
    if path.suffix not in SUFFIXES:
        raise HpsearchError(f"{option} {path}: unknown file type {path.suffix or '(none)'!r}; use one of: {', '.join(SUFFIXES)}")


def _read(source: Path) -> pd.DataFrame:
    import pandas as pd

    try:
        return pd.read_csv(source) if source.suffix == ".csv" else pd.read_parquet(source)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"--input {source}: cannot read it: {str(exc).splitlines()[0] if str(exc) else exc}") from None
