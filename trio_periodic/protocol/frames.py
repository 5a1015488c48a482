"""Frame codec: magic, length, CRC-32, msgid, command (PROTOCOL.md §4, §5).

A packet frame is::

    magic[4]  u32 L  u32 crc32(body)  body[L]      body = u32 msgid + u8 cmd + payload

The registration frame and its reply have the same envelope but no msgid: the
registration body is the client type (+ identity), the reply body is
``0x1E`` + a u32 connection id. These functions build and parse whole frames
(encode) or bodies already cut out and CRC-checked by
:class:`~trio_periodic.protocol.reader.FrameReader` (decode).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from . import _wire as w
from .constants import MAGIC_REQ, MAGIC_RES, ClientType, Cmd
from .errors import LocalProtocolError, RemoteProtocolError
from .packets import EMPTY_PACKETS, Packet, decode_at, encode_payload

__all__ = [
    "Registration",
    "decode_body",
    "decode_registration",
    "decode_registration_reply",
    "decode_request",
    "encode_frame",
    "encode_raw_frame",
    "encode_registration",
    "encode_registration_reply",
]

_HEADER = struct.Struct(">4sII")  # magic, L, crc
_MSGID_CMD = struct.Struct(">IB")
_REPLY_BODY = struct.Struct(">BI")  # 0x1E, connection id
_MAGICS = (MAGIC_REQ, MAGIC_RES)
_crc32 = zlib.crc32


def encode_raw_frame(msgid: int, cmd: int, payload: bytes = b"", magic: bytes = MAGIC_RES) -> bytes:
    """Build a frame from an already encoded payload (the server's reply fast path)."""
    if magic not in _MAGICS:
        raise LocalProtocolError(f"bad magic {magic!r}")
    try:
        head = _MSGID_CMD.pack(msgid, cmd)
        # crc32(head + payload) without building the concatenation first.
        crc = _crc32(payload, _crc32(head))
        return _HEADER.pack(magic, 5 + len(payload), crc) + head + payload
    except struct.error:
        raise LocalProtocolError(
            f"msgid {msgid}, command {cmd} or payload length {len(payload)} out of range"
        ) from None


def encode_frame(msgid: int, packet: Packet, magic: bytes = MAGIC_RES) -> bytes:
    """Encode ``packet`` as a complete frame carrying ``msgid``."""
    return encode_raw_frame(msgid, packet.cmd, encode_payload(packet), magic)


def decode_body(body: bytes | memoryview) -> tuple[int, Packet]:
    """Split a CRC-checked frame body into ``(msgid, packet)``."""
    msgid, _, packet = decode_request(body)
    return msgid, packet


_N_CMDS = len(EMPTY_PACKETS)


def decode_request(body: bytes | memoryview) -> tuple[int, int, Packet]:
    """:func:`decode_body` plus the command code: ``(msgid, cmd, packet)``.

    The server's hot path: a request without payload (GRAB_JOB,
    JOB_ASSIGNED, PING...) is its shared packet, with no decoder call."""
    try:
        msgid, cmd = _MSGID_CMD.unpack_from(body, 0)
    except struct.error:
        raise RemoteProtocolError(
            f"frame body of {len(body)} bytes is shorter than msgid + command"
        ) from None
    if len(body) == 5 and cmd < _N_CMDS:
        packet = EMPTY_PACKETS[cmd]
        if packet is not None:
            return msgid, cmd, packet
    return msgid, cmd, decode_at(cmd, body, 5)


# --- registration ----------------------------------------------------------------------


@dataclass(slots=True)
class Registration:
    """The first frame a peer sends: its role and, for types 3/4, an identity."""

    type: ClientType
    #: Identity name and token; present exactly for AUTH_CLIENT / AUTH_WORKER.
    name: bytes | None = None
    token: bytes | None = None

    @property
    def is_worker(self) -> bool:
        return self.type == ClientType.WORKER or self.type == ClientType.AUTH_WORKER


def _envelope(magic: bytes, body: bytes) -> bytes:
    return _HEADER.pack(magic, len(body), _crc32(body)) + body


def encode_registration(reg: Registration, magic: bytes = MAGIC_REQ) -> bytes:
    """Build the registration frame (no msgid)."""
    if magic not in _MAGICS:
        raise LocalProtocolError(f"bad magic {magic!r}")
    try:
        kind = ClientType(reg.type)
    except ValueError:
        raise LocalProtocolError(f"unknown client type {reg.type!r}") from None
    if kind in (ClientType.CLIENT, ClientType.WORKER):
        if reg.name is not None or reg.token is not None:
            raise LocalProtocolError(f"{kind.name} registration carries no identity")
        body = w.LEN8[kind]
    else:
        if reg.name is None or reg.token is None:
            raise LocalProtocolError(f"{kind.name} registration needs a name and a token")
        body = b"".join(
            (w.LEN8[kind], w.U64.pack(len(reg.name)), reg.name, w.U64.pack(len(reg.token)),
             reg.token)
        )  # fmt: skip
    return _envelope(magic, body)


def _read_bstr64(body: bytes | memoryview, pos: int) -> tuple[bytes, int]:
    (n,) = w.U64.unpack_from(body, pos)
    start = pos + 8
    end = start + n
    if end > len(body):
        raise RemoteProtocolError(f"identity string of {n} bytes runs past the registration")
    return bytes(body[start:end]), end


def decode_registration(body: bytes | memoryview) -> Registration:
    """Parse a registration body; it must be consumed exactly (PROTOCOL.md §4.1)."""
    if not body:
        raise RemoteProtocolError("empty registration body")
    kind = body[0]
    if kind == 1 or kind == 2:
        if len(body) != 1:
            raise RemoteProtocolError(
                f"{len(body) - 1} trailing bytes after registration type {kind}"
            )
        return Registration(ClientType(kind))
    if kind == 3 or kind == 4:
        try:
            name, pos = _read_bstr64(body, 1)
            token, pos = _read_bstr64(body, pos)
        except struct.error:
            raise RemoteProtocolError(
                f"truncated registration identity ({len(body)} bytes)"
            ) from None
        if pos != len(body):
            raise RemoteProtocolError(f"{len(body) - pos} trailing bytes after registration")
        return Registration(ClientType(kind), name, token)
    raise RemoteProtocolError(f"unknown client type {kind}")


def encode_registration_reply(conn_id: int) -> bytes:
    """The server's answer to a registration: ``0x1E`` + u32 connection id, no msgid."""
    try:
        body = _REPLY_BODY.pack(Cmd.DATA, conn_id)
    except struct.error:
        raise LocalProtocolError(f"connection id {conn_id} does not fit in 32 bits") from None
    return _envelope(MAGIC_RES, body)


def decode_registration_reply(body: bytes | memoryview) -> int:
    """Return the connection id from a registration reply body."""
    if len(body) != 5 or body[0] != Cmd.DATA:
        raise RemoteProtocolError(f"bad registration reply {bytes(body[:16]).hex()}")
    (conn_id,) = w.U32.unpack_from(body, 1)
    return int(conn_id)
