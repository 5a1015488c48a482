"""The trio worker: register functions, take jobs, report results.

::

    worker = Worker("tcp://127.0.0.1:5000")

    @worker.func("echo")
    async def echo(job: Job) -> bytes:
        return job.workload

    await worker.work(4)          # four jobs at a time, until worker.stop()

Theory of operation
-------------------
``work(size)`` runs *sessions* until :meth:`Worker.stop`.  A session is one
connection: register every function (CAN_DO / BROADCAST, each must be
answered SUCCESS), reserve ``size`` msgids as grab slots and run one task per
slot.  A slot task sends GRAB_JOB on its msgid, waits for a job, runs it,
reports it and grabs again.

Assignments arrive in the connection's reader, which calls
:meth:`Worker._on_assign` synchronously: an armed, idle slot takes the job
and the reader answers JOB_ASSIGNED at once; anything else (a slot that is
busy or stopping) is answered JOB_UNASSIGNED, and the server offers the job
elsewhere.  A slot is re-armed only after its job was reported, so a slot
never holds more than one job.

When the connection breaks the session's tasks are cancelled (the server has
handed their jobs back already), and ``work`` reconnects with exponential
back-off (0.1 s doubling up to ``max_backoff``), registers again and re-arms
every slot.  A graceful :meth:`~Worker.stop` declines new assignments, sends
CANT_DO for every function, lets running jobs finish and report, then
closes the connection.
"""

from __future__ import annotations

import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import trio

from trio_periodic.client.client import Name, identity_registration
from trio_periodic.client.connection import (
    DEFAULT_TIMEOUT,
    PING_INTERVAL,
    Connection,
    expect_success,
)
from trio_periodic.client.errors import ConnectionLost, PeriodicError
from trio_periodic.client.job import Job, decode_name, encode_name
from trio_periodic.client.transport import default_url
from trio_periodic.protocol import Broadcast, CanDo, CantDo, GrabJob
from trio_periodic.protocol import Job as WireJob
from trio_periodic.transport.rsa.options import RsaOptions

__all__ = ["Handler", "Worker"]

log = logging.getLogger("trio_periodic.worker")

#: A worker function: takes the :class:`Job`, returns its result (see :mod:`.job`).
Handler = Callable[[Job], Awaitable[Any]] | Callable[[Job], Any]
H = TypeVar("H", bound=Handler)

INITIAL_BACKOFF = 0.1


@dataclass(slots=True)
class _Func:
    name: bytes
    handler: Handler
    broadcast: bool
    lock: bytes | None
    lock_count: int


class _Slot:
    """One grab slot: a msgid the server may push one job on."""

    def __init__(self, msgid: int) -> None:
        self.msgid = msgid
        #: False once the worker stops: further assignments are declined.
        self.accepting = True
        #: True between sending GRAB_JOB and receiving a job.
        self.armed = False
        self._send, self._recv = trio.open_memory_channel[WireJob](1)
        self._idle: trio.CancelScope | None = None

    def offer(self, job: WireJob) -> bool:
        if not (self.accepting and self.armed):
            return False
        self.armed = False
        try:
            self._send.send_nowait(job)
        except trio.WouldBlock:  # pragma: no cover - one job per armed slot
            return False
        return True

    async def next_job(self) -> WireJob | None:
        """The assigned job, or None when the worker stops first."""
        try:
            # Confirmed already (JOB_ASSIGNED went out): it must run even if
            # we are stopping.
            return self._recv.receive_nowait()
        except trio.WouldBlock:
            pass
        if not self.accepting:
            return None
        with trio.CancelScope() as scope:
            self._idle = scope
            try:
                return await self._recv.receive()
            finally:
                self._idle = None
        try:
            return self._recv.receive_nowait()
        except trio.WouldBlock:
            return None

    def stop(self) -> None:
        self.accepting = False
        if self._idle is not None:
            self._idle.cancel()


class _Tracker:
    """Counts slots that are armed (ready) and slot tasks that ended."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.armed: set[int] = set()
        self.finished = 0
        self.all_armed = trio.Event()
        self.all_done = trio.Event()

    def mark_armed(self, msgid: int) -> None:
        self.armed.add(msgid)
        if len(self.armed) == self.size:
            self.all_armed.set()

    def mark_finished(self) -> None:
        self.finished += 1
        if self.finished == self.size:
            self.all_done.set()


async def _wait_any(*waits: Callable[[], Awaitable[object]]) -> None:
    """Return as soon as one of ``waits`` returns."""
    async with trio.open_nursery() as nursery:

        async def run(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            nursery.cancel_scope.cancel()

        for wait in waits:
            nursery.start_soon(run, wait)


class Worker:
    """A worker.  Register functions, then ``await worker.work(size)``."""

    def __init__(
        self,
        url: str | None = None,
        *,
        name: Name | None = None,
        token: Name | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ping_interval: float = PING_INTERVAL,
        max_backoff: float = 3.0,
        ssl_context: ssl.SSLContext | None = None,
        rsa: RsaOptions | None = None,
    ) -> None:
        """``url`` defaults to ``$PERIODIC_PORT`` or ``unix:///tmp/periodic.sock``.

        ``name``/``token`` register with an identity (type 4).  ``timeout``
        bounds connecting and every request; reconnection waits double from
        0.1 s up to ``max_backoff`` seconds.  ``ssl_context`` serves
        ``tls://`` and ``wss://`` URLs (default: the system's CAs); ``rsa``
        speaks periodicd's RSA transport on ``tcp://`` and ``unix://`` URLs.
        """
        self.url = url or default_url()
        self.ssl_context = ssl_context
        self.rsa = rsa
        self._registration = identity_registration(True, name, token)
        self.timeout = timeout
        self.ping_interval = ping_interval
        self.max_backoff = max_backoff
        self._funcs: dict[bytes, _Func] = {}
        self._slots: dict[int, _Slot] = {}
        self._stop = trio.Event()
        self._stopping = False
        self._working = False
        self._conn: Connection | None = None
        #: Jobs being run right now.
        self.running = 0
        #: Sessions (connections) established so far.
        self.sessions = 0

    # -------------------------------------------------------- registration

    def func(
        self,
        name: Name,
        *,
        broadcast: bool = False,
        lock: Name | None = None,
        lock_count: int = 1,
    ) -> Callable[[H], H]:
        """Decorator: run the decorated function for every job of ``name``.

        ``broadcast`` registers with BROADCAST (every worker gets each job).
        ``lock`` takes that lock (``lock_count`` holders at most) before the
        function runs; if the server parks the job instead, it is skipped.
        """

        def register(handler: H) -> H:
            self.add_func(name, handler, broadcast=broadcast, lock=lock, lock_count=lock_count)
            return handler

        return register

    def add_func(
        self,
        name: Name,
        handler: Handler,
        *,
        broadcast: bool = False,
        lock: Name | None = None,
        lock_count: int = 1,
    ) -> None:
        """Register ``handler`` for ``name`` (see :meth:`func`); takes effect on the next
        connection."""
        func = encode_name(name)
        if not 0 < len(func) <= 255:
            raise ValueError(f"function names are 1 to 255 bytes long, not {len(func)}")
        self._funcs[func] = _Func(
            func, handler, broadcast, None if lock is None else encode_name(lock), lock_count
        )

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    # --------------------------------------------------------------- work

    def stop(self) -> None:
        """Stop gracefully: take no new jobs, finish the running ones, then ``work`` returns."""
        self._stopping = True
        self._stop.set()
        for slot in self._slots.values():
            slot.stop()

    async def work(
        self, size: int = 1, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run up to ``size`` jobs at a time until :meth:`stop` (reconnecting as needed).

        With ``nursery.start(worker.work, n)`` the start returns once the
        worker is registered and all its slots are armed.
        """
        if size < 1:
            raise ValueError("size must be at least 1")
        if not self._funcs:
            raise ValueError("no functions registered")
        if self._working:
            raise RuntimeError("this worker is already working")
        self._working = True
        self._stopping = False
        self._stop = trio.Event()
        backoff = INITIAL_BACKOFF
        started = False

        def on_ready() -> None:
            nonlocal started, backoff
            backoff = INITIAL_BACKOFF
            if not started:
                started = True
                task_status.started()

        try:
            while not self._stopping:
                try:
                    async with Connection.open(
                        self.url,
                        self._registration,
                        timeout=self.timeout,
                        ping_interval=self.ping_interval,
                        ssl_context=self.ssl_context,
                        rsa=self.rsa,
                    ) as conn:
                        await self._session(conn, size, on_ready)
                except PeriodicError as exc:
                    if self._stopping:
                        break
                    log.warning("%s; reconnecting in %.1f s", exc, backoff)
                with trio.move_on_after(backoff):
                    await self._stop.wait()
                backoff = min(backoff * 2, self.max_backoff)
        finally:
            self._working = False
            self._conn = None
            self._slots = {}

    async def _session(self, conn: Connection, size: int, on_ready: Callable[[], None]) -> None:
        self._conn = conn
        for spec in self._funcs.values():
            packet = Broadcast(spec.name) if spec.broadcast else CanDo(spec.name)
            expect_success(await conn.request(packet), type(packet).__name__.upper())
        slots = {msgid: _Slot(msgid) for msgid in (conn.reserve_msgid() for _ in range(size))}
        self._slots = slots
        if self._stopping:
            return
        conn.assign_handler = partial(self._on_assign, slots)
        tracker = _Tracker(size)
        async with trio.open_nursery() as nursery:
            for slot in slots.values():
                nursery.start_soon(self._slot_task, conn, slot, tracker)
            await _wait_any(tracker.all_armed.wait, conn.wait_closed, self._stop.wait)
            if tracker.all_armed.is_set() and not conn.closed:
                self.sessions += 1
                if self.sessions > 1:
                    log.info("reconnected to %s", self.url)
                on_ready()
            await _wait_any(conn.wait_closed, self._stop.wait)
            if not conn.closed:
                await self._graceful_stop(conn, tracker)
            nursery.cancel_scope.cancel()
        if conn.error is not None and not self._stopping:
            raise conn.error

    async def _graceful_stop(self, conn: Connection, tracker: _Tracker) -> None:
        for slot in self._slots.values():
            slot.stop()
        for func in self._funcs:
            try:
                await conn.request(CantDo(func))
            except PeriodicError:
                break
        await _wait_any(tracker.all_done.wait, conn.wait_closed)

    def _on_assign(self, slots: dict[int, _Slot], msgid: int, job: WireJob) -> bool:
        slot = slots.get(msgid)
        return slot is not None and not self._stopping and slot.offer(job)

    async def _slot_task(self, conn: Connection, slot: _Slot, tracker: _Tracker) -> None:
        try:
            while slot.accepting:
                slot.armed = True
                expect_success(await conn.request(GrabJob(), msgid=slot.msgid), "GRAB_JOB")
                tracker.mark_armed(slot.msgid)
                job = await slot.next_job()
                if job is None:
                    break
                await self._run(conn, job)
        except PeriodicError as exc:
            # A refused GRAB_JOB or a lost reply: start over on a new connection,
            # as the reference worker does.
            conn.abort(exc if isinstance(exc, ConnectionLost) else ConnectionLost(str(exc)))
        except Exception as exc:
            log.exception("worker slot crashed")
            conn.abort(ConnectionLost(f"worker slot crashed: {exc!r}"))
        finally:
            slot.accepting = False
            slot.armed = False
            tracker.mark_finished()

    async def _run(self, conn: Connection, wire: WireJob) -> None:
        job = Job(conn, wire)
        spec = self._funcs.get(wire.func)
        if spec is None:
            log.warning("job for unregistered function %s: failing it", job.func)
            expect_success(await conn.request(CantDo(wire.func)), "CANT_DO")
            await job.fail()
            return
        self.running += 1
        try:
            if spec.lock is not None and not await job.acquire(spec.lock, spec.lock_count):
                log.info("job %s/%s waits for lock %s", job.func, job.name, decode_name(spec.lock))
                return
            try:
                if inspect.iscoroutinefunction(spec.handler):
                    value = await spec.handler(job)
                else:
                    value = await trio.to_thread.run_sync(spec.handler, job)
            except Exception as exc:
                if isinstance(exc, PeriodicError) and conn.closed:
                    raise
                log.exception("job %s/%s raised; failing it", job.func, job.name)
                await job.fail()
                return
            await job.report(value)
        finally:
            self.running -= 1
