"""Why a job waits: the scheduler's state of one job, in facts a person can read.

Theory of operation
-------------------
``explain(core, func, name, now)`` looks at the core and returns an
:class:`Explanation`: the job's state and the reasons it is not running
right now, most important first.  It only reads; like the rest of the core
it takes ``now`` and does no I/O, so the server (and the tests) can call it
at any time.  Turning the facts into words and JSON is the caller's job
(``server/ops/explain.py``); times here are epoch seconds.

A pending job waits for one of: its due time; a worker for its function (none
registered); a free grab slot (every worker busy); jobs of the same function
due before it.  A running job is held by one or more workers until a
deadline.  A locked job waits for a lock that other jobs hold.  In cluster
mode a job may be held by another server until its lease runs out.  A job of
a function with a retry policy that failed before is being retried (attempt
n of at most m); one past its last attempt is in the failed set.

A job whose name a schedule submits says so (``ScheduleNote``): the
schedule's expression, zone and next tick.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.record import run_at_of
from trio_periodic.scheduler.state import ELSEWHERE, LOCKED, RUNNING, ConnState
from trio_periodic.store.base import FailedJob

__all__ = ["Explanation", "Holder", "LockWait", "ScheduleNote", "explain"]


@dataclass(frozen=True, slots=True)
class Holder:
    """One worker holding the job."""

    conn: ConnState
    #: When it was handed out (epoch s).
    since: float
    #: When its timeout runs out and the job is handed to someone else.
    deadline: float
    #: The worker confirmed it started (JOB_ASSIGNED); clients that never
    #: confirm stay unconfirmed for the whole run.
    confirmed: bool


@dataclass(frozen=True, slots=True)
class LockWait:
    """A lock the job waits for, and the jobs holding it."""

    lock: bytes
    capacity: int
    holders: tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class ScheduleNote:
    """The schedule that submits this job."""

    cron: str
    tz: str
    #: Its next tick (epoch s); None when it has none.
    next_tick: float | None


@dataclass(slots=True)
class Explanation:
    func: bytes
    name: bytes
    #: ``pending``, ``running``, ``locked``, ``elsewhere``, ``failed`` or
    #: ``scheduled`` (no job yet; a schedule submits it at its next tick).
    state: str
    #: When the job is (or was) due, epoch seconds.
    run_at: float
    #: Workers registered for the function (all of them, busy or not).
    workers: int = 0
    #: Of those, workers with a free grab slot right now.
    idle_workers: int = 0
    #: Pending jobs of the function that go out before this one.
    ahead: int = 0
    #: Reason codes, most important first (see ``server/ops/explain.py``).
    reasons: list[str] = field(default_factory=list)
    holders: list[Holder] = field(default_factory=list)
    locks: list[LockWait] = field(default_factory=list)
    #: Cluster mode: another server holds the job until then (epoch s).
    lease_until: float | None = None
    #: The server is draining for shutdown and hands nothing out.
    draining: bool = False
    #: Failures so far (a pending job being retried, or one in the failed set).
    failures: int = 0
    #: The function's attempt limit (0: none or no policy).
    max_attempts: int = 0
    #: State ``failed``: what the failed set keeps of it.
    failed: FailedJob | None = None
    #: The schedule that submits the job, if one does.
    schedule: ScheduleNote | None = None


def explain(core: Scheduler, func: bytes, name: bytes, now: float) -> Explanation | None:
    """The state of job ``func/name`` and why it is not running, or None if
    the server has no such job."""
    out = _explain_job(core, func, name, now)
    entry = core.schedules.entries.get((func, name)) if core.schedules.entries else None
    if entry is None:
        return out
    nxt = entry.next_tick if entry.next_tick != float("inf") else None
    if out is None:
        # No job yet: its schedule has not fired (or its last run ended).
        out = Explanation(func, name, "scheduled", nxt if nxt is not None else now)
        out.reasons.append("schedule_next")
    out.schedule = ScheduleNote(entry.row.cron, entry.row.tz, nxt)
    return out


def _explain_job(core: Scheduler, func: bytes, name: bytes, now: float) -> Explanation | None:
    fs = core.funcs.get(func)
    stored = fs.jobs.get(name) if fs is not None else None
    policy = core.policies.get(func)
    limit = policy.max_attempts if policy is not None else 0
    if fs is None or stored is None:
        failed = core.failed.get(func, {}).get(name)
        if failed is None:
            return None
        out = Explanation(func, name, "failed", failed.failed_at, max_attempts=limit)
        out.failures, out.failed = failed.attempts, failed
        out.reasons.append("failed")
        return out
    workers = len(fs.workers)
    idle = sum(1 for conn in fs.workers if conn.slots)
    if isinstance(stored, bytes):
        run_at = run_at_of(stored)
        out = Explanation(func, name, "pending", run_at, workers, idle, draining=core.draining)
        out.failures, out.max_attempts = core.attempts.get((func, name), 0), limit
        if out.failures:
            out.reasons.append("retrying")
        if run_at > now:
            out.reasons.append("not_due")
        # Records sort by (run_at, seq): the ones before this one go out first.
        out.ahead = fs.queue.bisect_left(stored)
        if core.draining:
            out.reasons.append("draining")
        if not workers:
            out.reasons.append("no_worker")
        elif not idle:
            out.reasons.append("workers_busy")
        if run_at <= now and out.ahead:
            out.reasons.append("jobs_ahead")
        if run_at <= now and not out.reasons:
            out.reasons.append("dispatching")
        return out
    entry = stored
    if entry.state is RUNNING:
        out = Explanation(func, name, "running", entry.run_at, workers, idle)
        out.holders = [
            Holder(a.conn, a.started, a.deadline, a.confirmed) for a in entry.assignments
        ]
        out.reasons.append("held")
        return out
    if entry.state is LOCKED:
        out = Explanation(func, name, "locked", entry.run_at, workers, idle)
        for lock_name in sorted(core.job_locks.get((func, name), ())):
            lock = core.locks.get(lock_name)
            if lock is not None and (func, name) in lock.waiters:
                holders = tuple(sorted(lock.holders))
                out.locks.append(LockWait(lock_name, lock.capacity, holders))
        out.reasons.append("lock")
        return out
    out = Explanation(func, name, "elsewhere", entry.run_at, workers, idle)
    if entry.state is ELSEWHERE and entry.lease is not None:
        out.lease_until = entry.lease[0]
    out.reasons.append("elsewhere")
    return out
