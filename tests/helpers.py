"""Helpers of the orchestration tests: study files, and the CLI run in-process or as a process."""

from __future__ import annotations

import io
import os
from pathlib import Path
import subprocess
import sys
import time
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
import yaml

from hpsearch.cli import main
from hpsearch.errors import StorageError
from hpsearch.storage import open_storage

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


def process_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HPSEARCH_STORAGE", None)
    return env


def cli_process(*args: str, cwd: Path, timeout: float = 240, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hpsearch`` as a separate process, as a user would."""
    return subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=cwd, env=process_env(), text=True,
                          capture_output=True, timeout=timeout, **kwargs)


def start_run(path: Path, cwd: Path) -> subprocess.Popen[str]:
    """Start ``hpsearch run PATH`` as a separate process and return at once (to signal or kill it)."""
    return subprocess.Popen([sys.executable, "-m", "hpsearch", "run", str(path)], cwd=cwd, env=process_env(),
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def running_trial(process: subprocess.Popen[str], study_name: str = "cars/coarse",
                  storage: str = "sqlite:///runs/cars.db", timeout: float = 90) -> FrozenTrial:
    """The first trial of ``study_name`` seen RUNNING on a worker (its placement recorded) while ``process`` runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"run ended early: {process.communicate()}")
        try:
            trials = optuna.load_study(study_name=study_name, storage=open_storage(storage, create=False)).get_trials()
        except (StorageError, KeyError):  # the run has not created the database or the study yet
            trials = []
        running = [t for t in trials if t.state is TrialState.RUNNING and "worker_pid" in t.user_attrs]
        if running:
            return running[0]
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"no trial of {study_name} started running on a worker")


# A user model that builds fine and fails in training (model: {python: boom:build}).
BOOM_MODEL = """
import torch


class Boom(torch.nn.Module):
    def __init__(self, n_features):
        super().__init__()
        self.linear = torch.nn.Linear(n_features, 1)

    def forward(self, x):
        if self.training:
            raise RuntimeError("boom in forward")
        return self.linear(x)


def build(inputs):
    return Boom(inputs.n_features)
"""
