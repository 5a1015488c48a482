"""Stateful fuzzing of the sans-I/O connection state machines (hypothesis).

A ``RuleBasedStateMachine`` builds a byte stream out of *segments*: good
frames, benign garbage, and *poison* (a bad CRC, an oversized or zero length
field, an undecodable body, too much garbage).  The stream is fed to a
``ServerConnection`` / ``ClientConnection`` in random chunk sizes (sometimes as
a ``bytearray`` that is scribbled over right after), and events are pulled one
at a time or in batches.  A model knows, for every prefix of the stream, which
events must have come out and whether an error must (or must not) have been
raised by then.

Invariants, checked after every pull:

* the events out are exactly the events of the good frames fed so far, in
  order, up to the first poison;
* the first poison raises ``RemoteProtocolError`` as soon as its trigger
  bytes are in, and never earlier; no other exception type ever escapes;
* once failed, ``receive_data``, ``next_event`` and ``next_events`` all raise
  ``RemoteProtocolError`` again, and the buffer does not grow;
* after a full drain at most one partial frame is buffered (header + limit).

*Hostile* garbage (arbitrary bytes, which may fake a magic and a length)
makes what follows it unpredictable: from there on only the event types and
the error contract are checked.  Once a poison or hostile garbage is in the
stream the model stops predicting, but rules keep appending bytes, so the
"stays failed" and "no other exception" checks still see traffic.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule
from test_protocol_codec import packets

from trio_periodic.protocol import (
    HEADER_SIZE,
    MAGIC_REQ,
    MAGIC_RES,
    MAX_GARBAGE,
    CanDo,
    ClientConnection,
    ClientType,
    ConfigSet,
    Data,
    Job,
    Registered,
    Registration,
    RegistrationReply,
    RemoteProtocolError,
    RemoveJob,
    Request,
    Response,
    SchedLater,
    ServerConnection,
    SubmitJob,
    WorkFail,
    encode_frame,
    encode_payload,
    encode_registration,
    encode_registration_reply,
)
from trio_periodic.protocol.packets import Packet

#: max_frame_size of the connections under test (bytes); small, so that the
#: limit itself is exercised cheaply.
LIMIT = 2048

STATEFUL = settings(
    max_examples=250,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    # No "explain" phase: it replays a failure hundreds of times for little.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)

magics = st.sampled_from([MAGIC_REQ, MAGIC_RES])
msgids = st.integers(0, 2**32 - 1)
name8 = st.binary(max_size=40)
#: Garbage a resynchronising reader must skip silently: with no zero byte it
#: cannot contain (or start) a magic, whatever follows it.
benign = st.binary(min_size=1, max_size=120).map(lambda b: b.replace(b"\x00", b"\x01"))
#: Frames on the server side often come after some benign garbage.
maybe_benign = st.one_of(st.just(b""), benign)
registrations = st.one_of(
    st.sampled_from([Registration(ClientType.CLIENT), Registration(ClientType.WORKER)]),
    st.builds(
        Registration, st.sampled_from([ClientType.AUTH_CLIENT, ClientType.AUTH_WORKER]), name8,
        name8,
    ),
)  # fmt: skip

#: Packets with no "rest of the frame" field: dropping their last payload byte
#: always leaves a truncated field (a shorter WORK_DONE would still decode).
_fixed = st.one_of(
    st.builds(CanDo, name8),
    st.builds(WorkFail, name8, name8),
    st.builds(RemoveJob, name8, name8),
    st.builds(SchedLater, name8, name8, st.integers(-(2**63), 2**63 - 1),
              st.integers(-(2**15), 2**15 - 1)),
    st.builds(ConfigSet, name8, st.integers(0, 2**32 - 1)),
    st.builds(SubmitJob, st.builds(Job, name8, name8, st.binary(max_size=40),
                                   st.integers(0, 2**40), st.integers(0, 9), st.integers(0, 9))),
)  # fmt: skip


def _packet_body(msgid: int, cmd: int, payload: bytes) -> bytes:
    return struct.pack(">IB", msgid, cmd) + payload


#: Frame bodies that a registered peer's decoder must reject.
bad_bodies = st.one_of(
    st.binary(min_size=1, max_size=4),  # shorter than msgid + command
    st.builds(  # no such command (64 is EXTENSION)
        _packet_body, msgids, st.integers(35, 255).filter(lambda c: c != 64),
        st.binary(max_size=20),
    ),
    st.builds(  # PING, NOOP, GRAB_JOB... carry no payload
        _packet_body, msgids, st.sampled_from([0, 1, 6, 9, 10, 11, 12, 14, 16, 18, 20, 29]),
        st.binary(min_size=1, max_size=20),
    ),
    st.builds(lambda m, p: _packet_body(m, p.cmd, encode_payload(p)[:-1]), msgids, _fixed),
)  # fmt: skip

#: First frames a server must refuse as a registration.
bad_registrations = st.one_of(
    st.sampled_from([b"\x00", b"\x05", b"\x01\x00", b"\x02\x02", b"\x03\x00", b"\x04"]),
    st.builds(lambda t, rest: bytes([t]) + rest, st.integers(5, 255), st.binary(max_size=10)),
    st.builds(
        lambda reg, extra: encode_registration(reg)[HEADER_SIZE:] + extra,
        registrations, st.binary(min_size=1, max_size=5),
    ),
)  # fmt: skip


def envelope(body: bytes, magic: bytes = MAGIC_REQ) -> bytes:
    """A frame with a correct length and CRC around any body."""
    return magic + struct.pack(">II", len(body), zlib.crc32(body)) + body


@dataclass
class Poison:
    """The first bad segment: the error may not come before ``earliest`` bytes
    were fed, and must have come once ``latest`` bytes were fed and pulled."""

    what: str
    earliest: int
    latest: int


class StreamMachine(RuleBasedStateMachine):
    """The model and the rules shared by both ends; subclasses add the frames."""

    conn: Any  # ServerConnection | ClientConnection

    def __init__(self) -> None:
        super().__init__()
        self.stream = bytearray()
        self.fed = 0
        #: Where every segment starts: feeds that stop near these split headers.
        self.starts: list[int] = []
        #: (end offset, event) of every good frame before the first poison/taint.
        self.expected: list[tuple[int, object]] = []
        self.got: list[object] = []
        self.poison: Poison | None = None
        #: Offset of the first hostile garbage byte.
        self.taint: int | None = None
        self.failed = False
        #: Bytes of benign garbage since the last frame (the reader's skip count).
        self.garbage_run = 0

    # ---------------------------------------------------------------- model

    @property
    def predicting(self) -> bool:
        return self.poison is None and self.taint is None

    def add_frame(self, frame: bytes, event: object) -> None:
        """A well-formed frame whose decoded event is ``event``."""
        start = len(self.stream)
        self.starts.append(start)
        self.stream += frame
        if not self.predicting:
            return
        length = len(frame) - HEADER_SIZE
        if length > LIMIT:
            self.poison = Poison("oversized good frame", start + 8, start + 8)
            return
        self.expected.append((len(self.stream), event))
        self.garbage_run = 0

    def add_poison(self, data: bytes, what: str, earliest: int, latest: int) -> None:
        """``earliest`` / ``latest`` are offsets relative to the segment's start."""
        start = len(self.stream)
        self.starts.append(start)
        self.stream += data
        if self.predicting:
            self.poison = Poison(what, start + earliest, start + latest)

    def add_hostile(self, data: bytes) -> None:
        start = len(self.stream)
        self.starts.append(start)
        self.stream += data
        if self.predicting:
            self.taint = start

    def settled(self) -> list[object]:
        """Events whose frames were fed completely."""
        return [event for end, event in self.expected if end <= self.fed]

    # ---------------------------------------------------------------- feeding

    def _feed(self, n: int, as_bytearray: bool) -> None:
        chunk = bytes(self.stream[self.fed : self.fed + n])
        if not chunk:
            return
        before = self.conn._reader.buffered
        data: bytes | bytearray = bytearray(chunk) if as_bytearray else chunk
        try:
            self.conn.receive_data(data)
        except RemoteProtocolError:
            assert self.failed, "receive_data raised on a live connection"
            # A dead connection buffers nothing more.
            assert self.conn._reader.buffered == before
            return
        assert not self.failed, "receive_data accepted bytes after a failure"
        if isinstance(data, bytearray):
            data[:] = b"\xff" * len(data)  # the connection must have copied it
        self.fed += len(chunk)

    @rule(
        n=st.one_of(st.integers(1, 16), st.integers(1, 3000)),
        as_bytearray=st.booleans(),
        pull=st.sampled_from(["", "one", "batch"]),
    )
    def feed(self, n: int, as_bytearray: bool, pull: str) -> None:
        self._feed(n, as_bytearray)
        self._pull(pull)

    @rule(
        # 1..3: inside a magic, which a resynchronising reader must not skip.
        delta=st.one_of(st.integers(1, 3), st.integers(-2, HEADER_SIZE)),
        last=st.booleans(),
        pull=st.sampled_from(["", "one", "batch"]),
    )
    def feed_near_a_boundary(self, delta: int, last: bool, pull: str) -> None:
        """Stop just before, inside or just after the header of the next (or the
        last) segment not fed yet."""
        targets = [b + delta for b in self.starts if b + delta > self.fed]
        if targets:
            self._feed((targets[-1] if last else targets[0]) - self.fed, False)
            self._pull(pull)

    @rule(pull=st.sampled_from(["", "one", "batch"]))
    def feed_rest(self, pull: str) -> None:
        self._feed(len(self.stream) - self.fed, False)
        self._pull(pull)

    def teardown(self) -> None:
        """Every example ends with the whole stream fed and drained, so each one
        checks its poison (or its clean ending) at least once."""
        if hasattr(self, "conn"):
            self._feed(len(self.stream) - self.fed, False)
            self.pull_one_by_one()

    def _pull(self, how: str) -> None:
        if how == "one":
            self.pull_one_by_one()
        elif how == "batch":
            self.pull_batch()

    # ---------------------------------------------------------------- pulling

    @rule()
    def pull_one_by_one(self) -> None:
        got: list[object] = []
        try:
            while (event := self.conn.next_event()) is not None:
                got.append(event)
        except RemoteProtocolError as exc:
            self.got += got
            self._errored(exc, complete=True)
            return
        self.got += got
        self._drained()

    @rule()
    def pull_batch(self) -> None:
        try:
            events = self.conn.next_events()
        except RemoteProtocolError as exc:
            # next_events drops the batch's events along with the error.
            self._errored(exc, complete=False)
            return
        self.got += events
        self._drained()

    def _drained(self) -> None:
        assert not self.failed, "a failed connection returned events"
        for event in self.got:
            assert self.event_type_ok(event), event
        settled = self.settled()
        poison = self.poison
        if poison is not None:
            assert self.fed < poison.latest, f"{poison.what} went undetected"
        if self.taint is None or self.fed <= self.taint:
            assert self.got == settled
        else:
            assert self.got[: len(settled)] == settled
        # At most one partial frame (or three bytes of a possible magic) waits.
        assert self.conn._reader.buffered <= HEADER_SIZE + LIMIT

    def _errored(self, exc: RemoteProtocolError, complete: bool) -> None:
        assert str(exc)
        if self.failed:
            return  # still failed: that is the contract
        settled = self.settled()
        if self.poison is not None:
            assert self.fed >= self.poison.earliest, (
                f"error {exc} before the {self.poison.what} was fed"
            )
            if complete:
                assert self.got == settled
        elif self.taint is not None:
            assert self.fed > self.taint, f"error {exc} before the hostile bytes were fed"
        else:
            raise AssertionError(f"error on a well-formed stream: {exc}")
        if not complete or self.taint is not None:
            n = min(len(self.got), len(settled))
            assert self.got[:n] == settled[:n]
        self.failed = True
        buffered = self.conn._reader.buffered
        for call in (self.conn.next_event, self.conn.next_events):
            try:
                call()
            except RemoteProtocolError:
                pass
            else:
                raise AssertionError(f"{call.__name__} succeeded after a failure")
        assert self.conn._reader.buffered == buffered

    def event_type_ok(self, event: object) -> bool:
        raise NotImplementedError

    # ------------------------------------------------------------- frames

    @rule(size=st.integers(0, LIMIT - 5), msgid=msgids, magic=magics)
    def frame_up_to_the_limit(self, size: int, msgid: int, magic: bytes) -> None:
        """DATA frames from tiny to exactly max_frame_size bytes long."""
        if self.ready:
            packet = Data(b"d" * size)
            self.add_frame(encode_frame(msgid, packet, magic), self.wrap(msgid, packet))

    @property
    def ready(self) -> bool:
        """True once the first (registration) frame is in the stream."""
        raise NotImplementedError

    def wrap(self, msgid: int, packet: Packet) -> object:
        raise NotImplementedError

    # ------------------------------------------------------------- poison

    # One rule draws every kind of poison, so that poison is one step choice
    # among many rather than half of them: most steps should carry good
    # traffic.  It runs once per example (the stream is dead after it) but
    # good frames, garbage, feeds and pulls go on into the failed connection.

    @precondition(lambda self: self.predicting)
    @rule(data=st.data())
    def poison(self, data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(self.poison_kinds()), label="poison")
        getattr(self, kind)(data)

    def poison_kinds(self) -> list[str]:
        return ["bad_crc", "oversized_length", "zero_length", "hostile_garbage"]

    def bad_crc(self, data: st.DataObject) -> None:
        msgid, packet, magic = data.draw(st.tuples(msgids, packets, magics))
        bit = data.draw(st.integers(0, 31))
        frame = bytearray(encode_frame(msgid, packet, magic))
        frame[8 + bit // 8] ^= 1 << (bit % 8)
        end = len(frame)
        if end - HEADER_SIZE > LIMIT:
            self.add_poison(bytes(frame), "oversized frame", 8, 8)
        else:
            self.add_poison(bytes(frame), "bad CRC", end, end)

    def oversized_length(self, data: st.DataObject) -> None:
        length = data.draw(st.one_of(st.just(LIMIT + 1), st.integers(LIMIT + 1, 2**32 - 1)))
        # Often nothing after the length field: refused from those eight bytes.
        magic, tail = data.draw(st.tuples(magics, st.one_of(st.just(b""), st.binary(max_size=20))))
        self.add_poison(magic + struct.pack(">II", length, 0) + tail, "oversized length", 8, 8)

    def zero_length(self, data: st.DataObject) -> None:
        magic, tail = data.draw(st.tuples(magics, st.binary(max_size=8)))
        self.add_poison(magic + struct.pack(">II", 0, 0) + tail, "zero length", 8, 8)

    def hostile_garbage(self, data: st.DataObject) -> None:
        self.add_hostile(data.draw(st.binary(min_size=1, max_size=40)))


class ServerConnectionMachine(StreamMachine):
    """The server side: registration first, resync over garbage."""

    @initialize(reg=st.one_of(registrations, st.none()))
    def start(self, reg: Registration | None) -> None:
        self.conn = ServerConnection(max_frame_size=LIMIT)
        self.registered = False
        if reg is not None:  # most examples: spend the steps after registration
            self.register(reg, MAGIC_REQ, b"")

    @property
    def ready(self) -> bool:
        return self.registered

    def event_type_ok(self, event: object) -> bool:
        return isinstance(event, Registered | Request)

    def wrap(self, msgid: int, packet: Packet) -> object:
        return Request(msgid, packet)

    @precondition(lambda self: not self.registered)
    @rule(reg=registrations, magic=magics, junk=maybe_benign)
    def register(self, reg: Registration, magic: bytes, junk: bytes) -> None:
        self.registered = True
        self.garbage(junk)
        self.add_frame(encode_registration(reg, magic), Registered(reg))

    @precondition(lambda self: self.registered)
    @rule(packet=packets, msgid=msgids, magic=magics, junk=maybe_benign)
    def request(self, packet: Packet, msgid: int, magic: bytes, junk: bytes) -> None:
        self.garbage(junk)
        self.add_frame(encode_frame(msgid, packet, magic), Request(msgid, packet))

    @rule(data=benign)
    def garbage(self, data: bytes) -> None:
        if not data:
            return
        start = len(self.stream)
        self.starts.append(start)
        self.stream += data
        if self.predicting:
            self.garbage_run += len(data)
            if self.garbage_run > MAX_GARBAGE:  # pragma: no cover - runs are short
                self.poison = Poison("too much garbage", start, len(self.stream))

    def poison_kinds(self) -> list[str]:
        kinds = [*super().poison_kinds(), "too_much_garbage"]
        if self.registered:
            return [*kinds, "bad_body", "second_registration"]
        return [*kinds, "bad_registration"]

    def too_much_garbage(self, data: st.DataObject) -> None:
        extra = data.draw(st.one_of(st.integers(4, 8), st.integers(4, 200)))
        fill = data.draw(st.integers(1, 255))
        junk = bytes([fill]) * (MAX_GARBAGE + extra)
        # The reader counts skipped bytes from the last frame (benign garbage
        # included) and keeps the last three back as a possible magic start,
        # so the limit is crossed exactly when this many bytes are in.
        at = MAX_GARBAGE + 4 - self.garbage_run
        self.add_poison(junk, "too much garbage", at, at)

    def bad_body(self, data: st.DataObject) -> None:
        frame = envelope(data.draw(bad_bodies), data.draw(magics))
        self.add_poison(frame, "undecodable body", len(frame), len(frame))

    def second_registration(self, data: st.DataObject) -> None:
        frame = encode_registration(data.draw(registrations))
        self.add_poison(frame, "second registration", len(frame), len(frame))

    def bad_registration(self, data: st.DataObject) -> None:
        self.registered = True  # whatever follows is never read
        frame = envelope(data.draw(bad_registrations), data.draw(magics))
        self.add_poison(frame, "bad registration", len(frame), len(frame))


class ClientConnectionMachine(StreamMachine):
    """The client side: a registration reply first, no resync."""

    @initialize(reg=registrations, replied=st.booleans())
    def start(self, reg: Registration, replied: bool) -> None:
        self.conn = ClientConnection(reg, max_frame_size=LIMIT)
        assert self.conn.initiate() == encode_registration(reg)
        self.replied = False
        if replied:
            self.registration_reply(7)

    @property
    def ready(self) -> bool:
        return self.replied

    def event_type_ok(self, event: object) -> bool:
        return isinstance(event, RegistrationReply | Response)

    def wrap(self, msgid: int, packet: Packet) -> object:
        return Response(msgid, packet)

    @precondition(lambda self: not self.replied)
    @rule(conn_id=msgids)
    def registration_reply(self, conn_id: int) -> None:
        self.replied = True
        self.add_frame(encode_registration_reply(conn_id), RegistrationReply(conn_id))

    @precondition(lambda self: self.replied)
    @rule(packet=packets, msgid=msgids, magic=magics)
    def response(self, packet: Packet, msgid: int, magic: bytes) -> None:
        self.add_frame(encode_frame(msgid, packet, magic), Response(msgid, packet))

    def poison_kinds(self) -> list[str]:
        kinds = [*super().poison_kinds(), "garbage"]
        return [*kinds, "bad_body" if self.replied else "bad_reply"]

    def garbage(self, data: st.DataObject) -> None:
        # No resync on this side: a frame boundary without a magic is fatal
        # once four bytes of it are in.
        junk = b"\x01" + data.draw(st.binary(max_size=40))
        self.add_poison(junk, "garbage", 4, 4)

    def bad_reply(self, data: st.DataObject) -> None:
        self.replied = True
        body = data.draw(
            st.binary(min_size=1, max_size=12).filter(lambda b: len(b) != 5 or b[0] != 0x1E)
        )
        frame = envelope(body, MAGIC_RES)
        self.add_poison(frame, "bad registration reply", len(frame), len(frame))

    def bad_body(self, data: st.DataObject) -> None:
        frame = envelope(data.draw(bad_bodies), MAGIC_RES)
        self.add_poison(frame, "undecodable body", len(frame), len(frame))


ServerConnectionMachine.TestCase.settings = STATEFUL
ClientConnectionMachine.TestCase.settings = STATEFUL
TestServerConnection = ServerConnectionMachine.TestCase
TestClientConnection = ClientConnectionMachine.TestCase
