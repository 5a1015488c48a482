"""What the dashboard shows, as JSON-ready dicts read from the scheduler core.

Theory of operation
-------------------
Every function here takes the core, ``now`` (float seconds since the Unix
epoch) and the set of functions the caller may see (None: all) and returns
plain data; nothing changes, nothing waits.  The HTTP layer checks rights,
calls one of them and serialises the result (``/api/funcs``, ``/api/jobs``,
``/api/workers``, ``/api/overview`` and the ``/api/events`` stream).

Names are bytes on the wire.  Each one is given twice: as text for people
(UTF-8, undecodable bytes as ``\\xNN``) and percent-encoded (``quoted``) so
that the page can build action URLs that name exactly those bytes.

Cost: a function's row is O(log n) (its pending queue is sorted by due time,
so "due now" is one bisection).  A page of pending or scheduled jobs is
O(log n + page).  Running and locked jobs are not indexed by function: they
are found by scanning its jobs, which stops as soon as all of them are found
(a function with a million pending jobs and a few running ones may scan many).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any
from urllib.parse import quote

from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.record import due_bound, fields, run_at_of
from trio_periodic.scheduler.state import (
    ELSEWHERE,
    LOCKED,
    PENDING,
    RUNNING,
    ConnState,
    FuncState,
    JobEntry,
)

#: Job states a page can be limited to, in the order a page lists them.
JOB_STATES = ("running", "locked", "elsewhere", "pending", "scheduled")
#: Jobs in one page at most.
MAX_PAGE = 500
#: Held jobs listed per worker at most (the count is always exact).
HELD_LISTED = 20
#: The kinds of events the throughput chart shows.
CHART_KINDS = ("submitted", "done", "failed", "rescheduled")

#: How the HTTP layer names a worker connection (its peer address).
Describe = Callable[[ConnState], str]


def text(name: bytes) -> str:
    return name.decode("utf-8", errors="backslashreplace")


def quoted(name: bytes) -> str:
    return quote(name, safe="")


def _visible(core: Scheduler, visible: Collection[bytes] | None) -> list[FuncState]:
    return [core.funcs[name] for name in sorted(core.funcs) if visible is None or name in visible]


def _due(fs: FuncState, now: float) -> int:
    """How many of the function's pending jobs are due at ``now``."""
    return int(fs.queue.bisect_left(due_bound(now)))


# ------------------------------------------------------------------ functions


def func_row(fs: FuncState, now: float) -> dict[str, Any]:
    queue = fs.queue
    due = _due(fs, now)
    return {
        "func": text(fs.name),
        "quoted": quoted(fs.name),
        "workers": len(fs.workers),
        "jobs": len(fs.jobs),
        "pending": due,
        "scheduled": len(queue) - due,
        "running": fs.nrunning,
        "locked": fs.nlocked,
        # Epoch seconds: when the longest-waiting due job became due, and when
        # the next scheduled one will; null when there is none.
        "oldest_pending": run_at_of(queue[0]) if due else None,
        "next_scheduled": run_at_of(queue[due]) if due < len(queue) else None,
    }


def funcs_view(
    core: Scheduler, now: float, visible: Collection[bytes] | None
) -> list[dict[str, Any]]:
    """One row per function the caller may see, sorted by name."""
    return [func_row(fs, now) for fs in _visible(core, visible)]


# ----------------------------------------------------------------------- jobs


def _held(fs: FuncState, states: Collection[object]) -> Iterator[JobEntry]:
    """The function's jobs in ``states`` (not pending); stops once all are found."""
    left = fs.nrunning + fs.nlocked
    if not left:
        return
    for entry in fs.jobs.values():
        if not isinstance(entry, bytes) and entry.state is not PENDING:
            if entry.state in states:
                yield entry
            left -= 1
            if not left:
                return


def job_view(
    entry: JobEntry, now: float, describe: Describe, locks: Collection[bytes] = ()
) -> dict[str, Any]:
    state = entry.state
    if state is PENDING:
        label = "pending" if entry.run_at <= now else "scheduled"
    else:
        label = {RUNNING: "running", LOCKED: "locked", ELSEWHERE: "elsewhere"}[state]
    holders = [
        {
            "worker": describe(a.conn),
            "worker_id": a.conn.conn_id,
            "since": a.started,
            "held_for": max(0.0, now - a.started),
            "deadline": a.deadline,
            "confirmed": a.confirmed,
        }
        for a in entry.assignments
    ]
    return {
        "func": text(entry.func),
        "name": text(entry.name),
        "quoted": quoted(entry.name),
        "state": label,
        "run_at": entry.run_at,
        "sched_at": entry.sched_at,
        "count": entry.count,
        "timeout": entry.timeout,
        "workload_bytes": len(entry.workload),
        "held_by": holders,
        "lease_until": entry.lease[0] if entry.lease is not None else None,
        "locks": sorted(text(lock) for lock in locks),
    }


def _pending(core: Scheduler, fs: FuncState, records: Iterable[bytes]) -> list[JobEntry]:
    """Detached entries (copies) for packed pending records."""
    out = []
    for record in records:
        entry = core.entry(fs.name, fields(record)[0])
        if entry is not None:
            out.append(entry)
    return out


def jobs_view(
    core: Scheduler,
    func: bytes,
    now: float,
    describe: Describe,
    *,
    offset: int = 0,
    limit: int = 50,
    state: str | None = None,
) -> dict[str, Any] | None:
    """One page of a function's jobs: held ones first, then pending in due
    order (due now, then scheduled).  None for an unknown function."""
    fs = core.funcs.get(func)
    if fs is None:
        return None
    offset = max(0, offset)
    limit = max(1, min(limit, MAX_PAGE))
    due = _due(fs, now)
    queue = fs.queue
    held_states = {
        "running": (RUNNING,),
        "locked": (LOCKED,),
        "elsewhere": (ELSEWHERE,),
        None: (RUNNING, LOCKED, ELSEWHERE),
    }
    if state in ("pending", "scheduled"):
        lo, hi = (0, due) if state == "pending" else (due, len(queue))
        total = hi - lo
        page = _pending(core, fs, queue.islice(lo + offset, min(hi, lo + offset + limit)))
    else:
        held = list(_held(fs, held_states[state]))
        held.sort(key=lambda e: (e.state, e.run_at, e.name))
        if state is None:
            total = len(held) + len(queue)
            page = held[offset : offset + limit]
            start = max(0, offset - len(held))
            if len(page) < limit:
                page += _pending(core, fs, queue.islice(start, start + limit - len(page)))
        else:
            total = len(held)
            page = held[offset : offset + limit]
    return {
        "func": text(func),
        "quoted": quoted(func),
        "state": state,
        "offset": offset,
        "limit": limit,
        "total": total,
        "jobs": [
            job_view(entry, now, describe, core.job_locks.get((func, entry.name), ()))
            for entry in page
        ],
    }


# -------------------------------------------------------------------- workers


def workers_view(
    core: Scheduler, now: float, describe: Describe, visible: Collection[bytes] | None
) -> list[dict[str, Any]]:
    """The worker connections registered for a function the caller may see,
    with the functions and jobs of theirs it may see."""
    conns: dict[int, ConnState] = {}
    for fs in _visible(core, visible):
        for conn in fs.workers:
            conns.setdefault(conn.conn_id, conn)
    out = []
    for conn in sorted(conns.values(), key=lambda c: c.conn_id):
        funcs = sorted(f for f in conn.funcs if visible is None or f in visible)
        held = [a for (func, _), a in conn.held.items() if visible is None or func in visible]
        held.sort(key=lambda a: a.started)
        out.append(
            {
                "id": conn.conn_id,
                "address": describe(conn),
                "funcs": [text(f) for f in funcs],
                "free_slots": len(conn.slots),
                "held": len(held),
                "jobs": [
                    {
                        "func": text(a.entry.func),
                        "name": text(a.entry.name),
                        "quoted_func": quoted(a.entry.func),
                        "quoted": quoted(a.entry.name),
                        "since": a.started,
                        "held_for": max(0.0, now - a.started),
                    }
                    for a in held[:HELD_LISTED]
                ],
            }
        )
    return out
