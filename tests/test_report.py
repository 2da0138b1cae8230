"""``hpsearch report``: a real two-stage study reported, checked as HTML and loaded in a real headless Chromium."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
import hashlib
from html.parser import HTMLParser
import json
import math
from pathlib import Path
import re
import shutil
import sys

import optuna
from optuna.trial import TrialState
import pandas as pd
import pytest

import hpsearch
from hpsearch import report_figures
from hpsearch.report import PLOTLY_MISSING
from hpsearch.space import FloatParam, parse_space
from hpsearch.stages import ATTR_SPACE
from tests.browser import artifact_path, load_page, png_stats, require_chromium
from tests.helpers import BOOM_MODEL, CARS, base_study, cli, write_study

STORAGE = "sqlite:///runs/cars.db"


def _study() -> dict[str, object]:
    # Random coarse, then TPE in the narrowed space; a median pruner and a patience of 1 epoch make
    # pruned and early-stopped trials.
    return base_study(
        stages=[{"name": "coarse", "sampler": "random", "trials": 8},
                {"name": "fine", "sampler": "tpe", "trials": 4, "narrow": {"top": 0.5, "margin": 0.1}}],
        pruner={"kind": "median", "startup_trials": 2},
        train={"epochs": 6, "patience": 1, "device": "cpu"},
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, str]]:
    """A finished two-stage study and its report: (study file, index.html, the report's text)."""
    root = tmp_path_factory.mktemp("report")
    (root / "data").mkdir()
    shutil.copy(CARS, root / "data" / "cars93.csv")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.delenv("HPSEARCH_STORAGE", raising=False)
        path = write_study(root, _study())
        code, _, err = cli("run", str(path))
        assert code == 0, err
        before = hashlib.sha256((root / "runs" / "cars.db").read_bytes()).hexdigest()
        code, _, err = cli("report", str(path), "--out", "out")
        assert code == 0, err
        assert err == f"hpsearch: wrote the report to {Path('out') / 'index.html'}\n"
        # Reading only: the database is byte for byte what the run left.
        assert hashlib.sha256((root / "runs" / "cars.db").read_bytes()).hexdigest() == before
        index = root / "out" / "index.html"
        yield path, index, index.read_text(encoding="utf-8")


@pytest.fixture
def reported(finished: tuple[Path, Path, str], monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path, str]:
    """:func:`finished`, from its folder (the study file's paths are relative)."""
    monkeypatch.chdir(finished[0].parent)
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    return finished


def _trials(stage: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=f"cars/{stage}", storage=STORAGE).trials


class _Tables(HTMLParser):
    """The cells of every table in a page, and the full value (``title``) of numeric cells."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.titles: list[list[list[str | None]]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table":
            self.tables.append([])
            self.titles.append([])
        elif tag == "tr":
            self.tables[-1].append([])
            self.titles[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
            self.titles[-1][-1].append(dict(attrs).get("title"))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _tables(page: str) -> _Tables:
    parser = _Tables()
    parser.feed(page)
    return parser


def test_the_report_is_self_contained(reported: tuple[Path, Path, str]) -> None:
    _, _, page = reported
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, re.IGNORECASE)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*[\"']?(https?:)?//", page, re.IGNORECASE)
    assert not re.search(r"@import|url\(\s*[\"']?(https?:)?//", page, re.IGNORECASE)
    from plotly.offline import get_plotlyjs

    assert page.count(get_plotlyjs()) == 1  # inlined once, whatever the number of figures
    assert page.count("Plotly.newPlot(") >= 10


def test_the_report_names_the_stages_the_metric_and_the_counts(reported: tuple[Path, Path, str]) -> None:
    _, _, page = reported
    for text in ("cars/coarse", "cars/fine", "coarse", "fine", "val_rmse", "minimize", "Learning curves", "parameter importances",
                 "parallel coordinates", "searched range per stage"):
        assert text in page, text
    counts = _tables(page).tables[0]
    head = counts[0]
    ended: Counter[str | None] = Counter()
    for row in counts[1:]:
        trials = _trials(row[0])
        states = Counter(t.state.name.lower() for t in trials)
        reasons = Counter(t.user_attrs.get("stop_reason") for t in trials)
        ended.update(reasons)
        assert row[head.index("study")] == f"cars/{row[0]}" and row[head.index("trials")] == str(len(trials))
        for state in ("complete", "pruned", "fail", "running", "waiting"):
            assert row[head.index(state)] == str(states[state]), (row[0], state)
        for reason in ("completed", "early_stopped", "diverged"):
            assert row[head.index(reason)] == str(reasons[reason]), (row[0], reason)
    assert [row[0] for row in counts[1:]] == ["coarse", "fine"]
    assert ended["pruned"] + ended["early_stopped"] > 0, "the study should have stopped some trials early"


def test_the_top_table_matches_hpsearch_best(reported: tuple[Path, Path, str]) -> None:
    path, _, page = reported
    code, out, err = cli("best", str(path))
    assert code == 0, err
    best = json.loads(out)
    parsed = _tables(page)
    top, titles = parsed.tables[1], parsed.titles[1]
    head = top[0]
    first, first_titles = top[1], titles[1]
    assert first[head.index("stage")] == best["stage"] and first[head.index("trial")] == str(best["trial"])
    assert first_titles[head.index("val_rmse")] == repr(best["value"])
    for name, value in best["params"].items():
        cell = head.index(name)
        assert (first_titles[cell] if isinstance(value, float) else first[cell]) == (repr(value) if isinstance(value, float) else str(value))
    for name, value in best["metrics"].items():
        assert first_titles[head.index(f"best-epoch {name}")] == repr(value)
    complete = [t for stage in ("coarse", "fine") for t in _trials(stage) if t.state is TrialState.COMPLETE]
    values = [float(r[head.index("val_rmse")] or "nan") for r in titles[1:]]
    assert len(values) == min(10, len(complete))
    assert values == sorted(float(t.value or 0.0) for t in complete)[: len(values)]


def test_the_narrowing_figure_shows_each_stages_stored_range(reported: tuple[Path, Path, str]) -> None:
    _, _, page = reported
    fine = optuna.load_study(study_name="cars/fine", storage=STORAGE)
    lr = next(p for p in parse_space(fine.user_attrs[ATTR_SPACE]) if p.name == "lr")
    assert isinstance(lr, FloatParam)
    assert lr.high / lr.low < 1e3  # narrowed from 1e-4..1e-1
    assert f"fine: {lr.low:.4g} .. {lr.high:.4g}" in page
    assert "as written: 0.0001 .. 0.1" in page


def test_the_report_loads_offline_in_chromium_without_errors(reported: tuple[Path, Path, str]) -> None:
    require_chromium()
    _, index, _ = reported
    shot = artifact_path("report.png")
    shot.unlink(missing_ok=True)
    page = load_page(index, screenshot=shot, wait_for_text="Learning curves", timeout=90)
    assert page.console_errors == ()
    assert page.requests == (index.resolve().as_uri(),)  # nothing fetched besides the file itself
    assert page.failed_requests == ()
    assert "coarse: val_rmse per epoch, every trial" in page.text  # drawn by plotly.js, not in the HTML as text
    assert page.html.count('class="main-svg"') >= 10  # plotly rendered the figures
    stats = png_stats(shot)
    assert shot.stat().st_size > 50_000 and stats.width >= 1000 and stats.height > 2000
    assert stats.colors > 50 and stats.ink > 0.05  # not a blank page


def test_the_browser_check_catches_errors_and_blocks_the_network(tmp_path: Path) -> None:
    require_chromium()
    bad = tmp_path / "bad.html"
    bad.write_text('<html><body><p>broken page</p><script>window.notAFunction();</script>'
                   '<script src="https://cdn.plot.ly/plotly-2.35.2.min.js"></script></body></html>')
    page = load_page(bad, wait_for_text="broken page")
    assert any("notAFunction" in e for e in page.console_errors), page.console_errors
    assert [url for url, _ in page.failed_requests] == ["https://cdn.plot.ly/plotly-2.35.2.min.js"]
    assert any("cdn.plot.ly" in e for e in page.console_errors), page.console_errors
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    shot = tmp_path / "blank.png"
    assert load_page(blank, screenshot=shot).console_errors == ()
    assert png_stats(shot).colors == 1 and png_stats(shot).ink == 0.0  # what the report's screenshot must not be


def test_a_study_without_complete_trials_still_gets_a_report(workdir: Path) -> None:
    (workdir / "boom.py").write_text(BOOM_MODEL)  # every trial fails in training
    study = _study()
    study.update(model={"python": "boom:build"}, executor={"kind": "local", "workers": 1})
    study["stages"][0].update(trials=2, max_failures=1)  # type: ignore[index]
    path = write_study(workdir, study)
    assert cli("run", str(path))[0] == 1  # the coarse stage stopped; fine never started
    code, _, err = cli("report", str(path), "--out", "out")
    assert code == 0, err
    page = (workdir / "out" / "index.html").read_text()
    assert "No complete trial yet." in page
    assert "coarse: no complete trial yet." in page and "fine: not started." in page
    assert "coarse: importances need at least 2 complete trials, it has 0." in page
    require_chromium()
    assert load_page(workdir / "out" / "index.html", wait_for_text="not started").console_errors == ()


def test_a_study_never_run_is_one_line(workdir: Path) -> None:
    path = write_study(workdir, _study())
    code, out, err = cli("report", str(path), "--out", "out")
    assert code == 2 and out == ""
    assert err.startswith("hpsearch: error: storage sqlite:///runs/cars.db does not exist yet") and err.count("\n") == 1


def test_missing_plotly_is_one_line(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_study(workdir, _study())
    for name in [m for m in sys.modules if m == "plotly" or m.startswith("plotly.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "plotly", None)  # what `import plotly` meets when it is not installed
    assert cli("report", str(path), "--out", "out") == (2, "", f"hpsearch: error: {PLOTLY_MISSING}\n")
    assert not (workdir / "out").exists()


def test_the_python_api_writes_the_same_report(reported: tuple[Path, Path, str], tmp_path: Path) -> None:
    path, _, page = reported
    written = hpsearch.load(path).report(tmp_path / "api")
    assert written == tmp_path / "api" / "index.html"
    assert _tables(written.read_text()).tables == _tables(page).tables


def test_runaway_values_leave_the_other_learning_curves_readable() -> None:
    rows = [("s", n, "COMPLETE", e, 5.0 + n + 1.0 / e) for n in range(4) for e in range(1, 6)]
    rows += [("s", 4, "PRUNED", e, v) for e, v in enumerate([6.0, 40.0, 3e6, 2e12], 1)]  # diverged
    rows += [("s", 5, "PRUNED", e, v) for e, v in enumerate([7.0, 9.0, 5e8], 1)]  # ran away, then pruned
    frame = pd.DataFrame(rows, columns=["stage", "trial", "state", "epoch", "val_rmse"])
    endings = {0: "completed", 1: "completed", 2: "early_stopped", 3: "completed", 4: "diverged", 5: "pruned"}
    fig = report_figures.curves(frame, endings, "s", "val_rmse")
    assert not isinstance(fig, report_figures.Note)
    low, high = fig.layout.yaxis.range
    assert low < 5.2 and 9.0 < high < 20.0  # the curves in view, the runaways out of it
    names = [trace.name for trace in fig.data]
    assert names == ["completed", "early stopped", "pruned", "diverged"]
    diverged = fig.data[names.index("diverged")]
    assert max(v for v in diverged.y if v is not None) == 2e12  # drawn, only outside the initial range
    assert report_figures.y_range([]) is None
    assert report_figures.y_range([3.0, 3.0]) == pytest.approx((2.85, 3.15))
    assert all(math.isfinite(v) for v in report_figures.y_range([1.0, math.inf, 2.0]) or ())


def test_importances_say_why_when_they_cannot_be_told() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert isinstance(report_figures.importances(study, study.trials, "s"), report_figures.Note)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=5)
    single = report_figures.importances(study, study.trials, "s")
    assert single == report_figures.Note("s: 1 parameter (x) varied among its complete trials; importances compare two or more.")
    two = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    two.optimize(lambda t: t.suggest_float("x", 0, 1) + 0.01 * t.suggest_float("y", 0, 1), n_trials=12)
    found = report_figures.importances(two, two.trials, "s")
    assert isinstance(found, dict) and list(found) == ["x", "y"] and found["x"] > found["y"]
