"""Shared fixtures: an in-process server on real sockets, and a periodicd subprocess."""

from __future__ import annotations

import asyncio
import gc
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest
import trio

from trio_periodic.server.app import Server
from trio_periodic.store.memory import MemoryStore

# No test may write to the real user's data directory (the default SQLite store).
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="trio-periodic-tests-")


@dataclass
class RunningServer:
    server: Server
    tcp: tuple[str, int]
    unix: str

    @property
    def tcp_url(self) -> str:
        return f"tcp://{self.tcp[0]}:{self.tcp[1]}"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server on the memory store, TCP port 0 and a Unix socket, in this trio run."""
    sock = str(tmp_path / "p.sock")
    srv = Server(MemoryStore(), ["tcp://127.0.0.1:0", f"unix://{sock}"])
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(srv.run)
        port = int(bound[0].rsplit(":", 1)[1])
        yield RunningServer(srv, ("127.0.0.1", port), sock)
        nursery.cancel_scope.cancel()


@dataclass
class DaemonProcess:
    proc: subprocess.Popen[str]
    port: int
    log: list[str]

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def start_daemon(*args: str, timeout: float = 20) -> DaemonProcess:
    """Start ``periodicd`` as a subprocess on a free TCP port; wait until it listens.

    Unless a test says otherwise, SIGTERM drains for 2 s, not 25: tests that
    stop a server under a worker holding jobs need not wait for them."""
    if "--http" not in args:
        args = (*args, "--http", "off")
    if "--drain-timeout" not in args:
        args = (*args, "--drain-timeout", "2")
    cmd = [sys.executable, "-m", "trio_periodic.server.daemon", "-H", "tcp://127.0.0.1:0", *args]
    proc = subprocess.Popen(
        cmd,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log: list[str] = []
    assert proc.stderr is not None
    lines: queue.Queue[str | None] = queue.Queue()
    # A thread drains stderr for the whole life of the process, so a chatty
    # server never blocks on a full pipe.
    threading.Thread(target=_drain, args=(proc.stderr, log, lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        match = re.search(r"listening on tcp://127\.0\.0\.1:(\d+)", line)
        if match:
            return DaemonProcess(proc, int(match.group(1)), log)
    proc.kill()
    raise RuntimeError("periodicd did not start:\n" + "".join(log))


def _drain(stream: IO[str], log: list[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        log.append(line)
        lines.put(line)
    lines.put(None)


@pytest.fixture
def daemon() -> Iterator[DaemonProcess]:
    """periodicd on the memory store in a subprocess (for asyncio clients such as aio-periodic)."""
    d = start_daemon("-p", ":memory:")
    try:
        yield d
    finally:
        d.proc.terminate()
        try:
            d.proc.wait(10)
        except subprocess.TimeoutExpired:
            d.proc.kill()


def run_asyncio(scenario: Coroutine[Any, Any, Any], timeout: float) -> Any:
    """``asyncio.run`` for tests that drive asyncio clients (aio-periodic), bounded by
    ``timeout``; returns the scenario's result."""
    try:
        return asyncio.run(asyncio.wait_for(scenario, timeout))
    finally:
        collect_asyncio_leftovers()


def collect_asyncio_leftovers() -> None:
    """Finalise what an asyncio client left behind, now.

    aio-periodic leaves tasks that end in an exception nobody retrieves, and
    asyncio logs (with a traceback) each one it finalises.  If that happens in
    a garbage collection that runs while pytest parses source for a failure
    report, the traceback parses source too, nested, which CPython 3.11
    reports as "AST constructor recursion depth mismatch" and pytest as an
    INTERNALERROR that hides the failure itself.  Call this once the event
    loop is gone and before the test can fail."""
    gc.collect()
