"""Golden bytes: every example of PROTOCOL.md §16 and the DUMP example of §11.

The hex below is copied from the spec; each frame is checked both ways
(encode → exact bytes, bytes → the same value).
"""

from __future__ import annotations

import zlib

import pytest

from trio_periodic.protocol import (
    MAGIC_REQ,
    MAGIC_RES,
    ClientConnection,
    ClientType,
    FrameReader,
    Job,
    JobAssign,
    JobAssigned,
    Ping,
    Pong,
    Registered,
    Registration,
    RegistrationReply,
    Request,
    Response,
    ServerConnection,
    SubmitJob,
    Success,
    WorkDone,
    decode_body,
    decode_job_list,
    decode_registration,
    decode_registration_reply,
    encode_frame,
    encode_job_list,
    encode_raw_frame,
    encode_registration,
    encode_registration_reply,
)
from trio_periodic.protocol.packets import Packet


def h(text: str) -> bytes:
    return bytes.fromhex(text)


REG_CLIENT = h("00 52 45 51  00 00 00 01  a5 05 df 1b  01")
REG_WORKER = h("00 52 45 51  00 00 00 01  3c 0c 8e a1  02")
REG_AUTH_CLIENT = h(
    """00 52 45 51  00 00 00 20  ce e7 25 2c  03
       00 00 00 00 00 00 00 08 63 6c 69 65 6e 74 2d 61
       00 00 00 00 00 00 00 07 74 6f 6b 65 6e 2d 61"""
)
REG_REPLY = h("00 52 45 53  00 00 00 05  a8 1e e2 ca  1e 0a 0b 0c 0d")
PING_1 = h("00 52 45 51  00 00 00 05  a6 e5 7e f8  00 00 00 01  09")
PONG_1 = h("00 52 45 53  00 00 00 05  3f ec 2f 42  00 00 00 01  0a")
SUBMIT_2 = h(
    """00 52 45 51  00 00 00 1b  1e 75 ec 1c  00 00 00 02  0d
       04 65 63 68 6f 01 61 00 00 00 02 68 69 00 00 00 00 65 53 f1 00 00"""
)
SUCCESS_2 = h("00 52 45 53  00 00 00 05  e9 a3 85 fb  00 00 00 02  10")
JOB_ASSIGN_7 = h(
    """00 52 45 53  00 00 00 1f  db 92 99 e8  00 00 00 07  05
       04 65 63 68 6f 01 61 00 00 00 02 68 69 00 00 00 00 65 53 f1 00 02 00 00 02 58"""
)
JOB_ASSIGNED_7 = h("00 52 45 51  00 00 00 05  c5 0a 71 84  00 00 00 07  21")
WORK_DONE_8 = h(
    "00 52 45 51  00 00 00 0e  c9 9f ee 4b  00 00 00 08  03  04 65 63 68 6f 01 61 6f 6b"
)
DUMP_BODY = h(
    """00 00 00 00 00 00 00 01
       04 65 63 68 6f  01 61  00 00 00 02 68 69
       00 00 00 00 65 53 f1 00  00"""
)

ECHO_A = Job(b"echo", b"a", b"hi", 1700000000)


def body_of(frame: bytes) -> bytes:
    reader = FrameReader()
    reader.feed(frame)
    body = reader.next_body()
    assert body is not None
    assert reader.next_body() is None
    assert reader.buffered == 0
    return body


def test_crc_check_value() -> None:
    # PROTOCOL.md §5.1: the CRC is zlib's.
    assert zlib.crc32(b"123456789") == 0xCBF43926


@pytest.mark.parametrize(
    ("frame", "registration"),
    [
        (REG_CLIENT, Registration(ClientType.CLIENT)),
        (REG_WORKER, Registration(ClientType.WORKER)),
        (REG_AUTH_CLIENT, Registration(ClientType.AUTH_CLIENT, b"client-a", b"token-a")),
    ],
)
def test_registration(frame: bytes, registration: Registration) -> None:
    assert encode_registration(registration) == frame
    assert decode_registration(body_of(frame)) == registration


def test_registration_is_worker() -> None:
    assert not Registration(ClientType.CLIENT).is_worker
    assert Registration(ClientType.WORKER).is_worker
    assert not Registration(ClientType.AUTH_CLIENT, b"", b"").is_worker
    assert Registration(ClientType.AUTH_WORKER, b"", b"").is_worker


def test_registration_reply() -> None:
    assert encode_registration_reply(0x0A0B0C0D) == REG_REPLY
    assert decode_registration_reply(body_of(REG_REPLY)) == 0x0A0B0C0D


PACKET_FRAMES: list[tuple[bytes, bytes, int, Packet]] = [
    (PING_1, MAGIC_REQ, 1, Ping()),
    (PONG_1, MAGIC_RES, 1, Pong()),
    (SUBMIT_2, MAGIC_REQ, 2, SubmitJob(ECHO_A)),
    (SUCCESS_2, MAGIC_RES, 2, Success()),
    (
        JOB_ASSIGN_7,
        MAGIC_RES,
        7,
        JobAssign(Job(b"echo", b"a", b"hi", 1700000000, timeout=600)),
    ),
    (JOB_ASSIGNED_7, MAGIC_REQ, 7, JobAssigned()),
    (WORK_DONE_8, MAGIC_REQ, 8, WorkDone(b"echo", b"a", b"ok")),
]


@pytest.mark.parametrize(
    ("frame", "magic", "msgid", "packet"),
    PACKET_FRAMES,
    ids=[type(p).__name__ for _, _, _, p in PACKET_FRAMES],
)
def test_packet_frames(frame: bytes, magic: bytes, msgid: int, packet: Packet) -> None:
    assert encode_frame(msgid, packet, magic) == frame
    assert decode_body(body_of(frame)) == (msgid, packet)


def test_raw_frame_matches_golden() -> None:
    assert encode_raw_frame(2, 16) == SUCCESS_2
    assert encode_raw_frame(1, 10) == PONG_1
    assert encode_raw_frame(1, 9, b"", MAGIC_REQ) == PING_1
    assert encode_raw_frame(8, 3, h("04 65 63 68 6f 01 61 6f 6b"), MAGIC_REQ) == WORK_DONE_8


def test_dump_body() -> None:
    assert encode_job_list([ECHO_A]) == DUMP_BODY
    assert decode_job_list(DUMP_BODY) == [ECHO_A]


def test_server_conversation() -> None:
    """The §16 exchange through ServerConnection, fed as one stream."""
    server = ServerConnection()
    server.receive_data(REG_CLIENT + PING_1 + SUBMIT_2)
    assert server.next_events() == [
        Registered(Registration(ClientType.CLIENT)),
        Request(1, Ping()),
        Request(2, SubmitJob(ECHO_A)),
    ]
    assert server.accept(0x0A0B0C0D) == REG_REPLY
    assert server.send(1, Pong()) == PONG_1
    assert server.send(2, Success()) == SUCCESS_2


def test_worker_conversation() -> None:
    """The worker side of §16 through ClientConnection."""
    worker = ClientConnection(Registration(ClientType.WORKER))
    assert worker.initiate() == REG_WORKER
    worker.receive_data(REG_REPLY + JOB_ASSIGN_7)
    assert worker.next_events() == [
        RegistrationReply(0x0A0B0C0D),
        Response(7, JobAssign(Job(b"echo", b"a", b"hi", 1700000000, timeout=600))),
    ]
    assert worker.send(7, JobAssigned()) == JOB_ASSIGNED_7
    assert worker.send(8, WorkDone(b"echo", b"a", b"ok")) == WORK_DONE_8
