"""Faults: memory held by dead connections, wall-clock jumps, a worker killed mid-job.

Memory: a server that talks to many short-lived or hostile peers must free
each closed connection as soon as it is closed.  The daemon relaxes
CPython's cycle collector (``tune_gc``) for throughput, so a connection
caught in a reference cycle lingers, with its buffers, until a rare full
collection: the long stress run grew the server by 81 MiB that way.  These
tests disable the cycle collector and check that reference counting alone
frees what a closed connection used.
"""

from __future__ import annotations

import gc
import logging
import weakref
from collections.abc import Iterator

import pytest
import trio
from conftest import RunningServer
from rawclient import RawConn

from trio_periodic.protocol import (
    MAGIC_REQ,
    ClientConnection,
    ClientType,
    FrameReader,
    Ping,
    Registration,
    RemoteProtocolError,
    ServerConnection,
    encode_frame,
    encode_registration,
)
from trio_periodic.protocol import packets as p
from trio_periodic.protocol.job import Job
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.state import ConnState
from trio_periodic.server.connection import ServerSideConnection

T0 = 1_700_000_000.0

# ------------------------------------------------------------------- memory


@pytest.fixture
def no_cycle_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def instances(cls: type) -> int:
    return sum(type(o) is cls for o in gc.get_objects())


REGISTER = encode_registration(Registration(ClientType.CLIENT))


def bad_crc_frame() -> bytes:
    frame = bytearray(encode_frame(1, Ping(), MAGIC_REQ))
    frame[8] ^= 1
    return bytes(frame)


def fail(obj: ServerConnection | ClientConnection | FrameReader, data: bytes) -> None:
    """Feed ``data``, expect the error, and check that it is sticky."""
    feed = obj.feed if isinstance(obj, FrameReader) else obj.receive_data
    pull = obj.next_body if isinstance(obj, FrameReader) else obj.next_event
    feed(data)
    errors = 0
    for _ in range(4):  # a good registration may come out first
        try:
            pull()
        except RemoteProtocolError:
            errors += 1
    assert errors >= 3, "no error, or not a sticky one"
    try:
        feed(b"more")
    except RemoteProtocolError as exc:
        assert "already failed" in str(exc)
    else:
        raise AssertionError("feeding a failed stream did not raise")


@pytest.mark.parametrize(
    "make, data",
    [
        (ServerConnection, REGISTER + bad_crc_frame()),
        (ServerConnection, REGISTER + b"\0REQ\x7f\0\0\0"),  # length over the limit
        (ServerConnection, encode_frame(1, Ping(), MAGIC_REQ)),  # not a registration
        (lambda: _initiated(ClientConnection(Registration(ClientType.WORKER))), b"junk"),
        (FrameReader, bad_crc_frame()),
    ],
    ids=["server-crc", "server-length", "server-registration", "client-magic", "reader-crc"],
)
def test_a_failed_protocol_object_is_freed_by_reference_counting(
    no_cycle_collector: None, make: type, data: bytes
) -> None:
    """The sticky error keeps the message, not the raised exception, whose
    traceback frames would hold the object in a cycle."""
    obj = make()
    cls = type(obj)
    before = instances(cls)
    fail(obj, data)
    del obj
    assert instances(cls) == before - 1


def _initiated(conn: ClientConnection) -> ClientConnection:
    conn.initiate()
    return conn


class Sink:
    """Stands for the server's connection object, which is the sink of its
    ConnState and holds that ConnState back."""

    state: ConnState


def test_a_disconnected_conn_state_lets_go_of_its_sink(no_cycle_collector: None) -> None:
    core = Scheduler()
    worker, client = Sink(), Sink()
    worker.state = core.connect(is_worker=True, sink=worker)
    client.state = core.connect(is_worker=False, sink=client)
    core.can_do(worker.state, b"f")
    core.add_slot(worker.state, 1)
    # The worker holds one job; the client waits for another (RUN_JOB), and a
    # waiter entry outlives its connection by design (SEMANTICS.md 9).
    core.submit(Job(b"f", b"held"), T0)
    assert core.run_job(client.state, 7, Job(b"f", b"awaited"), T0)
    core.dispatch(T0)
    core.job_assigned(worker.state, 1, T0)
    core.take_effects()
    refs = [weakref.ref(worker), weakref.ref(client)]
    for sink in (worker, client):
        core.disconnect(sink.state, T0)
    del worker, client, sink
    assert [ref() for ref in refs] == [None, None]
    assert core.waiters[(b"f", b"awaited")].results  # the entry itself stays


def server_connections() -> int:
    return sum(isinstance(o, ServerSideConnection) for o in gc.get_objects())


@pytest.mark.parametrize(
    "how",
    [
        "client_eof",
        "worker_eof",
        "bad_frame",
        "bad_reg",
        "keepalive",
    ],
)
async def test_a_closed_connection_is_freed_by_reference_counting(
    server: RunningServer, how: str, caplog: pytest.LogCaptureFixture, no_cycle_collector: None
) -> None:
    # pytest keeps log records, and a record keeps its arguments (the error).
    caplog.set_level(logging.ERROR)
    with trio.fail_after(10):
        before = server_connections()
        if how == "bad_reg":
            stream = await trio.open_tcp_stream(*server.tcp)
            await stream.send_all(encode_frame(1, Ping(), MAGIC_REQ))  # not a registration
            assert await stream.receive_some(100) == b""
            await stream.aclose()
        else:
            kind = ClientType.WORKER if how == "worker_eof" else ClientType.CLIENT
            conn = await RawConn.open(server.tcp, kind)
            assert isinstance(await conn.request(1, p.Ping()), p.Pong)
            if how == "worker_eof":  # it leaves holding a job
                assert isinstance(await conn.request(2, p.CanDo(b"mem")), p.Success)
                assert isinstance(await conn.request(3, p.GrabJob()), p.Success)
                client = await RawConn.open(server.tcp)
                assert isinstance(
                    await client.request(4, p.SubmitJob(Job(b"mem", b"a"))), p.Success
                )
                await client.aclose()
                assert isinstance((await conn.recv_for(3)).packet, p.JobAssign)
            if how == "bad_frame":
                await conn.stream.send_all(bad_crc_frame())
                assert await conn.closed_by_server()
            if how == "keepalive":  # closed by the server for its silence
                assert isinstance(await conn.request(2, p.ConfigSet(b"keepalive", 1)), p.Success)
                assert await conn.closed_by_server(timeout=3)
                admin = await RawConn.open(server.tcp)
                assert isinstance(await admin.request(1, p.ConfigSet(b"keepalive", 120)), p.Success)
                await admin.aclose()
            await conn.aclose()
        with trio.move_on_after(2):
            while server_connections() > before:
                await trio.sleep(0.01)
    assert server_connections() == before
