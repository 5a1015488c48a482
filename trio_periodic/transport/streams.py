"""One byte-stream interface over every transport.

The connection handler only ever sees a ``FrameStream``: ``receive_some``
returns the next bytes (``b""`` at end of stream) and ``send`` writes a batch
of encoded frames.  Transport errors are mapped here, once, to
``ConnectionLost`` so that nothing above this layer knows about sockets or
WebSockets.
"""

from __future__ import annotations

import os
from typing import Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_periodic.transport.tls import describe

RECEIVE_SIZE = 256 * 1024


class ConnectionLost(Exception):
    """The peer went away or the transport broke."""


class FrameStream(Protocol):
    peer: str

    async def receive_some(self) -> bytes: ...

    async def send(self, frames: list[bytes]) -> None: ...

    def try_send(self, data: bytes) -> int:
        """Send without blocking or yielding; return how many bytes went out."""
        ...

    async def aclose(self) -> None: ...


class ByteFrameStream:
    """TCP and Unix sockets, plain or under TLS: frames are concatenated into one write."""

    def __init__(self, stream: trio.abc.Stream, peer: str, initial: bytes = b"") -> None:
        self._stream = stream
        self.peer = peer
        self._initial = initial
        # The try_send fast path writes to the socket directly, so only for a
        # bare socket: under TLS or the RSA transport (AES, RSA modes) the
        # bytes must go through the SSL object or the cipher (writing
        # plaintext to the socket would break the session), and try_send
        # returning 0 leaves every write to send().
        self._fd: int = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1

    async def receive_some(self) -> bytes:
        if self._initial:
            data, self._initial = self._initial, b""
            return data
        try:
            return bytes(await self._stream.receive_some(RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            # describe(): under TLS the reason (say, a refused client
            # certificate) is the ssl error trio wrapped.
            raise ConnectionLost(describe(exc)) from exc

    async def send(self, frames: list[bytes]) -> None:
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise ConnectionLost(describe(exc)) from exc

    def try_send(self, data: bytes) -> int:
        # The socket is non-blocking (trio made it so): write(2) takes what
        # fits in the kernel buffer and never waits.
        if self._fd < 0:
            return 0
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise ConnectionLost(exc.strerror or type(exc).__name__) from exc

    async def aclose(self) -> None:
        self._fd = -1
        await trio.aclose_forcefully(self._stream)


class WebSocketFrameStream:
    """WebSocket: one binary message per Periodic frame, in both directions."""

    def __init__(self, ws: WebSocketConnection, peer: str) -> None:
        self._ws = ws
        self.peer = peer

    async def receive_some(self) -> bytes:
        try:
            message = await self._ws.get_message()
        except ConnectionClosed:
            return b""
        return message.encode("latin-1") if isinstance(message, str) else bytes(message)

    async def send(self, frames: list[bytes]) -> None:
        try:
            for frame in frames:
                await self._ws.send_message(frame)
        except ConnectionClosed as exc:
            raise ConnectionLost("websocket closed") from exc

    def try_send(self, data: bytes) -> int:
        return 0  # a WebSocket message needs the writer task

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self._ws.aclose()
