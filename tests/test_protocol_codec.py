"""Payload, job and registration codecs: hypothesis round trips, range checks, and
"any bytes either decode or raise RemoteProtocolError"."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_periodic.protocol import (
    MAGIC_REQ,
    MAGIC_RES,
    PACKET_TYPES,
    Acquire,
    Acquired,
    Broadcast,
    CanDo,
    CantDo,
    ClientType,
    Cmd,
    Config,
    ConfigGet,
    ConfigSet,
    Data,
    DropFunc,
    Dump,
    Extension,
    FrameReader,
    GrabJob,
    Job,
    JobAssign,
    JobAssigned,
    JobUnassigned,
    Load,
    LocalProtocolError,
    NoJob,
    Noop,
    NoWorker,
    Ping,
    Pong,
    RecvData,
    Registration,
    Release,
    RemoteProtocolError,
    RemoveJob,
    RunJob,
    SchedLater,
    Shutdown,
    Sleep,
    Status,
    SubmitJob,
    Success,
    Unknown,
    WorkData,
    WorkDone,
    WorkFail,
    decode_body,
    decode_job,
    decode_job_list,
    decode_packet,
    decode_registration,
    decode_registration_reply,
    encode_frame,
    encode_job,
    encode_job_list,
    encode_payload,
    encode_raw_frame,
    encode_registration,
    encode_registration_reply,
)
from trio_periodic.protocol.frames import decode_request
from trio_periodic.protocol.packets import Packet

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MORE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ------------------------------------------------------------------------

b8 = st.binary(max_size=255)
small = st.binary(max_size=300)
i16 = st.integers(-(2**15), 2**15 - 1)
i64 = st.integers(-(2**63), 2**63 - 1)
u32 = st.integers(0, 2**32 - 1)
positive_i32 = st.integers(1, 2**31 - 1)
# Values that survive a round trip: the version bits are computed from > 0.
count_or_timeout = st.one_of(st.just(0), positive_i32)

jobs = st.builds(Job, b8, b8, small, i64, count_or_timeout, count_or_timeout)

PACKET_STRATEGIES: dict[type[Packet], st.SearchStrategy[Any]] = {
    Noop: st.builds(Noop),
    GrabJob: st.builds(GrabJob),
    SchedLater: st.builds(SchedLater, b8, b8, i64, i16),
    WorkDone: st.builds(WorkDone, b8, b8, small),
    WorkFail: st.builds(WorkFail, b8, b8),
    JobAssign: st.builds(JobAssign, jobs),
    NoJob: st.builds(NoJob),
    CanDo: st.builds(CanDo, b8),
    CantDo: st.builds(CantDo, b8),
    Ping: st.builds(Ping),
    Pong: st.builds(Pong),
    Sleep: st.builds(Sleep),
    Unknown: st.builds(Unknown),
    SubmitJob: st.builds(SubmitJob, jobs),
    Status: st.builds(Status),
    DropFunc: st.builds(DropFunc, b8),
    Success: st.builds(Success),
    RemoveJob: st.builds(RemoveJob, b8, b8),
    Dump: st.builds(Dump),
    Load: st.builds(Load, st.lists(jobs, max_size=4)),
    Shutdown: st.builds(Shutdown),
    Broadcast: st.builds(Broadcast, b8),
    ConfigGet: st.builds(ConfigGet, b8),
    ConfigSet: st.builds(ConfigSet, b8, u32),
    Config: st.builds(Config, u32),
    RunJob: st.builds(RunJob, jobs),
    Acquired: st.builds(Acquired, st.booleans()),
    Acquire: st.builds(Acquire, b8, i16, b8, b8),
    Release: st.builds(Release, b8, b8, b8),
    NoWorker: st.builds(NoWorker),
    Data: st.builds(Data, small),
    RecvData: st.builds(RecvData, jobs),
    WorkData: st.builds(WorkData, b8, b8, small),
    JobAssigned: st.builds(JobAssigned),
    JobUnassigned: st.builds(JobUnassigned),
    Extension: st.builds(Extension, st.binary(max_size=64)),
}
packets = st.one_of(*PACKET_STRATEGIES.values())
msgids = st.integers(0, 2**32 - 1)
ALL_CLASSES = sorted(PACKET_STRATEGIES, key=lambda cls: cls.cmd)


def assert_only_bytes(value: object) -> None:
    """Decoded values must never be views into the caller's buffer."""
    for name in getattr(value, "__dataclass_fields__", {}):
        field = getattr(value, name)
        if isinstance(field, Job):
            assert_only_bytes(field)
        elif isinstance(field, list):
            for item in field:
                assert_only_bytes(item)
        else:
            assert not isinstance(field, memoryview | bytearray), (name, type(field))
            if name in ("func", "name", "workload", "data", "key", "lock"):
                assert type(field) is bytes


def remote_or(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn``; a RemoteProtocolError is an acceptable answer, anything else escapes."""
    try:
        return fn(*args)
    except RemoteProtocolError as exc:
        assert str(exc)  # every error says what went wrong
        return None


# --- tables ----------------------------------------------------------------------------


def test_packet_table_is_complete() -> None:
    assert set(PACKET_TYPES) == set(Cmd)
    assert set(PACKET_TYPES.values()) == set(PACKET_STRATEGIES)
    for cmd, cls in PACKET_TYPES.items():
        assert cls.cmd is cmd
    assert [c.value for c in Cmd] == [*range(35), 64]
    assert int(Cmd.JOB_UNASSIGNED) == 34
    assert int(Cmd.EXTENSION) == 64  # ours; 35-63 and 65+ stay invalid
    assert [t.value for t in ClientType] == [1, 2, 3, 4]


# --- packet round trips ----------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda cls: cls.__name__)
def test_packet_round_trip(cls: type[Packet]) -> None:
    @FAST
    @given(
        packet=PACKET_STRATEGIES[cls], msgid=msgids, magic=st.sampled_from([MAGIC_REQ, MAGIC_RES])
    )
    def check(packet: Packet, msgid: int, magic: bytes) -> None:
        payload = encode_payload(packet)
        assert decode_packet(packet.cmd, payload) == packet
        from_view = decode_packet(packet.cmd, memoryview(payload))
        assert from_view == packet
        assert_only_bytes(from_view)

        frame = encode_frame(msgid, packet, magic)
        assert frame[:4] == magic
        assert frame == encode_raw_frame(msgid, packet.cmd, payload, magic)
        reader = FrameReader()
        reader.feed(frame)
        body = reader.next_body()
        assert body is not None
        assert decode_body(body) == (msgid, packet)
        assert decode_body(memoryview(body)) == (msgid, packet)
        assert decode_body(bytearray(body)) == (msgid, packet)  # type: ignore[arg-type]
        assert decode_request(body) == (msgid, packet.cmd, packet)

    check()


def test_empty_packets_are_shared_and_equal() -> None:
    assert decode_packet(Cmd.PING, b"") == Ping()
    assert decode_packet(Cmd.PING, b"") is decode_packet(Cmd.PING, b"")
    assert Ping() != Pong()  # type: ignore[comparison-overlap]


# --- jobs ------------------------------------------------------------------------------


def jobs_of_version(ver: int) -> st.SearchStrategy[Job]:
    count = positive_i32 if ver & 1 else st.just(0)
    timeout = positive_i32 if ver & 2 else st.just(0)
    return st.builds(Job, b8, b8, small, i64, count, timeout)


@pytest.mark.parametrize("ver", [0, 1, 2, 3])
def test_job_round_trip_every_version(ver: int) -> None:
    @FAST
    @given(job=jobs_of_version(ver), prefix=st.binary(max_size=8), suffix=st.binary(max_size=8))
    def check(job: Job, prefix: bytes, suffix: bytes) -> None:
        encoded = encode_job(job)
        version_at = 1 + len(job.func) + 1 + len(job.name) + 4 + len(job.workload) + 8
        assert encoded[version_at] == ver
        assert len(encoded) == version_at + 1 + 4 * bin(ver).count("1")
        assert decode_job(encoded) == (job, len(encoded))
        buf = prefix + encoded + suffix
        assert decode_job(buf, len(prefix)) == (job, len(prefix) + len(encoded))
        decoded, _ = decode_job(memoryview(buf), len(prefix))
        assert decoded == job
        assert_only_bytes(decoded)
        assert decoded.handle == (job.func, job.name)

    check()


@FAST
@given(
    job=st.builds(
        Job,
        b8,
        b8,
        small,
        i64,
        st.integers(-(2**31), 0),
        st.integers(-(2**31), 0),
    )
)
def test_nonpositive_count_and_timeout_are_not_sent(job: Job) -> None:
    encoded = encode_job(job)
    assert encoded[-1] == 0  # version 0, no tail
    decoded, _ = decode_job(encoded)
    assert (decoded.count, decoded.timeout) == (0, 0)
    assert (decoded.func, decoded.name, decoded.workload, decoded.sched_at) == (
        job.func,
        job.name,
        job.workload,
        job.sched_at,
    )


@FAST
@given(count=st.integers(-(2**31), -1), timeout=st.integers(-(2**31), -1))
def test_negative_values_on_the_wire_normalise_on_reencode(count: int, timeout: int) -> None:
    # A peer (the Haskell client can) sends ver 3 with negative count/timeout.
    wire = b"\x01f\x01n" + struct.pack(">I", 0) + struct.pack(">qBii", 5, 3, count, timeout)
    decoded, end = decode_job(wire)
    assert end == len(wire)
    assert (decoded.count, decoded.timeout) == (count, timeout)
    again = encode_job(decoded)
    assert again == b"\x01f\x01n" + struct.pack(">IqB", 0, 5, 0)
    assert decode_job(again)[0] == Job(b"f", b"n", b"", 5, 0, 0)


def test_unknown_version_is_version_zero() -> None:
    base = encode_job(Job(b"f", b"n", b"w", 1))
    assert base[-1] == 0
    odd = base[:-1] + b"\x07"
    assert decode_job(odd) == (Job(b"f", b"n", b"w", 1), len(odd))
    assert decode_packet(Cmd.SUBMIT_JOB, odd) == SubmitJob(Job(b"f", b"n", b"w", 1))
    # ... and a tail after an unknown version is "trailing bytes".
    with pytest.raises(RemoteProtocolError, match="4 trailing bytes after SUBMIT_JOB"):
        decode_packet(Cmd.SUBMIT_JOB, odd + b"\x00\x00\x00\x05")


def test_unsigned_values_wrap_like_aio_periodic() -> None:
    job = Job(b"f", b"n", sched_at=2**64 - 1, count=2**32 - 1, timeout=2**31)
    decoded, _ = decode_job(encode_job(job))
    assert (decoded.sched_at, decoded.count, decoded.timeout) == (-1, -1, -(2**31))

    assert decode_packet(Cmd.SCHED_LATER, encode_payload(SchedLater(b"f", b"n", 2**63, 65535))) == (
        SchedLater(b"f", b"n", -(2**63), -1)
    )
    assert encode_payload(SchedLater(b"f", b"n", -1, -1)) == encode_payload(
        SchedLater(b"f", b"n", 2**64 - 1, 65535)
    )
    assert decode_packet(Cmd.ACQUIRE, encode_payload(Acquire(b"l", 40000, b"f", b"n"))) == (
        Acquire(b"l", 40000 - 65536, b"f", b"n")
    )


@FAST
@given(jobs=st.lists(jobs, max_size=5))
def test_job_list_round_trip(jobs: list[Job]) -> None:
    encoded = encode_job_list(jobs)
    assert encoded[:8] == len(jobs).to_bytes(8, "big")
    assert decode_job_list(encoded) == jobs
    assert decode_job_list(memoryview(encoded)) == jobs
    assert encode_job_list(iter(jobs)) == encoded
    assert decode_packet(Cmd.LOAD, encoded) == Load(jobs)


def test_job_list_errors() -> None:
    one = encode_job_list([Job(b"f", b"n")])
    with pytest.raises(RemoteProtocolError, match="1 trailing bytes after job list"):
        decode_job_list(one + b"x")
    with pytest.raises(RemoteProtocolError, match="truncated job list"):
        decode_job_list(one[:-1])
    with pytest.raises(RemoteProtocolError, match="negative job count"):
        decode_job_list(struct.pack(">q", -1))
    # A huge count is refused up front, not after looping.
    with pytest.raises(RemoteProtocolError, match="claims"):
        decode_job_list(struct.pack(">q", 2**62) + one[8:])
    with pytest.raises(RemoteProtocolError, match="truncated job list"):
        decode_job_list(b"\x00" * 7)
    assert decode_job_list(struct.pack(">q", 0)) == []


# --- registration ----------------------------------------------------------------------

identities = st.binary(max_size=100)
registrations = st.one_of(
    st.builds(Registration, st.sampled_from([ClientType.CLIENT, ClientType.WORKER])),
    st.builds(
        Registration,
        st.sampled_from([ClientType.AUTH_CLIENT, ClientType.AUTH_WORKER]),
        identities,
        identities,
    ),
)


@MORE
@given(reg=registrations, magic=st.sampled_from([MAGIC_REQ, MAGIC_RES]))
def test_registration_round_trip(reg: Registration, magic: bytes) -> None:
    frame = encode_registration(reg, magic)
    assert frame[:4] == magic
    reader = FrameReader()
    reader.feed(frame)
    body = reader.next_body()
    assert body is not None
    assert body[0] == reg.type
    decoded = decode_registration(body)
    assert decoded == reg
    assert decode_registration(memoryview(body)) == reg
    assert decoded.is_worker == (reg.type in (ClientType.WORKER, ClientType.AUTH_WORKER))
    assert type(decoded.type) is ClientType


@FAST
@given(conn_id=u32)
def test_registration_reply_round_trip(conn_id: int) -> None:
    frame = encode_registration_reply(conn_id)
    assert decode_registration_reply(frame[12:]) == conn_id


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty registration"),
        (b"\x05", "unknown client type 5"),
        (b"\x00", "unknown client type 0"),
        (b"\x01\x00", "1 trailing bytes after registration type 1"),
        (b"\x02xyz", "3 trailing bytes after registration type 2"),
        (b"\x03", "truncated registration identity"),
        (b"\x04" + struct.pack(">Q", 1) + b"a" + struct.pack(">Q", 2) + b"b", "runs past"),
        (b"\x03" + struct.pack(">Q", 2**64 - 1), "runs past"),
        (b"\x03" + struct.pack(">QQ", 0, 0) + b"!", "1 trailing bytes after registration"),
    ],
)
def test_bad_registrations(body: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        decode_registration(body)


def test_bad_registration_reply() -> None:
    for body in (b"", b"\x1e\x00\x00\x00", b"\x1f\x00\x00\x00\x00", b"\x1e\x00\x00\x00\x00\x00"):
        with pytest.raises(RemoteProtocolError, match="bad registration reply"):
            decode_registration_reply(body)


# --- error messages for bad payloads ---------------------------------------------------


@pytest.mark.parametrize(
    ("cmd", "payload", "message"),
    [
        (80, b"", "unknown command 80"),
        (35, b"", "unknown command 35"),
        (255, b"abc", "unknown command 255"),
        (-1, b"", "unknown command -1"),
        (Cmd.PING, b"\x00", "1 trailing bytes after PING"),
        (Cmd.GRAB_JOB, b"xyz", "3 trailing bytes after GRAB_JOB"),
        (Cmd.CAN_DO, b"", "truncated CAN_DO payload"),
        (Cmd.CAN_DO, b"\x05abc", "truncated CAN_DO payload"),
        (Cmd.CAN_DO, b"\x01ab", "1 trailing bytes after CAN_DO"),
        (Cmd.SCHED_LATER, b"\x00\x00" + b"\x00" * 9, "truncated SCHED_LATER"),
        (Cmd.SCHED_LATER, b"\x00\x00" + b"\x00" * 11, "1 trailing bytes after SCHED_LATER"),
        (Cmd.CONFIG, b"\x00\x00\x00", "truncated CONFIG payload"),
        (Cmd.ACQUIRED, b"", "truncated ACQUIRED payload"),
        (Cmd.ACQUIRED, b"\x01\x01", "1 trailing bytes after ACQUIRED"),
        (Cmd.JOB_ASSIGN, b"\x01f", "truncated JOB_ASSIGN"),
        (Cmd.SUBMIT_JOB, b"\x00\x00\x00\x00\x00\x05abcd" + b"\x00" * 9, "truncated SUBMIT_JOB"),
    ],
)
def test_bad_payload_messages(cmd: int, payload: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        decode_packet(cmd, payload)


def test_decode_body_needs_msgid_and_command() -> None:
    with pytest.raises(RemoteProtocolError, match="shorter than msgid"):
        decode_body(b"\x00\x00\x00\x01")
    assert decode_body(b"\x00\x00\x00\x01\x09") == (1, Ping())


def test_acquired_byte_values() -> None:
    assert decode_packet(Cmd.ACQUIRED, b"\x01") == Acquired(True)
    assert decode_packet(Cmd.ACQUIRED, b"\x00") == Acquired(False)
    assert encode_payload(Acquired(True)) == b"\x01"
    assert encode_payload(Acquired(False)) == b"\x00"


# --- local errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: encode_payload(CanDo(b"x" * 256)),
        lambda: encode_payload(WorkDone(b"f", b"x" * 256, b"")),
        lambda: encode_payload(SchedLater(b"f", b"n", 0, 65536)),
        lambda: encode_payload(SchedLater(b"f", b"n", 0, -32769)),
        lambda: encode_payload(SchedLater(b"f", b"n", 2**64, 0)),
        lambda: encode_payload(SchedLater(b"f", b"n", -(2**63) - 1, 0)),
        lambda: encode_payload(Acquire(b"l", 70000, b"f", b"n")),
        lambda: encode_payload(Acquire(b"l" * 300, 1, b"f", b"n")),
        lambda: encode_payload(Config(-1)),
        lambda: encode_payload(Config(2**32)),
        lambda: encode_payload(ConfigSet(b"k", 2**32)),
        lambda: encode_payload(ConfigGet(b"k" * 256)),
        lambda: encode_payload(Release(b"l", b"f", b"n" * 256)),
        lambda: encode_payload("PING"),  # type: ignore[arg-type]
        lambda: encode_job(Job(b"x" * 256, b"n")),
        lambda: encode_job(Job(b"f", b"n", count=2**32)),
        lambda: encode_job(Job(b"f", b"n", timeout=2**32)),
        lambda: encode_job(Job(b"f", b"n", count=1, timeout=2**32)),
        lambda: encode_job(Job(b"f", b"n", sched_at=2**64)),
        lambda: encode_job_list([Job(b"f", b"n"), Job(b"f" * 256, b"n")]),
        lambda: encode_frame(-1, Ping()),
        lambda: encode_frame(2**32, Ping()),
        lambda: encode_frame(1, Ping(), b"\x00REX"),
        lambda: encode_raw_frame(1, 256),
        lambda: encode_raw_frame(1, -1),
        lambda: encode_raw_frame(1, 9, b"", b"REQ"),
        lambda: encode_registration(Registration(ClientType.CLIENT, b"name", b"token")),
        lambda: encode_registration(Registration(ClientType.AUTH_WORKER, b"name")),
        lambda: encode_registration(Registration(9)),  # type: ignore[arg-type]
        lambda: encode_registration(Registration(ClientType.CLIENT), b"nope"),
        lambda: encode_registration_reply(2**32),
        lambda: encode_registration_reply(-1),
        lambda: decode_job(b"", -1),
    ],
)
def test_local_errors(make: Callable[[], object]) -> None:
    with pytest.raises(LocalProtocolError):
        make()


# --- any bytes either decode or raise RemoteProtocolError ------------------------------

commands = st.one_of(st.sampled_from(list(Cmd)), st.integers(0, 255))


@MORE
@given(cmd=commands, payload=st.binary(max_size=120))
def test_any_payload(cmd: int, payload: bytes) -> None:
    packet = remote_or(decode_packet, cmd, payload)
    if packet is not None:
        assert packet.cmd == cmd
        assert_only_bytes(packet)
        encode_payload(packet)  # whatever we decode we can send back
    view = remote_or(decode_packet, cmd, memoryview(payload))
    assert view == packet


@MORE
@given(packet=packets, data=st.data())
def test_mutated_payloads(packet: Packet, data: st.DataObject) -> None:
    """Truncate, extend or corrupt a valid payload: the interesting inputs."""
    payload = bytearray(encode_payload(packet))
    how = data.draw(st.sampled_from(["truncate", "extend", "flip", "splice"]))
    if how == "truncate" and payload:
        del payload[data.draw(st.integers(0, len(payload) - 1)) :]
    elif how == "extend":
        payload += data.draw(st.binary(min_size=1, max_size=16))
    elif how == "flip" and payload:
        i = data.draw(st.integers(0, len(payload) - 1))
        payload[i] = data.draw(st.integers(0, 255))
    elif how == "splice" and payload:
        i = data.draw(st.integers(0, len(payload)))
        payload[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    cmd = data.draw(st.one_of(st.just(int(packet.cmd)), commands))
    decoded = remote_or(decode_packet, cmd, bytes(payload))
    if decoded is not None:
        encode_payload(decoded)


@MORE
@given(body=st.binary(max_size=100))
def test_any_body(body: bytes) -> None:
    remote_or(decode_body, body)
    remote_or(decode_body, memoryview(body))


@MORE
@given(msgid=msgids, cmd=commands, payload=st.binary(max_size=100))
def test_any_payload_after_valid_body_header(msgid: int, cmd: int, payload: bytes) -> None:
    body = struct.pack(">IB", msgid, cmd) + payload
    result = remote_or(decode_body, body)
    if result is not None:
        assert result[0] == msgid
    # The server's fast path agrees with the general decoder, errors included.
    fast = remote_or(decode_request, body)
    assert fast == (None if result is None else (msgid, cmd, result[1]))


@MORE
@given(buf=st.binary(max_size=120), pos=st.integers(0, 130))
def test_any_job_bytes(buf: bytes, pos: int) -> None:
    result = remote_or(decode_job, buf, pos)
    if result is not None:
        job, end = result
        assert pos < end <= len(buf)
        assert_only_bytes(job)
        encode_job(job)
    remote_or(decode_job_list, buf)


@MORE
@given(body=st.one_of(st.binary(max_size=60), st.binary(max_size=40).map(lambda b: b"\x03" + b)))
def test_any_registration_bytes(body: bytes) -> None:
    reg = remote_or(decode_registration, body)
    if reg is not None:
        assert encode_registration(reg)[12:] == body
    remote_or(decode_registration_reply, body)
