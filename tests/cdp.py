"""A small Chrome DevTools Protocol client on trio, for the real-browser tests.

``open_browser()`` starts headless Chromium (Debian's ``chromium``, or
``$CHROMIUM``) with a fresh profile and no network extras, in a process
group of its own, and talks to it over its DevTools WebSocket
(trio-websocket): no browser download, no asyncio.  On the way out it asks
the browser to close and kills that process group if it does not, so no
browser outlives a test.

``browser_or_skip()`` finds the browser: without one the tests are skipped,
unless ``TRIO_PERIODIC_REQUIRE_BROWSER=1`` (CI), where they fail instead.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-breakpad",
    # Pages in background tabs keep full-speed timers (a worker page usually is one).
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
    "--remote-debugging-port=0",
]
#: Seconds for the browser to start, and for one DevTools call.
START_TIMEOUT = 30
CALL_TIMEOUT = 30


def browser_or_skip() -> str:
    """The browser executable; skips the test when there is none (fails under CI)."""
    path = (
        os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    if path is None:
        why = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("TRIO_PERIODIC_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{why}, and TRIO_PERIODIC_REQUIRE_BROWSER=1")
        pytest.skip(why)
    return path


class CdpError(Exception):
    """The browser answered a DevTools call with an error, or a page threw."""


@dataclass
class Browser:
    ws: WebSocketConnection
    #: Every event received: (sessionId or None, method, params).
    events: list[tuple[str | None, str, dict[str, Any]]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = field(default_factory=dict)
    _event: trio.Event = field(default_factory=trio.Event)

    async def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        msg_id = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[msg_id] = send
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        await self.ws.send_message(json.dumps(message))
        with trio.fail_after(CALL_TIMEOUT):
            reply = await receive.receive()
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def _reader(self) -> None:
        async for raw in _messages(self.ws):
            message = json.loads(raw)
            if "id" in message:
                sender = self._waiting.pop(message["id"], None)
                if sender is not None:
                    sender.send_nowait(message)
            else:
                self.events.append(
                    (message.get("sessionId"), message["method"], message.get("params", {}))
                )
                self._event.set()
                self._event = trio.Event()

    async def new_page(self, artifacts: Path | None = None) -> Page:
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        page = Page(self, attached["sessionId"], target["targetId"], artifacts)
        for domain in ("Page", "Runtime", "Network"):
            await page.call(f"{domain}.enable")
        return page


async def _messages(ws: WebSocketConnection) -> AsyncIterator[str | bytes]:
    from trio_websocket import ConnectionClosed

    while True:
        try:
            yield await ws.get_message()
        except ConnectionClosed:
            return


@dataclass
class Page:
    browser: Browser
    session: str
    target: str
    artifacts: Path | None = None

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.call(method, params, self.session)

    async def goto(self, url: str, timeout: float = 20) -> None:
        """Navigate and wait until the document has loaded."""
        reply = await self.call("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise CdpError(f"cannot load {url}: {reply['errorText']}")
        await self.wait_for(
            f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
            timeout,
            f"{url} loaded",
        )

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises are awaited)."""
        reply = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{expression[:80]!r} threw: {text}\n{self.console()}")
        return reply["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20, what: str = "") -> Any:
        """Poll a JavaScript expression until it is truthy; return its value."""
        value: Any = None
        with trio.move_on_after(timeout):
            while True:
                value = await self.evaluate(expression)
                if value:
                    return value
                await trio.sleep(0.05)
        await self.screenshot("timeout")
        raise AssertionError(
            f"{what or expression} not true within {timeout} s (last {value!r})\n{self.console()}"
        )

    async def click(self, selector: str) -> None:
        found = await self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " if (!e) return false; e.click(); return true; })()"
        )
        assert found, f"nothing to click at {selector}"

    async def set_headers(self, headers: dict[str, str]) -> None:
        """Send these headers with every request of the page (fetch, EventSource, WebSocket)."""
        await self.call("Network.setExtraHTTPHeaders", {"headers": headers})

    async def screenshot(self, name: str, *, full_page: bool = False) -> Path | None:
        """Save a PNG of the page (the viewport, or all of it) under the artifacts directory."""
        if self.artifacts is None:
            return None
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = (await self.call("Page.getLayoutMetrics"))["cssContentSize"]
            params["captureBeyondViewport"] = True
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": size["height"],
                "scale": 1,
            }
        data = await self.call("Page.captureScreenshot", params)
        self.artifacts.mkdir(parents=True, exist_ok=True)
        path = self.artifacts / f"{name}.png"
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def console(self) -> str:
        """The page's console messages and uncaught exceptions so far."""
        lines = []
        for session, method, params in self.browser.events:
            if session != self.session:
                continue
            if method == "Runtime.consoleAPICalled":
                args = " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params["args"]
                )
                lines.append(f"console.{params['type']}: {args}")
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                text = details.get("exception", {}).get("description") or details.get("text")
                lines.append(f"exception: {text}")
        return "\n".join(lines)

    def errors(self) -> list[str]:
        return [line for line in self.console().splitlines() if line.startswith("exception")]


@contextlib.asynccontextmanager
async def open_browser(executable: str) -> AsyncIterator[Browser]:
    """Start headless Chromium; always stop it (and its process group) on the way out."""
    profile = tempfile.mkdtemp(prefix="trio-periodic-chromium-")
    process = await trio.lowlevel.open_process(
        [executable, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: renderers go with it
    )
    log: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            found = trio.Event()
            url: list[str] = []
            nursery.start_soon(_read_stderr, process, log, url, found)
            with trio.move_on_after(START_TIMEOUT):
                await found.wait()
            if not url:
                raise RuntimeError("chromium did not start:\n" + "".join(log)[-4000:])
            async with open_websocket_url(url[0], max_message_size=64 * 1024 * 1024) as ws:
                browser = Browser(ws)
                nursery.start_soon(browser._reader)
                try:
                    yield browser
                finally:
                    with trio.move_on_after(5) as closing:
                        closing.shield = True
                        with contextlib.suppress(Exception):
                            await browser.call("Browser.close")
                        await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            # The group is the one started above: the browser and its helpers
            # (renderers, crash handler) that might outlive it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            shutil.rmtree(profile, ignore_errors=True)


async def _read_stderr(
    process: trio.Process, log: list[str], url: list[str], found: trio.Event
) -> None:
    """Keep reading the browser's stderr (a full pipe would stall it); note the URL."""
    assert process.stderr is not None
    pending = b""
    while chunk := await process.stderr.receive_some(65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            text = line.decode(errors="replace")
            log.append(text + "\n")
            if match := re.search(r"DevTools listening on (ws://\S+)", text):
                url.append(match.group(1))
                found.set()
    found.set()
