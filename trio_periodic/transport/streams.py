"""One byte-stream interface over every transport.

The connection handler only ever sees a ``FrameStream``: ``receive_some``
returns the next bytes (``b""`` at end of stream) and ``send`` writes a batch
of encoded frames.  Transport errors are mapped here, once, to
``ConnectionLost`` so that nothing above this layer knows about sockets or
WebSockets.
"""

from __future__ import annotations

import os
import socket
from typing import Protocol

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from trio_periodic.transport.tls import describe

RECEIVE_SIZE = 256 * 1024
#: A reader that finds data waiting every time yields to other tasks once
#: per this many reads (fairness), and otherwise not at all.
YIELD_EVERY = 16
#: One receive buffer for every connection: a read copies out what it got
#: before anything else can run, so sharing it is safe and costs no memory
#: per connection.
_RECEIVE_BUFFER = bytearray(RECEIVE_SIZE)
_RECEIVE_VIEW = memoryview(_RECEIVE_BUFFER)
#: Linux only; elsewhere delayed ACKs stay as the kernel decides.
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


class ConnectionLost(Exception):
    """The peer went away or the transport broke."""


class FrameStream(Protocol):
    peer: str

    async def receive_some(self) -> bytes: ...

    async def send(self, frames: list[bytes]) -> None:
        """Write the frames in order; the list may be emptied while this runs."""
        ...

    def try_send(self, data: bytes) -> int:
        """Send without blocking or yielding; return how many bytes went out."""
        ...

    def ack_now(self) -> None:
        """Acknowledge what was received now, when no reply will carry the ACK."""
        ...

    async def aclose(self) -> None: ...


class ByteFrameStream:
    """TCP and Unix sockets, plain or under TLS: frames are concatenated into one write.

    On a bare socket, reads and eager writes call the non-blocking socket
    directly and enter trio's scheduler only when they must wait
    (``wait_readable``), or once every ``YIELD_EVERY`` reads for fairness.
    trio's own ``receive_some`` yields twice per read that had to wait (the
    wake-up, then a checkpoint after the read), which is a large share of a
    small job's cost.  Cancellation is still honoured at every read.
    """

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
        self._reads = 0
        #: The last read found nothing: wait for bytes before reading.
        self._wait_first = False
        # TCP (not Unix) sockets, under TLS too: the socket to send quick ACKs on.
        raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        self._tcp = (
            raw.socket
            if isinstance(raw, trio.SocketStream) and raw.socket.family != socket.AF_UNIX
            else None
        )

    async def receive_some(self) -> bytes:
        if self._initial:
            data, self._initial = self._initial, b""
            return data
        if self._fd >= 0:
            return await self._receive_direct()
        try:
            return bytes(await self._stream.receive_some(RECEIVE_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            # describe(): under TLS the reason (say, a refused client
            # certificate) is the ssl error trio wrapped.
            raise ConnectionLost(describe(exc)) from exc

    async def _receive_direct(self) -> bytes:
        self._reads += 1
        # A peer that answers each reply (a worker) has sent nothing yet when
        # we come back to read: after a read found nothing, wait first and
        # skip the read bound to fail.  Every YIELD_EVERY-th read reads first
        # (and yields) to notice a peer that pipelines again.
        probe = not self._reads % YIELD_EVERY
        wait = self._wait_first and not probe
        if probe:
            await trio.lowlevel.checkpoint()
        elif not wait:
            await trio.lowlevel.checkpoint_if_cancelled()
        waited = False
        while True:
            fd = self._fd
            if fd < 0:
                raise ConnectionLost("connection closed")
            if wait:
                try:
                    await trio.lowlevel.wait_readable(fd)  # a checkpoint too
                except trio.ClosedResourceError as exc:
                    raise ConnectionLost("connection closed") from exc
                waited = True
            try:
                n = os.readv(fd, [_RECEIVE_BUFFER])
            except BlockingIOError:
                wait = self._wait_first = True
                continue
            except OSError as exc:
                raise ConnectionLost(exc.strerror or type(exc).__name__) from exc
            if not waited:
                self._wait_first = False
            return bytes(_RECEIVE_VIEW[:n])

    async def send(self, frames: list[bytes]) -> None:
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        # The joined copy is what goes out: drop the pieces now, so that a
        # slow peer holds the queued bytes once, not twice, while this waits.
        frames.clear()
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

    def ack_now(self) -> None:
        # A request that gets no reply (JOB_ASSIGNED) would otherwise be
        # acknowledged by the kernel's delayed ACK, up to 40 ms later; a peer
        # with Nagle on holds its next small write until then (node-periodic
        # stalled at ~50-200 jobs/s).  TCP_QUICKACK sends the pending ACK now.
        if self._tcp is not None and _QUICKACK is not None:
            try:
                self._tcp.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass

    async def aclose(self) -> None:
        self._fd = -1
        self._tcp = None
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

    def ack_now(self) -> None:
        pass  # WebSocket frames are not small writes held by Nagle here

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self._ws.aclose()
