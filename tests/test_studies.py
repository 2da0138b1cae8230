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
    budget = [f"stages.{i}.trials=1" for i in range(len(raw["stages"]))]
    overrides = [f"--set={o}" for o in (*budget, "train.epochs=6", "executor.workers=1")]
    code, out, err = cli("run", str(study), *overrides)
    assert code == 0, err
    for stage in raw["stages"]:
        trials = optuna.load_study(study_name=f"{raw['name']}/{stage['name']}", storage=url).get_trials()
        assert len(trials) == 1 and trials[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
        assert trials[0].user_attrs["epochs_run"] <= 6
