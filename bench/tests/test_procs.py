from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import procs
from bench.procs import Server, ensure_peers, free_port, rss_bytes


def test_missing_peer_is_skipped_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(procs, "find_binary", lambda name: None)
    monkeypatch.setattr("bench.procs.shutil.which", lambda name: None)
    reasons = ensure_peers(["beanstalkd", "redis"], lambda msg: None)
    assert set(reasons) == {"beanstalkd", "redis"}
    assert all("apt-get" in r for r in reasons.values())


def test_server_start_and_stop_by_pid(tmp_path: Path) -> None:
    port = free_port()
    code = (
        "import socket, time\n"
        "s = socket.socket()\n"
        f"s.bind(('127.0.0.1', {port}))\n"
        "s.listen()\n"
        "time.sleep(30)\n"
    )
    server = Server("dummy", [sys.executable, "-c", code], port, tmp_path / "d.log")
    server.start(ready_timeout=10)
    try:
        assert server.alive()
        assert rss_bytes(server.pid) > 0
    finally:
        server.stop(grace=5)
    assert not server.alive()
