"""Helpers of the orchestration tests: study files, and the CLI run in-process or as a process."""

from __future__ import annotations

import io
import os
from pathlib import Path
import subprocess
import sys
from typing import Any

import yaml

from hpsearch.cli import main

ROOT = Path(__file__).resolve().parents[1]
CARS = ROOT / "studies" / "data" / "cars93.csv"


def base_study(**overrides: Any) -> dict[str, Any]:
    """A small, fast regression study on cars93 (paths relative to the scratch directory)."""
    study: dict[str, Any] = {
        "name": "cars",
        "storage": "sqlite:///runs/cars.db",
        "metric": "val_rmse",
        "seed": 0,
        "data": {"csv": "data/cars93.csv", "target": "Price", "task": "regression",
                 "drop": ["Model", "Make", "Min.Price", "Max.Price"], "val_fraction": 0.2},
        "model": {"kind": "mlp", "hidden": [16]},
        "train": {"epochs": 6, "patience": 3, "device": "cpu"},
        "space": {
            "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "batch_size": {"type": "categorical", "choices": [16, 32]},
            "optimizer": {"type": "categorical", "choices": ["sgd", "momentum", "adam"]},
            "momentum": {"type": "float", "low": 0.5, "high": 0.95, "when": {"optimizer": ["momentum"]}},
        },
        "stages": [{"name": "coarse", "sampler": "random", "trials": 4}],
        "executor": {"kind": "local", "workers": 2},
    }
    study.update(overrides)
    return study


def write_study(directory: Path, study: dict[str, Any], name: str = "study.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def cli(*args: str) -> tuple[int, str, str]:
    """Run the real CLI entry point in this process; returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(args), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def cli_process(*args: str, cwd: Path, timeout: float = 240, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hpsearch`` as a separate process, as a user would."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HPSEARCH_STORAGE", None)
    return subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=cwd, env=env, text=True,
                          capture_output=True, timeout=timeout, **kwargs)
