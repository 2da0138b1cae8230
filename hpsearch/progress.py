"""Progress output of ``hpsearch run``: a live bar on a terminal, one line per trial elsewhere."""

from __future__ import annotations

from typing import TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from hpsearch.results import space_changes
from hpsearch.spec import StageSpec, StudySpec
from hpsearch.stages import ATTR_DERIVED, ATTR_SPACE, RunListener, best_trial

_STATE = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


class ProgressListener(RunListener):
    """Writes progress to ``stream``: a tqdm bar (trials done / budget, best so far) when it is a TTY."""

    def __init__(self, stream: TextIO, live: bool | None = None) -> None:
        self._stream = stream
        self._live = stream.isatty() if live is None else live
        self._bar: tqdm | None = None
        self._budget = 0
        self._label = ""
        self._skipped: str | None = None  # the stage just said skipped: its start line would say "0/N trials done"

    def on_stage_start(self, spec: StudySpec, stage: StageSpec, study: optuna.Study, done: int) -> None:
        self._budget, self._label = stage.trials, study.study_name
        if self._skipped == stage.name:
            return
        best = best_trial(study)
        derived = study.user_attrs.get(ATTR_DERIVED)
        if derived and ATTR_SPACE in study.user_attrs:
            changes = space_changes(spec.space, study.user_attrs[ATTR_SPACE])
            pruned = derived.get("pruned", 0)  # absent on stages derived before pruned trials could rank
            ranked = f"{derived['complete']} complete" + (f" and {pruned} pruned (too few complete)" if pruned else "")
            self._stream.write(f"{study.study_name}: space from the best {derived['top']} of {ranked} "
                               f"trials of {derived['stage']}: {'; '.join(changes) or 'unchanged'}\n")
        if self._live:
            self._bar = tqdm(total=stage.trials, initial=min(done, stage.trials), desc=study.study_name,
                             file=self._stream, unit="trial", dynamic_ncols=True)
            self._bar.set_postfix_str(self._best_text(best))
        else:
            self._stream.write(f"{study.study_name}: {done}/{stage.trials} trials done, sampler {stage.sampler}"
                               f"{', ' + self._best_text(best) if best else ''}\n")
            self._stream.flush()

    def on_trial_end(self, stage: StageSpec, trial: FrozenTrial, done: int, best: FrozenTrial | None) -> None:
        if self._bar is not None:
            self._bar.n = min(done, self._budget)
            self._bar.set_postfix_str(self._best_text(best), refresh=False)
            self._bar.refresh()
            return
        what = _STATE.get(trial.state, trial.state.name.lower())
        value = f" value={trial.value:.6g}" if trial.value is not None and trial.state is TrialState.COMPLETE else ""
        reason = trial.user_attrs.get("fail_reason", "").splitlines()[:1] if trial.state is TrialState.FAIL else []
        self._stream.write(f"{self._label} trial {trial.number} {what}{value}"
                           f"{': ' + reason[0] if reason else ''} [{done}/{self._budget}] {self._best_text(best)}\n")
        self._stream.flush()

    def on_stage_skipped(self, stage: StageSpec, reason: str) -> None:
        self._skipped = stage.name
        self._stream.write(f"stage {stage.name}: skipped, {reason}\n")
        self._stream.flush()

    def on_waiting(self, stage: StageSpec, running: int) -> None:
        self._note(f"{self._label}: nothing left to start here; waiting for {running} trial(s) of other runs to finish")

    def on_abandoned(self, stage: StageSpec, trials: list[FrozenTrial]) -> None:
        for trial in trials:
            reason = str(trial.user_attrs.get("fail_reason", "")).splitlines()[:1]
            self._note(f"{self._label} trial {trial.number} failed: {reason[0] if reason else 'abandoned'}; its slot runs again")

    def on_note(self, stage: StageSpec, line: str) -> None:
        self._note(f"stage {stage.name}: {line}")

    def on_study_done(self, spec: StudySpec, summary: str) -> None:
        # The first stage that has trials (an lr_range stage has none to raise).
        first = next((i for i, s in enumerate(spec.stages) if s.kind == "search"), 0)
        self._note(f"study {spec.name} is done ({summary}); nothing to run. "
                   f"To run more, raise a stage's trials, e.g. --set stages.{first}.trials=N")

    def _note(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=self._stream)
        else:
            self._stream.write(line + "\n")
            self._stream.flush()

    def on_stage_end(self, stage: StageSpec, study: optuna.Study) -> None:
        self.close()

    def close(self) -> None:
        """End the bar's line for good: what is written next starts on a line of its own, and a bar left
        open (a run interrupted mid-stage) is not drawn again when it is garbage-collected."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @staticmethod
    def _best_text(best: FrozenTrial | None) -> str:
        return "best -" if best is None else f"best {best.value:.6g} (#{best.number})"
