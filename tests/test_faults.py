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
from collections.abc import Iterator

import pytest

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
