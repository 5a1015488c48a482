"""One registered connection to a Periodic server, shared by concurrent requests.

Theory of operation
-------------------
:meth:`Connection.open` connects, sends the registration frame and waits for
the server's reply, then starts three background tasks in a private nursery:

* the **reader** feeds received bytes to the sans-I/O
  :class:`~trio_periodic.protocol.ClientConnection` and routes every response
  by msgid to the :class:`Subscription` waiting on it (an unbounded trio
  memory channel, so the reader never blocks on a slow consumer).
  ``JOB_ASSIGN`` is special: it goes to the worker's synchronous
  *assign handler*, and the reader answers ``JOB_ASSIGNED`` (or
  ``JOB_UNASSIGNED`` when the handler declines) at once, before any other
  frame is read, so the server's ``assign-wait`` can never run out;
* the **writer** sends everything queued since its last write in one write
  (requests are queued synchronously, which is what lets the reader answer
  an assignment without awaiting);
* the **keepalive** sends PING when nothing went either way for
  ``ping_interval`` seconds and declares the connection lost when no PONG
  comes back within the request timeout.

A failure anywhere (EOF, transport error, a bad frame, no PONG) is recorded
once in :attr:`Connection.error`; every pending and later request raises it.
The background tasks never raise, so callers see plain exceptions, never
exception groups.  Leaving the ``async with`` block cancels the tasks and
closes the transport.

msgids are allocated sequentially per connection from 1, skipping the ones in
use and ``FF FF FF 00`` (aio_periodic's fire-and-forget id).
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Self

import trio

from trio_periodic.client.errors import (
    ConnectError,
    ConnectionLost,
    PeriodicError,
    RequestTimeout,
    UnexpectedReply,
)
from trio_periodic.client.errors import NoWorker as NoWorkerError
from trio_periodic.client.transport import open_frame_stream
from trio_periodic.protocol import (
    ClientConnection,
    JobAssign,
    JobAssigned,
    JobUnassigned,
    NoWorker,
    Packet,
    Ping,
    Pong,
    Registration,
    RegistrationReply,
    RemoteProtocolError,
    Response,
    Success,
)
from trio_periodic.protocol import Job as WireJob
from trio_periodic.protocol.constants import DEFAULT_MAX_FRAME_SIZE
from trio_periodic.transport.rsa.options import RsaOptions
from trio_periodic.transport.streams import ConnectionLost as TransportLost
from trio_periodic.transport.streams import FrameStream

__all__ = [
    "DEFAULT_TIMEOUT",
    "PING_INTERVAL",
    "AssignHandler",
    "Connection",
    "Subscription",
    "expect_success",
]

log = logging.getLogger(__name__)

#: Seconds to wait for a reply (and for connecting) unless told otherwise.
DEFAULT_TIMEOUT = 10.0
#: Seconds of silence after which the connection pings the server.
PING_INTERVAL = 10.0
#: ``send`` waits for the writer once this many bytes are queued.
HIGH_WATER = 4 * 1024 * 1024
_FIRE_AND_FORGET = 0xFFFFFF00
_MSGID_LIMIT = 0xFFFFFFFF

#: ``handler(msgid, job) -> accepted``; called by the reader for every JOB_ASSIGN.
AssignHandler = Callable[[int, WireJob], bool]


class Subscription:
    """The responses arriving on one or more msgids, in arrival order.

    Open one with :meth:`Connection.subscribe` (a context manager) or
    :meth:`Connection.open_subscription` (then call :meth:`close`).
    """

    __slots__ = ("_conn", "_recv", "_send", "msgid", "msgids")

    def __init__(self, conn: Connection, msgid: int) -> None:
        self._conn = conn
        #: The first msgid: where the request that opened it is sent.
        self.msgid = msgid
        self.msgids = [msgid]
        self._send, self._recv = trio.open_memory_channel[tuple[int, Packet]](math.inf)

    def add_msgid(self) -> int:
        """Route one more (fresh) msgid into this subscription and return it."""
        msgid = self._conn._new_msgid()
        self._conn._subs[msgid] = self
        self.msgids.append(msgid)
        return msgid

    async def receive(self, wait: float = math.inf) -> Packet:
        """The next packet (on any of the msgids).

        Raises :class:`RequestTimeout` after ``wait`` seconds and the
        connection's error (:class:`ConnectionLost`) if it breaks meanwhile.
        """
        return (await self.receive_tagged(wait))[1]

    async def receive_tagged(self, wait: float = math.inf) -> tuple[int, Packet]:
        """Like :meth:`receive`, with the msgid the packet came on."""
        with trio.move_on_after(wait):
            try:
                return await self._recv.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise self._conn.error or ConnectionLost("connection closed") from None
        raise RequestTimeout(f"no reply from the server within {wait:g} s")

    def close(self) -> None:
        """Stop routing these msgids here (replies arriving later are dropped)."""
        subs = self._conn._subs
        for msgid in self.msgids:
            if subs.get(msgid) is self:
                del subs[msgid]
        self._send.close()

    def _deliver(self, msgid: int, packet: Packet) -> None:
        try:
            self._send.send_nowait((msgid, packet))
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass


class Connection:
    """A registered connection.  Create it with :meth:`open`."""

    def __init__(
        self,
        stream: FrameStream,
        registration: Registration,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ping_interval: float = PING_INTERVAL,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    ) -> None:
        self._stream = stream
        self._proto = ClientConnection(registration, max_frame_size)
        #: Default seconds to wait for a reply.
        self.timeout = timeout
        self.ping_interval = ping_interval
        #: The first failure of this connection; None while it is healthy.
        self.error: ConnectionLost | None = None
        #: Called for every JOB_ASSIGN; None declines every assignment.
        self.assign_handler: AssignHandler | None = None
        self._subs: dict[int, Subscription] = {}
        self._reserved: set[int] = set()
        self._next_id = 0
        self._out: list[bytes] = []
        self._out_bytes = 0
        self._has_output = trio.Event()
        self._drained = trio.Event()
        self._closed = trio.Event()
        self._last_io = trio.current_time()

    # ------------------------------------------------------------- opening

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        url: str,
        registration: Registration,
        *,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
        ping_interval: float = PING_INTERVAL,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        ssl_context: ssl.SSLContext | None = None,
        rsa: RsaOptions | None = None,
    ) -> AsyncIterator[Self]:
        """Connect to ``url`` and register; :class:`ConnectError` if that fails.

        ``ssl_context`` is for ``tls://`` and ``wss://`` URLs (default: the
        system's CAs); ``rsa`` runs periodicd's RSA handshake on ``tcp://`` and
        ``unix://`` URLs (RsaKeyError for key files that cannot be used)."""
        error: Exception | None = None
        async with trio.open_nursery() as nursery:
            conn: Self | None = None
            try:
                conn = await cls._establish(
                    url,
                    registration,
                    nursery,
                    timeout,
                    ping_interval,
                    max_frame_size,
                    ssl_context,
                    rsa,
                )
                nursery.start_soon(conn._read_loop)
                nursery.start_soon(conn._write_loop)
                if ping_interval > 0:
                    nursery.start_soon(conn._keepalive)
                yield conn
            except Exception as exc:
                # Re-raised below, outside the nursery, so that callers get the
                # exception itself rather than an ExceptionGroup around it.
                error = exc
            finally:
                if conn is not None:
                    conn._fail(ConnectionLost("connection closed"))
                    # Close before cancelling the tasks: a WebSocket's closing
                    # handshake needs its reader task, which lives in this nursery.
                    with trio.CancelScope(shield=True):
                        await conn._stream.aclose()
                nursery.cancel_scope.cancel()
        if error is not None:
            raise error

    @classmethod
    async def _establish(
        cls,
        url: str,
        registration: Registration,
        nursery: trio.Nursery,
        timeout: float,  # noqa: ASYNC109 - see open()
        ping_interval: float,
        max_frame_size: int,
        ssl_context: ssl.SSLContext | None = None,
        rsa: RsaOptions | None = None,
    ) -> Self:
        stream: FrameStream | None = None
        try:
            with trio.fail_after(timeout):
                stream = await open_frame_stream(url, nursery, ssl_context, rsa)
                conn = cls(
                    stream,
                    registration,
                    timeout=timeout,
                    ping_interval=ping_interval,
                    max_frame_size=max_frame_size,
                )
                await stream.send([conn._proto.initiate()])
                while conn._proto.conn_id is None:
                    data = await stream.receive_some()
                    if not data:
                        raise ConnectError(f"{url} closed the connection during registration")
                    conn._proto.receive_data(data)
                    event = conn._proto.next_event()
                    if event is not None and not isinstance(event, RegistrationReply):
                        raise ConnectError(f"{url} sent {event!r} instead of a registration reply")
                # Frames right behind the reply stay buffered in the protocol
                # object; the reader decodes them before its first receive.
                return conn
        except trio.TooSlowError:
            error = ConnectError(f"timed out connecting to {url} after {timeout:g} s")
        except TransportLost as exc:
            error = ConnectError(f"connection to {url} lost during registration: {exc}")
        except RemoteProtocolError as exc:
            error = ConnectError(f"{url} does not speak the Periodic protocol: {exc}")
        except BaseException:
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()
            raise
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
        raise error

    # --------------------------------------------------------------- state

    @property
    def conn_id(self) -> int:
        """The id the server gave this connection (no protocol meaning)."""
        assert self._proto.conn_id is not None
        return self._proto.conn_id

    @property
    def closed(self) -> bool:
        return self.error is not None

    async def wait_closed(self) -> None:
        """Return once the connection has failed or been closed."""
        await self._closed.wait()

    def abort(self, error: ConnectionLost) -> None:
        """Mark the connection as failed: pending and later requests raise ``error``."""
        self._fail(error)

    def _fail(self, error: ConnectionLost) -> None:
        if self.error is not None:
            return
        self.error = error
        subs, self._subs = self._subs, {}
        for sub in set(subs.values()):
            sub._send.close()
        self._closed.set()
        self._drained.set()
        self._has_output.set()

    # -------------------------------------------------------------- msgids

    def _new_msgid(self) -> int:
        for _ in range(len(self._subs) + len(self._reserved) + 2):
            self._next_id = self._next_id % _MSGID_LIMIT + 1
            msgid = self._next_id
            if msgid in self._subs or msgid in self._reserved or msgid == _FIRE_AND_FORGET:
                continue
            return msgid
        raise RuntimeError("no free msgid")  # pragma: no cover - 4 billion in flight

    def reserve_msgid(self) -> int:
        """A msgid that plain requests will not use (a worker's grab slot)."""
        msgid = self._new_msgid()
        self._reserved.add(msgid)
        return msgid

    def open_subscription(self, msgid: int | None = None) -> Subscription:
        """Start receiving the responses on ``msgid`` (a fresh one if None)."""
        if self.error is not None:
            raise self.error
        if msgid is None:
            msgid = self._new_msgid()
        elif msgid in self._subs:
            raise RuntimeError(f"msgid {msgid} already has a subscriber")
        sub = Subscription(self, msgid)
        self._subs[msgid] = sub
        return sub

    @contextmanager
    def subscribe(self, msgid: int | None = None) -> Iterator[Subscription]:
        """:meth:`open_subscription` for the duration of a ``with`` block."""
        sub = self.open_subscription(msgid)
        try:
            yield sub
        finally:
            sub.close()

    # ------------------------------------------------------------- sending

    def send_nowait(self, msgid: int, packet: Packet) -> None:
        """Queue ``packet`` for the writer (raises the connection's error if it failed)."""
        if self.error is not None:
            raise self.error
        frame = self._proto.send(msgid, packet)
        self._out.append(frame)
        self._out_bytes += len(frame)
        self._has_output.set()

    async def send(self, msgid: int, packet: Packet) -> None:
        """Queue ``packet``; wait for the writer while much is queued."""
        self.send_nowait(msgid, packet)
        while self._out_bytes > HIGH_WATER and self.error is None:
            await self._drained.wait()
        if self.error is not None:
            raise self.error
        await trio.lowlevel.checkpoint()

    async def notify(self, packet: Packet) -> None:
        """Send ``packet`` on a fresh msgid and expect no reply (SHUTDOWN)."""
        await self.send(self._new_msgid(), packet)

    async def request(
        self, packet: Packet, *, msgid: int | None = None, wait: float | None = None
    ) -> Packet:
        """Send ``packet`` and return the first response on its msgid.

        Waits at most ``wait`` seconds (default: the connection's ``timeout``).
        """
        with self.subscribe(msgid) as sub:
            await self.send(sub.msgid, packet)
            return await sub.receive(self.timeout if wait is None else wait)

    async def ping(self) -> float:
        """PING the server; return the round-trip time in seconds."""
        start = trio.current_time()
        reply = await self.request(Ping())
        if not isinstance(reply, Pong):
            raise UnexpectedReply(f"PING answered with {type(reply).__name__}")
        return trio.current_time() - start

    # ---------------------------------------------------------- background

    async def _read_loop(self) -> None:
        proto = self._proto
        try:
            while True:
                while (event := proto.next_event()) is not None:
                    if isinstance(event, Response):
                        self._dispatch(event.msgid, event.packet)
                data = await self._stream.receive_some()
                if not data:
                    self._fail(ConnectionLost(f"{self._stream.peer} closed the connection"))
                    return
                self._last_io = trio.current_time()
                proto.receive_data(data)
        except TransportLost as exc:
            self._fail(ConnectionLost(f"connection to {self._stream.peer} lost: {exc}"))
        except RemoteProtocolError as exc:
            log.warning("bad data from %s: %s", self._stream.peer, exc)
            self._fail(ConnectionLost(f"bad data from {self._stream.peer}: {exc}"))

    def _dispatch(self, msgid: int, packet: Packet) -> None:
        if type(packet) is JobAssign:
            handler = self.assign_handler
            accepted = handler is not None and handler(msgid, packet.job)
            if self.error is None:
                self.send_nowait(msgid, JobAssigned() if accepted else JobUnassigned())
            return
        sub = self._subs.get(msgid)
        if sub is None:
            log.debug("reply %s for msgid %d that nobody waits for", type(packet).__name__, msgid)
            return
        sub._deliver(msgid, packet)

    async def _write_loop(self) -> None:
        try:
            while self.error is None:
                await self._has_output.wait()
                self._has_output = trio.Event()
                if self.error is not None:
                    return
                frames, self._out = self._out, []
                self._out_bytes = 0
                if frames:
                    await self._stream.send(frames)
                    self._last_io = trio.current_time()
                drained, self._drained = self._drained, trio.Event()
                drained.set()
        except TransportLost as exc:
            self._fail(ConnectionLost(f"connection to {self._stream.peer} lost: {exc}"))

    async def _keepalive(self) -> None:
        interval = self.ping_interval
        while self.error is None:
            due = self._last_io + interval
            if trio.current_time() < due:
                await trio.sleep_until(due)
                continue
            try:
                await self.ping()
            except RequestTimeout:
                peer = self._stream.peer
                self._fail(ConnectionLost(f"no PONG from {peer} in {self.timeout:g} s"))
            except ConnectionLost:
                return
            except PeriodicError as exc:
                self._fail(ConnectionLost(f"keepalive failed: {exc}"))


def expect_success(reply: Packet, what: str) -> None:
    """Raise unless ``reply`` is SUCCESS: :class:`NoWorker` for NO_WORKER."""
    if isinstance(reply, Success):
        return
    if isinstance(reply, NoWorker):
        raise NoWorkerError(f"the server refused {what} (NO_WORKER)")
    raise UnexpectedReply(f"the server answered {what} with {type(reply).__name__}")
