"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path
import shutil

import pytest

from tests.helpers import CARS


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch working directory holding data/cars93.csv; the CLI runs from here."""
    (tmp_path / "data").mkdir()
    shutil.copy(CARS, tmp_path / "data" / "cars93.csv")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    return tmp_path


