"""FrameReader: cut a byte stream into CRC-checked frame bodies.

Theory of operation
-------------------
Bytes arrive in arbitrary pieces through :meth:`FrameReader.feed`; each call of
:meth:`FrameReader.next_body` returns the body of the next complete frame (the
``L`` bytes after the CRC field) or ``None`` when more bytes are needed.
Nothing is consumed until a whole frame is present, so a half-arrived header
simply waits (the "rollback" of wsproto's buffer comes for free).

The unread bytes live in ``_buf[_pos:]``. Frames are consumed by moving
``_pos`` forward, never by deleting from the front, and the buffer is only
rebuilt in :meth:`feed`:

* nothing left over → the new chunk becomes the buffer as-is (no copy);
* a small left-over (at most the size of the new chunk, i.e. the usual tail of
  a partly received frame) → ``leftover + chunk`` as one new ``bytes``;
* a large left-over (a big frame trickling in) → switch to a ``bytearray``,
  drop the consumed prefix once and append in place, so receiving an ``L``-byte
  frame in small pieces costs O(L), not O(L²).

Holding ``bytes`` in the common case means a body is cut out with a single copy
(a ``bytes`` slice).

Framing rules (PROTOCOL.md §5.2, §14):

* ``resync=True`` (the server side) skips garbage until ``\\0REQ`` or ``\\0RES``,
  like periodicd's byte-wise sliding window, but searches with ``bytes.find``.
  More than :data:`MAX_GARBAGE` skipped bytes without a frame is an error.
* ``resync=False`` (the client side, like aio_periodic): anything but a magic is
  an error.
* A length over ``max_frame_size`` is rejected as soon as the length field is
  readable, before the body is buffered; a length of 0 cannot hold a body.
* A CRC mismatch is an error.

Every error is a :class:`RemoteProtocolError` and is sticky: the stream position
is lost, so all later calls raise again.
"""

from __future__ import annotations

import struct
import zlib
from typing import NoReturn

from .constants import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE, MAGIC_REQ, MAGIC_RES, MAX_GARBAGE
from .errors import LocalProtocolError, RemoteProtocolError

__all__ = ["FrameReader"]

_HEADER = struct.Struct(">III")  # magic as an int, L, crc
_U32 = struct.Struct(">I")
_REQ = int.from_bytes(MAGIC_REQ, "big")
_RES = int.from_bytes(MAGIC_RES, "big")
_MAGIC_PREFIX = MAGIC_REQ[:3]  # b"\0RE"; both magics share it
_MAGIC_LAST = (MAGIC_REQ[3], MAGIC_RES[3])
_crc32 = zlib.crc32


class FrameReader:
    """Incremental frame splitter; see the module docstring."""

    __slots__ = ("_buf", "_failure", "_max", "_pos", "_resync", "_skipped")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, resync: bool = True) -> None:
        if max_frame_size < 1:
            raise LocalProtocolError(f"max_frame_size must be >= 1, not {max_frame_size}")
        self._max = max_frame_size
        self._resync = resync
        self._buf: bytes | bytearray = b""
        self._pos = 0
        #: Garbage bytes skipped since the last magic (resync mode).
        self._skipped = 0
        #: Why the stream failed: the message only (see ``_fail``).
        self._failure: str | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as part of a frame."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append received bytes. Cheap: at most one copy of the new data."""
        if self._failure is not None:
            raise RemoteProtocolError(f"stream already failed: {self._failure}")
        if not data:
            return
        buf = self._buf
        pos = self._pos
        left = len(buf) - pos
        if left == 0:
            # bytes(data) is the same object when data is already bytes; other
            # buffer types are copied because the caller may reuse them.
            self._buf = bytes(data)
        elif left <= len(data):
            self._buf = bytes(buf[pos:]) + data
        else:
            if isinstance(buf, bytearray):
                if pos:
                    del buf[:pos]
                buf += data
                self._buf = buf
            else:
                grown = bytearray(memoryview(buf)[pos:])
                grown += data
                self._buf = grown
        self._pos = 0

    def next_body(self) -> bytes | None:
        """Return the next frame's body (CRC verified), or None if more data is needed."""
        if self._failure is not None:
            raise RemoteProtocolError(f"stream already failed: {self._failure}")
        buf = self._buf
        pos = self._pos
        n = len(buf)
        while True:
            avail = n - pos
            if avail >= HEADER_SIZE:
                magic, length, crc = _HEADER.unpack_from(buf, pos)
                if magic in (_REQ, _RES):
                    if length > self._max or length < 1:
                        self._bad_length(length)
                    start = pos + HEADER_SIZE
                    end = start + length
                    if end > n:
                        break
                    if type(buf) is bytes:
                        body = buf[start:end]
                    else:
                        with memoryview(buf) as view:
                            body = bytes(view[start:end])
                    if _crc32(body) != crc:
                        self._fail(f"bad CRC: expected 0x{crc:08x}, got 0x{_crc32(body):08x}")
                    self._pos = end
                    if self._skipped:
                        self._skipped = 0
                    return body
            elif avail >= 4:
                (magic,) = _U32.unpack_from(buf, pos)
                if magic in (_REQ, _RES):
                    if avail >= 8:
                        # Refuse a huge length now, before the body is buffered.
                        (length,) = _U32.unpack_from(buf, pos + 4)
                        if length > self._max or length < 1:
                            self._bad_length(length)
                    break
            else:
                break
            # Not a magic at pos.
            if not self._resync:
                self._fail(f"bad magic {bytes(buf[pos : pos + 4])!r}")
            pos = self._skip_garbage(buf, pos)
        self._pos = pos
        return None

    def _skip_garbage(self, buf: bytes | bytearray, pos: int) -> int:
        """Return the offset of the next possible magic after ``pos``.

        If none is in the buffer, keep the last three bytes: they may be the
        start of a magic whose remainder has not arrived yet.
        """
        n = len(buf)
        start = pos + 1
        while True:
            found = buf.find(_MAGIC_PREFIX, start)
            if found < 0:
                new = max(start, n - 3)
                break
            if found + 3 >= n or buf[found + 3] in _MAGIC_LAST:
                new = found
                break
            start = found + 1
        self._skipped += new - pos
        if self._skipped > MAX_GARBAGE:
            self._fail(f"no frame magic found in {self._skipped} bytes")
        return new

    def _bad_length(self, length: int) -> NoReturn:
        if length < 1:
            self._fail(f"frame length {length} is too small")
        self._fail(f"frame length {length} exceeds limit {self._max}")

    def _fail(self, message: str) -> NoReturn:
        # Keep the message, not the exception: its traceback would hold this
        # reader (and its caller's frames) in a reference cycle.
        self._failure = message
        # The buffer can be big and is useless now.
        self._buf = b""
        self._pos = 0
        raise RemoteProtocolError(message)
