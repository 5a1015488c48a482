"""``periodic schedule add|list|remove``: schedules kept by the server.

Each command only builds its command object of :mod:`.invocation`; the
requests are made by :mod:`.schedule_runner`.  The rules (zones, DST,
overlap, catch-up) are the server's: see the README's "Schedules" section.
"""

from __future__ import annotations

from typing import Annotated, Literal

import cyclopts
from cyclopts import Parameter

from trio_periodic.cli.app import UsageError, WorkloadOpt, app
from trio_periodic.cli.invocation import ScheduleAdd, ScheduleList, ScheduleRemove

schedule_app = cyclopts.App(
    name="schedule",
    help="Schedules kept by the server: it submits a job at each tick of a cron expression.",
)
app.command(schedule_app)


@schedule_app.command(name="add")
def schedule_add(
    func: str,
    name: str,
    cron: str,
    /,
    *,
    tz: str = "UTC",
    workload: WorkloadOpt = None,
    timeout: int = 0,
    overlap: Literal["skip", "queue"] = "skip",
    catch_up: Annotated[Literal["none", "last", "all"], Parameter(name="--catch-up")] = "none",
) -> ScheduleAdd:
    """Submit job NAME of FUNC at each tick of CRON (replaces a schedule of that name).

    CRON has five fields: minute hour day-of-month month day-of-week, e.g.
    `"*/5 * * * *"` or `"30 2 * * 1-5"`.  The first tick is the next one
    after now.

    Parameters
    ----------
    func
        Function name.
    name
        Job name: each tick submits this job.
    cron
        The cron expression (quote it).
    tz
        IANA time zone the expression is read in (default UTC), e.g. Europe/Paris.
    workload
        The jobs' data, or `@FILE` for a file's contents.
    timeout
        Seconds a worker may hold each job (0: the server's default).
    overlap
        When a tick finds the job still pending or running: `skip` the tick
        (counted), or `queue` it (at most one) and submit when the run ends.
    catch_up
        Ticks missed while no server ran: `none`, the `last` one, or `all`
        (at most 100, one after another).
    """
    if not 0 <= timeout <= 0xFFFFFFFF:
        raise UsageError(f"timeout is 0..{0xFFFFFFFF} seconds, not {timeout}")
    return ScheduleAdd(func, name, cron, tz, workload, timeout, overlap, catch_up)


@schedule_app.command(name="list")
def schedule_list(*, json: bool = False) -> ScheduleList:
    """Show every schedule: cron, zone, next and last run, overlap, catch-up, counts.

    Parameters
    ----------
    json
        Print one JSON document (a list; each entry names its `func` and `name`).
    """
    return ScheduleList(json=json)


@schedule_app.command(name="remove")
def schedule_remove(func: str, name: str, /) -> ScheduleRemove:
    """Remove schedule NAME of FUNC (a job it already submitted stays).

    Parameters
    ----------
    func
        Function name.
    name
        The schedule's (and its jobs') name.
    """
    return ScheduleRemove(func, name)
