"""Every startup error is one line on stderr and exit status 1, never a traceback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def periodicd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_periodic.server.daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def periodic(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_periodic", *args], capture_output=True, text=True, timeout=60
    )


def error_line(result: subprocess.CompletedProcess[str], program: str) -> str:
    """The one error line (log lines at INFO before it are allowed); no traceback."""
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{program}: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def test_port_in_use(busy_port: int) -> None:
    result = periodicd("-H", f"tcp://127.0.0.1:{busy_port}", "-p", ":memory:", "--http", "off")
    assert "Address already in use" in error_line(result, "periodicd")


def test_http_port_in_use(busy_port: int) -> None:
    result = periodicd(
        "-H", "tcp://127.0.0.1:0", "-p", ":memory:", "--http", f"127.0.0.1:{busy_port}"
    )
    assert f"127.0.0.1:{busy_port}" in error_line(result, "periodicd")


def test_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("not a database\n" * 100)
    result = periodicd("-H", "tcp://127.0.0.1:0", "-p", f"file://{path}", "--http", "off")
    assert "not an SQLite database" in error_line(result, "periodicd")
    assert path.read_text() == "not a database\n" * 100


def test_postgres_unreachable() -> None:
    pytest.importorskip("psycopg")
    url = "postgresql://nobody@127.0.0.1:1/none"
    result = periodicd("-H", "tcp://127.0.0.1:0", "-p", url, "--http", "off")
    assert "cannot connect to PostgreSQL" in error_line(result, "periodicd")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-H", "foo://bar"], "unknown scheme"),
        (["-H", "tcp://127.0.0.1:0", "-p", "bogus://x"], "unsupported store URI"),
        (["-H", "tcp://127.0.0.1:0", "--auth-file", "/nonexistent/auth"], "cannot read auth file"),
        (["-H", "unix:///nonexistent-dir/x.sock"], "cannot listen on unix:///nonexistent-dir"),
    ],
)
def test_bad_arguments(args: list[str], expected: str) -> None:
    result = (
        periodicd(*args, "-p", ":memory:", "--http", "off")
        if "-p" not in args
        else periodicd(*args, "--http", "off")
    )
    assert expected in error_line(result, "periodicd")


def test_the_cli_reports_one_line_too() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        result = periodic("-H", f"tcp://127.0.0.1:{port}", "ping")
    assert "127.0.0.1" in error_line(result, "periodic")
    assert "unknown scheme" in error_line(periodic("-H", "foo://bar", "status"), "periodic")
