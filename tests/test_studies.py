"""Every shipped study validates, and runs end to end from the repository root on a tiny budget."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState
import pytest
import yaml

from tests.helpers import ROOT, cli

STUDIES = sorted((ROOT / "studies").glob("*.yaml"))


def test_there_is_one_study_per_model_kind() -> None:
    kinds = {yaml.safe_load(p.read_text())["model"].get("kind", "python") for p in STUDIES}
    assert {"mlp", "cnn", "transformer", "python"} <= kinds


@pytest.mark.parametrize("study", STUDIES, ids=[p.stem for p in STUDIES])
def test_shipped_study_runs(study: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # data paths and user-model imports are relative to the repository root
    url = f"sqlite:///{tmp_path / 'study.db'}"
    monkeypatch.setenv("HPSEARCH_STORAGE", url)
    raw = yaml.safe_load(study.read_text())
    stages = raw["stages"]
    # A stage that the next one narrows from needs enough complete trials for that stage's top set.
    budget = [4 if any(k in nxt for k in ("narrow", "freeze", "warm_start")) else 1
              for nxt in [*stages[1:], {}]]
    overrides = [f"--set={o}" for o in (*(f"stages.{i}.trials={n}" for i, n in enumerate(budget)),
                                         "train.epochs=6", "executor.workers=1")]
    code, out, err = cli("run", str(study), *overrides)
    assert code == 0, err
    for stage, n in zip(stages, budget, strict=True):
        trials = optuna.load_study(study_name=f"{raw['name']}/{stage['name']}", storage=url).get_trials()
        assert len(trials) == n and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        assert all(t.user_attrs["epochs_run"] <= 6 for t in trials)
