"""The scheduler core: every rule of SEMANTICS.md, with no I/O and no clock.

Theory of operation
-------------------
There is one ``Scheduler`` per server.  Every method that depends on time takes
``now`` (float seconds since the Unix epoch) as an argument; nothing here
sleeps, reads a clock or touches a socket, so the whole core can be driven
deterministically by tests.

State:

* Each function (``FuncState``) maps its job names to the jobs.  A pending
  job is one ``bytes`` record (``record.py``) that also sits in the
  function's ``SortedList``; records sort by ``(run_at, seq)``, so jobs of one
  function go out in due-time order, first come first served among equal
  times.  Records never change; to move a job we remove its record and add a
  new one.  A job that leaves the queue (a worker holds it, it waits for a
  lock, another server holds it) becomes a ``JobEntry`` until it is pending
  again or gone.  Pending jobs are the many (a million must fit in a few
  hundred MB), the others are few: at most the workers' slots, plus locks.
* Each connection (``ConnState``) has free grab slots (the msgids of its
  GRAB_JOBs), the assignments it has not confirmed yet (one per msgid at most)
  and every job it holds.
* ``deadlines`` orders the assignments by the moment their timeout runs out
  (a heap with O(1) withdrawal: nearly every deadline is withdrawn unfired).
  The timeout counts from assignment and restarts when the worker confirms
  with JOB_ASSIGNED, so a worker always gets its full timeout once it starts
  the job.  A job held by one worker is never handed to a second one unless
  that deadline passed.
* ``timers`` is a lazy heap of ``(run_at, func)``: a function with a pending
  job that is not due yet has an entry no later than its earliest job.  Stale
  entries only cause a harmless extra wake-up.
* ``candidates`` holds the functions that may be dispatchable now (a job
  became due, a slot or worker appeared).  ``dispatch`` looks only at them,
  so an idle server does no work.

Retry policies, attempt counts and the failed set (``retry.py``) sit beside
this state: ``policies`` by function, ``attempts`` only for jobs that failed
(the hot path checks the dict is empty, nothing per job) and ``failed``, the
jobs past their last attempt, which are in no queue and in no ``fs.jobs``.

Outputs: effects (``Assign``, ``Push``) are appended to ``self.effects`` and
store changes to ``self.changes``; the service takes both after each batch of
calls (``take_effects`` / ``take_changes``), makes the changes durable and
then routes the effects.

What is off a job's way from submit to done lives in mixins of the same
class, each in its module: locks (``locks.py``), cluster mode (``cluster.py``),
the failed set's administration (``failed_set.py``); retry backoff and
schedules' ticks are pure functions of ``retry.py`` and ``schedules.py``.

Differences from the reference server are deliberate and listed in the
README ("Differences from periodicd"); each is marked *fix:* below.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import replace
from typing import NamedTuple

from sortedcontainers import SortedList

from trio_periodic.protocol.job import Job
from trio_periodic.scheduler import retry
from trio_periodic.scheduler.cluster import ClusterMirror
from trio_periodic.scheduler.config import DEFAULTS, U32_MAX
from trio_periodic.scheduler.effects import (
    RESULT_EXPIRED,
    RESULT_FAILED,
    RESULT_REMOVED,
    Assign,
    Effect,
    Push,
)
from trio_periodic.scheduler.failed_set import FailedSet
from trio_periodic.scheduler.lazyheap import LazyHeap
from trio_periodic.scheduler.locks import LockTable
from trio_periodic.scheduler.record import fields, pack, run_at_of, sched_at_of, unpack
from trio_periodic.scheduler.schedules import ScheduleBook
from trio_periodic.scheduler.state import (
    _NO_ASSIGNMENTS,
    ELSEWHERE,
    LOCKED,
    PENDING,
    RUNNING,
    Assignment,
    ConnState,
    FuncState,
    Handle,
    JobEntry,
    JobState,
    Lock,
    Stored,
    Waiters,
)
from trio_periodic.store.base import (
    HOW_FAIL,
    HOW_TIMEOUT,
    Change,
    DeleteFailed,
    DeleteFunc,
    DeleteJob,
    ExtendLease,
    FailedJob,
    PutFailed,
    PutFunc,
    PutJob,
    RetryPolicy,
    ScheduleRow,
    SetAttempts,
    SetConfig,
    StoredState,
)

STREAM_EOF = b"EOF"
#: Lifetime of a RUN_JOB / RECV_DATA wait when the job has no timeout (seconds).
DEFAULT_WAIT = 60
#: Delay before a failed job runs again (seconds).
RETRY_DELAY = 1.0
#: How much longer than the job's timeout a cluster lease lasts (seconds), so
#: that the holder's own timeout always fires before another server steps in.
LEASE_GRACE = 5.0

_INF = math.inf


class StatusRow(NamedTuple):
    func: bytes
    workers: int
    jobs: int
    processing: int
    locked: int
    sched_at: int


class Scheduler(FailedSet, ClusterMirror, LockTable):
    def __init__(self) -> None:
        self.config: dict[str, int] = dict(DEFAULTS)
        self.funcs: dict[bytes, FuncState] = {}
        self.locks: dict[bytes, Lock] = {}
        #: Lock names each job holds or waits for, by handle (few jobs use locks,
        #: so a table here costs nothing per job; a pending job may hold one).
        self.job_locks: dict[Handle, set[bytes]] = {}
        self.waiters: dict[Handle, Waiters] = {}
        self.deadlines: LazyHeap[Assignment] = LazyHeap()
        self.waiter_expiry: SortedList = SortedList()  # (expires_at, seq, handle)
        self.timers: list[tuple[float, bytes]] = []
        self.candidates: set[bytes] = set()
        self.effects: list[Effect] = []
        self.changes: list[Change] = []
        #: True when the store is shared with other servers (cluster mode).
        self.shared = False
        #: True while the server drains for shutdown: nothing more is handed out.
        self.draining = False
        #: Jobs held by other servers, by lease expiry: (lease_until, seq, JobEntry).
        self.leases: SortedList = SortedList()
        #: Jobs whose claim found no row, and how many times in a row.
        self._unclaimable: dict[Handle, int] = {}
        self._seq = 0
        self._conn_ids = 0
        #: Totals since start, for /metrics.
        self.counters: dict[str, int] = dict.fromkeys(
            ("submitted", "assigned", "done", "failed", "rescheduled", "expired", "removed"), 0
        )
        # Retry policies and the failed set (see retry.py).
        #: Retry policy by function (functions without one keep RETRY_DELAY).
        self.policies: dict[bytes, RetryPolicy] = {}
        #: Failures so far of jobs of functions with a policy that failed at
        #: least once, by handle (sparse: the hot path only checks it is empty).
        self.attempts: dict[Handle, int] = {}
        #: The failed set: function → name → FailedJob.
        self.failed: dict[bytes, dict[bytes, FailedJob]] = {}
        #: Where jitter comes from (tests seed it).
        self.random = random.Random()
        #: Names a worker connection for the failed set (the server sets it).
        self.describe: Callable[[ConnState], str] = lambda conn: f"connection {conn.conn_id}"
        #: Totals since start by function, for /metrics: failures retried and
        #: jobs moved to the failed set.
        self.retried: dict[bytes, int] = {}
        self.failed_total: dict[bytes, int] = {}
        #: Schedules kept by the server (see schedules.py); idle when empty.
        self.schedules = ScheduleBook()
        #: True when a shared store decides schedules' ticks (the service then
        #: sends ``schedules.requests`` through it).
        self.schedules_remote = False
        #: The book's handles with queued ticks (the same dict, never replaced):
        #: a finished job costs one attribute read while it is empty.
        self._schedule_queued = self.schedules.queued

    # ------------------------------------------------------------------ plumbing

    def take_effects(self) -> list[Effect]:
        effects, self.effects = self.effects, []
        return effects

    def take_changes(self) -> list[Change]:
        changes, self.changes = self.changes, []
        return changes

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _func(self, name: bytes) -> FuncState:
        fs = self.funcs.get(name)
        if fs is None:
            fs = self.funcs[name] = FuncState(name)
        return fs

    def effective_timeout(self, job: Job) -> int:
        # Inlined in _hand_to and job_assigned (twice per job: a call costs there).
        return job.timeout if job.timeout > 0 else self.config["timeout"]

    def restore(self, state: StoredState, now: float) -> None:
        """Load what a store kept.  Every job comes back pending."""
        for key, value in state.config.items():
            if key in self.config:
                self.config[key] = value
        for func in state.funcs:
            self._func(func)
        for job in state.jobs:
            self._put(job, now)
        for (func, name), lease_until in state.leases.items():
            stored = self._lookup(func, name)
            if stored is not None and lease_until > now:
                self._hold_elsewhere(self.funcs[func], stored, lease_until)
        self._restore_retry(state.policies, state.attempts, state.failed)
        self.changes.clear()
        if state.schedules:
            self.schedules.restore(state.schedules, now)

    # ------------------------------------------------------------ connections

    def connect(self, is_worker: bool, sink: object = None) -> ConnState:
        self._conn_ids += 1
        return ConnState(self._conn_ids, is_worker, sink)

    def disconnect(self, conn: ConnState, now: float) -> None:
        """A connection went away: hand back its jobs, forget its slots."""
        conn.closed = True
        # The sink usually points back at this ConnState: dropping it breaks
        # that cycle, so the closed connection is freed at once even while a
        # RUN_JOB waiter entry still names this ConnState.
        conn.sink = None
        for func in list(conn.funcs):
            self.cant_do(conn, func)
        conn.slots.clear()
        conn.slot_set.clear()
        conn.open.clear()
        for assignment in list(conn.held.values()):
            if assignment.confirmed:
                self._expire_assignment(assignment, now, retry.HOW_DISCONNECT)
            else:
                # Never confirmed: the worker may not have seen it; offer it again
                # at once with no penalty.
                self._drop_assignment(assignment)
                entry = assignment.entry
                if not entry.assignments and entry.state is RUNNING:
                    self._requeue(entry, entry.run_at)

    # ----------------------------------------------------------- registration

    def can_do(self, conn: ConnState, func: bytes, broadcast: bool = False) -> None:
        if func not in self.funcs:
            self.changes.append(PutFunc(func))
        fs = self._func(func)
        if func not in conn.funcs:
            conn.funcs.add(func)
            fs.workers.append(conn)
        # The latest registration decides the mode of the function.
        fs.broadcast = broadcast
        if conn.slots:
            self.candidates.add(func)

    def cant_do(self, conn: ConnState, func: bytes) -> None:
        if func not in conn.funcs:
            return
        conn.funcs.discard(func)
        fs = self.funcs.get(func)
        if fs is not None and conn in fs.workers:
            fs.workers.remove(conn)

    def worker_count(self, func: bytes) -> int:
        fs = self.funcs.get(func)
        return len(fs.workers) if fs is not None else 0

    # --------------------------------------------------------------- grabbing

    def grab_wanted(self, conn: ConnState, msgid: int) -> bool:
        """Should a GRAB_JOB on ``msgid`` arm a slot (once its reply is out)?

        fix: a GRAB_JOB that arrives while an unconfirmed assignment is open on
        the same msgid was sent before the worker saw that assignment; arming
        it would put a second job on a busy msgid.  After JOB_ASSIGNED (even in
        the same read) a GRAB_JOB re-arms the slot as expected."""
        return msgid not in conn.open and msgid not in conn.slot_set

    def add_slot(self, conn: ConnState, msgid: int) -> None:
        if conn.closed or msgid in conn.slot_set or msgid in conn.open:
            return
        conn.slots.append(msgid)
        conn.slot_set.add(msgid)
        self.candidates.update(conn.funcs)

    def job_assigned(self, conn: ConnState, msgid: int, now: float) -> None:
        """JOB_ASSIGNED: the worker started the job; its timeout starts now."""
        assignment = conn.open.pop(msgid, None)
        if assignment is None:
            return
        assignment.confirmed = True
        entry = assignment.entry
        deadline = now + (entry.timeout if entry.timeout > 0 else self.config["timeout"])
        self._set_deadline(assignment, deadline)
        if self.shared:
            self.changes.append(ExtendLease(entry.func, entry.name, deadline + LEASE_GRACE))

    def job_unassigned(self, conn: ConnState, msgid: int, now: float) -> None:
        """JOB_UNASSIGNED: the worker declines; the job goes back unchanged."""
        assignment = conn.open.pop(msgid, None)
        if assignment is None:
            return
        entry = assignment.entry
        self._drop_assignment(assignment)
        if not entry.assignments and entry.state is RUNNING:
            self._requeue(entry, entry.run_at)

    # ------------------------------------------------------------- submitting

    def entry(self, func: bytes, name: bytes) -> JobEntry | None:
        """The stored job with this handle, if any.  A pending job comes back
        as a detached copy in state PENDING: changing it changes nothing."""
        fs = self.funcs.get(func)
        if fs is None:
            return None
        stored = fs.jobs.get(name)
        if isinstance(stored, bytes):
            return self._unpacked(fs, stored)
        return stored

    def _lookup(self, func: bytes, name: bytes) -> Stored | None:
        """The stored job with this handle: a record if pending, else its entry."""
        fs = self.funcs.get(func)
        return fs.jobs.get(name) if fs is not None else None

    def _active(self, func: bytes, name: bytes) -> JobEntry | None:
        """The job with this handle if it is not pending (held, locked, elsewhere)."""
        fs = self.funcs.get(func)
        if fs is None:
            return None
        stored = fs.jobs.get(name)
        return None if stored is None or isinstance(stored, bytes) else stored

    @staticmethod
    def _unpacked(fs: FuncState, record: bytes) -> JobEntry:
        run_at, name, workload, sched_at, count, timeout = unpack(record)
        # fs.name: one bytes object per function, not one per job.
        return JobEntry(fs.name, name, workload, sched_at, count, timeout, run_at)

    def submit(self, job: Job, now: float) -> None:
        """SUBMIT_JOB / LOAD: replace unless running, never create a duplicate."""
        entry = self._active(job.func, job.name)
        if entry is not None and (entry.state is RUNNING or entry.state is ELSEWHERE):
            return
        self.counters["submitted"] += 1
        if self.attempts or self.failed:
            self._fresh_start(job.func, job.name)
        self._put(job, now)

    def _put(self, job: Job, now: float) -> None:
        if job.sched_at < now:
            run_at = now
            job.sched_at = int(now)
        else:
            run_at = float(job.sched_at)
        fs = self._func(job.func)
        name = job.name
        old = fs.jobs.get(name)
        if old is not None:
            self._forget(fs, name, old)
        self._seq += 1
        self._enqueue(fs, name, pack(job, run_at, self._seq))
        self.changes.append(PutJob(job))

    def run_job(self, conn: ConnState, msgid: int, job: Job, now: float) -> bool:
        """RUN_JOB: False means NO_WORKER.  The result arrives later as a Push."""
        if not self.worker_count(job.func):
            return False
        self._add_waiter(job, now).results.append((conn, msgid))
        self.submit(job, now)
        return True

    def recv_data(self, conn: ConnState, msgid: int, job: Job, now: float) -> bool:
        """RECV_DATA: False means NO_WORKER."""
        if not self.worker_count(job.func):
            return False
        self._add_waiter(job, now).streams.append((conn, msgid))
        return True

    def _add_waiter(self, job: Job, now: float) -> Waiters:
        handle = (job.func, job.name)
        waiters = self.waiters.get(handle)
        if waiters is None:
            waiters = self.waiters[handle] = Waiters()
        if waiters.key is not None:
            self.waiter_expiry.remove(waiters.key)
        waiters.expires_at = now + (job.timeout if job.timeout > 0 else DEFAULT_WAIT)
        waiters.key = (waiters.expires_at, self._next_seq(), handle)
        self.waiter_expiry.add(waiters.key)
        return waiters

    # ----------------------------------------------------------- dispatching

    def dispatch(self, now: float) -> None:
        """Hand every due job of every candidate function to a free slot."""
        if self.draining:
            self.candidates.clear()
        if not self.candidates:
            return
        candidates, self.candidates = self.candidates, set()
        for func in candidates:
            fs = self.funcs.get(func)
            if fs is None or not fs.queue or not fs.workers:
                continue
            queue = fs.queue
            while queue:
                record = queue[0]
                run_at = run_at_of(record)
                if run_at > now:
                    if run_at < fs.timer_at:
                        fs.timer_at = run_at
                        heapq.heappush(self.timers, (run_at, func))
                    break
                if fs.broadcast:
                    if not self._assign_broadcast(fs, record, run_at, now):
                        break
                else:
                    conn = self._pick_worker(fs)
                    if conn is None:
                        break
                    self._assign(fs, record, run_at, conn, now)

    def _pick_worker(self, fs: FuncState) -> ConnState | None:
        """Round robin over the function's workers that have a free slot."""
        workers = fs.workers
        n = len(workers)
        start = fs.rr
        for i in range(n):
            idx = (start + i) % n
            conn = workers[idx]
            if conn.slots:
                fs.rr = idx + 1
                return conn
        return None

    def _assign(
        self, fs: FuncState, record: bytes, run_at: float, conn: ConnState, now: float
    ) -> None:
        """Hand the function's earliest job (``record``, due at ``run_at``) to ``conn``."""
        fs.queue.pop(0)  # pop(0) has a fast path that del queue[0] lacks
        entry = self._activate(fs, record, run_at, RUNNING)
        fs.nrunning += 1
        self._hand_to(entry, conn, now)

    def _assign_broadcast(self, fs: FuncState, record: bytes, run_at: float, now: float) -> bool:
        takers = [conn for conn in fs.workers if conn.slots]
        if not takers:
            return False
        del fs.queue[0]
        entry = self._activate(fs, record, run_at, RUNNING)
        fs.nrunning += 1
        for conn in takers:
            self._hand_to(entry, conn, now)
        return True

    def _activate(self, fs: FuncState, record: bytes, run_at: float, state: JobState) -> JobEntry:
        """A job taken off its queue becomes an entry (the caller removed the record)."""
        name, workload, sched_at, count, timeout = fields(record)
        entry = JobEntry(fs.name, name, workload, sched_at, count, timeout, run_at)
        entry.state = state
        fs.jobs[name] = entry
        return entry

    def _hand_to(self, entry: JobEntry, conn: ConnState, now: float) -> None:
        msgid = conn.slots.pop()
        conn.slot_set.discard(msgid)
        assignment = Assignment(entry, conn, msgid, now)
        if entry.assignments:
            entry.assignments.append(assignment)
        else:
            entry.assignments = [assignment]
        conn.open[msgid] = assignment
        conn.held[(entry.func, entry.name)] = assignment
        timeout = entry.timeout if entry.timeout > 0 else self.config["timeout"]
        self._set_deadline(assignment, now + timeout)
        self.counters["assigned"] += 1
        sent = Job(entry.func, entry.name, entry.workload, entry.sched_at, entry.count, timeout)
        self.effects.append(Assign(conn, msgid, sent))

    # ---------------------------------------------------------- job results

    def work_done(self, conn: ConnState, func: bytes, name: bytes, data: bytes) -> None:
        """WORK_DONE: the job is finished, whoever reports it."""
        stored = self._lookup(func, name)
        self._release_sender(conn, (func, name))
        if stored is None:
            return
        self.counters["done"] += 1
        self._finish(self.funcs[func], name, data)

    def work_fail(self, conn: ConnState, func: bytes, name: bytes, now: float) -> None:
        held = conn.held.get((func, name))
        entry = self._reported(conn, (func, name))
        if entry is not None:
            self._fail(entry, now, HOW_FAIL, held)

    def sched_later(
        self, conn: ConnState, func: bytes, name: bytes, delay: int, step: int, now: float
    ) -> None:
        entry = self._reported(conn, (func, name))
        if entry is None:
            return
        self._release_locks((func, name))
        if (func, name) in self.waiters and self.waiters[(func, name)].results:
            self._finish(self.funcs[func], name, RESULT_FAILED)
            return
        run_at = now + delay
        self.counters["rescheduled"] += 1
        entry.count += step
        # Whole seconds on the wire and in the store, rounded up so that a job
        # restored after a restart never runs before its time.
        entry.sched_at = math.ceil(run_at)
        self._requeue(entry, run_at, release=False)
        self.changes.append(PutJob(entry.snapshot()))

    def work_data(
        self,
        func: bytes,
        name: bytes,
        data: bytes,
        sender: ConnState | None = None,
        now: float | None = None,
    ) -> None:
        """WORK_DATA: stream ``data`` to the job's RECV_DATA subscribers.

        From the worker holding the job (``sender``, at ``now``) it also
        proves the worker alive: the job's deadline moves to a full timeout
        from now (lease extension), and its tail is kept for the failed set.
        Empty data too reaches the subscribers, as in the reference (C45):
        a heartbeat that reaches nobody is ``heartbeat``."""
        if sender is not None and now is not None:
            held = sender.held.get((func, name))
            if held is not None:
                self._heartbeat(held, data, now)
        waiters = self.waiters.get((func, name))
        if waiters is not None:
            for conn, msgid in waiters.streams:
                self.effects.append(Push(conn, msgid, data))

    def heartbeat(self, conn: ConnState, func: bytes, name: bytes, now: float) -> bool:
        """The worker holding the job says it is still at it (the ``heartbeat``
        operation): its deadline moves a full timeout from now, like WORK_DATA,
        and nothing reaches the subscribers.  False if ``conn`` does not hold it."""
        held = conn.held.get((func, name))
        if held is None:
            return False
        self._heartbeat(held, b"", now)
        return True

    def _heartbeat(self, held: Assignment, data: bytes, now: float) -> None:
        if data:
            held.last_data = data[-retry.LAST_DATA :]
        if not held.confirmed:
            return  # JOB_ASSIGNED starts the full timeout anyway (and writes the lease)
        entry = held.entry
        timeout = entry.timeout if entry.timeout > 0 else self.config["timeout"]
        # The lease this server wrote for the job: at JOB_ASSIGNED the
        # deadline plus LEASE_GRACE, afterwards what we wrote here.
        leased = getattr(held, "leased", held.deadline + LEASE_GRACE)
        deadline = now + timeout
        self._set_deadline(held, deadline)
        if self.shared and deadline + LEASE_GRACE > leased:
            # A write per half timeout at most, not per WORK_DATA: the lease
            # runs half a timeout ahead of the deadline.
            held.leased = deadline + LEASE_GRACE + timeout / 2
            self.changes.append(ExtendLease(entry.func, entry.name, held.leased))

    def _release_sender(self, conn: ConnState, handle: Handle) -> Assignment | None:
        assignment = conn.held.get(handle)
        if assignment is not None:
            self._drop_assignment(assignment)
        return assignment

    def _reported(self, conn: ConnState, handle: Handle) -> JobEntry | None:
        """The running job a WORK_FAIL / SCHED_LATER may act on, or None.

        fix: a report from a connection that does not hold the job is ignored
        while another worker holds it (a late WORK_FAIL after a timeout must
        not take the job away from its new worker)."""
        entry = self._active(*handle)
        mine = self._release_sender(conn, handle)
        if entry is None or entry.state is not RUNNING:
            return None
        if mine is None and entry.assignments:
            return None
        if entry.assignments:
            # Another holder of a broadcast job is still at it.
            return None
        return entry

    def _finish(self, fs: FuncState, name: bytes, result: bytes) -> None:
        if self.attempts:
            self._end_attempts(fs.name, name)
        self._delete(fs, name)
        self.changes.append(DeleteJob(fs.name, name))
        self._notify(fs.name, name, result)

    def _fail(
        self, entry: JobEntry, now: float, how: str = HOW_FAIL, held: Assignment | None = None
    ) -> None:
        """WORK_FAIL semantics: RUN_JOB gets ``failed``, else retry shortly;
        with a retry policy, after its backoff or never again (``retry.py``).
        ``how``: fail, timeout or disconnect; ``held``: the assignment that
        ended (its worker and last data go to the failed set)."""
        self.counters["failed"] += 1
        handle = (entry.func, entry.name)
        self._release_locks(handle)
        waiters = self.waiters.get(handle)
        if waiters is not None and waiters.results:
            self._finish(self.funcs[entry.func], entry.name, RESULT_FAILED)
            return
        for assignment in list(entry.assignments):
            self._drop_assignment(assignment)
        policy = self.policies.get(entry.func) if self.policies else None
        failures = 0
        wait = RETRY_DELAY
        if policy is not None and how != retry.HOW_DISCONNECT:
            failures = self.attempts.get(handle, 0) + 1
            if policy.max_attempts and failures >= policy.max_attempts:
                self._to_failed_set(entry, failures, now, how, held)
                return
            wait = retry.delay(policy, failures, self.random)
        elif policy is None and self.attempts and handle in self.attempts:
            self._end_attempts(*handle)  # the policy was cleared meanwhile
        self.retried[entry.func] = self.retried.get(entry.func, 0) + 1
        run_at = now + wait
        entry.sched_at = math.ceil(run_at)
        self._requeue(entry, run_at)
        if failures:
            # After the requeue's PutJob: other servers read the count last.
            self.attempts[handle] = failures
            self.changes.append(SetAttempts(entry.func, entry.name, failures))

    def _notify(self, func: bytes, name: bytes, result: bytes) -> None:
        waiters = self.waiters.pop((func, name), None)
        if waiters is None:
            return
        if waiters.key is not None:
            self.waiter_expiry.remove(waiters.key)
        for conn, msgid in waiters.streams:
            self.effects.append(Push(conn, msgid, STREAM_EOF))
        for conn, msgid in waiters.results:
            self.effects.append(Push(conn, msgid, result))

    # ------------------------------------------------------------ removal

    def remove_job(self, func: bytes, name: bytes) -> None:
        if self._lookup(func, name) is not None:
            self.counters["removed"] += 1
            if self.attempts:
                self._end_attempts(func, name)
            self._delete(self.funcs[func], name)
            self.changes.append(DeleteJob(func, name))
        self._notify(func, name, RESULT_REMOVED)

    def run_now(self, func: bytes, name: bytes, now: float) -> bool:
        """Make a pending job due at ``now`` (the dashboard's "run now").

        False when the job is not pending (a worker or a lock holds it); a
        job that is due already keeps its place in the queue."""
        entry = self.entry(func, name)
        if entry is None or entry.state is not PENDING:
            return False
        if entry.run_at > now:
            entry.sched_at = int(now)
            self._requeue(entry, now, release=False)
            self.changes.append(PutJob(entry.snapshot()))
        return True

    def drop_func(self, func: bytes) -> bool:
        """DROP_FUNC: only a known function with no worker is dropped."""
        fs = self.funcs.get(func)
        if fs is None or fs.workers:
            return False
        for name in list(fs.jobs):
            self._delete(fs, name)
            self._notify(func, name, RESULT_REMOVED)
        self._forget_retry_of(func)  # DeleteFunc deletes them in the store
        del self.funcs[func]
        self.candidates.discard(func)
        self.changes.append(DeleteFunc(func))
        return True

    def _delete(self, fs: FuncState, name: bytes) -> None:
        """Take a stored job out of every structure (queue, holders, locks)."""
        self._forget(fs, name, fs.jobs[name])
        del fs.jobs[name]
        if self._schedule_queued:
            self.schedules.job_gone((fs.name, name))

    def _forget(self, fs: FuncState, name: bytes, stored: Stored) -> None:
        if self.job_locks:
            self._release_locks((fs.name, name))
        if isinstance(stored, bytes):
            fs.queue.remove(stored)
            return
        if stored.assignments:
            for assignment in list(stored.assignments):
                self._drop_assignment(assignment)
        self._leave_state(stored, fs)
        stored.state = PENDING

    def _leave_state(self, entry: JobEntry, fs: FuncState) -> None:
        """Undo the bookkeeping of the job's current state (before a new one)."""
        state = entry.state
        if state is RUNNING:
            fs.nrunning -= 1
        elif state is LOCKED:
            fs.nlocked -= 1
        elif state is ELSEWHERE:
            fs.nrunning -= 1
            if entry.lease is not None:
                self.leases.remove(entry.lease)
                entry.lease = None

    # ---------------------------------------------------------- queue helpers

    def _enqueue(self, fs: FuncState, name: bytes, record: bytes) -> None:
        fs.jobs[name] = record
        queue = fs.queue
        queue.add(record)
        if queue[0] is record and fs.workers:
            self.candidates.add(fs.name)

    def _requeue(self, entry: JobEntry, run_at: float, release: bool = True) -> None:
        """The job becomes pending again at ``run_at``; ``entry`` is then detached.

        With a shared store, handing a job back (``release``) is written to
        the store so that other servers see it pending and our claim ends."""
        fs = self.funcs[entry.func]
        self._leave_state(entry, fs)
        entry.state = PENDING
        entry.run_at = run_at
        self._seq += 1
        self._enqueue(fs, entry.name, pack(entry, run_at, self._seq))
        if release and self.shared:
            self.changes.append(PutJob(entry.snapshot()))

    def _set_deadline(self, assignment: Assignment, deadline: float) -> None:
        if assignment.key is not None:
            self.deadlines.withdraw(assignment.key)
        assignment.deadline = deadline
        assignment.key = self.deadlines.push(deadline, assignment)

    def _drop_assignment(self, assignment: Assignment) -> None:
        """Detach an assignment from its job, its connection and the deadlines."""
        entry = assignment.entry
        if assignment in entry.assignments:
            entry.assignments.remove(assignment)
            if not entry.assignments:
                entry.assignments = _NO_ASSIGNMENTS
        conn = assignment.conn
        handle = (entry.func, entry.name)
        if conn.held.get(handle) is assignment:
            del conn.held[handle]
        if conn.open.get(assignment.msgid) is assignment:
            del conn.open[assignment.msgid]
        if assignment.key is not None:
            self.deadlines.withdraw(assignment.key)
            assignment.key = None

    # --------------------------------------------------------------- time

    def tick(self, now: float) -> None:
        """Expire what is due at ``now`` and dispatch what became due."""
        deadlines = self.deadlines
        while (top := deadlines.peek()) is not None and top[0] <= now:
            self._expire_assignment(top[1], now, HOW_TIMEOUT)
        expiry = self.waiter_expiry
        while expiry and expiry[0][0] <= now:
            self._expire_waiters(expiry[0][2])
        leases = self.leases
        while leases and leases[0][0] <= now:
            # The other server did not finish or renew in time: offer it here.
            self._requeue(leases[0][2], now, release=False)
        timers = self.timers
        while timers and timers[0][0] <= now:
            at, func = heapq.heappop(timers)
            fs = self.funcs.get(func)
            if fs is not None:
                if fs.timer_at == at:
                    fs.timer_at = _INF
                self.candidates.add(func)
        if self.schedules.wake <= now + 0.001:
            self._run_schedules(now)
        self.dispatch(now)

    def next_wakeup(self) -> float:
        """The earliest moment ``tick`` has something to do (epoch seconds)."""
        t = _INF
        top = self.deadlines.peek()
        if top is not None:
            t = top[0]
        if self.waiter_expiry and self.waiter_expiry[0][0] < t:
            t = self.waiter_expiry[0][0]
        if self.timers and self.timers[0][0] < t:
            t = self.timers[0][0]
        if self.leases and self.leases[0][0] < t:
            t = self.leases[0][0]
        if self.schedules.wake < t:
            t = self.schedules.wake
        return t

    def _expire_assignment(self, assignment: Assignment, now: float, how: str) -> None:
        """The holder's time ran out (``how``: timeout) or it vanished
        (disconnect): fail its job."""
        entry = assignment.entry
        self._drop_assignment(assignment)
        if entry.assignments or entry.state is not RUNNING:
            return
        self._fail(entry, now, how, assignment)

    def _expire_waiters(self, handle: Handle) -> None:
        """A RUN_JOB / RECV_DATA wait ran out: the job is deleted (``expired``)."""
        if self._lookup(*handle) is not None:
            self.counters["expired"] += 1
            if self.attempts:
                self._end_attempts(*handle)
            self._delete(self.funcs[handle[0]], handle[1])
            self.changes.append(DeleteJob(*handle))
        self._notify(handle[0], handle[1], RESULT_EXPIRED)

    # ------------------------------------------------------- status & admin

    def status_rows(self, now: float, only: Collection[bytes] | None = None) -> list[StatusRow]:
        """Per function, sorted by name: workers, jobs, processing, locked and
        the earliest pending sched_at (``now`` when nothing is pending).
        ``only`` limits the rows to those functions."""
        rows = []
        for name in sorted(self.funcs):
            if only is not None and name not in only:
                continue
            fs = self.funcs[name]
            schedat = sched_at_of(fs.queue[0]) if fs.queue else int(now)
            rows.append(
                StatusRow(name, len(fs.workers), len(fs.jobs), fs.nrunning, fs.nlocked, schedat)
            )
        return rows

    def status(self, now: float, only: Collection[bytes] | None = None) -> bytes:
        """STATUS text: ``func,workers,jobs,processing,locked,schedat`` lines."""
        return b"\n".join(b"%s,%d,%d,%d,%d,%d" % row for row in self.status_rows(now, only))

    def dump(self) -> list[JobEntry]:
        """Every stored job (pending ones as detached copies)."""
        return list(self.iter_jobs())

    def iter_jobs(self) -> Iterator[JobEntry]:
        """Every stored job, one at a time (pending ones as detached copies made
        as they are reached): a DUMP of a million jobs never holds a million
        entries.  The caller must not change the scheduler while iterating."""
        unpacked = self._unpacked
        for fs in self.funcs.values():
            for stored in fs.jobs.values():
                yield unpacked(fs, stored) if isinstance(stored, bytes) else stored

    def load(self, jobs: Iterable[Job], now: float) -> None:
        for job in jobs:
            self.submit(job, now)

    # ------------------------------------------------------------ schedules

    def _run_schedules(self, now: float) -> None:
        def submit(job: Job) -> None:
            self.counters["submitted"] += 1
            self._put(job, now)

        self.schedules.run(now, self._exists, submit, self.changes, self.schedules_remote)

    def _exists(self, func: bytes, name: bytes) -> bool:
        return self._lookup(func, name) is not None

    def schedule_put(self, row: ScheduleRow, now: float) -> None:
        """Add or replace a schedule (validated by ``schedules.make_row``); a
        replaced one keeps its counters and its queued ticks."""
        old = self.schedules.entries.get(row.handle)
        if old is not None:
            o = old.row
            row = replace(row, fired=o.fired, skipped=o.skipped, queued=o.queued,
                          last_fired=o.last_fired)  # fmt: skip
        self.schedules.put(row, now, self.changes)

    def schedule_remove(self, func: bytes, name: bytes) -> bool:
        return self.schedules.remove(func, name, self.changes)

    def schedule_applied(
        self, before: ScheduleRow | None, row: ScheduleRow, job: Job | None, now: float
    ) -> None:
        """Cluster mode: the store decided a schedule's event, seeing ``before``
        (``row`` and ``job`` are stored already)."""

        def submit(job: Job) -> None:
            self.counters["submitted"] += 1
            self._put(job, now)
            self.changes.pop()  # already in the store

        self.schedules.applied(row, job, now, submit, None, before)

    def config_get(self, key: str) -> int:
        return self.config.get(key, 0)

    def config_set(self, key: str, value: int) -> None:
        if key not in self.config:
            return
        self.config[key] = max(0, min(value, U32_MAX))
        self.changes.append(SetConfig(key, self.config[key]))

    # ------------------------------------------- retry policies & failed set

    def _end_attempts(self, func: bytes, name: bytes) -> None:
        """The job's failure count ends (done, removed, resubmitted...)."""
        if self.attempts.pop((func, name), None) is not None:
            self.changes.append(SetAttempts(func, name, 0))

    def _fresh_start(self, func: bytes, name: bytes) -> None:
        """A submit replaces the job: its count ends, it leaves the failed set."""
        self._end_attempts(func, name)
        names = self.failed.get(func)
        if names is not None and names.pop(name, None) is not None:
            if not names:
                del self.failed[func]
            self.changes.append(DeleteFailed(func, name))

    def _to_failed_set(
        self, entry: JobEntry, failures: int, now: float, how: str, held: Assignment | None
    ) -> None:
        """The job failed its last allowed attempt: out of the pending set."""
        func, name = entry.func, entry.name
        peer = self.describe(held.conn) if held is not None else ""
        data: bytes = getattr(held, "last_data", b"") if held is not None else b""
        failed = FailedJob(entry.snapshot(), failures, now, how, peer, data)
        if self.attempts.pop((func, name), None) is not None:
            self.changes.append(SetAttempts(func, name, 0))
        self._delete(self.funcs[func], name)
        self.changes.append(DeleteJob(func, name))
        self.failed.setdefault(func, {})[name] = failed
        self.changes.append(PutFailed(failed))
        self.failed_total[func] = self.failed_total.get(func, 0) + 1
        # Nobody waits for a result here (RUN_JOB waiters got ``failed`` in
        # _fail); RECV_DATA subscribers hear the end of the stream.
        self._notify(func, name, RESULT_FAILED)
