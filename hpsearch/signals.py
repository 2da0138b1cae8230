"""SIGINT and SIGTERM: the two signals that ask a run to stop (Ctrl-C; a batch scheduler's stop)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
import contextlib
import signal
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def on_stop_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` takes SIGINT and SIGTERM inside the block; the previous handlers come back after it."""
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, before in previous.items():
            signal.signal(s, before)
