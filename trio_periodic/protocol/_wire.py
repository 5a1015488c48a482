"""Private building blocks shared by the codecs: precompiled structs and range checks.

Every multi-byte integer on the wire is big-endian (PROTOCOL.md, notation).
Decoders in this package signal "input too short" with ``IndexError`` or
``struct.error`` (both raised for free by indexing / ``unpack_from``); the
public entry points catch exactly those two and turn them into a
:class:`RemoteProtocolError` that names what was being decoded. That keeps the
hot path free of explicit length checks except where slicing would silently
truncate (a slice past the end does not raise).
"""

from __future__ import annotations

import struct

from .errors import LocalProtocolError

U8 = struct.Struct(">B")
U16 = struct.Struct(">H")
I16 = struct.Struct(">h")
U32 = struct.Struct(">I")
U32X2 = struct.Struct(">II")
I32 = struct.Struct(">i")
I32X2 = struct.Struct(">ii")
I64 = struct.Struct(">q")
U64 = struct.Struct(">Q")
I64_U8 = struct.Struct(">qB")  # job: sched_at + ver
U64_U8 = struct.Struct(">QB")
U64_U16 = struct.Struct(">QH")  # SCHED_LATER: delay + step, encoded unsigned
I64_I16 = struct.Struct(">qh")  # SCHED_LATER decoded signed

U16_MAX = 0xFFFF
U32_MAX = 0xFFFF_FFFF
U64_MAX = 0xFFFF_FFFF_FFFF_FFFF
I16_MIN = -0x8000
I64_MIN = -0x8000_0000_0000_0000

#: ``LEN8[n]`` is the one-byte length prefix of a str8; indexing a tuple beats
#: ``struct.pack`` for the most frequent prefix on the wire.
LEN8: tuple[bytes, ...] = tuple(bytes((i,)) for i in range(256))

#: Errors a decoder raises when it runs off the end of its input.
SHORT = (IndexError, struct.error)


def str8(value: bytes, what: str) -> bytes:
    """Encode ``value`` as ``u8 len`` + bytes; over 255 bytes is our bug, not the peer's."""
    n = len(value)
    if n > 255:
        raise LocalProtocolError(f"{what} is {n} bytes long; a str8 holds at most 255")
    return LEN8[n] + value


def read_str8(buf: bytes | memoryview, pos: int) -> tuple[bytes, int]:
    """Decode a str8 at ``pos``; returns ``(value, offset after it)``.

    Raises IndexError when the input is short (see module docstring).
    """
    start = pos + 1
    end = start + buf[pos]
    if end > len(buf):
        raise IndexError("str8 runs past the end")
    return bytes(buf[start:end]), end


def check_i16(value: int, what: str) -> int:
    """Return ``value`` as the u16 the wire carries.

    The field is signed on the Haskell side, but aio_periodic packs it unsigned
    (``>H``), so both -32768..-1 and 32768..65535 are accepted; the former wrap.
    """
    if not I16_MIN <= value <= U16_MAX:
        raise LocalProtocolError(f"{what} {value} does not fit in 16 bits")
    return value & U16_MAX


def check_i64(value: int, what: str) -> int:
    """Return ``value`` as the u64 the wire carries (same idea as :func:`check_i16`)."""
    if not I64_MIN <= value <= U64_MAX:
        raise LocalProtocolError(f"{what} {value} does not fit in 64 bits")
    return value & U64_MAX


def check_u32(value: int, what: str) -> int:
    if not 0 <= value <= U32_MAX:
        raise LocalProtocolError(f"{what} {value} is outside 0..{U32_MAX}")
    return value
