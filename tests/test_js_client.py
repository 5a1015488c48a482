"""The browser/Node module ``trio_periodic/static/periodic.js``, run under Node.js.

Each scenario is a script in ``tests/js`` that exits 0 on success, non-zero on
failure and 2 on its own timeout.  Scripts that talk to a server get the URL of
a ``periodicd`` subprocess's ``ws://`` listener as their first argument.  Node
20 has a global ``WebSocket`` only behind ``--experimental-websocket``; without
a usable ``node`` the tests are skipped.
"""

from __future__ import annotations

import json
import re
import select
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from functools import cache
from importlib import resources
from pathlib import Path

import pytest
import trio
from conftest import DaemonProcess, start_daemon
from rawclient import RawConn

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.constants import ClientType
from trio_periodic.protocol.job import Job

JS_DIR = Path(__file__).parent / "js"
TIMEOUT = 30


@cache
def _node() -> tuple[list[str], str | None]:
    """The node command line able to run the scripts, and why not if it cannot."""
    node = shutil.which("node")
    if node is None:
        return [], "node is not installed"
    probe = "process.exit(typeof WebSocket === 'function' ? 0 : 3)"
    for flags in (["--experimental-websocket"], []):
        try:
            done = subprocess.run([node, *flags, "-e", probe], capture_output=True, timeout=TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0:
            return [node, *flags], None
    return [node], "node has no global WebSocket (needs Node.js 20+ with --experimental-websocket)"


def node_cmd(*, websocket: bool = True) -> list[str]:
    cmd, problem = _node()
    if not cmd or (websocket and problem):
        pytest.skip(problem or "node is not usable")
    return cmd


def run_script(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``tests/js/<script>`` and assert it succeeded."""
    cmd = [*node_cmd(websocket=bool(args)), str(JS_DIR / script), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, (
        f"{script} exited {done.returncode}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    return done


def _announced(d: DaemonProcess, scheme: str) -> str:
    """The URL the daemon logged as ``listening on <scheme>://...``."""
    pattern = re.compile(rf"listening on ({scheme}://\S+)")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in list(d.log):
            if match := pattern.search(line):
                return match.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no {scheme}:// listener announced:\n" + "".join(d.log))


def _stop(d: DaemonProcess) -> None:
    d.proc.terminate()
    try:
        d.proc.wait(10)
    except subprocess.TimeoutExpired:
        d.proc.kill()


@pytest.fixture
def ws_daemon() -> Iterator[tuple[DaemonProcess, str]]:
    """periodicd on the memory store with a TCP and a ``ws://`` listener."""
    node_cmd()  # skip before starting a server we cannot use
    d = start_daemon("-p", ":memory:", "-H", "ws://127.0.0.1:0")
    try:
        yield d, _announced(d, "ws")
    finally:
        _stop(d)


def test_golden_bytes() -> None:
    """crc32 / encodeFrame / encodeRegistration / encodeJob reproduce PROTOCOL.md §16."""
    run_script("golden.mjs")


def test_type_declarations_cover_the_module() -> None:
    """periodic.d.ts declares every export of periodic.js and every public method."""
    listed = json.loads(run_script("exports.mjs").stdout)
    types = resources.files("trio_periodic").joinpath("static", "periodic.d.ts").read_text()
    kinds = r"(?:const|function|class|type|interface)"
    declared = set(re.findall(rf"export (?:declare )?{kinds} (\w+)", types))
    declared |= {alias for _, alias in re.findall(r"(\w+) as (\w+)", types)}
    missing = [name for name in listed["exports"] if name not in declared]
    assert not missing, f"exports missing from periodic.d.ts: {missing}"
    for cls, methods in listed["members"].items():
        for method in methods:
            found = re.search(rf"\b{method}\b[(<?:]", types)
            assert found, f"{cls}.{method} missing from periodic.d.ts"


def test_worker_and_client_round_trip(ws_daemon: tuple[DaemonProcess, str]) -> None:
    """submit → done, runJob results, schedLater re-run, fail retry, status, broadcast."""
    run_script("roundtrip.mjs", ws_daemon[1])


def test_python_client_to_js_worker(ws_daemon: tuple[DaemonProcess, str]) -> None:
    """A raw Python client over TCP runs and submits jobs that a JS worker serves."""
    d, url = ws_daemon
    cmd = [*node_cmd(), str(JS_DIR / "interop_worker.mjs"), url, "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _read_line(proc) == "ready"

        async def main() -> bytes:
            conn = await RawConn.open(("127.0.0.1", d.port))
            try:
                run = p.RunJob(Job(b"py-echo", b"run-1", b"\x00\xff", timeout=5))
                reply = await conn.request(1, run)
                submit = p.SubmitJob(Job(b"py-echo", b"sub-1", b"x", count=3))
                assert await conn.request(2, submit) == p.Success()
                assert isinstance(reply, p.Data)
                return reply.data
            finally:
                await conn.aclose()

        assert trio.run(main) == b"js:\x00\xff"
        jobs = [json.loads(_read_line(proc)) for _ in range(2)]
        assert jobs[0] == {
            "func": "py-echo",
            "name": "run-1",
            "workload": "00 ff",
            "schedAt": jobs[0]["schedAt"],
            "count": 0,
            "timeout": 5,
        }
        assert jobs[1]["name"] == "sub-1" and jobs[1]["workload"] == "78"
        assert jobs[1]["count"] == 3 and jobs[1]["timeout"] == 600  # server default filled in
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_js_client_to_python_worker(ws_daemon: tuple[DaemonProcess, str]) -> None:
    """A JS client runs and submits jobs that a raw Python worker over TCP serves."""
    d, url = ws_daemon
    seen: list[Job] = []

    async def main() -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(TIMEOUT + 5):
            return await session()

    async def session() -> subprocess.CompletedProcess[bytes]:
        worker = await RawConn.open(("127.0.0.1", d.port), ClientType.WORKER)
        assert await worker.request(1, p.CanDo(b"py-upper")) == p.Success()
        assert await worker.request(2, p.GrabJob()) == p.Success()

        async def serve() -> None:
            msgid = 10
            while True:
                event = await worker.recv(timeout=TIMEOUT)
                if isinstance(event.packet, p.JobAssign):
                    job = event.packet.job
                    seen.append(job)
                    await worker.send(event.msgid, p.JobAssigned())
                    msgid += 1
                    done = p.WorkDone(job.func, job.name, job.workload.upper())
                    assert await worker.request(msgid, done) == p.Success()
                    await worker.send(event.msgid, p.GrabJob())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            cmd = [*node_cmd(), str(JS_DIR / "interop_client.mjs"), url]
            done = await trio.run_process(
                cmd, capture_stdout=True, capture_stderr=True, check=False
            )
            nursery.cancel_scope.cancel()
        await worker.aclose()
        return done

    done = trio.run(main)
    assert done.returncode == 0, f"stdout:\n{done.stdout.decode()}\nstderr:\n{done.stderr.decode()}"
    assert [(j.name, j.workload, j.count, j.timeout) for j in seen] == [
        (b"j1", b"hello", 0, 10),
        (b"j2", b"submitted", 4, 9),
    ]


def test_server_going_away(ws_daemon: tuple[DaemonProcess, str]) -> None:
    """A refused connect rejects; a dying server ends work() and rejects pending requests."""
    d, url = ws_daemon
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        refused = f"ws://127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening
        cmd = [*node_cmd(), str(JS_DIR / "disconnect.mjs"), url, refused]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert _read_line(proc) == "ready"
            d.proc.kill()
            out, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()


def test_python_names_locks_config_and_stop(ws_daemon: tuple[DaemonProcess, str]) -> None:
    """Client/Worker/Job aliases, positional workloads, later, check, config, locks, stop()."""
    run_script("api.mjs", ws_daemon[1])


def test_identities_from_the_auth_file(tmp_path: Path) -> None:
    """{name, token} registers as types 3/4; no, wrong or mismatched identities are refused."""
    node_cmd()
    rules = tmp_path / "auth.txt"
    rules.write_text("client alice a-token js\nworker bob b-token js\n")
    d = start_daemon("-p", ":memory:", "-H", "ws://127.0.0.1:0", "--auth-file", str(rules))
    try:
        run_script("auth.mjs", _announced(d, "ws"))
    finally:
        _stop(d)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_worker_reconnects_to_a_restarted_server() -> None:
    """A worker whose server restarts on the same port reconnects and runs new jobs."""
    node_cmd()
    ws = f"ws://127.0.0.1:{_free_port()}"
    d = start_daemon("-p", ":memory:", "-H", ws)
    cmd = [*node_cmd(), str(JS_DIR / "reconnect.mjs"), ws]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _read_line(proc) == "ready"
        trio.run(_submit, d.port, b"before")
        assert _read_line(proc) == "job before"
        _stop(d)
        assert _read_line(proc) == "lost"
        d = start_daemon("-p", ":memory:", "-H", ws)
        trio.run(_submit, d.port, b"after")
        assert _read_line(proc) == "job after"
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    finally:
        _stop(d)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


async def _submit(port: int, name: bytes) -> None:
    with trio.fail_after(TIMEOUT):
        conn = await RawConn.open(("127.0.0.1", port))
        try:
            assert await conn.request(1, p.SubmitJob(Job(b"rc", name))) == p.Success()
        finally:
            await conn.aclose()


def test_http_serves_module() -> None:
    """GET /periodic.js on the HTTP listener returns the packaged module."""
    d = start_daemon("-p", ":memory:", "--http", "127.0.0.1:0")
    try:
        base = _announced(d, "http")
        with urllib.request.urlopen(f"{base}/periodic.js", timeout=10) as response:
            body = response.read()
            content_type = response.headers["Content-Type"]
    finally:
        _stop(d)
    assert content_type.startswith("text/javascript")
    assert b"export class PeriodicWorker" in body
    assert b"export class PeriodicClient" in body
    assert body == resources.files("trio_periodic").joinpath("static", "periodic.js").read_bytes()


def _read_line(proc: subprocess.Popen[str], timeout: float = TIMEOUT) -> str:
    """The next stdout line of ``proc`` (fails with its stderr if none comes)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if not line:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"no output from node (exit {proc.returncode}):\n{err}")
    return line.strip()
