"""The range test's plot: loss against lr on a log axis, one panel per optimizer, the suggested range shaded.

matplotlib is optional (``pip install 'hpsearch[plot]'``): without it :func:`plot` draws nothing and
says so in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
import importlib.util
from pathlib import Path

from hpsearch.train.lr_range import RangeResult, Suggestion

PLOT_MISSING = "no plot: matplotlib is not installed (pip install 'hpsearch[plot]')"


def available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot(results: Sequence[RangeResult], path: Path, title: str, chosen: Suggestion | None = None) -> str | None:
    """Draw ``results`` into the PNG ``path``; returns why not when matplotlib is missing, else None.

    ``chosen``, the range the study takes (the span over the optimizers), is marked in every panel
    by dashed lines when it differs from the panel's own.
    """
    if not available():
        return PLOT_MISSING
    import matplotlib

    matplotlib.use("Agg")  # no display: a file only
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, result in zip(axes[0], results, strict=True):
        _panel(ax, result, chosen)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def _panel(ax: object, result: RangeResult, chosen: Suggestion | None) -> None:
    lows = []
    for repeat, c in enumerate(result.curves):
        finite = [(lr, s) for lr, s in zip(c.lrs, c.smoothed, strict=True) if s != float("inf")]
        if finite:
            lrs, smoothed = zip(*finite, strict=True)
            ax.plot(c.lrs, c.losses, color=f"C{repeat}", alpha=0.2, linewidth=0.8)  # type: ignore[attr-defined]
            ax.plot(lrs, smoothed, color=f"C{repeat}", label=f"seed {c.seed}")  # type: ignore[attr-defined]
            lows.append(min(smoothed))
        if c.diverged is not None:
            ax.axvline(c.lrs[c.diverged], color=f"C{repeat}", linestyle=":", linewidth=0.8)  # type: ignore[attr-defined]
    s = result.suggestion
    if s is not None:
        ax.axvspan(s.low, s.high, color="green", alpha=0.15, label=f"suggested {s.low:.2g}..{s.high:.2g}")  # type: ignore[attr-defined]
    if chosen is not None and chosen != s:
        for end, label in ((chosen.low, f"study's range {chosen.low:.2g}..{chosen.high:.2g}"), (chosen.high, None)):
            ax.axvline(end, color="black", linestyle="--", linewidth=1.0, label=label)  # type: ignore[attr-defined]
    if lows:
        top = max(max(c.smoothed[: max(1, len(c.smoothed) // 20)]) for c in result.curves)
        ax.set_ylim(0.9 * min(lows), 1.5 * top if top != float("inf") else None)  # type: ignore[attr-defined]
    ax.set_xscale("log")  # type: ignore[attr-defined]
    ax.set_xlabel("learning rate")  # type: ignore[attr-defined]
    ax.set_ylabel("training loss (smoothed; raw faint)")  # type: ignore[attr-defined]
    ax.set_title(result.optimizer if s is not None else f"{result.optimizer}: no suggestion")  # type: ignore[attr-defined]
    ax.legend(fontsize="small")  # type: ignore[attr-defined]
