"""kill -9 and restart: every acknowledged job survives, jobs come back on time.

These run a real ``periodicd`` subprocess on SQLite and talk to it with plain
blocking sockets from threads, so the clients cannot share fate with the
server.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from conftest import DaemonProcess, start_daemon

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.connection import ClientConnection, RegistrationReply, Response
from trio_periodic.protocol.constants import ClientType
from trio_periodic.protocol.frames import Registration
from trio_periodic.protocol.job import Job, decode_job_list

pytestmark = pytest.mark.slow


class BlockingConn:
    def __init__(self, port: int, kind: ClientType = ClientType.CLIENT) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.proto = ClientConnection(Registration(kind))
        self.sock.sendall(self.proto.initiate())
        self.pending: list[Response] = []
        while not any(isinstance(e, RegistrationReply) for e in self._read()):
            pass

    def _read(self) -> list[object]:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.proto.receive_data(data)
        events = self.proto.next_events()
        self.pending += [e for e in events if isinstance(e, Response)]
        return events

    def send(self, msgid: int, packet: p.Packet) -> None:
        self.sock.sendall(self.proto.send(msgid, packet))

    def recv(self) -> Response:
        while not self.pending:
            self._read()
        return self.pending.pop(0)

    def request(self, msgid: int, packet: p.Packet) -> p.Packet:
        """Send and wait for the reply on ``msgid``; other frames stay queued."""
        self.send(msgid, packet)
        while True:
            for i, r in enumerate(self.pending):
                if r.msgid == msgid and not isinstance(r.packet, p.JobAssign):
                    return self.pending.pop(i).packet
            self._read()

    def close(self) -> None:
        self.sock.close()


def submitter(port: int, prefix: bytes, count: int, acked: list[bytes], window: int = 64) -> None:
    """Pipeline submits; record each name once its SUCCESS arrived."""
    try:
        conn = BlockingConn(port)
        names: dict[int, bytes] = {}
        sent = 0
        while len(acked) < count or names:
            while sent < count and len(names) < window:
                sent += 1
                name = prefix + b"-%d" % sent
                names[sent] = name
                conn.send(sent, p.SubmitJob(Job(b"durable", name, b"w" * 100)))
            if not names:
                break
            r = conn.recv()
            if isinstance(r.packet, p.Success):
                acked.append(names.pop(r.msgid))
    except (OSError, ConnectionError):
        return  # the server was killed mid-stream: what was acked is in `acked`


def dump_names(port: int) -> set[bytes]:
    conn = BlockingConn(port)
    data = conn.request(1, p.Dump())
    conn.close()
    assert isinstance(data, p.Data)
    return {job.name for job in decode_job_list(data.data)}


def stop(d: DaemonProcess) -> None:
    d.proc.terminate()
    d.proc.wait(10)


@pytest.mark.parametrize("kill_after", [0.3, 0.8, 1.5])
def test_kill_9_loses_no_acknowledged_job(tmp_path: Path, kill_after: float) -> None:
    db = f"file://{tmp_path}/jobs.db"
    d = start_daemon("-p", db)
    acked: list[list[bytes]] = [[] for _ in range(4)]
    threads = [
        threading.Thread(target=submitter, args=(d.port, b"c%d" % i, 5000, acked[i]), daemon=True)
        for i in range(4)
    ]
    for t in threads:
        t.start()
    time.sleep(kill_after * random.uniform(0.8, 1.2))
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(10)
    for t in threads:
        t.join(20)
    all_acked = {name for names in acked for name in names}
    assert all_acked, "nothing was acknowledged before the kill; the test proves nothing"
    d2 = start_daemon("-p", db)
    try:
        stored = dump_names(d2.port)
    finally:
        stop(d2)
    missing = all_acked - stored
    assert not missing, f"{len(missing)} acknowledged jobs lost, e.g. {sorted(missing)[:5]}"


def test_restart_brings_back_pending_running_and_future_jobs(tmp_path: Path) -> None:
    db = f"file://{tmp_path}/jobs.db"
    d = start_daemon("-p", db)
    client = BlockingConn(d.port)
    worker = BlockingConn(d.port, ClientType.WORKER)
    now = int(time.time())
    assert isinstance(client.request(1, p.SubmitJob(Job(b"f", b"running"))), p.Success)
    worker.request(1, p.CanDo(b"f"))
    worker.request(2, p.GrabJob())
    assign = worker.recv()
    assert isinstance(assign.packet, p.JobAssign) and assign.packet.job.name == b"running"
    worker.send(2, p.JobAssigned())
    for name, later in ((b"pending", 0), (b"soon", 3), (b"future", 3600)):
        job = Job(b"f", name, b"x", sched_at=now + later if later else 0)
        assert isinstance(client.request(5, p.SubmitJob(job)), p.Success)
    assert isinstance(client.request(6, p.ConfigSet(b"timeout", 77)), p.Success)
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(10)

    d2 = start_daemon("-p", db)
    try:
        assert dump_names(d2.port) == {b"running", b"pending", b"soon", b"future"}
        client = BlockingConn(d2.port)
        cfg = client.request(1, p.ConfigGet(b"timeout"))
        assert cfg == p.Config(77)
        worker = BlockingConn(d2.port, ClientType.WORKER)
        worker.request(1, p.CanDo(b"f"))
        for msgid in (10, 11, 12):
            worker.request(msgid, p.GrabJob())
        got: dict[bytes, float] = {}
        deadline = time.time() + 8
        worker.sock.settimeout(8)
        while len(got) < 3 and time.time() < deadline:
            r = worker.recv()
            if isinstance(r.packet, p.JobAssign):
                got[r.packet.job.name] = time.time()
                assert r.packet.job.timeout == 77
        assert set(got) == {b"running", b"pending", b"soon"}
        assert got[b"soon"] >= now + 3 - 0.05  # not early
        status = client.request(2, p.Status())
        assert isinstance(status, p.Data)
        assert status.data.startswith(b"f,1,4,3,0,%d" % (now + 3600))
    finally:
        stop(d2)
