"""``explain``: why has job FUNC/NAME not run?

The facts come from ``scheduler/explain.py``; here they become JSON and one
sentence per reason.  Times are given as epoch seconds and as the server's
local date-time with its UTC offset (``2026-12-07T22:15:00+01:00``), so that
people read them at a glance and scripts compare them without guessing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from trio_periodic.scheduler.cron import CronError, format_local, zone
from trio_periodic.scheduler.explain import Explanation, ScheduleNote, explain
from trio_periodic.server.ops.base import Op, OpContext, OpError, name_arg, text

__all__ = ["OPS", "local_time"]


def local_time(epoch: float) -> str:
    """``epoch`` as a local date-time with its offset, to the second."""
    return datetime.fromtimestamp(epoch).astimezone().isoformat(timespec="seconds")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _sentences(ctx: OpContext, ex: Explanation) -> list[str]:
    func = text(ex.func)
    lines = []
    for reason in ex.reasons:
        if reason == "not_due":
            lines.append(f"Not due until {local_time(ex.run_at)}.")
        elif reason == "draining":
            lines.append("The server is shutting down and hands out no jobs.")
        elif reason == "no_worker":
            lines.append(f"No worker is registered for {func}.")
        elif reason == "workers_busy":
            lines.append(
                f"Every worker for {func} is busy ({_plural(ex.workers, 'worker')}, "
                "no free grab slot)."
            )
        elif reason == "jobs_ahead":
            lines.append(f"{_plural(ex.ahead, 'job')} of {func} due earlier go out first.")
        elif reason == "dispatching":
            lines.append("Due, and a worker is free: it is being handed out now.")
        elif reason == "held":
            for h in ex.holders:
                started = "started" if h.confirmed else "not confirmed yet"
                lines.append(
                    f"Held by worker {ctx.describe(h.conn)} since {local_time(h.since)} "
                    f"({started}); its timeout runs out at {local_time(h.deadline)}."
                )
        elif reason == "lock":
            for wait in ex.locks:
                holders = ", ".join(f"{text(f)}/{text(n)}" for f, n in wait.holders) or "nobody"
                lines.append(
                    f"Waiting for lock {text(wait.lock)} "
                    f"({wait.capacity} at a time), held by {holders}."
                )
        elif reason == "elsewhere":
            until = f" until {local_time(ex.lease_until)}" if ex.lease_until else ""
            lines.append(f"Held by another server sharing the store{until}.")
        elif reason == "schedule_next":
            lines.append("No job yet: a schedule kept by the server submits it.")
        elif reason == "retrying":
            of = f" of {ex.max_attempts}" if ex.max_attempts else ""
            lines.append(
                f"Failed {_plural(ex.failures, 'time')}: retry {ex.failures + 1}{of},"
                f" next attempt at {local_time(ex.run_at)}."
            )
        elif reason == "failed" and ex.failed is not None:
            f = ex.failed
            by = f" (worker {f.peer})" if f.peer else ""
            lines.append(
                f"In the failed set after {_plural(f.attempts, 'attempt')};"
                f" last failure at {local_time(f.failed_at)}: {f.how}{by}."
                f" It runs again only after failed retry or a new submit."
            )
    if ex.schedule is not None:
        s = ex.schedule
        nxt = f", next tick at {_schedule_time(s)}" if s.next_tick is not None else ""
        lines.append(f"Submitted by schedule {s.cron} ({s.tz}){nxt}.")
    return lines


def _schedule_time(s: ScheduleNote) -> str:
    """The schedule's next tick in its own zone, with the offset."""
    assert s.next_tick is not None
    try:
        return format_local(s.next_tick, zone(s.tz))
    except CronError:
        return local_time(s.next_tick)


def _as_json(ctx: OpContext, ex: Explanation) -> dict[str, Any]:
    return {
        "func": text(ex.func),
        "name": text(ex.name),
        "state": ex.state,
        "run_at": ex.run_at,
        "run_at_local": local_time(ex.run_at),
        "workers": ex.workers,
        "idle_workers": ex.idle_workers,
        "ahead": ex.ahead,
        "reasons": ex.reasons,
        "holders": [
            {
                "worker": ctx.describe(h.conn),
                "since": h.since,
                "deadline": h.deadline,
                "deadline_local": local_time(h.deadline),
                "confirmed": h.confirmed,
            }
            for h in ex.holders
        ],
        "locks": [
            {
                "lock": text(w.lock),
                "capacity": w.capacity,
                "holders": [{"func": text(f), "name": text(n)} for f, n in w.holders],
            }
            for w in ex.locks
        ],
        "lease_until": ex.lease_until,
        "failures": ex.failures,
        "max_attempts": ex.max_attempts,
        "failed": None
        if ex.failed is None
        else {
            "attempts": ex.failed.attempts,
            "failed_at": ex.failed.failed_at,
            "failed_at_local": local_time(ex.failed.failed_at),
            "how": ex.failed.how,
            "worker": ex.failed.peer,
        },
        "schedule": None
        if ex.schedule is None
        else {
            "cron": ex.schedule.cron,
            "tz": ex.schedule.tz,
            "next_run": ex.schedule.next_tick,
            "next_run_local": _schedule_time(ex.schedule) if ex.schedule.next_tick else None,
        },
        "text": _sentences(ctx, ex),
    }


def _explain(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    func = name_arg(args, "func")
    name = name_arg(args, "name")
    ctx.check_func(func)
    ex = explain(ctx.core, func, name, ctx.now)
    if ex is None:
        raise OpError(f"no job {text(func)}/{text(name)}", 404)
    return _as_json(ctx, ex)


OPS: dict[str, Op] = {"explain": Op(_explain)}
