from __future__ import annotations

from pathlib import Path
import sys

# The package may not be installed in the venv yet; make the repository root importable.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pytest  # noqa: E402
from train_helpers import cars_config  # noqa: E402

from hpsearch.train import Dataset, load_dataset  # noqa: E402


@pytest.fixture(scope="session")
def cars() -> Dataset:
    return load_dataset(cars_config())
