"""ServerConnection / ClientConnection state machines."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_periodic.protocol import (
    MAGIC_REQ,
    MAGIC_RES,
    CanDo,
    ClientConnection,
    ClientType,
    Data,
    GrabJob,
    Job,
    JobAssign,
    LocalProtocolError,
    Ping,
    Pong,
    Registered,
    Registration,
    RegistrationReply,
    RemoteProtocolError,
    Request,
    Response,
    ServerConnection,
    SubmitJob,
    Success,
    encode_frame,
    encode_raw_frame,
    encode_registration,
    encode_registration_reply,
)

MORE = settings(max_examples=300, deadline=None)

REG_CLIENT = encode_registration(Registration(ClientType.CLIENT))
PING = encode_frame(1, Ping(), MAGIC_REQ)


def envelope(body: bytes, magic: bytes = MAGIC_REQ) -> bytes:
    """A frame with a correct length and CRC around an arbitrary body."""
    return magic + struct.pack(">II", len(body), zlib.crc32(body)) + body


def registered_server() -> ServerConnection:
    server = ServerConnection()
    server.receive_data(REG_CLIENT)
    assert server.next_events() == [Registered(Registration(ClientType.CLIENT))]
    return server


# --- server ----------------------------------------------------------------------------


def test_registration_then_requests() -> None:
    server = ServerConnection()
    assert server.registration is None
    assert server.next_events() == []
    job = Job(b"echo", b"a", b"hi")
    server.receive_data(REG_CLIENT + PING + encode_frame(7, SubmitJob(job), MAGIC_REQ) + PING[:9])
    assert server.next_events() == [
        Registered(Registration(ClientType.CLIENT)),
        Request(1, Ping()),
        Request(7, SubmitJob(job)),
    ]
    assert server.registration == Registration(ClientType.CLIENT)
    assert server.next_events() == []
    server.receive_data(PING[9:])
    assert server.next_events() == [Request(1, Ping())]


def test_auth_worker_registration() -> None:
    reg = Registration(ClientType.AUTH_WORKER, b"w", b"secret")
    server = ServerConnection()
    server.receive_data(encode_registration(reg) + encode_frame(3, CanDo(b"echo"), MAGIC_REQ))
    assert server.next_events() == [Registered(reg), Request(3, CanDo(b"echo"))]
    assert server.registration is not None
    assert server.registration.is_worker


def test_registration_split_in_pieces() -> None:
    server = ServerConnection()
    data = REG_CLIENT + PING
    events = []
    for i in range(len(data)):
        server.receive_data(data[i : i + 1])
        events += server.next_events()
    assert events == [Registered(Registration(ClientType.CLIENT)), Request(1, Ping())]


def test_next_event_one_at_a_time() -> None:
    server = ServerConnection()
    server.receive_data(REG_CLIENT + PING + PING + envelope(b"\x05"))
    assert server.next_event() == Registered(Registration(ClientType.CLIENT))
    assert server.next_event() == Request(1, Ping())
    assert server.next_event() == Request(1, Ping())
    with pytest.raises(RemoteProtocolError, match="shorter than msgid"):
        server.next_event()


def test_garbage_before_registration_and_between_requests() -> None:
    server = ServerConnection()
    server.receive_data(b"hello" + REG_CLIENT + b"xyz" + PING)
    assert server.next_events() == [Registered(Registration(ClientType.CLIENT)), Request(1, Ping())]


def test_client_may_use_res_magic() -> None:
    server = ServerConnection()
    server.receive_data(
        encode_registration(Registration(ClientType.CLIENT), MAGIC_RES)
        + encode_frame(1, Ping(), MAGIC_RES)
    )
    assert len(server.next_events()) == 2


@pytest.mark.parametrize("body", [b"\x05", b"\x01\x00", b"\x00", b"\x03\x00"])
def test_bad_registration_raises_and_kills(body: bytes) -> None:
    server = ServerConnection()
    server.receive_data(envelope(body) + PING)
    with pytest.raises(RemoteProtocolError):
        server.next_events()
    assert server.registration is None
    with pytest.raises(RemoteProtocolError, match="already failed"):
        server.next_events()
    with pytest.raises(RemoteProtocolError, match="already failed"):
        server.receive_data(PING)


def test_ping_with_extra_byte() -> None:
    server = registered_server()
    server.receive_data(envelope(b"\x00\x00\x00\x01\x09\x00"))
    with pytest.raises(RemoteProtocolError, match="1 trailing bytes after PING"):
        server.next_events()
    with pytest.raises(RemoteProtocolError):
        server.next_events()


def test_unknown_command() -> None:
    server = registered_server()
    server.receive_data(envelope(b"\x00\x00\x00\x01\x50"))
    with pytest.raises(RemoteProtocolError, match="unknown command 80"):
        server.next_events()


def test_bad_crc_kills_connection() -> None:
    server = registered_server()
    bad = bytearray(PING)
    bad[8] ^= 1
    server.receive_data(bytes(bad))
    with pytest.raises(RemoteProtocolError, match="bad CRC"):
        server.next_events()


def test_oversized_frame_rejected_early() -> None:
    server = ServerConnection(max_frame_size=1024)
    server.receive_data(REG_CLIENT + MAGIC_REQ + struct.pack(">II", 1025, 0))
    with pytest.raises(RemoteProtocolError, match="frame length 1025 exceeds limit 1024"):
        server.next_events()


def test_server_only_packets_from_a_peer_still_decode() -> None:
    # PROTOCOL.md §8: codes like JOB_ASSIGN are decoded (payload must parse), then ignored.
    server = registered_server()
    server.receive_data(encode_frame(4, JobAssign(Job(b"f", b"n")), MAGIC_REQ))
    assert server.next_events() == [Request(4, JobAssign(Job(b"f", b"n")))]
    server.receive_data(envelope(b"\x00\x00\x00\x04\x05\x01f"))  # truncated job
    with pytest.raises(RemoteProtocolError, match="truncated JOB_ASSIGN"):
        server.next_events()


def test_accept_and_send() -> None:
    server = ServerConnection()
    with pytest.raises(LocalProtocolError):
        server.accept(1)
    with pytest.raises(LocalProtocolError):
        server.send(1, Pong())
    server.receive_data(REG_CLIENT)
    server.next_events()
    with pytest.raises(LocalProtocolError):
        server.send(1, Pong())  # not accepted yet
    assert server.accept(0x01020304) == encode_registration_reply(0x01020304)
    with pytest.raises(LocalProtocolError):
        server.accept(5)
    assert server.send(1, Pong()) == encode_raw_frame(1, 10, b"", MAGIC_RES)
    with pytest.raises(LocalProtocolError):
        server.send(1, CanDo(b"x" * 300))


# --- client ----------------------------------------------------------------------------


def test_client_flow() -> None:
    client = ClientConnection(Registration(ClientType.CLIENT))
    with pytest.raises(LocalProtocolError):
        client.send(1, Ping())
    assert client.initiate() == REG_CLIENT
    with pytest.raises(LocalProtocolError):
        client.initiate()
    assert client.send(1, Ping()) == PING
    client.receive_data(encode_registration_reply(42) + encode_frame(1, Pong())[:-1])
    assert client.next_events() == [RegistrationReply(42)]
    assert client.conn_id == 42
    client.receive_data(encode_frame(1, Pong())[-1:] + encode_frame(9, Data(b"res")))
    assert client.next_events() == [Response(1, Pong()), Response(9, Data(b"res"))]


def test_client_rejects_garbage() -> None:
    client = ClientConnection(Registration(ClientType.WORKER))
    client.initiate()
    client.receive_data(b"x" + encode_registration_reply(1))
    with pytest.raises(RemoteProtocolError, match="bad magic"):
        client.next_events()
    with pytest.raises(RemoteProtocolError, match="already failed"):
        client.next_events()


def test_client_rejects_bad_registration_reply() -> None:
    client = ClientConnection(Registration(ClientType.WORKER))
    client.initiate()
    client.receive_data(envelope(b"\x1e\x00\x00\x00", MAGIC_RES))
    with pytest.raises(RemoteProtocolError, match="bad registration reply"):
        client.next_events()


def test_client_rejects_data_before_initiate() -> None:
    client = ClientConnection(Registration(ClientType.WORKER))
    client.receive_data(encode_registration_reply(1))
    with pytest.raises(RemoteProtocolError, match="before we registered"):
        client.next_events()


def test_end_to_end_worker_and_server() -> None:
    reg = Registration(ClientType.AUTH_WORKER, b"name", b"token")
    worker = ClientConnection(reg)
    server = ServerConnection()

    server.receive_data(worker.initiate() + worker.send(2, GrabJob()))
    assert server.next_events() == [Registered(reg), Request(2, GrabJob())]
    job = Job(b"echo", b"a", b"hi", 1700000000, timeout=600)
    worker.receive_data(
        server.accept(7) + server.send(2, Success()) + server.send(2, JobAssign(job))
    )
    assert worker.next_events() == [
        RegistrationReply(7),
        Response(2, Success()),
        Response(2, JobAssign(job)),
    ]


# --- any bytes -------------------------------------------------------------------------


def run_server(chunks: list[bytes]) -> None:
    server = ServerConnection(max_frame_size=4096)
    try:
        for chunk in chunks:
            server.receive_data(chunk)
            for event in server.next_events():
                assert isinstance(event, Registered | Request)
    except RemoteProtocolError as exc:
        assert str(exc)
        with pytest.raises(RemoteProtocolError):
            server.next_events()


@MORE
@given(chunks=st.lists(st.binary(max_size=80), max_size=5))
def test_any_bytes_into_server(chunks: list[bytes]) -> None:
    run_server(chunks)


@MORE
@given(
    reg_body=st.one_of(st.sampled_from([b"\x01", b"\x02"]), st.binary(max_size=20)),
    bodies=st.lists(
        st.one_of(
            st.binary(max_size=60),
            st.tuples(st.integers(0, 40), st.binary(max_size=60)).map(
                lambda t: b"\x00\x00\x00\x01" + bytes([t[0]]) + t[1]
            ),
        ),
        max_size=5,
    ),
    junk=st.binary(max_size=8),
)
def test_any_bodies_in_valid_envelopes(reg_body: bytes, bodies: list[bytes], junk: bytes) -> None:
    """Valid framing around random bodies reaches the decoders (random CRCs rarely do)."""
    data = envelope(reg_body) + b"".join(junk + envelope(body) for body in bodies)
    run_server([data])
    run_server([data[: len(data) // 2], data[len(data) // 2 :]])


@MORE
@given(chunks=st.lists(st.binary(max_size=80), max_size=5))
def test_any_bytes_into_client(chunks: list[bytes]) -> None:
    client = ClientConnection(Registration(ClientType.CLIENT), max_frame_size=4096)
    client.initiate()
    try:
        for chunk in chunks:
            client.receive_data(chunk)
            client.next_events()
    except RemoteProtocolError:
        pass
