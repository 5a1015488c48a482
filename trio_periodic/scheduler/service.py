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

Once a second ``_sample_throughput`` copies the core's running totals into
``throughput``, a ring of per-second counts (the dashboard's rate chart).

Cluster mode (a store shared with other servers): a job goes to a worker
only once this server has claimed it in the store.  A job handed out in the
batch that submits it is claimed by the same write (``PutJob.lease``); the
others are claimed by the claimer task, which also claims the next due jobs
ahead (up to CLAIM_AHEAD), so that most assignments go out at once, without
a round trip.  An assignment dropped while its claim was in flight gives its
grab slot back (it was never sent).  On the way out the jobs claimed ahead
are handed back; if the server dies they wait for their lease.
Another server's change of a job this server is writing (a put or delete
not committed yet) is held back: it was read before our write committed and
would undo it here.  Once the write is committed the job is read again.

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
from trio_periodic.scheduler.state import PENDING, Assignment
from trio_periodic.scheduler.throughput import Throughput
from trio_periodic.store.base import (
    Change,
    DeleteFunc,
    DeleteJob,
    PutJob,
    RemoteChange,
    RemoteDelete,
    RemoteDropFunc,
    RemoteJob,
    ScheduleStore,
    SharedStore,
    Store,
    StoreError,
)

log = logging.getLogger(__name__)

#: Cluster mode: jobs claimed ahead of the slots that will take them, so that
#: most assignments go out without a round trip to the database.  The stock
#: aims at what this server handed out from it in the last AHEAD_HORIZON
#: seconds, at least CLAIM_AHEAD and at most CLAIM_AHEAD_MAX jobs; a claim
#: round tops it up once it fell below half.  A busy server so claims in
#: large batches (fewer, cheaper transactions) and a quiet one holds few
#: jobs that other servers' workers could have taken.  If the server dies,
#: these wait for their lease like its running jobs.
CLAIM_AHEAD = 64
CLAIM_AHEAD_MAX = 512
AHEAD_HORIZON = 0.05
#: A job claimed ahead is handed out without a new claim only within this many
#: seconds of its claim: its lease (timeout + LEASE_GRACE from the claim) then
#: still outlasts the worker's timeout by LEASE_GRACE / 2.
AHEAD_FRESH = LEASE_GRACE / 2


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
        # Cluster mode: the store decides schedules' ticks (one server each).
        self._schedule_store: ScheduleStore | None = None
        if self.cluster is not None and isinstance(store, ScheduleStore):
            self._schedule_store = store
            core.schedules_remote = True
        self._fire_wake = trio.Event()
        # Cluster mode: assignments waiting for their claim (see _claimer).
        self._to_claim: list[Assign] = []
        self._claim_wake = trio.Event()
        #: Cluster mode: jobs claimed ahead and not handed out yet, with the
        #: epoch second their claim started.
        self._ahead: dict[tuple[bytes, bytes], float] = {}
        self._refill = False
        #: The stock the claimer aims at, and what was handed out of it since
        #: the last claim round (at ``_round_at``, epoch seconds).
        self._ahead_goal = CLAIM_AHEAD
        self._ahead_used = 0
        self._round_at = 0.0
        #: Cluster mode: job writes (puts, deletes) being committed, by
        #: handle (how many), and an event replaced after each commit.
        self._committing: dict[tuple[bytes, bytes], int] = {}
        #: Cluster mode: jobs whose change by another server arrived while
        #: we were writing them (read again once our writes are committed).
        self._held_back: set[tuple[bytes, bytes]] = set()
        #: Cluster mode: puts that claim their job (PutJob.lease) being
        #: committed: handle → (when the claim was asked, the assignment).
        self._put_claims: dict[tuple[bytes, bytes], tuple[float, Assign]] = {}
        self._claims_on_put = hasattr(store, "put_claims_refused")
        #: While a claim ahead is in flight: the jobs put, deleted or changed
        #: elsewhere meanwhile (their claim ahead is not to be trusted).
        self._claiming: set[tuple[bytes, bytes]] | None = None
        self._committed = trio.Event()
        self._wake = trio.Event()
        self._sleeping_until = math.inf
        #: Per-second counts of the core's counters over the last minutes.
        self.throughput = Throughput(core.counters)

    # ------------------------------------------------------------ batches

    def finish_batch(self) -> tuple[list[Effect], list[Change]]:
        """Dispatch after a batch of core calls; return its effects and changes."""
        core = self.core
        if core.candidates:  # else dispatch has nothing to do (and no clock to read)
            core.dispatch(self.clock.now())
        self.poke()
        effects, changes = core.take_effects(), core.take_changes()
        if changes and self.shared:
            if self._ahead or self._claiming is not None:
                self._forget_ahead(changes)
            if self._claims_on_put and effects:
                changes = self._claim_on_put(effects, changes)
            self._will_commit(changes)
        return effects, changes

    def _will_commit(self, changes: Sequence[Change]) -> None:
        """Cluster mode: the jobs these changes put have no row yet (a claim
        of one waits for the commit, ``_claim``), and other servers' changes
        of the jobs they put or delete are held back (``remote_changes``).
        Counted from the moment the batch is finished, not when its commit
        starts: assignments of other jobs may be claimed before then
        (``before_commit``), and remote changes may arrive."""
        committing = self._committing
        for handle in _written(changes):
            committing[handle] = committing.get(handle, 0) + 1

    def _committed_writes(self, changes: Sequence[Change]) -> None:
        committing = self._committing
        reread: list[tuple[bytes, bytes]] = []
        for handle in _written(changes):
            left = committing.get(handle, 0) - 1
            if left > 0:
                committing[handle] = left
                continue
            committing.pop(handle, None)
            if handle in self._held_back:
                self._held_back.discard(handle)
                reread.append(handle)
        if reread and self.cluster is not None:
            self.cluster.reread(reread)
        self._committed.set()
        self._committed = trio.Event()

    def committing(self, handle: tuple[bytes, bytes]) -> bool:
        """Cluster mode: whether a put or delete of this job is waiting for its commit."""
        return handle in self._committing

    def abandon(self, changes: Sequence[Change]) -> None:
        """Changes of finished batches that will never be committed (their
        connection could not wait for the store any longer)."""
        if self.shared:
            self._committed_writes(changes)

    def before_commit(self, effects: list[Effect]) -> tuple[list[Effect], list[Effect]]:
        """Split a batch's effects into (what may go out before its changes
        are committed, what must wait for the commit).

        Handing a job to a worker acknowledges nothing to its submitter, so
        assignments need not wait (replies and RUN_JOB results do).  In
        cluster mode the job must be claimed first: the assignments whose
        claim rides on this batch's put (``PutJob.lease``) wait for the
        commit; the others go through the claimer now, which waits for any
        put of their job still being committed."""
        put_claims = self._put_claims
        early: list[Effect] = []
        later: list[Effect] = []
        for e in effects:
            if isinstance(e, Assign) and (
                not put_claims or put_claims.get((e.job.func, e.job.name), (0.0, None))[1] is not e
            ):
                early.append(e)
            else:
                later.append(e)
        return early, later

    def _forget_ahead(self, changes: Sequence[Change]) -> None:
        """Our own put clears our claim on the row (and a delete removes it):
        such a job must be claimed again before it goes out."""
        gone = list(_written(changes))
        for c in changes:
            if isinstance(c, DeleteFunc):
                gone += [h for h in self._ahead if h[0] == c.func]
        self._forget(gone)

    def _forget(self, handles: Iterable[tuple[bytes, bytes]]) -> None:
        ahead, claiming = self._ahead, self._claiming
        for handle in handles:
            ahead.pop(handle, None)
            if claiming is not None:
                claiming.add(handle)  # a claim ahead in flight must not keep it

    def _claim_on_put(self, effects: list[Effect], changes: list[Change]) -> list[Change]:
        """Jobs handed out in the batch that puts them: claim them in the same
        write (``PutJob.lease``), one transaction instead of a put and a claim."""
        last: dict[tuple[bytes, bytes], int] = {}
        for i, c in enumerate(changes):
            if isinstance(c, PutJob):
                last[(c.job.func, c.job.name)] = i
            elif isinstance(c, DeleteJob):
                last.pop((c.func, c.name), None)
            elif isinstance(c, DeleteFunc):
                last = {h: j for h, j in last.items() if h[0] != c.func}
        if not last:
            return changes
        now = self.clock.now()
        out = changes
        for e in effects:
            if not isinstance(e, Assign):
                continue
            handle = (e.job.func, e.job.name)
            i = last.pop(handle, -1)
            if i < 0:
                continue
            if out is changes:
                out = list(changes)
            put = out[i]
            assert isinstance(put, PutJob)
            out[i] = PutJob(put.job, e.job.timeout + LEASE_GRACE)
            self._put_claims[handle] = (now, e)
        return out

    async def commit(self, changes: Sequence[Change]) -> None:
        """Make changes durable (a no-op for the memory store)."""
        if not changes or not self.store.durable:
            return
        if not self.shared:
            await self.store.commit(changes)
            return
        ok = False
        try:
            await self.store.commit(changes)
            ok = True
        finally:
            if self._put_claims:
                self._took_put_claims(changes, ok)
            self._committed_writes(changes)

    def _took_put_claims(self, changes: Sequence[Change], ok: bool) -> None:
        """After the commit of puts that claimed their job: the ones the store
        claimed (and that are still assigned) go out without another claim."""
        refused: set[tuple[bytes, bytes]] = getattr(self.store, "put_claims_refused", set())
        for c in changes:
            if not isinstance(c, PutJob) or c.lease is None:
                continue
            handle = (c.job.func, c.job.name)
            claim = self._put_claims.pop(handle, None)
            if handle in refused:
                refused.discard(handle)
            elif ok and claim is not None and self._pending_claim(claim[1]) is not None:
                self._ahead[handle] = claim[0]

    async def publish(self, effects: list[Effect]) -> None:
        """Deliver a batch's effects.  When the store is shared with other
        servers, assignments of jobs claimed ahead go out at once; the others
        go to the claimer task, which claims everything queued meanwhile
        (and the next due jobs) in one transaction before it delivers."""
        self._publish_now(effects)

    def _publish_now(self, effects: list[Effect]) -> None:
        if self.shared and any(isinstance(e, Assign) for e in effects):
            effects = self._take_claimed(effects)
        self.deliver(effects)

    def _take_claimed(self, effects: list[Effect]) -> list[Effect]:
        """The effects that may go out now; queue the assignments that need a claim."""
        ready, need = self._split_claimed(effects)
        self._to_claim += need
        low = len(self._ahead) < self._ahead_goal // 2
        if need or low:
            self._refill = low
            self._claim_wake.set()
        return ready

    def _split_claimed(self, effects: list[Effect]) -> tuple[list[Effect], list[Assign]]:
        """(what may go out now, the assignments that still need a claim)."""
        ready: list[Effect] = []
        need: list[Assign] = []
        ahead = self._ahead
        fresh_after = self.clock.now() - AHEAD_FRESH
        for e in effects:
            if isinstance(e, Assign):
                claimed_at = ahead.pop((e.job.func, e.job.name), None)
                if claimed_at is None or claimed_at < fresh_after:
                    need.append(e)
                    continue
                self._ahead_used += 1
            ready.append(e)
        return ready, need

    async def _claimer(self) -> None:
        """Cluster mode: claim queued assignments in batches, then deliver them."""
        while True:
            await self._claim_wake.wait()
            self._claim_wake = trio.Event()
            while self._to_claim or self._refill:
                batch, self._to_claim = self._to_claim, []
                self._refill = False
                self.deliver(await self._claim(list[Effect](batch)))

    def _extras(
        self, now: float, claims: dict[tuple[bytes, bytes], float]
    ) -> dict[tuple[bytes, bytes], float]:
        """The due jobs to claim ahead along with ``claims``: enough to top the
        stock up to its goal (stale entries are claimed again)."""
        goal = self._next_ahead_goal(now)
        ahead = self._ahead
        stale = [h for h, at in ahead.items() if at < now - AHEAD_FRESH]
        for handle in stale:
            del ahead[handle]
        if len(ahead) >= goal // 2 and not stale:
            return {}
        skip = ahead.keys() | claims.keys() | self._committing.keys()
        due = self.core.due_pending(now, goal - len(ahead), skip)
        return {(f, n): now + timeout + LEASE_GRACE for f, n, timeout in due}

    def _next_ahead_goal(self, now: float) -> int:
        """The stock to aim at from this round on: what the last rounds' pace
        of hand-outs would use in AHEAD_HORIZON seconds.  It rises at once
        and falls by half a round at most, so one slow round does not undo
        the batching."""
        elapsed = now - self._round_at
        wanted = self._ahead_used / elapsed * AHEAD_HORIZON if elapsed > 0 else 0.0
        self._round_at, self._ahead_used = now, 0
        goal = max(int(wanted), self._ahead_goal // 2, CLAIM_AHEAD)
        self._ahead_goal = min(goal, CLAIM_AHEAD_MAX)
        return self._ahead_goal

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
            ready, assigns = self._split_claimed(effects)
            out += ready
            # A claim of a job whose put is still being committed would find no
            # row and back off for tens of ms: wait for the commit instead.
            while any((a.job.func, a.job.name) in self._committing for a in assigns):
                await self._committed.wait()
            now = self.clock.now()
            claims = {(a.job.func, a.job.name): now + a.job.timeout + LEASE_GRACE for a in assigns}
            extras = self._extras(now, claims)
            if not claims and not extras:
                return out
            claims.update(extras)
            assert self.cluster is not None
            self._claiming = set()
            try:
                refused = await self.cluster.claim([(f, n, t) for (f, n), t in claims.items()])
            except StoreError as exc:
                self._claiming = None
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
            touched, self._claiming = self._claiming, None
            for handle in extras:
                if handle not in refused and handle not in touched:
                    self._ahead[handle] = now
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
        if self._committing:
            changes = self._hold_back(changes)
        if self._ahead or self._claiming is not None:
            # A row another server changed is not (or no longer) claimed by us.
            gone: list[tuple[bytes, bytes]] = []
            for c in changes:
                if (handle := _remote_job(c)) is not None:
                    gone.append(handle)
                elif isinstance(c, RemoteDropFunc):
                    gone += [h for h in self._ahead if h[0] == c.func]
            self._forget(gone)
        self.core.remote_apply(changes, self.clock.now())
        self._wake.set()

    def _hold_back(self, changes: list[RemoteChange]) -> list[RemoteChange]:
        """The changes of jobs we are not writing; the others wait.

        Another server's change of a job we are writing was read before our
        write committed, so it is older than our write: applied here it would
        undo it (a delete read before our put's row existed would drop the
        job we just accepted, while its row stays in the store).  The job is
        read again once our writes of it are committed (``_committed_writes``)."""
        keep: list[RemoteChange] = []
        for c in changes:
            handle = _remote_job(c)
            if handle is not None and handle in self._committing:
                self._held_back.add(handle)
            else:
                keep.append(c)
        return keep

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
        self.core.dispatch(self.clock.now())
        effects = self.core.take_effects()
        if effects:
            # Cluster mode: jobs claimed ahead go out now, the others via the claimer.
            self._publish_now(effects)

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
        try:
            async with trio.open_nursery() as nursery:
                if self.cluster is not None:
                    await nursery.start(partial(self.cluster.watch, self.remote_changes))
                    nursery.start_soon(self._claimer)
                if self._schedule_store is not None:
                    nursery.start_soon(self._schedule_firer)
                nursery.start_soon(self._sample_throughput)
                task_status.started()
                await self._wake_loop()
        finally:
            if self._ahead:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await self._release_ahead()

    async def _release_ahead(self) -> None:
        """On the way out: hand the jobs claimed ahead back to the other servers
        now (a put clears our claim and tells them), rather than after their
        lease.  A server that dies leaves them to run out."""
        puts: list[Change] = []
        for func, name in self._ahead:
            entry = self.core.entry(func, name)
            if entry is not None and entry.state is PENDING:
                puts.append(PutJob(entry.snapshot()))
        self._ahead.clear()
        try:
            await self.store.commit(puts)
        except StoreError as exc:
            log.warning("could not hand back %d jobs claimed ahead: %s", len(puts), exc)

    async def _sample_throughput(self) -> None:
        """Just after each whole second, count what the core's totals grew by."""
        while True:
            self.throughput.sample(self.clock.now(), self.core.counters)
            next_second = math.floor(self.clock.now()) + 1
            await trio.sleep_until(self.clock.to_trio(next_second) + 0.001)

    async def _schedule_firer(self) -> None:
        """Cluster mode: send schedules' due events through the store, which
        decides each with the schedule's row locked; apply the outcome here."""
        assert self._schedule_store is not None
        book = self.core.schedules
        while True:
            await self._fire_wake.wait()
            self._fire_wake = trio.Event()
            while book.requests:
                requests, book.requests = book.requests, []
                for r in requests:
                    try:
                        out = await self._schedule_store.fire_schedule(r.func, r.name, r.decision)
                    except StoreError as exc:
                        log.error("schedule %r/%r: %s", r.func, r.name, exc)
                        continue
                    if out is not None:
                        self.core.schedule_applied(r.before, out[0], out[1], self.clock.now())
                await self.settle()

    async def _wake_loop(self) -> None:
        core = self.core
        while True:
            core.tick(self.clock.now())
            if core.schedules.requests:
                self._fire_wake.set()
            await self.settle()
            self._sleeping_until = core.next_wakeup()
            if not core.candidates:
                # The cancel scope below enforces the earliest job timeout / due time.
                with trio.move_on_at(self.clock.to_trio(self._sleeping_until)):
                    await self._wake.wait()
            self._sleeping_until = -math.inf
            self._wake = trio.Event()
            await trio.lowlevel.checkpoint()


def _written(changes: Sequence[Change]) -> Iterable[tuple[bytes, bytes]]:
    """The jobs ``changes`` put or delete, once per change."""
    for c in changes:
        if isinstance(c, PutJob):
            yield (c.job.func, c.job.name)
        elif isinstance(c, DeleteJob):
            yield (c.func, c.name)


def _remote_job(change: RemoteChange) -> tuple[bytes, bytes] | None:
    """The job another server's change writes or deletes (None: not one job's)."""
    if isinstance(change, RemoteJob):
        return (change.job.func, change.job.name)
    if isinstance(change, RemoteDelete):
        return (change.func, change.name)
    return None
