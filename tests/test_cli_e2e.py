"""``periodic`` as a user runs it: real processes against a real ``periodicd``.

Blocking subprocess calls are fine here: these tests are synchronous.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
from conftest import DaemonProcess

TIMEOUT = 20


def env_for(url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERIODIC_")}
    if url is not None:
        env["PERIODIC_PORT"] = url
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def periodic(
    *args: str, url: str | None, stdin: bytes | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_periodic", *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env_for(url, **extra),
    )


class Background:
    """A long-running ``periodic`` process whose stdout is collected."""

    def __init__(self, *args: str, url: str | None, **extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trio_periodic", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env_for(url, **extra),
        )
        self.out: list[str] = []
        self.err: list[str] = []
        import threading

        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._drain, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _drain(stream: IO[str] | None, sink: list[str]) -> None:
        assert stream is not None
        for line in stream:
            sink.append(line)

    def wait_for(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if check():
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{what}: out={''.join(self.out)!r} err={''.join(self.err)!r}")

    def wait_output(self, text: str) -> None:
        self.wait_for(lambda: text in "".join(self.out), f"no {text!r}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


@pytest.fixture
def background() -> Iterator[Callable[..., Background]]:
    started: list[Background] = []

    def start(*args: str, url: str | None, **extra: str) -> Background:
        bg = Background(*args, url=url, **extra)
        started.append(bg)
        return bg

    yield start
    for bg in started:
        bg.stop()


def one_error_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode != 0
    assert result.stderr.startswith("periodic: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


# --------------------------------------------------------------- the seed README


def test_seed_quick_start_verbatim(tmp_path: Path, background: Callable[..., Background]) -> None:
    """`periodic -d`, a SCHED_LATER script with `periodic run -f ls5 --exec …`, `periodic
    submit -f ls5 -n /tmp/` — the README's commands, pointed at a private socket by env."""
    url = f"unix://{tmp_path}/periodic.sock"
    runs = tmp_path / "runs"
    script = tmp_path / "ls-every-five-second.sh"
    script.write_text(
        "#!/usr/bin/env bash\n"
        "ls -lrth $@\n"
        f'echo "$@" >> {runs}\n'
        'echo "SCHED_LATER 1" # tell periodic do the job 1 second later\n'
    )
    script.chmod(0o755)
    server = background("-d", url=url, PERIODIC_HTTP="off", XDG_DATA_HOME=str(tmp_path / "data"))
    server.wait_for(lambda: Path(f"{tmp_path}/periodic.sock").exists(), "server socket")
    worker = background("run", "-f", "ls5", "--exec", str(script), url=url)
    worker.wait_output("Worker started.")
    assert periodic("submit", "-f", "ls5", "-n", "/tmp/", url=url).returncode == 0
    worker.wait_for(lambda: runs.exists() and len(runs.read_text().splitlines()) >= 3, "3 runs")
    assert set(runs.read_text().splitlines()) == {"/tmp/"}
    assert "total" in "".join(worker.out)  # the script's ls output is echoed
    assert "SCHED_LATER" not in "".join(worker.out)  # markers are not
    assert worker.stop() == 0
    status = periodic("status", url=url)
    assert status.stdout.splitlines()[1].split()[:3] == ["ls5", "0", "1"]
    assert periodic("shutdown", url=url).returncode == 0
    assert server.proc.wait(10) == 0
    # The default store is SQLite: the rescheduled job survived the shutdown.
    assert list((tmp_path / "data").rglob("*.db"))


# --------------------------------------------------------------- periodic worker

WORKER_SCRIPT = """case "$1" in
  ok) read input; echo "WORKDONE fine:$input";;
  bad) echo "WORKDATA before failing"; exit 3;;
  hang) exec sleep 30;;
  stream) echo "WORKDATA a"; echo "WORKDATA b"; echo "WORKDONE res";;
esac
"""


def test_worker_outcomes(
    daemon: DaemonProcess, tmp_path: Path, background: Callable[..., Background]
) -> None:
    prog = tmp_path / "job.sh"
    prog.write_text(WORKER_SCRIPT)
    url = daemon.url
    worker = background(
        "worker", "--work-data", "--timeout", "1", "--thread", "2", "w", "--", "sh", str(prog),
        url=url,
    )  # fmt: skip
    worker.wait_output("Worker started.")

    ok = periodic("run", "w", "ok", "-w", "input\n", url=url)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == "Result: fine:input\n"

    stream = periodic("run", "w", "stream", url=url)
    assert stream.stdout == "Data: a\nData: b\nResult: res\n"

    bad = periodic("run", "w", "bad", url=url)
    assert "Data: before failing" in bad.stdout
    one_error_line(bad, "job w/bad failed")

    start = time.monotonic()
    hang = periodic("run", "w", "hang", "--timeout", "30", url=url)
    one_error_line(hang, "job w/hang failed")
    assert time.monotonic() - start < 8  # killed after --timeout 1, not 30 s
    assert "killed after its time limit" in "".join(worker.err)

    assert worker.stop() == 0


# --------------------------------------------------------- status, dump and load


def test_status_dump_load(daemon: DaemonProcess, tmp_path: Path) -> None:
    url = daemon.url
    for name in ("a", "b", "c"):
        assert (
            periodic("submit", "fn", name, "--later", "3600", "-w", name, url=url).returncode == 0
        )
    (tmp_path / "workload").write_bytes(b"from a file")
    assert periodic("submit", "other", "x", "-w", f"@{tmp_path}/workload", url=url).returncode == 0

    status = periodic("status", url=url)
    lines = status.stdout.splitlines()
    assert lines[0].split() == ["FUNCTIONS", "WORKERS", "JOBS", "PROCESSING", "LOCKED", "SCHEDAT"]
    assert lines[1].split()[:6] == ["fn", "0", "3", "0", "0", lines[1].split()[5]]
    # Columns line up and SCHEDAT is local time.
    assert lines[0].index("SCHEDAT") == lines[1].index(lines[1].split()[5])
    expected = time.strftime("%Y-%m-%d", time.localtime(time.time() + 3600))
    assert expected in lines[1]

    rows = {row["func"]: row for row in json.loads(periodic("status", "--json", url=url).stdout)}
    assert rows["fn"]["jobs"] == 3 and rows["other"]["jobs"] == 1
    assert rows["fn"]["sched_at"] > time.time() + 3000

    dump = tmp_path / "dump.db"
    assert periodic("dump", str(dump), url=url).returncode == 0
    assert dump.read_bytes()[:8] == (4).to_bytes(8, "big")
    assert periodic("drop", "fn", "other", url=url).returncode == 0
    assert json.loads(periodic("status", "--json", url=url).stdout) == []
    assert periodic("load", str(dump), url=url).returncode == 0
    rows = {row["func"]: row for row in json.loads(periodic("status", "--json", url=url).stdout)}
    assert rows["fn"]["jobs"] == 3 and rows["other"]["jobs"] == 1

    assert periodic("remove", "fn", "a", "b", url=url).returncode == 0
    assert periodic("config", "set", "timeout", "77", url=url).returncode == 0
    assert periodic("config", "get", "timeout", url=url).stdout == "77\n"
    assert periodic("ping", url=url).returncode == 0

    # Bad dump files: one line each, nothing sent.
    (tmp_path / "garbage").write_bytes(b"\x00\x00\x00\x00\x00\x00\x00\x05abc")
    one_error_line(periodic("load", str(tmp_path / "garbage"), url=url), "not a Periodic dump")
    trailing = tmp_path / "trailing"
    trailing.write_bytes(dump.read_bytes() + b"xx")
    one_error_line(periodic("load", str(trailing), url=url), "trailing bytes")
    one_error_line(periodic("load", str(tmp_path / "missing"), url=url), "cannot read dump file")
    one_error_line(
        periodic("submit", "f", "n", "-w", f"@{tmp_path}/missing", url=url), "cannot read"
    )
    rows = {row["func"]: row for row in json.loads(periodic("status", "--json", url=url).stdout)}
    assert rows["fn"]["jobs"] == 1


# ------------------------------------------------------------------- error paths


def test_error_paths(daemon: DaemonProcess, tmp_path: Path) -> None:
    nowhere = f"unix://{tmp_path}/nothing.sock"
    for args in (["status"], ["ping"], ["submit", "f", "n"], ["dump", str(tmp_path / "d")]):
        one_error_line(periodic(*args, url=nowhere), "cannot connect to", "nothing.sock")
    one_error_line(periodic("-H", "tcp://127.0.0.1:1", "status", url=None), "cannot connect")

    refused = periodic("run", "nobody", "x", url=daemon.url)
    one_error_line(refused, "no worker for function 'nobody'")
    one_error_line(periodic("recv", "nobody", "x", url=daemon.url), "no worker")

    bad_args = periodic("config", "set", "timeout", "soon", url=daemon.url)
    assert bad_args.returncode == 2
    one_error_line(bad_args, "soon")
    one_error_line(periodic("frobnicate", url=daemon.url), "frobnicate")

    assert periodic("--help", url=None).returncode == 0
    assert "worker" in periodic("--help", url=None).stdout


def test_worker_survives_a_server_restart(
    tmp_path: Path, background: Callable[..., Background]
) -> None:
    url = f"unix://{tmp_path}/restart.sock"
    server_env = {"PERIODIC_HTTP": "off", "PERIODIC_PATH": ":memory:"}

    def start_server() -> Background:
        server = background("-d", url=url, **server_env)
        server.wait_for(lambda: periodic("ping", url=url).returncode == 0, "server up")
        return server

    def workers() -> int:
        rows = json.loads(periodic("status", "--json", url=url).stdout or "[]")
        return sum(row["workers"] for row in rows if row["func"] == "echo")

    server = start_server()
    worker = background("worker", "--data", "echo", "--", "echo", url=url)
    worker.wait_output("Worker started.")
    assert periodic("run", "echo", "one", url=url).stdout == "Result: one\n"
    assert periodic("shutdown", url=url).returncode == 0
    assert server.proc.wait(10) == 0
    server = start_server()
    server.wait_for(lambda: workers() == 1, "the worker registered again")
    assert periodic("run", "echo", "two", url=url).stdout == "Result: two\n"
    assert worker.proc.poll() is None
