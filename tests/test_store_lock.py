"""One periodicd per SQLite file: a second one exits at once, a killed one
does not keep the file locked.

Real ``periodicd`` subprocesses, so that the lock is between processes and
``kill -9`` is a real one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DaemonProcess, start_daemon
from test_durability import BlockingConn, dump_names

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.job import Job

pytestmark = pytest.mark.slow

EXIT_TIMEOUT = 20  # seconds for a refused periodicd to give up


def _submit(d: DaemonProcess, name: bytes) -> None:
    conn = BlockingConn(d.port)
    try:
        assert isinstance(conn.request(1, p.SubmitJob(Job(b"f", name))), p.Success)
    finally:
        conn.close()


def _stop(d: DaemonProcess) -> None:
    if d.proc.poll() is None:
        d.proc.terminate()
        try:
            d.proc.wait(10)
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait(10)


def test_second_periodicd_on_the_same_file_exits_1_naming_it(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    uri = f"file://{db}"
    first = start_daemon("-p", uri)
    try:
        _submit(first, b"before")
        second = subprocess.run(
            [sys.executable, "-m", "trio_periodic.server.daemon",
             "-H", "tcp://127.0.0.1:0", "--http", "off", "-p", uri],
            capture_output=True, text=True, timeout=EXIT_TIMEOUT,
        )  # fmt: skip
        assert second.returncode == 1, second.stderr
        lines = second.stderr.splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0] == (
            f"periodicd: store {uri} is in use by another periodicd (pid {first.proc.pid})"
        )
        # The first one never noticed: it still serves and still writes.
        assert first.proc.poll() is None
        _submit(first, b"after")
        assert dump_names(first.port) == {b"before", b"after"}
    finally:
        _stop(first)


def test_file_is_free_again_after_kill_9(tmp_path: Path) -> None:
    uri = f"file://{tmp_path / 'x.db'}"
    first = start_daemon("-p", uri)
    _submit(first, b"survivor")
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    second = start_daemon("-p", uri)  # raises if it did not start listening
    try:
        assert dump_names(second.port) == {b"survivor"}
    finally:
        _stop(second)
