"""Limits that keep one client from taking the server: outbox, connections, HTTP."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from conftest import start_daemon
from rawclient import RawConn

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.connection import ClientConnection
from trio_periodic.protocol.constants import ClientType
from trio_periodic.protocol.frames import Registration
from trio_periodic.protocol.job import Job
from trio_periodic.server.app import Server
from trio_periodic.server.connection import ServerSideConnection
from trio_periodic.server.http import api as http_module
from trio_periodic.store.memory import MemoryStore

LIMIT = 64 * 1024


@pytest.fixture
async def limited() -> AsyncIterator[tuple[Server, tuple[str, int], int]]:
    """A server with a 64 KiB outbox, 3 connections at most: (server, address, http port)."""
    srv = Server(
        MemoryStore(),
        ["tcp://127.0.0.1:0"],
        http="127.0.0.1:0",
        max_outbox=LIMIT,
        max_connections=3,
    )
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(srv.run)
        yield srv, ("127.0.0.1", int(bound[0].rsplit(":", 1)[1])), int(bound[-1].rsplit(":", 1)[1])
        nursery.cancel_scope.cancel()


def server_side(srv: Server) -> list[ServerSideConnection]:
    return list(srv._conn_context.connections)


async def flood_pings(conn: RawConn, seconds: float) -> int:
    """Pipeline PINGs without reading any reply, for ``seconds``; bytes sent."""
    frame = conn.proto.send(7, p.Ping())
    chunk = frame * 4096
    sent = 0
    with trio.move_on_after(seconds):
        while True:
            await conn.stream.send_all(chunk)
            sent += len(chunk)
    return sent


async def test_a_stalled_reader_costs_at_most_its_outbox(
    limited: tuple[Server, tuple[str, int], int],
) -> None:
    srv, address, _ = limited
    with trio.fail_after(30):
        admin = await RawConn.open(address)
        flooder = await RawConn.open(address, ClientType.WORKER)
        # It holds a job, so that closing it must hand the job back.
        assert isinstance(await admin.request(1, p.SubmitJob(Job(b"f", b"j"))), p.Success)
        assert isinstance(await flooder.request(1, p.CanDo(b"f")), p.Success)
        assert isinstance(await flooder.request(2, p.GrabJob()), p.Success)
        assert isinstance((await flooder.recv_for(2)).packet, p.JobAssign)
        sent = await flood_pings(flooder, 1.5)
        assert sent > 4 * LIMIT  # far more asked for than the server will queue
        [conn] = [c for c in server_side(srv) if c.holds_jobs]
        assert conn.backlog <= LIMIT + 1024
        # The server reads no more from it, and still serves everyone else.
        assert isinstance(await admin.request(2, p.Ping()), p.Pong)
        # Stalled longer than its keepalive: closed, its job handed back.
        assert isinstance(await admin.request(3, p.ConfigSet(b"keepalive", 1)), p.Success)
        with trio.fail_after(10):
            while any(c.holds_jobs for c in server_side(srv)):
                await trio.sleep(0.1)
        [row] = srv.core.status_rows(time.time())
        assert (row.jobs, row.processing) == (1, 0)


async def test_data_pushed_to_a_client_that_does_not_read_closes_it(
    limited: tuple[Server, tuple[str, int], int],
) -> None:
    srv, address, _ = limited
    with trio.fail_after(30):
        waiter = await RawConn.open(address)
        # A small receive window, so that the kernel cannot absorb it all.
        assert isinstance(waiter.stream, trio.SocketStream)
        waiter.stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        worker = await RawConn.open(address, ClientType.WORKER)
        assert isinstance(await worker.request(1, p.CanDo(b"f")), p.Success)
        assert isinstance(await worker.request(2, p.GrabJob()), p.Success)
        assert isinstance(await waiter.request(1, p.SubmitJob(Job(b"f", b"stream"))), p.Success)
        assert isinstance((await worker.recv_for(2)).packet, p.JobAssign)
        # The waiter follows the job's streamed data (RECV_DATA), then stops reading.
        assert isinstance(await waiter.request(2, p.RecvData(Job(b"f", b"stream"))), p.Success)
        # Far more than the kernel's socket buffers hold, never read by the waiter.
        chunk = b"x" * 256 * 1024
        for i in range(96):
            reply = await worker.request(10 + i, p.WorkData(b"f", b"stream", chunk))
            assert isinstance(reply, p.Success)
        assert await waiter.closed_by_server(timeout=5)
        assert all(c.backlog <= 2 * LIMIT + len(chunk) + 64 for c in server_side(srv))
        assert isinstance(await worker.request(99, p.Ping()), p.Pong)


async def test_connections_past_the_limit_are_refused(
    limited: tuple[Server, tuple[str, int], int],
) -> None:
    _, address, _ = limited
    with trio.fail_after(20):
        conns = [await RawConn.open(address) for _ in range(3)]
        stream = await trio.open_tcp_stream(*address)
        # The server closes it at once (no registration reply): EOF or a reset.
        try:
            assert await stream.receive_some(100) == b""
        except trio.BrokenResourceError:
            pass
        await conns.pop().aclose()
        await trio.sleep(0.2)
        again = await RawConn.open(address)
        assert isinstance(await again.request(1, p.Ping()), p.Pong)


async def test_http_requests_are_bounded(
    limited: tuple[Server, tuple[str, int], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, port = limited
    monkeypatch.setattr(http_module, "REQUEST_TIMEOUT", 0.5)
    with trio.fail_after(20):
        # A body over the limit is refused from its Content-Length, unread.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        big = 65 * 1024 * 1024
        head = f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {big}\r\n\r\n"
        await stream.send_all(head.encode())
        reply = await stream.receive_some(4096)
        assert reply.startswith(b"HTTP/1.1 413")
        await stream.aclose()
        # A head over 64 KiB: 431.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Junk: " + b"j" * 70000)
        reply = await stream.receive_some(4096)
        assert reply.startswith(b"HTTP/1.1 431")
        await stream.aclose()
        # A request trickling in is cut off REQUEST_TIMEOUT after its first byte.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        started = trio.current_time()
        reply = b""
        with trio.move_on_after(5):
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: yes":
                await stream.send_all(bytes([byte]))
                with trio.move_on_after(0.1):
                    reply += await stream.receive_some(4096)
                if reply:
                    break
        assert reply.startswith(b"HTTP/1.1 408")
        assert trio.current_time() - started < 2


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        match = re.search(r"VmRSS:\s+(\d+)", f.read())
    assert match is not None
    return int(match.group(1))


def test_a_thousand_idle_connections_cost_little(tmp_path: Path) -> None:
    """Goal: at most 20 KiB of server memory per idle connection."""
    d = start_daemon("-p", ":memory:")
    socks: list[socket.socket] = []

    def connect() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        proto = ClientConnection(Registration(ClientType.WORKER))
        sock.sendall(proto.initiate())
        assert sock.recv(100)  # the registration reply: it is served
        return sock

    try:
        socks += [connect() for _ in range(50)]
        time.sleep(0.5)
        before = _rss_kib(d.proc.pid)
        socks += [connect() for _ in range(1000)]
        time.sleep(1)
        per_connection = (_rss_kib(d.proc.pid) - before) / 1000
        print(f"server memory per idle connection: {per_connection:.1f} KiB")
        assert per_connection <= 20
    finally:
        for sock in socks:
            sock.close()
        d.proc.terminate()
        d.proc.wait(10)


def test_a_stalled_reader_costs_the_server_about_its_outbox(tmp_path: Path) -> None:
    """A client that pipelines PINGs for 5 s and never reads: the server's RSS
    grows by about its --max-outbox (1 MiB here), not with what was sent."""
    d = start_daemon("-p", ":memory:", "--max-outbox", "1MiB")
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        proto = ClientConnection(Registration(ClientType.CLIENT))
        sock.sendall(proto.initiate())
        assert sock.recv(100)
        time.sleep(0.5)
        before = _rss_kib(d.proc.pid)
        chunk = proto.send(7, p.Ping()) * 4096
        sock.setblocking(False)
        sent, started = 0, time.monotonic()
        while time.monotonic() - started < 5:
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        time.sleep(0.5)
        grown = (_rss_kib(d.proc.pid) - before) / 1024
        print(f"stalled reader: {sent / 2**20:.1f} MiB of PINGs sent, server RSS +{grown:.1f} MiB")
        assert sent > 4 * 2**20  # far more than the server will hold
        assert grown <= 3 + 2  # MiB: about twice the 1 MiB limit, plus slack
    finally:
        sock.close()
        d.proc.terminate()
        d.proc.wait(10)
