"""A real headless Chromium for the tests: load a page, collect its console errors, keep a screenshot.

    from tests.browser import load_page, require_chromium, artifact_path, png_stats

    require_chromium()                        # skip here (fail under HPSEARCH_REQUIRE_SERVICES=1) without it
    page = load_page(Path("out/index.html"),  # a Path (file://) or a URL string (http://127.0.0.1:PORT/...)
                     screenshot=artifact_path("report.png"), wait_for_text="Learning curves")
    assert page.console_errors == ()          # console.error, uncaught exceptions, failed resource loads
    assert "cars/coarse" in page.text         # document.body.innerText once loaded
    assert png_stats(artifact_path("report.png")).colors > 10

    with Browser() as browser:                # several pages from one browser
        first = browser.load("http://127.0.0.1:8080/")

How: Chromium runs ``--headless --no-sandbox --disable-gpu`` with a fresh profile and
``--remote-debugging-port=0``; the tests drive it over the Chrome DevTools Protocol (websocket-client).
The network is shut: every request goes to a proxy on 127.0.0.1 port 9, where nothing listens, except
requests to the loopback address itself (Chromium never proxies those), so ``file://`` pages and a
server on 127.0.0.1 load while a CDN reference fails, and shows up in ``failed_requests`` and
``console_errors``. A missing /favicon.ico, which the browser asks for by itself, is not counted.

The API (``chromium_path``, ``require_chromium``, ``load_page``, ``Browser.load``, ``PageResult``,
``artifact_path``, ``png_stats``) is shared by several test files: keep it stable, add only
keyword arguments with defaults.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
import json
import os
from pathlib import Path
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Any
import urllib.parse
import urllib.request
import zlib

from tests.servers import unavailable

ARTIFACTS_ENV = "HPSEARCH_TEST_ARTIFACTS"
DEFAULT_ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
# Nothing listens on the discard port: a request that is not to 127.0.0.1 fails at once.
DEAD_PROXY = "127.0.0.1:9"
CALL_GRACE_S = 5.0
CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """The Chromium to run: ``$HPSEARCH_CHROMIUM``, else the first of :data:`CANDIDATES` found; ``None`` if none."""
    configured = os.environ.get("HPSEARCH_CHROMIUM")
    if configured:
        return configured if shutil.which(configured) else None
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """:func:`chromium_path`, or skip the test (fail it under ``HPSEARCH_REQUIRE_SERVICES=1``, as CI sets)."""
    path = chromium_path()
    if path is None:
        unavailable("no Chromium found (install chromium, or set HPSEARCH_CHROMIUM to its path)")
    try:
        import websocket  # noqa: F401
    except ImportError:
        unavailable("the browser tests need websocket-client: pip install -e '.[test]'")
    return path


def artifact_path(name: str) -> Path:
    """Where a test keeps a file for people to look at: ``$HPSEARCH_TEST_ARTIFACTS/name``, else tests/artifacts/."""
    directory = Path(os.environ.get(ARTIFACTS_ENV) or DEFAULT_ARTIFACTS)
    directory.mkdir(parents=True, exist_ok=True)
    return directory / name


@dataclass(frozen=True)
class PageResult:
    """What a loaded page showed."""

    console_errors: tuple[str, ...]  # console.error/assert, uncaught exceptions, browser log errors (failed loads)
    text: str  # document.body.innerText
    html: str  # document.documentElement.outerHTML, after scripts ran
    requests: tuple[str, ...] = ()  # every URL the page requested, in order (data: URLs left out)
    failed_requests: tuple[tuple[str, str], ...] = ()  # (url, Chromium's error text)
    screenshot: Path | None = None


class BrowserError(RuntimeError):
    """Chromium did not start, or did not answer in time."""


def load_page(url: str | Path, screenshot: str | Path | None = None, wait_for_text: str | None = None,
              timeout: float = 30.0, width: int = 1280, height: int = 900, full_page: bool = True,
              settle_s: float = 0.5) -> PageResult:
    """Load ``url`` in a fresh headless Chromium; see :meth:`Browser.load`."""
    with Browser(timeout=timeout) as browser:
        return browser.load(url, screenshot=screenshot, wait_for_text=wait_for_text, timeout=timeout,
                            width=width, height=height, full_page=full_page, settle_s=settle_s)


class Browser:
    """One headless Chromium (own profile, network shut but for 127.0.0.1), stopped on exit."""

    def __init__(self, timeout: float = 30.0, extra_args: tuple[str, ...] = ()) -> None:
        self._timeout = timeout
        self._extra_args = extra_args
        self._profile = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._port = 0

    def __enter__(self) -> Browser:
        path = require_chromium()
        self._profile = tempfile.mkdtemp(prefix="hpsearch-chromium-")
        args = [path, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
                "--remote-allow-origins=*", f"--user-data-dir={self._profile}", f"--proxy-server={DEAD_PROXY}",
                "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--disable-extensions", "--hide-scrollbars",
                "--mute-audio", *self._extra_args, "about:blank"]
        # Its own session: Chromium's helper processes are stopped with it, as one group.
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                         start_new_session=True)
        try:
            self._port = self._wait_for_port()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._stop()

    def load(self, url: str | Path, screenshot: str | Path | None = None, wait_for_text: str | None = None,
             timeout: float | None = None, width: int = 1280, height: int = 900, full_page: bool = True,
             settle_s: float = 0.5) -> PageResult:
        """Load ``url`` (a Path is opened as file://) in a new tab and return what it showed.

        Waits for the load event, then until ``wait_for_text`` is in the page's text (a
        :class:`BrowserError` naming what the page did show if it never is), then ``settle_s`` more
        for late scripts; a screenshot (PNG, the whole page with ``full_page``) is written to
        ``screenshot``. Errors in the page are not raised: they are in ``console_errors``. A missing /favicon.ico, which the browser asks for by itself, is not counted.
        """
        target = url.resolve().as_uri() if isinstance(url, Path) else url
        deadline = time.monotonic() + (timeout or self._timeout)
        tab = self._json(f"/json/new?{urllib.parse.quote('about:blank', safe='')}", method="PUT")
        session = _Session(tab["webSocketDebuggerUrl"], deadline)
        try:
            for domain in ("Runtime", "Log", "Network", "Page"):
                session.call(f"{domain}.enable")
            session.call("Emulation.setDeviceMetricsOverride",
                         {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
            session.loaded = False
            navigated = session.call("Page.navigate", {"url": target})
            if navigated.get("errorText"):
                session.errors.append(f"navigation to {target} failed: {navigated['errorText']}")
            session.wait(lambda: session.loaded, f"the load event of {target}")
            if wait_for_text is not None:
                self._wait_for_text(session, wait_for_text, target)
            session.evaluate(f"new Promise(resolve => setTimeout(resolve, {int(settle_s * 1000)}))")
            text = str(session.evaluate("document.body ? document.body.innerText : ''"))
            html = str(session.evaluate("document.documentElement ? document.documentElement.outerHTML : ''"))
            shot = Path(screenshot) if screenshot is not None else None
            if shot is not None:
                shot.parent.mkdir(parents=True, exist_ok=True)
                shot.write_bytes(_capture(session, full_page))
            return PageResult(tuple(session.errors), text, html, tuple(session.requests),
                              tuple(session.failed), shot)
        finally:
            session.close()
            self._json(f"/json/close/{tab['id']}", raw=True)

    def _wait_for_text(self, session: _Session, wanted: str, target: str) -> None:
        probe = f"(document.body ? document.body.innerText : '').includes({json.dumps(wanted)})"
        while not session.evaluate(probe):
            if time.monotonic() > session.deadline:
                shown = str(session.evaluate("document.body ? document.body.innerText : ''"))[:500]
                raise BrowserError(f"{target} never showed {wanted!r}; it showed: {shown!r}; "
                                   f"console errors: {session.errors}")
            session.pump(0.1)

    def _wait_for_port(self) -> int:
        """Chromium writes its DevTools port to the profile's DevToolsActivePort file once it listens."""
        assert self._process is not None
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                raise BrowserError(f"Chromium exited with status {self._process.returncode}: {err[-2000:]}")
            lines = port_file.read_text().splitlines() if port_file.exists() else []
            if lines and lines[0].strip().isdigit():
                return int(lines[0])
            time.sleep(0.05)
        raise BrowserError(f"Chromium did not open its DevTools port within {self._timeout} s")

    def _json(self, path: str, method: str = "GET", raw: bool = False) -> Any:
        # No proxy from the environment: the DevTools endpoint is on 127.0.0.1.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(f"http://127.0.0.1:{self._port}{path}", method=method)
        with opener.open(request, timeout=self._timeout) as response:
            body = response.read()
        return body if raw else json.loads(body)

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                with _suppress_missing():
                    os.killpg(process.pid, signal.SIGTERM)  # the group this class started, by its id
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with _suppress_missing():
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
            if process.stderr is not None:
                process.stderr.close()
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = ""


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        return kind is not None and issubclass(kind, ProcessLookupError)


class _Session:
    """One tab's DevTools websocket: calls answered in order, events recorded as they pass."""

    def __init__(self, ws_url: str, deadline: float) -> None:
        import websocket

        self.deadline = deadline
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.loaded = False
        self._urls: dict[str, str] = {}
        self._next_id = 0
        self._ws = websocket.create_connection(ws_url, timeout=max(1.0, deadline - time.monotonic()),
                                               suppress_origin=True, http_proxy_host=None)

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        self._next_id += 1
        call_id = self._next_id
        self._ws.send(json.dumps({"id": call_id, "method": method, "params": params or {}}))
        while True:
            # A call gets a few seconds past the page's deadline, so that a timeout is reported as what it waited for.
            message = self._receive(max(self.deadline - time.monotonic(), CALL_GRACE_S), f"the answer to {method}")
            if message.get("id") == call_id:
                if "error" in message:
                    raise BrowserError(f"{method} failed: {message['error']}")
                return dict(message.get("result", {}))
            self._record(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"evaluating {expression[:80]!r} failed: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def wait(self, done: Any, what: str) -> None:
        while not done():
            self._record(self._receive(self.deadline - time.monotonic(), what))

    def pump(self, seconds: float) -> None:
        """Record the events that arrive within ``seconds``."""
        import websocket

        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._ws.settimeout(left)
            try:
                self._record(json.loads(self._ws.recv()))
            except websocket.WebSocketTimeoutException:
                return

    def close(self) -> None:
        self._ws.close()

    def _receive(self, left: float, what: str) -> dict[str, Any]:
        import websocket

        if left <= 0:
            raise BrowserError(f"timed out waiting for {what}; console errors so far: {self.errors}")
        self._ws.settimeout(left)
        try:
            return dict(json.loads(self._ws.recv()))
        except websocket.WebSocketTimeoutException:
            raise BrowserError(f"timed out waiting for {what}; console errors so far: {self.errors}") from None

    def _record(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Page.loadEventFired":
            self.loaded = True
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description") or details.get("text", "exception")
            self.errors.append(f"uncaught: {description} ({details.get('url', '')}:{details.get('lineNumber', '?')})")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            self.errors.append("console.error: " + " ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            if urllib.parse.urlsplit(entry.get("url", "")).path == "/favicon.ico":
                return  # the browser asks for it by itself; not the page's error
            self.errors.append(f"log: {entry.get('text', '')} {entry.get('url', '')}".rstrip())
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            self._urls[params.get("requestId", "")] = url
            if not url.startswith("data:"):
                self.requests.append(url)
        elif method == "Network.loadingFailed":
            url = self._urls.get(params.get("requestId", ""), "?")
            self.failed.append((url, params.get("errorText", "")))


def _capture(session: _Session, full_page: bool) -> bytes:
    params: dict[str, Any] = {"format": "png"}
    if full_page:
        size = session.call("Page.getLayoutMetrics")["cssContentSize"]
        # A bound on the height: a runaway page should not make a gigapixel file.
        params.update(captureBeyondViewport=True,
                      clip={"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 12000), "scale": 1})
    return base64.b64decode(session.call("Page.captureScreenshot", params)["data"])


@dataclass(frozen=True)
class PngStats:
    width: int
    height: int
    colors: int  # distinct colours over a sample of pixels
    ink: float  # share of sampled pixels unlike the most common colour (the background)


def png_stats(path: str | Path, sample_rows: int = 200) -> PngStats:
    """Size and colour statistics of an 8-bit RGB(A) PNG (as Chromium writes them), to tell a blank one.

    Every row is unfiltered (each depends on the one above), but colours are counted on up to
    ``sample_rows`` evenly spaced rows, every 4th pixel.
    """
    import numpy as np

    width, height, channels, rows = _png_rows(Path(path).read_bytes())
    step = max(1, height // sample_rows)
    sample = np.stack([rows[i] for i in range(0, height, step)]).reshape(-1, width, channels)[:, ::4, :3]
    pixels = sample.reshape(-1, 3).astype(np.uint32)
    keys = pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2]
    values, counts = np.unique(keys, return_counts=True)
    ink = 1.0 - counts.max() / counts.sum()
    return PngStats(width, height, len(values), float(ink))


def _png_rows(data: bytes) -> tuple[int, int, int, list[Any]]:
    """Decode the rows of an 8-bit, non-interlaced RGB or RGBA PNG (numpy does the per-row arithmetic)."""
    import numpy as np

    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    channels = {2: 3, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"only 8-bit non-interlaced RGB/RGBA PNGs are read here (depth {depth}, colour type {color})")
    raw = np.frombuffer(zlib.decompress(bytes(idat)), dtype=np.uint8)
    stride = width * channels
    rows: list[Any] = []
    previous = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], raw[start + 1:start + 1 + stride].astype(np.int32)
        row = _unfilter(int(kind), line, previous.astype(np.int32), channels)
        rows.append(row)
        previous = row
    return width, height, channels, rows


def _unfilter(kind: int, line: Any, up: Any, bpp: int) -> Any:
    import numpy as np

    if kind == 0:
        out = line
    elif kind == 1:  # Sub: a running sum along the row, per channel
        out = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1)
    elif kind == 2:  # Up
        out = line + up
    else:  # Average and Paeth depend on the pixel just decoded: one pixel at a time
        out = line.copy()
        left = np.zeros(bpp, dtype=np.int32)
        for x in range(0, len(line), bpp):
            above = up[x:x + bpp]
            if kind == 3:
                value = line[x:x + bpp] + (left + above) // 2
            else:
                upper_left = up[x - bpp:x] if x else np.zeros(bpp, dtype=np.int32)
                p = left + above - upper_left
                pa, pb, pc = abs(p - left), abs(p - above), abs(p - upper_left)
                predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, above, upper_left))
                value = line[x:x + bpp] + predictor
            left = value % 256
            out[x:x + bpp] = left
    return (out % 256).astype(np.uint8)
