"""``schedule_add``, ``schedule_list``, ``schedule_remove``: schedules kept by the server.

The rules (ticks, zones, DST, overlap, catch-up) live in
``scheduler/schedules.py`` and ``scheduler/cron.py``; here they meet JSON.
A schedule's times are shown as epoch seconds and as date-times in the
schedule's own zone with their offset (``2026-03-29T03:00:00+02:00``).

Rights: a non-admin identity adds, removes and lists only schedules of its
functions (``OpContext.check_func`` / ``visible``).
"""

from __future__ import annotations

from typing import Any

from trio_periodic.scheduler.cron import CronError, format_local
from trio_periodic.scheduler.schedules import CATCH_UPS, OVERLAPS, Entry, make_row
from trio_periodic.server.ops.base import Op, OpContext, OpError, name_arg, text

__all__ = ["OPS", "schedule_json"]

#: Largest workload a schedule keeps (bytes): it is stored with the schedule
#: and copied into every job it submits.
MAX_WORKLOAD = 64 * 1024


def schedule_json(entry: Entry) -> dict[str, Any]:
    r = entry.row
    zone = entry.cron.zone
    nxt = entry.next_tick if entry.next_tick != float("inf") else None
    return {
        "func": text(r.func),
        "name": text(r.name),
        "cron": r.cron,
        "tz": r.tz,
        "workload": text(r.workload),
        "timeout": r.timeout,
        "overlap": r.overlap,
        "catch_up": r.catch_up,
        "next_run": nxt,
        "next_run_local": format_local(nxt, zone) if nxt is not None else None,
        "last_run": r.last_fired or None,
        "last_run_local": format_local(r.last_fired, zone) if r.last_fired else None,
        "last_tick": r.last_tick or None,
        "fired": r.fired,
        "skipped": r.skipped,
        "queued": r.queued,
    }


def _str_arg(args: dict[str, Any], key: str, default: str) -> str:
    value = args.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise OpError(f"{key} must be a string")
    return value


def _add(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    func = name_arg(args, "func")
    name = name_arg(args, "name")
    ctx.check_func(func)
    cron = args.get("cron")
    if not isinstance(cron, str) or not cron.strip():
        raise OpError("cron is required (five fields, e.g. '*/5 * * * *')")
    tz = _str_arg(args, "tz", "UTC")
    workload = _str_arg(args, "workload", "").encode("utf-8", "surrogateescape")
    if len(workload) > MAX_WORKLOAD:
        raise OpError(f"workload of {len(workload)} bytes; the limit is {MAX_WORKLOAD}")
    timeout = args.get("timeout", 0)
    if timeout is None:
        timeout = 0
    if not isinstance(timeout, int) or isinstance(timeout, bool):
        raise OpError("timeout must be an integer number of seconds")
    overlap = _str_arg(args, "overlap", "skip")
    catch_up = _str_arg(args, "catch_up", "none")
    try:
        row = make_row(
            func, name, cron, tz, workload=workload, timeout=timeout, overlap=overlap,
            catch_up=catch_up, now=ctx.now,
        )  # fmt: skip
    except CronError as exc:
        raise OpError(str(exc)) from None
    ctx.core.schedule_put(row, ctx.now)
    return schedule_json(ctx.core.schedules.entries[row.handle])


def _list(ctx: OpContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    only = ctx.visible
    func = args.get("func")
    if func is not None:
        wanted = name_arg(args, "func")
        only = frozenset({wanted}) if only is None else only & {wanted}
    return [schedule_json(e) for e in ctx.core.schedules.rows(only)]


def _remove(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    func = name_arg(args, "func")
    name = name_arg(args, "name")
    ctx.check_func(func)
    if not ctx.core.schedule_remove(func, name):
        raise OpError(f"no schedule {text(func)}/{text(name)}", 404)
    return {"func": text(func), "name": text(name), "removed": True}


OPS: dict[str, Op] = {
    "schedule_add": Op(_add, writes=True),
    "schedule_list": Op(_list),
    "schedule_remove": Op(_remove, writes=True),
}

#: For the CLI's and the dashboard's choices.
CHOICES = {"overlap": OVERLAPS, "catch_up": CATCH_UPS}
