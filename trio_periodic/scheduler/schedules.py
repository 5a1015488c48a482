"""Schedules kept by the server: what each tick does, and when the next one is.

Theory of operation
-------------------
A schedule (``ScheduleRow``, stored) submits job ``name`` of ``func`` at each
tick of its cron expression (``cron.py``: zones and the DST rule).  What a
tick, a finished run or a start does to a schedule is decided by the pure
functions ``on_tick``, ``on_release`` and ``on_start``: each takes the row,
whether the job exists (pending, running or held anywhere) and returns the
new row and the job to submit, if any.  The same functions run in the
scheduler core (one server: the core's job table says whether the job
exists) and, in cluster mode, inside the store's transaction that locks the
schedule's row (``ScheduleStore.fire_schedule``): ``last_tick`` only moves
forward, so of several servers handling one tick exactly one changes the
row and submits the job; the others find the tick handled and do nothing.

Rules (the README's "Schedules" section says the same to users):

* Overlap ``skip`` (default): at a tick the job still exists (pending or
  running; a pending job not run yet serves the tick) → the tick is skipped
  and counted.  ``queue``: the tick is remembered (``queued``, at most one)
  and the job is submitted once the current run ends (done, removed, failed
  for good); a tick that finds one already remembered is skipped.
* Catch-up, at start, for the ticks missed while no server ran (after
  ``last_tick``): ``none`` (default) fires none; ``last`` handles the most
  recent one like a tick; ``all`` queues each of them (the newest
  ``MAX_CATCH_UP``; older ones are dropped) and submits them one after
  another, as each run ends.
* A job fired at a tick is due at the tick (``sched_at``); one submitted when
  a run ended is due at once.

``ScheduleBook`` holds the schedules of one server and when each needs
attention: a heap of next ticks (lazy: an entry whose time is not the
schedule's current ``next_tick`` is stale), the schedules to start (catch-up
once after restore) and those to release (their job ended while ticks were
queued).  ``wake`` is the earliest of these, kept current so that the core's
``next_wakeup`` reads one attribute: a server without schedules does no work
for them.  ``queued`` maps the handles with queued ticks to their schedule;
the core looks a finished job up there only while it is not empty.

With a store shared by several servers the book does not decide: it turns
what is due into ``requests`` that the service sends through the store, and
the outcome comes back with ``applied``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from trio_periodic.protocol.job import Job
from trio_periodic.scheduler.cron import Cron, CronError
from trio_periodic.store.base import Change, DeleteSchedule, PutSchedule, ScheduleRow

SKIP, QUEUE = "skip", "queue"
OVERLAPS = (SKIP, QUEUE)
CATCH_UPS = ("none", "last", "all")
#: At most this many missed ticks are caught up with ``all`` (the newest).
MAX_CATCH_UP = 100
#: A tick is handled when ``now`` is within this many seconds of it: the
#: service's epoch clock is trio's clock plus an offset, and the sum may land
#: a hair before the instant it slept until.
EARLY = 0.001

Handle = tuple[bytes, bytes]
START, TICK, RELEASE = "start", "tick", "release"


def job_of(row: ScheduleRow, sched_at: int) -> Job:
    return Job(row.func, row.name, row.workload, sched_at, 0, row.timeout)


def _fire(row: ScheduleRow, at: int, last_tick: int, queued: int) -> tuple[ScheduleRow, Job]:
    new = replace(row, last_fired=at, fired=row.fired + 1, last_tick=last_tick, queued=queued)
    return new, job_of(row, at)


def on_tick(row: ScheduleRow, tick: int, exists: bool) -> tuple[ScheduleRow, Job | None]:
    """The tick at ``tick`` (epoch s) comes; ``exists``: the job is pending or running."""
    if row.last_tick >= tick:
        return row, None  # handled already (by another server)
    if not exists:
        return _fire(row, tick, tick, row.queued)
    if row.overlap == QUEUE and row.queued == 0:
        return replace(row, last_tick=tick, queued=1), None
    return replace(row, last_tick=tick, skipped=row.skipped + 1), None


def on_release(row: ScheduleRow, now: float, exists: bool) -> tuple[ScheduleRow, Job | None]:
    """The job ended (or may have): submit the next queued tick, if any."""
    if row.queued <= 0 or exists:
        return row, None
    return _fire(row, math.floor(now), row.last_tick, row.queued - 1)


def on_start(
    row: ScheduleRow, cron: Cron, now: float, exists: bool
) -> tuple[ScheduleRow, Job | None]:
    """A server starts: the ticks missed since ``last_tick``, by ``catch_up``."""
    limit = MAX_CATCH_UP if row.catch_up == "all" else 1
    missed = cron.ticks_between(row.last_tick, now, limit)
    if not missed:
        # Nothing missed; a queued tick whose run ended while we were down.
        return on_release(row, now, exists)
    if row.catch_up == "last":
        return on_tick(row, missed[-1], exists)
    if row.catch_up == "all":
        queued = min(row.queued + len(missed), MAX_CATCH_UP)
        return on_release(replace(row, last_tick=missed[-1], queued=queued), now, exists)
    return on_release(replace(row, last_tick=missed[-1]), now, exists)


def decide(
    kind: str, cron: Cron, tick: int, now: float, row: ScheduleRow, exists: bool
) -> tuple[ScheduleRow, Job | None]:
    if kind == TICK:
        return on_tick(row, tick, exists)
    if kind == RELEASE:
        return on_release(row, now, exists)
    return on_start(row, cron, now, exists)


@dataclass(slots=True)
class Request:
    """Cluster mode: an event for the store to decide (see ``decide``)."""

    func: bytes
    name: bytes
    kind: str
    cron: Cron
    tick: int
    now: float
    #: The row as the store had it when it decided (set by ``decision``).
    before: ScheduleRow | None = None

    def decision(self, row: ScheduleRow, exists: bool) -> tuple[ScheduleRow, Job | None]:
        self.before = row
        return decide(self.kind, self.cron, self.tick, self.now, row, exists)


class Entry:
    """A schedule in the book: its row, parsed cron, next tick and local counts."""

    __slots__ = ("cron", "local_fired", "local_skipped", "next_tick", "row")

    def __init__(self, row: ScheduleRow, cron: Cron) -> None:
        self.row = row
        self.cron = cron
        self.next_tick = math.inf
        #: This server's own fires and skips (for /metrics).
        self.local_fired = 0
        self.local_skipped = 0


def make_row(
    func: bytes,
    name: bytes,
    cron: str,
    tz: str,
    *,
    workload: bytes = b"",
    timeout: int = 0,
    overlap: str = SKIP,
    catch_up: str = "none",
    now: float,
) -> ScheduleRow:
    """A new schedule's row, validated (CronError / ValueError, one line).
    Its first tick is the first one after ``now``."""
    parsed = Cron(cron, tz)
    if overlap not in OVERLAPS:
        raise CronError(f"overlap must be one of {', '.join(OVERLAPS)}, not {overlap!r}")
    if catch_up not in CATCH_UPS:
        raise CronError(f"catch-up must be one of {', '.join(CATCH_UPS)}, not {catch_up!r}")
    if not 0 <= timeout <= 0xFFFFFFFF:
        raise CronError(f"timeout must be 0..4294967295 seconds, not {timeout}")
    return ScheduleRow(
        func, name, parsed.expr, parsed.tz, workload, timeout, overlap, catch_up,
        last_tick=math.floor(now),
    )  # fmt: skip


class ScheduleBook:
    def __init__(self) -> None:
        self.entries: dict[Handle, Entry] = {}
        #: Earliest moment something here is due (epoch s); inf when nothing.
        self.wake = math.inf
        #: Handles with queued ticks → their entry (checked when a job ends;
        #: the core keeps a reference: mutate it, never replace it).
        self.queued: dict[Handle, Entry] = {}
        #: Cluster mode: events for the service to send through the store.
        self.requests: list[Request] = []
        self._timers: list[tuple[float, int, Handle]] = []
        self._starting: set[Handle] = set()
        self._releasing: set[Handle] = set()
        self._seq = 0

    def __len__(self) -> int:
        return len(self.entries)

    # -- membership ----------------------------------------------------------

    def put(self, row: ScheduleRow, now: float, changes: list[Change] | None = None) -> Entry:
        """Add or replace a schedule (an admin's add, or a mirrored row).
        ``changes``: where to record the store change (None: already stored)."""
        old = self.entries.get(row.handle)
        if old is not None and (old.row.cron, old.row.tz) == (row.cron, row.tz):
            entry = old
        else:
            entry = Entry(row, Cron(row.cron, row.tz))
            if old is not None:
                entry.local_fired, entry.local_skipped = old.local_fired, old.local_skipped
            self.entries[row.handle] = entry
        entry.row = row
        self._track_queued(entry)
        self._arm(entry, max(row.last_tick, now - EARLY))
        if changes is not None:
            changes.append(PutSchedule(row))
        return entry

    def remove(self, func: bytes, name: bytes, changes: list[Change] | None = None) -> bool:
        handle = (func, name)
        entry = self.entries.pop(handle, None)
        if entry is None:
            return False
        entry.next_tick = math.inf  # its heap entry is stale now
        self.queued.pop(handle, None)
        self._starting.discard(handle)
        self._releasing.discard(handle)
        if changes is not None:
            changes.append(DeleteSchedule(func, name))
        self._rewake()
        return True

    def restore(self, rows: Iterable[ScheduleRow], now: float) -> None:
        """Schedules read at start: each gets its catch-up (``on_start``) first."""
        for row in rows:
            try:
                entry = self.put(row, now)
            except CronError:
                continue  # a zone this machine lacks: left in the store, not run
            self._starting.add(row.handle)
            entry.next_tick = math.inf
        self._rewake()

    def replace_all(self, rows: Iterable[ScheduleRow], now: float) -> None:
        """Mirror: exactly these schedules exist (after a reconnect)."""
        rows = list(rows)
        keep = {r.handle for r in rows}
        for handle in [h for h in self.entries if h not in keep]:
            self.remove(*handle)
        for row in rows:
            self.mirror(row, now)

    def mirror(self, row: ScheduleRow, now: float) -> None:
        """Another server changed the row: take its definition and state."""
        try:
            self.put(row, now)
        except CronError:
            return

    # -- time ----------------------------------------------------------------

    def _arm(self, entry: Entry, after: float) -> None:
        """Next tick strictly after ``after``."""
        try:
            t = entry.cron.next_after(after)
        except CronError:
            entry.next_tick = math.inf
            return
        entry.next_tick = t
        self._seq += 1
        heapq.heappush(self._timers, (t, self._seq, entry.row.handle))
        if t < self.wake:
            self.wake = t

    def _rewake(self) -> None:
        if self._starting or self._releasing:
            self.wake = -math.inf
            return
        timers = self._timers
        while timers:
            at, _, handle = timers[0]
            entry = self.entries.get(handle)
            if entry is not None and entry.next_tick == at:
                self.wake = at
                return
            heapq.heappop(timers)
        self.wake = math.inf

    def job_gone(self, handle: Handle) -> None:
        """The core deleted job ``handle`` (only called while ``queued``)."""
        if handle in self.queued:
            self._releasing.add(handle)
            self.wake = -math.inf

    def _track_queued(self, entry: Entry) -> None:
        if entry.row.queued > 0:
            self.queued[entry.row.handle] = entry
        else:
            self.queued.pop(entry.row.handle, None)

    def due(self, now: float) -> list[tuple[Entry, str, int]]:
        """Take what is due at ``now``: (entry, kind, tick)."""
        out: list[tuple[Entry, str, int]] = []
        for handle in sorted(self._starting):
            entry = self.entries.get(handle)
            if entry is not None:
                out.append((entry, START, 0))
                self._arm(entry, now)
        self._starting.clear()
        for handle in sorted(self._releasing):
            entry = self.entries.get(handle)
            if entry is not None:
                out.append((entry, RELEASE, 0))
        self._releasing.clear()
        timers = self._timers
        while timers and timers[0][0] <= now + EARLY:
            at, _, handle = heapq.heappop(timers)
            entry = self.entries.get(handle)
            if entry is None or entry.next_tick != at:
                continue
            tick = int(at)
            if now - at > 1:
                # Late (a stall, a clock jump): the newest tick due stands for
                # the ones in between.
                tick = max(tick, next(entry.cron.backwards(now + EARLY), tick))
            self._arm(entry, max(at, now))
            out.append((entry, TICK, tick))
        self._rewake()
        return out

    def run(
        self,
        now: float,
        exists: Callable[[bytes, bytes], bool],
        submit: Callable[[Job], None],
        changes: list[Change],
        remote: bool,
    ) -> None:
        """Handle what is due: here, or as ``requests`` for the store (``remote``)."""
        for entry, kind, tick in self.due(now):
            row = entry.row
            if remote:
                self.requests.append(Request(row.func, row.name, kind, entry.cron, tick, now))
                continue
            new, job = decide(kind, entry.cron, tick, now, row, exists(row.func, row.name))
            self.applied(new, job, now, submit, changes)

    def applied(
        self,
        new: ScheduleRow,
        job: Job | None,
        now: float,
        submit: Callable[[Job], None] | None,
        changes: list[Change] | None,
        before: ScheduleRow | None = None,
    ) -> None:
        """The outcome of a decision: record the row, submit the job.
        ``before``: the row the decision saw (default: ours)."""
        entry = self.entries.get(new.handle)
        if entry is None:
            return
        old = entry.row if before is None else before
        if new == entry.row:
            return
        if job is not None:
            entry.local_fired += 1
        entry.local_skipped += max(0, new.skipped - old.skipped)
        entry.row = new
        self._track_queued(entry)
        if job is not None and submit is not None:
            submit(job)
        if changes is not None:
            changes.append(PutSchedule(new))

    # -- reading -------------------------------------------------------------

    def rows(self, only: Iterable[bytes] | None = None) -> list[Entry]:
        allowed = None if only is None else set(only)
        return [self.entries[h] for h in sorted(self.entries) if allowed is None or h[0] in allowed]
