"""One task pair per connection: bytes → protocol → scheduler → bytes.

Theory of operation
-------------------
The reader receives whatever the socket has, lets the sans-I/O
``ServerConnection`` decode every complete frame in it, and runs the whole
batch through the command table in one synchronous pass.  Replies to commands
that changed nothing durable leave at once; the batch's store changes are
committed (group commit across connections happens inside the store)
*before* any other reply or effect leaves, so nothing is acknowledged that a
crash could lose.  Replies are queued on the
connection's outbox; the writer task sends everything queued in one write.

GRAB_JOB is special: its slot is armed only after the writer has sent the
SUCCESS, so a JOB_ASSIGN on that msgid always comes in a later write
(the reference `periodic-run` loses the reply otherwise).

Memory per connection is bounded by ``max_outbox``: once that many bytes of
replies are queued (unsent, or waiting for their commit), the reader stops
handling requests, and reading, until the peer has taken enough of them; the
peer's further requests wait in the kernel, not here.  A peer that stays over
the limit for its keepalive is closed.  Frames other connections push here
(job assignments, streamed DATA) cannot be held back: past twice the limit
the connection is closed at once.  Either way its jobs are handed back.

A peer silent for ``keepalive`` seconds is closed by ``watch_idle``, one
task per server that wakes when the earliest connection is due and cancels
the reader's scope if it still waits for bytes (a cancel scope per read
would cost more than the rest of a small request).

On a drain (graceful shutdown) a connection that holds no job closes as soon
as its last batch is acknowledged; one that holds jobs stays until they are
reported or the server's drain timeout ends.

A malformed frame, an oversized length or a broken transport ends this
connection only: one log line, its jobs are handed back, the server goes on.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from trio_periodic.protocol.connection import Registered, ServerConnection
from trio_periodic.protocol.constants import Cmd
from trio_periodic.protocol.errors import RemoteProtocolError
from trio_periodic.protocol.frames import Registration, encode_raw_frame
from trio_periodic.protocol.packets import PACKET_TYPES, Packet
from trio_periodic.scheduler.effects import Effect
from trio_periodic.scheduler.service import SchedulerService
from trio_periodic.scheduler.state import ConnState
from trio_periodic.server.auth import FUNC_CHECKED, AuthFile, Identity, packet_funcs, permits
from trio_periodic.server.commands import CLIENT_COMMANDS, SERVER_ONLY, CommandTable, Handler
from trio_periodic.store.base import Change, StoreError
from trio_periodic.transport.streams import ConnectionLost, FrameStream

log = logging.getLogger(__name__)

#: Default bytes queued for one connection before it is read no further.
MAX_OUTBOX_BYTES = 4 * 1024 * 1024
#: Seconds a peer may stay over the outbox limit when keepalive is 0 (off).
STALL_LIMIT = 300
#: What a queued frame costs beyond its bytes (object header, list slot,
#: allocator rounding): the outbox limit bounds memory, not payload, so a
#: flood of 16-byte replies cannot hold four times the limit.
FRAME_COST = 64
#: Frames decoded and handled together (one commit, one write).
MAX_BATCH = 512
#: Command codes a worker connection may send when there is no auth file.
_EVERY_CMD = frozenset(range(256))
#: ... and a client connection (PROTOCOL.md §13.3; server-only codes are ignored).
_CLIENT_CMDS = frozenset(CLIENT_COMMANDS | SERVER_ONLY | {Cmd.UNKNOWN})

#: A decoded frame: the registration, or a request ``(msgid, cmd, packet)``.
Event = Registered | tuple[int, int, Packet]


@dataclass(slots=True)
class ConnectionContext:
    """What every connection needs from the server that accepted it.

    The server builds one and hands it to each connection, so that this
    module never imports the server back."""

    service: SchedulerService
    #: Decoded packet type → handler (:data:`trio_periodic.server.commands.COMMANDS`).
    commands: CommandTable
    max_frame_size: int
    #: A fresh connection id for the registration reply.
    new_conn_id: Callable[[], int]
    #: SHUTDOWN's effect: ask the server to stop.
    request_shutdown: Callable[[], None]
    #: The auth file's rules, or None when every client is trusted.
    auth: AuthFile | None = None
    #: Open protocol connections (CONFIG_SET keepalive re-times them all).
    connections: set[ServerSideConnection] = field(default_factory=set)
    #: Bytes queued for one connection before it is read no further.
    max_outbox: int = MAX_OUTBOX_BYTES
    #: Set by the server on shutdown: connections close once they hold no job.
    draining: bool = False
    #: ``commands`` by command code (built from it; a dict lookup by int is
    #: what the hot path can afford).
    by_cmd: dict[int, Handler] = field(init=False)
    #: When :func:`watch_idle` looks at the connections next (trio time), and
    #: the event that makes it look sooner.
    idle_check_at: float = math.inf
    idle_wake: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        table = self.commands
        self.by_cmd = {cmd: table[cls] for cmd, cls in PACKET_TYPES.items() if cls in table}


@dataclass(slots=True)
class _PendingAcks:
    changes: list[Change]
    replies: list[tuple[int, bytes]]
    effects: list[Effect]
    #: Bytes of the replies (counted in the connection's backlog until pushed).
    size: int = 0


class ServerSideConnection:
    def __init__(self, context: ConnectionContext, stream: FrameStream) -> None:
        self.context = context
        self.service = context.service
        self.core = context.service.core
        self._by_cmd = context.by_cmd
        #: Command codes that need no role or auth check (set on registration).
        self._unchecked: frozenset[int] = frozenset()
        self.stream = stream
        self.proto = ServerConnection(max_frame_size=context.max_frame_size)
        self._state: ConnState | None = None
        self.registration: Registration | None = None
        #: With an auth file: the identity of the last command (STATUS filters by it).
        self.identity: Identity | None = None
        self._out: list[bytes] = []
        #: Memory of the queued frames (their bytes plus FRAME_COST each).
        self._out_bytes = 0
        #: Bytes the writer task is sending right now (still in memory).
        self._in_flight = 0
        #: Bytes of replies waiting for their commit (not yet in _out).
        self._ack_bytes = 0
        self._max_outbox = context.max_outbox
        #: The connection's whole life; cancelled to close it at once.
        self._scope = trio.CancelScope()
        #: Set to make the reader stop after the current batch (drain).
        self._closing = False
        self._arms: list[int] = []
        self._batch_arms: list[int] = []
        self._has_output = trio.Event()
        # Read batches whose replies wait for their commit, in order.
        self._acks_send, self._acks_recv = trio.open_memory_channel[_PendingAcks](64)
        self._acked = trio.Event()
        self._ack_started = False
        self._nursery: trio.Nursery
        #: trio time of the last bytes received (watch_idle closes the
        #: connection keepalive seconds later).
        self._last_rx = trio.current_time()
        #: The reader's scope, cancelled to stop reading (keepalive, drain),
        #: and True while the reader waits for bytes (only then is it cancelled).
        self._read_scope = trio.CancelScope()
        self._waiting = False
        #: While over the outbox limit: the wait for room, and since when (trio time).
        self._stall: trio.CancelScope | None = None
        self._stalled_since = 0.0
        #: Frames queued / sent so far, and an event set after each write.
        self._pushed = 0
        #: True while the writer task is in the middle of a send.
        self._sending = False
        self._sent = 0
        #: Set after the next write; made only when someone waits for it.
        self._sent_event: trio.Event | None = None

    @property
    def state(self) -> ConnState:
        assert self._state is not None, "command before registration"
        return self._state

    # ------------------------------------------------------------ outbox

    def push_frame(self, frame: bytes) -> None:
        if self.backlog > 2 * self._max_outbox and not self._scope.cancel_called:
            log.warning(
                "closing %s: not reading (%d bytes queued, limit %d)",
                self.stream.peer,
                self.backlog,
                self._max_outbox,
            )
            self._scope.cancel()
        # No wake-up of the writer here: every push is followed by a
        # flush_eagerly, which wakes it only for what the socket did not take.
        self._pushed += 1
        self._out.append(frame)
        self._out_bytes += len(frame) + FRAME_COST

    @property
    def backlog(self) -> int:
        """Memory held for the peer: frames queued, being sent, or waiting for
        their commit."""
        return self._out_bytes + self._in_flight + self._ack_bytes

    @property
    def holds_jobs(self) -> bool:
        return self._state is not None and bool(self._state.held)

    def drain(self) -> None:
        """Shutdown: stop reading now if this connection holds no job (else the
        reader stops after the batch that reports its last one)."""
        if not self.holds_jobs:
            self._closing = True
            if self._waiting:
                self._read_scope.cancel()

    def close_if_waiting(self) -> None:
        """Keepalive: the peer has been silent too long.  Stop reading if the
        reader waits for bytes; a busy reader checks for itself before its
        next read (see _read_loop)."""
        if self._waiting:
            self._read_scope.cancel()

    def arm_after_flush(self, msgid: int) -> None:
        self._batch_arms.append(msgid)

    def request_shutdown(self) -> None:
        self.context.request_shutdown()

    def keepalive_changed(self) -> None:
        """CONFIG_SET keepalive: re-time the idle wait of every open connection."""
        for conn in self.context.connections:
            conn._set_idle_deadline()
        self.context.idle_wake.set()

    def _set_idle_deadline(self) -> None:
        """Re-time the wait for room in the outbox (the idle wait for bytes is
        timed by watch_idle)."""
        keepalive = self.core.config["keepalive"]
        if self._stall is not None:
            self._stall.deadline = self._stalled_since + (keepalive or STALL_LIMIT)

    # ------------------------------------------------------------- life

    async def serve(self) -> None:
        peer = self.stream.peer
        live = self.context.connections
        live.add(self)
        keepalive = self.core.config["keepalive"]
        if keepalive and self._last_rx + keepalive < self.context.idle_check_at:
            self.context.idle_wake.set()
        # except*: the nursery wraps even its body's exceptions in an
        # ExceptionGroup; a plain except would let one bad frame escape and
        # take the whole server down.
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    nursery.start_soon(self._write_loop)
                    try:
                        await self._read_loop()
                    except RemoteProtocolError as exc:
                        log.warning("closing %s: protocol error: %s", peer, str(exc))
                    # Commit what was applied, then let the writer send the replies
                    # (to the good frames before a bad one, too) before closing.
                    await self._acks_send.aclose()
                    if self._ack_started:
                        with trio.move_on_after(10):
                            await self._acked.wait()
                    with trio.move_on_after(1):
                        await self._flushed()
                    nursery.cancel_scope.cancel()
        except* ConnectionLost as group:
            log.info("closing %s: %s", peer, group.exceptions[0])
        finally:
            live.discard(self)
            with trio.CancelScope(shield=True):
                await self._detach()
                await self.stream.aclose()

    async def _ack_loop(self) -> None:
        """Commit the changes of read batches in order and send their replies.

        Batches that queued up while a commit was running share the next one.
        A commit is shielded: the batch is already applied in memory, so it
        must reach the store even when the connection goes away meanwhile."""
        try:
            async for first in self._acks_recv:
                batch = [first]
                while True:
                    try:
                        batch.append(self._acks_recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                changes = [c for pending in batch for c in pending.changes]
                failed: StoreError | None = None
                with trio.CancelScope(shield=True):
                    try:
                        await self.service.commit(changes)
                    except StoreError as exc:
                        failed = exc
                for pending in batch:
                    replies = pending.replies
                    self._ack_bytes -= pending.size
                    if failed is not None:
                        # Nothing that needed the store is acknowledged: the
                        # client sees the rejection and may retry.
                        log.error(
                            "store commit failed, rejecting %d requests: %s", len(replies), failed
                        )
                        replies = [(m, encode_raw_frame(m, Cmd.NO_WORKER)) for m, _ in replies]
                    await self.service.publish(pending.effects)
                    for _, frame in replies:
                        self.push_frame(frame)
                self.service.flush([self])
        finally:
            # Cancelled with batches still queued (the store would not answer):
            # they are never committed, and their puts must stop being waited for.
            while True:
                try:
                    self.service.abandon(self._acks_recv.receive_nowait().changes)
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break
            self._acked.set()

    async def _flushed(self) -> None:
        """Wait until the writer has sent every frame queued so far."""
        target = self._pushed
        if self._out:
            self._has_output.set()
        while self._sent < target:
            await self._next_write()

    async def _detach(self) -> None:
        if self._state is None:
            return
        self.core.disconnect(self._state, self.service.clock.now())
        with trio.move_on_after(10):
            await self.service.settle()

    async def _read_loop(self) -> None:
        scope = self._read_scope
        with scope:
            await self._read_batches()
        if scope.cancel_called and not self._closing:
            log.info(
                "closing %s: silent for %d s (keepalive)",
                self.stream.peer,
                self.core.config["keepalive"],
            )

    async def _read_batches(self) -> None:
        """Read and handle until the peer is done, silent for keepalive
        seconds, or the connection closes.

        The reader has one cancel scope for its whole life (a scope per read
        costs more than the rest of a small request): ``watch_idle`` cancels
        it only while the reader waits for bytes, and bytes that arrive as it
        does are dropped, as a close a moment earlier would have."""
        proto = self.proto
        scope = self._read_scope
        config = self.core.config
        while True:
            keepalive = config["keepalive"]
            if keepalive and trio.current_time() - self._last_rx >= keepalive:
                # Busy (waiting for room) until after its keepalive ran out.
                scope.cancel()
                return
            self._waiting = True
            try:
                data = await self.stream.receive_some()
            finally:
                self._waiting = False
            if self._closing or scope.cancel_called:
                return
            self._last_rx = trio.current_time()
            if not data:
                return
            proto.receive_data(data)
            pushed, acks = self._pushed, self._ack_bytes
            # Act on every good frame before a bad one, then close.  Frames
            # are decoded a batch at a time: those waiting for room in the
            # outbox stay as bytes in the decoder, not as packet objects.
            error: RemoteProtocolError | None = None
            while True:
                events: list[Event] = []
                try:
                    while len(events) < MAX_BATCH and (event := proto.next_request()) is not None:
                        events.append(event)
                except RemoteProtocolError as exc:
                    error = exc
                full = len(events) == MAX_BATCH
                while events:
                    events = await self._handle(events)
                    if self.backlog > self._max_outbox:
                        await self._wait_for_room()
                if error is not None or not full:
                    break
            if self._pushed == pushed and self._ack_bytes == acks:
                # Nothing will answer this read (JOB_ASSIGNED alone): ACK it now.
                self.stream.ack_now()
            if error is not None:
                try:
                    raise error
                finally:
                    # The traceback holds this frame: without the del, the
                    # frame's `error` holds the traceback back (a cycle that
                    # keeps the connection and its last chunk alive).
                    del error
            if self.context.draining and not self.holds_jobs:
                return

    async def _wait_for_room(self) -> None:
        """Read no further until the peer has taken enough of its replies; a
        peer stalled for its keepalive (re-timed by CONFIG_SET) is closed."""
        self._stalled_since = trio.current_time()
        with trio.CancelScope() as stall:
            self._stall = stall
            self._set_idle_deadline()
            while self.backlog > self._max_outbox:
                await self._next_write()
        self._stall = None
        if stall.cancelled_caught:
            raise ConnectionLost(
                f"peer not reading: {self.backlog} bytes queued for"
                f" {trio.current_time() - self._stalled_since:.0f} s (limit {self._max_outbox})"
            )

    # ----------------------------------------------------------- batches

    async def _handle(self, events: list[Event]) -> list[Event]:
        """Run a batch of requests; return those left for later because the
        outbox filled up (the caller waits for room first)."""
        core = self.core
        now = self.service.clock.now()
        durable = self.service.store.durable
        # Replies to commands that changed nothing durable (PING, GRAB_JOB,
        # STATUS...) go out at once; the others wait for the commit.
        immediate: list[bytes] = []
        replies: list[tuple[int, bytes]] = []
        room = self._max_outbox - self.backlog
        queued = 0
        rest: list[Event] = []
        by_cmd = self._by_cmd
        unchecked = self._unchecked
        for i, event in enumerate(events):
            if queued > room:
                rest = events[i:]
                break
            if isinstance(event, Registered):
                self._register(event)
                unchecked = self._unchecked
                continue
            msgid, cmd, packet = event
            if cmd not in unchecked and not self._allowed(packet):
                immediate.append(encode_raw_frame(msgid, Cmd.NO_WORKER))
                continue
            before = len(core.changes)
            reply = by_cmd[cmd](self, msgid, packet, now)
            if reply is not None:
                queued += len(reply) + FRAME_COST
                if durable and len(core.changes) != before:
                    replies.append((msgid, reply))
                else:
                    immediate.append(reply)
        effects, changes = self.service.finish_batch()
        wait = durable and bool(changes)
        if not wait:
            # Nothing to wait for: assignments first (dispatch latency), then replies.
            await self.service.publish(effects)
        else:
            early, effects = self.service.before_commit(effects)
            if early:
                await self.service.publish(early)
        for frame in immediate:
            self.push_frame(frame)
        self._arms.extend(self._batch_arms)
        self._batch_arms = []
        self.service.flush([self])
        if wait:
            # The acknowledgements wait for the commit in the ack task, so that
            # reading (and dispatching) goes on meanwhile.
            size = sum(len(frame) + FRAME_COST for _, frame in replies)
            self._ack_bytes += size
            if not self._ack_started:
                # Started on first use: an idle connection costs one task less.
                self._ack_started = True
                self._nursery.start_soon(self._ack_loop)
            await self._acks_send.send(_PendingAcks(changes, replies, effects, size))
        return rest

    def _register(self, event: Registered) -> None:
        if self._state is not None:
            raise RemoteProtocolError("second registration frame")
        reg = event.registration
        self.registration = reg
        self._state = self.core.connect(reg.is_worker, sink=self)
        if self.context.auth is not None:
            self._unchecked = SERVER_ONLY
        else:
            self._unchecked = _EVERY_CMD if reg.is_worker else _CLIENT_CMDS
        self.push_frame(self.proto.accept(self.context.new_conn_id()))

    def _allowed(self, packet: Packet) -> bool:
        """Role and auth checks (PROTOCOL.md §13.3), in the reference's order."""
        cmd = packet.cmd
        if cmd in SERVER_ONLY:
            return True  # ignored anyway
        # A client-role connection may not use worker commands (C58).
        role_ok = self.state.is_worker or cmd in CLIENT_COMMANDS or cmd == Cmd.UNKNOWN
        auth = self.context.auth
        if auth is None:
            return role_ok
        identity = auth.identify(self.registration)
        self.identity = identity
        if identity is None:
            auth.failures.note("protocol", self.stream.peer, "unknown identity or wrong token")
            return False
        if identity.is_admin:
            return True
        funcs = packet_funcs(packet) if cmd in FUNC_CHECKED else frozenset()
        return role_ok and permits(identity, cmd, funcs)

    def flush_eagerly(self) -> bool:
        """Write what is queued right now, from the calling task, if the socket
        takes it without blocking: this saves a wake-up of the writer task per
        batch, which is most of the cost of a reply.  Whatever does not fit is
        left to the writer.  Returns True when slots were armed (the caller
        should dispatch).  The writer task is woken only for what is left."""
        if self._sending or not self._out:
            if self._out or self._arms:
                self._has_output.set()
            return False
        frames = self._out
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        try:
            written = self.stream.try_send(data)
        except ConnectionLost:
            # The writer meets the same error and ends the connection.
            self._has_output.set()
            return False
        if written < len(data):
            if written:
                self._out = [data[written:]]
                self._out_bytes = len(data) - written + FRAME_COST
                self._count_sent(len(frames) - 1)
            self._has_output.set()
            return False
        self._out = []
        self._out_bytes = 0
        self._count_sent(len(frames))
        return self._run_arms(self._arms)

    def _count_sent(self, n: int) -> None:
        if n:
            self._sent += n
            event = self._sent_event
            if event is not None:
                self._sent_event = None
                event.set()

    async def _next_write(self) -> None:
        """Wait until the next frames are on the wire."""
        if self._sent_event is None:
            self._sent_event = trio.Event()
        await self._sent_event.wait()

    def _run_arms(self, arms: list[int]) -> bool:
        """Arm the slots whose GRAB_JOB replies are on the wire."""
        if not arms or self._state is None:
            return False
        if arms is self._arms:
            self._arms = []
        for msgid in arms:
            self.core.add_slot(self._state, msgid)
        return True

    async def _write_loop(self) -> None:
        while True:
            await self._has_output.wait()
            self._has_output = trio.Event()
            frames, self._out = self._out, []
            arms, self._arms = self._arms, []
            self._in_flight, self._out_bytes = self._out_bytes, 0
            if frames:
                count = len(frames)  # send() may empty the list as it goes
                self._sending = True
                try:
                    await self.stream.send(frames)
                finally:
                    self._sending = False
                    self._in_flight = 0
                self._count_sent(count)
            if self._run_arms(arms):
                await self.service.settle()


async def watch_idle(context: ConnectionContext) -> None:
    """Close the connections silent for ``keepalive`` seconds (one task per server).

    Each connection notes when it last received bytes; this task sleeps until
    the earliest moment one of them may have been silent that long, then
    stops the readers that have been (a CONFIG_SET of keepalive or a new
    connection wakes it sooner).  Only a reader waiting for bytes is stopped;
    a busy one checks for itself before it reads again."""
    while True:
        check_at = _close_idle(context)
        context.idle_check_at = check_at
        context.idle_wake = trio.Event()
        with trio.move_on_at(check_at):
            await context.idle_wake.wait()


def _close_idle(context: ConnectionContext) -> float:
    """Stop the readers silent for keepalive; return when to look again.

    (A function of its own so that no connection stays referenced by the
    watch's frame while it sleeps: a closed connection is freed at once.)"""
    keepalive = context.service.core.config["keepalive"]
    now = trio.current_time()
    check_at = math.inf
    if keepalive:
        for conn in list(context.connections):
            due = conn._last_rx + keepalive
            if due <= now:
                conn.close_if_waiting()
            elif due < check_at:
                check_at = due
    return check_at
