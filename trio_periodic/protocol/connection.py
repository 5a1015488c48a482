"""Connection state machines for both ends of a Periodic stream (h11 style).

Theory of operation
-------------------
A connection object owns no socket. The I/O layer hands it received bytes with
``receive_data``, collects decoded events with ``next_events``, and writes the
bytes returned by ``send`` / ``accept`` / ``initiate``. Each side has two
states, driven by the first frame (PROTOCOL.md §2, §4):

``ServerConnection``
    *awaiting registration*: the first complete frame is decoded as a
    registration body → :class:`Registered` and ``registration`` is set.
    *registered*: every later frame is ``msgid + cmd + payload`` →
    :class:`Request`. The server answers the registration with
    :meth:`~ServerConnection.accept` and may :meth:`~ServerConnection.send`
    only after that. Incoming frames are resynchronised on a magic, as
    periodicd does.

``ClientConnection``
    :meth:`~ClientConnection.initiate` produces the registration frame and
    must come first. The first frame received is the registration reply →
    :class:`RegistrationReply`; later frames → :class:`Response`. No resync:
    a server never sends garbage, so anything but a magic is an error.

Any :class:`RemoteProtocolError` (bad framing, CRC, registration or payload)
kills the connection: the exception propagates out of ``next_events`` and
every later ``receive_data`` / ``next_events`` raises again. The I/O layer
should close the stream without sending anything (PROTOCOL.md §14). Events
decoded in the same ``next_events`` call before the bad frame are dropped with
the exception; a caller that wants to act on each good frame before the bad one
is seen (as periodicd does) can pull events one at a time with ``next_event``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .constants import DEFAULT_MAX_FRAME_SIZE, MAGIC_REQ, MAGIC_RES
from .errors import LocalProtocolError, RemoteProtocolError
from .frames import (
    Registration,
    decode_body,
    decode_registration,
    decode_registration_reply,
    decode_request,
    encode_frame,
    encode_registration,
    encode_registration_reply,
)
from .packets import Packet
from .reader import FrameReader

__all__ = [
    "ClientConnection",
    "Registered",
    "RegistrationReply",
    "Request",
    "Response",
    "ServerConnection",
]


@dataclass(slots=True)
class Registered:
    """The peer registered (server side)."""

    registration: Registration


@dataclass(slots=True)
class Request:
    """A packet from a registered peer (server side)."""

    msgid: int
    packet: Packet


@dataclass(slots=True)
class RegistrationReply:
    """The server accepted our registration (client side)."""

    conn_id: int


@dataclass(slots=True)
class Response:
    """A packet from the server (client side); pushed packets reuse a request's msgid."""

    msgid: int
    packet: Packet


class _Dead:
    """Sticky failure shared by both connection kinds.

    Only the message is kept, never the exception: once raised, an exception
    carries a traceback whose frames hold this object, and that reference
    cycle would keep the connection (and whatever its caller's frames hold,
    such as the last chunk received) alive until a full garbage collection.
    """

    __slots__ = ("_failure",)

    def __init__(self) -> None:
        self._failure: str | None = None

    def _check_alive(self) -> None:
        if self._failure is not None:
            raise RemoteProtocolError(f"connection already failed: {self._failure}")


class ServerConnection(_Dead):
    """The server's view of one peer. See the module docstring."""

    __slots__ = ("_accepted", "_reader", "registration")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__()
        self._reader = FrameReader(max_frame_size, resync=True)
        #: The peer's registration; None until its first frame was decoded.
        self.registration: Registration | None = None
        self._accepted = False

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the peer."""
        self._check_alive()
        self._reader.feed(data)

    def next_event(self) -> Registered | Request | None:
        """Decode one buffered frame; None if no complete frame is buffered."""
        event = self.next_request()
        if event is None or isinstance(event, Registered):
            return event
        msgid, _, packet = event
        return Request(msgid, packet)

    def next_request(self) -> Registered | tuple[int, int, Packet] | None:
        """:meth:`next_event` for the server's hot loop: a request comes as a
        plain ``(msgid, cmd, packet)`` tuple instead of a :class:`Request`."""
        self._check_alive()
        try:
            body = self._reader.next_body()
            if body is None:
                return None
            if self.registration is None:
                self.registration = decode_registration(body)
                return Registered(self.registration)
            return decode_request(body)
        except RemoteProtocolError as exc:
            self._failure = str(exc)
            raise

    def next_events(self) -> list[Registered | Request]:
        """Decode every complete frame buffered so far."""
        self._check_alive()
        events: list[Registered | Request] = []
        reader = self._reader
        try:
            if self.registration is None:
                body = reader.next_body()
                if body is None:
                    return events
                self.registration = decode_registration(body)
                events.append(Registered(self.registration))
            # The hot loop: inlined next_event without the per-frame checks.
            while (body := reader.next_body()) is not None:
                msgid, packet = decode_body(body)
                events.append(Request(msgid, packet))
        except RemoteProtocolError as exc:
            self._failure = str(exc)
            raise
        return events

    def accept(self, conn_id: int) -> bytes:
        """The registration reply carrying ``conn_id`` (a random u32)."""
        if self.registration is None:
            raise LocalProtocolError("cannot accept before the peer registered")
        if self._accepted:
            raise LocalProtocolError("registration already accepted")
        reply = encode_registration_reply(conn_id)
        self._accepted = True
        return reply

    def send(self, msgid: int, packet: Packet) -> bytes:
        """Encode ``packet`` as a server frame (``\\0RES``) on ``msgid``."""
        if not self._accepted:
            raise LocalProtocolError("cannot send before accept()")
        return encode_frame(msgid, packet, MAGIC_RES)


class ClientConnection(_Dead):
    """A client's or worker's view of its server connection."""

    __slots__ = ("_initiated", "_reader", "conn_id", "registration")

    def __init__(
        self, registration: Registration, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    ) -> None:
        super().__init__()
        self.registration = registration
        self._reader = FrameReader(max_frame_size, resync=False)
        self._initiated = False
        #: The id from the server's registration reply; None until it arrived.
        self.conn_id: int | None = None

    def initiate(self) -> bytes:
        """The registration frame; the first thing to write on a new stream."""
        if self._initiated:
            raise LocalProtocolError("registration already sent")
        frame = encode_registration(self.registration, MAGIC_REQ)
        self._initiated = True
        return frame

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the server."""
        self._check_alive()
        self._reader.feed(data)

    def next_event(self) -> RegistrationReply | Response | None:
        """Decode one buffered frame; None if no complete frame is buffered."""
        self._check_alive()
        try:
            body = self._reader.next_body()
            if body is None:
                return None
            if self.conn_id is None:
                if not self._initiated:
                    raise RemoteProtocolError("server sent data before we registered")
                self.conn_id = decode_registration_reply(body)
                return RegistrationReply(self.conn_id)
            msgid, packet = decode_body(body)
        except RemoteProtocolError as exc:
            self._failure = str(exc)
            raise
        return Response(msgid, packet)

    def next_events(self) -> list[RegistrationReply | Response]:
        """Decode every complete frame buffered so far."""
        events: list[RegistrationReply | Response] = []
        while (event := self.next_event()) is not None:
            events.append(event)
        return events

    def send(self, msgid: int, packet: Packet) -> bytes:
        """Encode ``packet`` as a request frame (``\\0REQ``) on ``msgid``."""
        if not self._initiated:
            raise LocalProtocolError("cannot send before initiate()")
        return encode_frame(msgid, packet, MAGIC_REQ)
