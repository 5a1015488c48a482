"""FrameReader: splitting, resynchronisation, limits and "any bytes" robustness."""

from __future__ import annotations

import itertools
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_periodic.protocol import (
    DEFAULT_MAX_FRAME_SIZE,
    MAGIC_REQ,
    MAGIC_RES,
    MAX_GARBAGE,
    ClientType,
    Data,
    FrameReader,
    Job,
    LocalProtocolError,
    Ping,
    Registration,
    RemoteProtocolError,
    SubmitJob,
    decode_body,
    encode_frame,
    encode_registration,
)

MORE = settings(max_examples=300, deadline=None)

PING = encode_frame(1, Ping(), MAGIC_REQ)
REG = encode_registration(Registration(ClientType.WORKER))
STREAM = (
    REG
    + PING
    + encode_frame(2, SubmitJob(Job(b"echo", b"a", b"hi" * 40, 1700000000, 1, 2)), MAGIC_REQ)
    + encode_frame(3, Data(b"\x00REQ\x00RES"), MAGIC_RES)  # magics inside a body are data
    + encode_frame(0xFFFFFFFF, Data(), MAGIC_REQ)
)


def bodies(frames: bytes) -> list[bytes]:
    """The bodies of a well-formed stream, computed independently of FrameReader."""
    out = []
    pos = 0
    while pos < len(frames):
        (length,) = struct.unpack_from(">I", frames, pos + 4)
        out.append(frames[pos + 12 : pos + 12 + length])
        pos += 12 + length
    return out


EXPECTED = bodies(STREAM)


def drain(reader: FrameReader) -> list[bytes]:
    out = []
    while (body := reader.next_body()) is not None:
        assert type(body) is bytes
        out.append(body)
    return out


def frame_with_length(length: int, magic: bytes = MAGIC_REQ) -> bytes:
    return magic + struct.pack(">II", length, 0)


# --- splitting -------------------------------------------------------------------------


def test_many_frames_in_one_feed() -> None:
    reader = FrameReader()
    reader.feed(STREAM)
    assert drain(reader) == EXPECTED
    assert reader.buffered == 0
    assert reader.next_body() is None


@pytest.mark.parametrize("resync", [True, False])
def test_split_at_every_byte_boundary(resync: bool) -> None:
    for cut in range(len(STREAM) + 1):
        reader = FrameReader(resync=resync)
        reader.feed(STREAM[:cut])
        got = drain(reader)
        assert reader.buffered == cut - sum(12 + len(b) for b in got)
        reader.feed(STREAM[cut:])
        got += drain(reader)
        assert got == EXPECTED, cut


def test_split_at_every_pair_of_boundaries_in_a_frame() -> None:
    frame = STREAM[len(REG) + len(PING) :][:40]  # header + start of SUBMIT_JOB
    data = PING + frame + STREAM[len(REG) + len(PING) + 40 :]
    want = bodies(data)
    for i in range(len(PING), len(PING) + 40):
        for j in range(i, len(PING) + 41):
            reader = FrameReader()
            got = []
            for piece in (data[:i], data[i:j], data[j:]):
                reader.feed(piece)
                got += drain(reader)
            assert got == want


def test_byte_by_byte() -> None:
    reader = FrameReader()
    got = []
    for i in range(len(STREAM)):
        reader.feed(STREAM[i : i + 1])
        got += drain(reader)
    assert got == EXPECTED


@settings(max_examples=100, deadline=None)
@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_random_chunking(cuts: list[int]) -> None:
    points = [0, *sorted(cuts), len(STREAM)]
    reader = FrameReader()
    got = []
    for a, b in itertools.pairwise(points):
        reader.feed(STREAM[a:b])
        got += drain(reader)
    assert got == EXPECTED


def test_big_frame_trickling_in() -> None:
    """A large body arriving in small pieces, between small frames (the bytearray path)."""
    big = encode_frame(9, Data(bytes(range(256)) * 4096), MAGIC_REQ)  # ~1 MiB
    data = PING + big + PING + big[:100]
    reader = FrameReader()
    got = []
    for i in range(0, len(data), 1000):
        reader.feed(data[i : i + 1000])
        got += drain(reader)
    assert got == [PING[12:], big[12:], PING[12:]]
    assert reader.buffered == 100
    reader.feed(big[100:])
    assert drain(reader) == [big[12:]]
    assert reader.buffered == 0


def test_feed_copies_mutable_input() -> None:
    reader = FrameReader()
    chunk = bytearray(PING[:10])
    reader.feed(chunk)  # type: ignore[arg-type]
    chunk[:] = b"\xff" * 10  # the caller reuses its receive buffer
    reader.feed(memoryview(PING)[10:])  # type: ignore[arg-type]
    assert drain(reader) == [PING[12:]]
    reader.feed(bytearray(PING))  # type: ignore[arg-type]
    assert drain(reader) == [PING[12:]]


def test_buffered() -> None:
    reader = FrameReader()
    assert reader.buffered == 0
    reader.feed(PING + PING[:5])
    assert reader.buffered == len(PING) + 5
    assert reader.next_body() == PING[12:]
    assert reader.buffered == 5
    assert reader.next_body() is None
    reader.feed(b"")
    assert reader.buffered == 5


# --- resynchronisation -----------------------------------------------------------------


def test_garbage_before_magic_is_skipped() -> None:
    # C5: "xyz" + a valid PING frame still yields the PING.
    reader = FrameReader()
    reader.feed(b"xyz" + PING)
    assert drain(reader) == [PING[12:]]


@pytest.mark.parametrize(
    "garbage",
    [b"\x00", b"\x00R", b"\x00RE", b"\x00REX", b"\x00RE\x00RE", b"REQ\x00", b"\x00\x00RE", b"RES"],
)
def test_garbage_that_looks_like_a_magic(garbage: bytes) -> None:
    data = garbage + PING + b"zz" + garbage + PING
    for step in (1, 2, 3, len(data)):
        reader = FrameReader()
        got = []
        for i in range(0, len(data), step):
            reader.feed(data[i : i + step])
            got += drain(reader)
        assert got == [PING[12:], PING[12:]], (garbage, step)


def test_either_magic_is_accepted() -> None:
    reader = FrameReader()
    reader.feed(encode_frame(1, Ping(), MAGIC_RES) + PING)
    assert drain(reader) == [PING[12:], PING[12:]]


def test_garbage_up_to_the_limit_is_fine() -> None:
    reader = FrameReader()
    reader.feed(b"x" * MAX_GARBAGE + PING)
    assert drain(reader) == [PING[12:]]
    # The count starts again after each frame.
    reader.feed(b"y" * MAX_GARBAGE + PING)
    assert drain(reader) == [PING[12:]]


def test_too_much_garbage_is_rejected() -> None:
    reader = FrameReader()
    reader.feed(b"x" * (MAX_GARBAGE + 4))
    with pytest.raises(RemoteProtocolError, match="no frame magic found"):
        reader.next_body()


def test_garbage_in_chunks_is_rejected_with_bounded_memory() -> None:
    reader = FrameReader()
    fed = 0
    with pytest.raises(RemoteProtocolError, match="no frame magic found"):
        while True:
            reader.feed(b"\x00RE!" * 256)
            fed += 1024
            assert reader.next_body() is None
            assert reader.buffered <= 3  # garbage is not kept
    assert MAX_GARBAGE < fed <= MAX_GARBAGE + 1024 + 3


def test_no_resync_rejects_non_magic() -> None:
    reader = FrameReader(resync=False)
    reader.feed(b"xyz" + PING)
    with pytest.raises(RemoteProtocolError, match="bad magic"):
        reader.next_body()


def test_no_resync_rejects_garbage_between_frames() -> None:
    reader = FrameReader(resync=False)
    reader.feed(PING + b"\x00RE")
    assert reader.next_body() == PING[12:]
    assert reader.next_body() is None  # could still become a magic
    reader.feed(b"X")
    with pytest.raises(RemoteProtocolError, match="bad magic"):
        reader.next_body()


# --- limits and corruption -------------------------------------------------------------


def test_bad_crc() -> None:
    bad = bytearray(PING)
    bad[-1] ^= 0xFF
    reader = FrameReader()
    reader.feed(bytes(bad))
    good_crc = zlib.crc32(bytes(bad[12:]))
    with pytest.raises(
        RemoteProtocolError, match=f"bad CRC: expected 0xa6e57ef8, got 0x{good_crc:08x}"
    ):
        reader.next_body()


def test_oversized_length_rejected_from_header_alone() -> None:
    reader = FrameReader()
    reader.feed(frame_with_length(80000000))
    assert reader.buffered == 12
    with pytest.raises(RemoteProtocolError, match="frame length 80000000 exceeds limit 67108864"):
        reader.next_body()


def test_oversized_length_rejected_from_eight_bytes() -> None:
    reader = FrameReader(max_frame_size=100)
    reader.feed(frame_with_length(101)[:8])
    with pytest.raises(RemoteProtocolError, match="frame length 101 exceeds limit 100"):
        reader.next_body()


def test_length_at_the_limit_is_accepted() -> None:
    frame = encode_frame(1, Data(b"x" * 95), MAGIC_REQ)  # L = 100
    reader = FrameReader(max_frame_size=100)
    reader.feed(frame)
    assert reader.next_body() == frame[12:]
    assert DEFAULT_MAX_FRAME_SIZE == 64 * 1024 * 1024


def test_zero_length_rejected() -> None:
    reader = FrameReader()
    reader.feed(frame_with_length(0)[:8])
    with pytest.raises(RemoteProtocolError, match="frame length 0 is too small"):
        reader.next_body()


def test_errors_are_sticky() -> None:
    reader = FrameReader()
    reader.feed(frame_with_length(2**32 - 1))
    with pytest.raises(RemoteProtocolError):
        reader.next_body()
    with pytest.raises(RemoteProtocolError, match="already failed"):
        reader.next_body()
    with pytest.raises(RemoteProtocolError, match="already failed"):
        reader.feed(PING)
    assert reader.buffered == 0


def test_bad_max_frame_size() -> None:
    with pytest.raises(LocalProtocolError):
        FrameReader(max_frame_size=0)


# --- any bytes -------------------------------------------------------------------------


def run_reader(reader: FrameReader, chunks: list[bytes]) -> list[bytes]:
    got: list[bytes] = []
    try:
        for chunk in chunks:
            reader.feed(chunk)
            got += drain(reader)
    except RemoteProtocolError as exc:
        assert str(exc)
    return got


@MORE
@given(chunks=st.lists(st.binary(max_size=64), max_size=6), resync=st.booleans())
def test_any_bytes(chunks: list[bytes], resync: bool) -> None:
    run_reader(FrameReader(max_frame_size=1000, resync=resync), chunks)


@MORE
@given(
    magic=st.sampled_from([MAGIC_REQ, MAGIC_RES]),
    length=st.one_of(st.integers(0, 80), st.integers(0, 2**32 - 1)),
    crc=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    tail=st.binary(max_size=100),
    split=st.integers(0, 120),
    resync=st.booleans(),
)
def test_any_bytes_after_a_header(
    magic: bytes, length: int, crc: int | None, tail: bytes, split: int, resync: bool
) -> None:
    if crc is None:  # make the CRC right for the first `length` bytes of the tail
        crc = zlib.crc32(tail[:length])
    data = magic + struct.pack(">II", length, crc) + tail
    got = run_reader(FrameReader(max_frame_size=1000, resync=resync), [data[:split], data[split:]])
    if got:
        assert got[0] == tail[:length]
        # and whatever the body is, decoding it is safe
        try:
            decode_body(got[0])
        except RemoteProtocolError:
            pass


def test_a_magic_inside_garbage_starts_a_frame() -> None:
    # Like periodicd's sliding window: the first magic wins, even if it is bogus.
    reader = FrameReader(max_frame_size=1000)
    reader.feed(b"ab\x00REQ\xff\xff\xff\xff" + PING)
    with pytest.raises(RemoteProtocolError, match="exceeds limit"):
        reader.next_body()
