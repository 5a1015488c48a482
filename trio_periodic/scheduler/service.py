"""The trio service around the scheduler core: one clock, one wake-up loop.

Theory of operation
-------------------
``SchedulerService.run`` is a single task.  Each turn it lets the core expire
what is due (job timeouts, RUN_JOB waits) and dispatch what became due, then
sleeps inside a cancel scope whose deadline is the core's next wake-up: the
earliest job timeout or due time.  That cancel scope is what enforces job
timeouts, to the millisecond, without a polling loop.  Anything that may
bring the next wake-up forward (a new job, a confirmation, a slot) calls
``poke()``, which only wakes the loop when the deadline actually moved.

Connection handlers call the core directly (trio is cooperative, so a batch
of calls is atomic), then ``finish_batch()``: it dispatches, takes the batch's
effects and store changes, and returns them.  The handler makes the changes
durable with ``commit`` before it sends any acknowledgement, and only then
routes the effects with ``deliver``.

Time: the core works in float seconds since the Unix epoch.  ``Clock`` derives
them from trio's clock plus a fixed offset taken at start, so tests that run
on ``trio.testing.MockClock`` move both together.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Protocol

import trio

from trio_periodic.protocol.constants import Cmd
from trio_periodic.protocol.frames import encode_frame, encode_raw_frame
from trio_periodic.protocol.packets import JobAssign
from trio_periodic.scheduler.core import LEASE_GRACE, Scheduler
from trio_periodic.scheduler.effects import Assign, Effect
from trio_periodic.scheduler.state import Assignment
from trio_periodic.store.base import Change, RemoteChange, SharedStore, Store, StoreError

log = logging.getLogger(__name__)


class Clock:
    """Epoch seconds that move with trio's clock (and so with MockClock)."""

    def __init__(self) -> None:
        self._offset = time.time() - trio.current_time()

    def now(self) -> float:
        return trio.current_time() + self._offset

    def to_trio(self, epoch: float) -> float:
        return epoch - self._offset


class Outbox(Protocol):
    """Where the service puts frames for one connection (its writer sends them)."""

    def push_frame(self, frame: bytes) -> None: ...

    def flush_eagerly(self) -> bool:
        """Try to send what is queued now; True if that armed grab slots."""
        ...


class SchedulerService:
    def __init__(self, core: Scheduler, store: Store, clock: Clock) -> None:
        self.core = core
        self.store = store
        self.clock = clock
        # Cluster mode: a store several servers share (claim / watch).
        self.cluster: SharedStore | None = None
        if getattr(store, "shared", False) and isinstance(store, SharedStore):
            self.cluster = store
        self.shared = self.cluster is not None
        core.shared = self.shared
        # Cluster mode: assignments waiting for their claim (see _claimer).
        self._to_claim: list[Assign] = []
        self._claim_wake = trio.Event()
        self._wake = trio.Event()
        self._sleeping_until = math.inf

    # ------------------------------------------------------------ batches

    def finish_batch(self) -> tuple[list[Effect], list[Change]]:
        """Dispatch after a batch of core calls; return its effects and changes."""
        core = self.core
        core.dispatch(self.clock.now())
        self.poke()
        return core.take_effects(), core.take_changes()

    async def commit(self, changes: Sequence[Change]) -> None:
        """Make changes durable (a no-op for the memory store)."""
        if changes and self.store.durable:
            await self.store.commit(changes)

    async def publish(self, effects: list[Effect]) -> None:
        """Deliver a batch's effects.  When the store is shared with other
        servers, assignments go to the claimer task instead, which claims
        everything queued meanwhile in one transaction before it delivers."""
        if self.shared:
            assigns = [e for e in effects if isinstance(e, Assign)]
            if assigns:
                effects = [e for e in effects if not isinstance(e, Assign)]
                self._to_claim.extend(assigns)
                self._claim_wake.set()
        self.deliver(effects)

    async def _claimer(self) -> None:
        """Cluster mode: claim queued assignments in batches, then deliver them."""
        while True:
            await self._claim_wake.wait()
            self._claim_wake = trio.Event()
            while self._to_claim:
                batch, self._to_claim = self._to_claim, []
                self.deliver(await self._claim(list[Effect](batch)))

    def _pending_claim(self, a: Assign) -> Assignment | None:
        """The assignment ``a`` stands for, if the core still has it (a remote
        delete, a timeout or a disconnect may have dropped it meanwhile)."""
        held = a.conn.held.get((a.job.func, a.job.name))
        return held if held is not None and held.msgid == a.msgid else None

    def _undeliverable(self, a: Assign) -> None:
        """``a`` will never reach its worker: its slot is free again.

        The core drops an assignment without freeing the slot (a worker that
        got the job re-arms it itself), but this one was never sent: without
        this, a job deleted by another server while our claim of it was in
        flight would take the worker's slot with it, for good."""
        self.core.add_slot(a.conn, a.msgid)

    async def _claim(self, effects: list[Effect]) -> list[Effect]:
        """Cluster mode: only assignments whose claim the store accepted go out.

        A refused claim gives the slot back; the core may then assign another
        job to it, which needs a claim of its own, hence the loop."""
        out: list[Effect] = []
        for _ in range(8):
            assigns = [e for e in effects if isinstance(e, Assign)]
            out += [e for e in effects if not isinstance(e, Assign)]
            if not assigns:
                return out
            now = self.clock.now()
            claims = {(a.job.func, a.job.name): now + a.job.timeout + LEASE_GRACE for a in assigns}
            assert self.cluster is not None
            try:
                refused = await self.cluster.claim([(f, n, t) for (f, n), t in claims.items()])
            except StoreError as exc:
                # What earlier rounds claimed still goes out; this round's
                # assignments were never claimed and go back (retried in 1 s).
                log.error("claiming %d jobs failed: %s", len(assigns), exc)
                now = self.clock.now()
                for a in assigns:
                    held = self._pending_claim(a)
                    if held is not None:
                        self.core.claim_failed(held, now + 1.0, now)
                    else:
                        self._undeliverable(a)
                self.poke()
                return out
            for a in assigns:
                handle = (a.job.func, a.job.name)
                held = self._pending_claim(a)
                if held is None:
                    # Dropped while we claimed: never sent.  (A claim we won
                    # for it runs out by itself.)
                    self._undeliverable(a)
                elif handle in refused:
                    self.core.claim_failed(held, refused[handle], now)
                else:
                    out.append(a)
            self.core.dispatch(self.clock.now())
            effects = self.core.take_effects()
            if not effects:
                return out
        # Still contended after several rounds: the assignments not yet claimed
        # go back to pending (never out unclaimed) and the wake-up loop retries.
        for e in effects:
            if isinstance(e, Assign):
                held = self._pending_claim(e)
                if held is not None:
                    now = self.clock.now()
                    self.core.claim_failed(held, now, now)
                else:
                    self._undeliverable(e)
            else:
                out.append(e)
        self.poke()
        return out

    def remote_changes(self, changes: list[RemoteChange]) -> None:
        """Called (on the trio thread) with what other servers changed."""
        self.core.remote_apply(changes, self.clock.now())
        self._wake.set()

    def deliver(self, effects: list[Effect]) -> None:
        """Encode effects as frames into their connections' outboxes and send
        them at once where the sockets take them."""
        touched: dict[int, Outbox] = {}
        for effect in effects:
            outbox: Outbox | None = effect.conn.sink
            if outbox is None or effect.conn.closed:
                continue
            if isinstance(effect, Assign):
                outbox.push_frame(encode_frame(effect.msgid, JobAssign(effect.job)))
            else:
                outbox.push_frame(encode_raw_frame(effect.msgid, Cmd.DATA, effect.data))
            touched[id(outbox)] = outbox
        if touched:
            self.flush(touched.values())

    def flush(self, outboxes: Iterable[Outbox]) -> None:
        """Eagerly send queued frames; slots armed by that get jobs at once."""
        rearmed = False
        for outbox in outboxes:
            rearmed |= outbox.flush_eagerly()
        if not rearmed:
            return
        if self.shared:
            self.poke()  # assignments need a claim: the wake-up loop does it
            return
        self.core.dispatch(self.clock.now())
        effects = self.core.take_effects()
        if effects:
            self.deliver(effects)

    async def settle(self) -> None:
        """Finish a batch that has no acknowledgement waiting on it (slots
        armed, a connection gone, jobs expired by the wake-up loop)."""
        effects, changes = self.finish_batch()
        if changes:
            try:
                await self.commit(changes)
            except StoreError as exc:
                log.error("store commit failed for background changes: %s", exc)
        await self.publish(effects)

    # ------------------------------------------------------------ wake-ups

    def poke(self) -> None:
        """Wake the loop if the core's next deadline is earlier than its sleep."""
        if self.core.next_wakeup() < self._sleeping_until or self.core.candidates:
            self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.cluster is not None:
                await nursery.start(partial(self.cluster.watch, self.remote_changes))
                nursery.start_soon(self._claimer)
            task_status.started()
            await self._wake_loop()

    async def _wake_loop(self) -> None:
        core = self.core
        while True:
            core.tick(self.clock.now())
            await self.settle()
            self._sleeping_until = core.next_wakeup()
            if not core.candidates:
                # The cancel scope below enforces the earliest job timeout / due time.
                with trio.move_on_at(self.clock.to_trio(self._sleeping_until)):
                    await self._wake.wait()
            self._sleeping_until = -math.inf
            self._wake = trio.Event()
            await trio.lowlevel.checkpoint()
