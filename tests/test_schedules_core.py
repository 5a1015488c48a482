"""Schedules in the pure core: ticks, overlap and catch-up with explicit ``now``."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import pytest

from trio_periodic.protocol.job import Job
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.cron import Cron, CronError
from trio_periodic.scheduler.effects import Assign
from trio_periodic.scheduler.schedules import (
    MAX_CATCH_UP,
    make_row,
    on_release,
    on_start,
    on_tick,
)
from trio_periodic.store.base import DeleteSchedule, PutJob, PutSchedule, ScheduleRow, StoredState


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


T0 = at("2026-06-01T10:00:30+00:00")  # mid-minute


def row(**kw: object) -> ScheduleRow:
    base = make_row(b"f", b"s", "* * * * *", "UTC", workload=b"w", timeout=7, now=T0)
    return replace(base, **kw)  # type: ignore[arg-type]


def core_with(r: ScheduleRow, now: float = T0) -> Scheduler:
    core = Scheduler()
    core.schedule_put(r, now)
    return core


def worker(core: Scheduler, func: bytes = b"f", slots: int = 1) -> object:
    conn = core.connect(is_worker=True)
    core.can_do(conn, func)
    for msgid in range(1, slots + 1):
        core.add_slot(conn, msgid)
    return conn


# -- decisions ------------------------------------------------------------


def test_tick_fires_when_the_job_is_absent() -> None:
    r = row(last_tick=940)
    new, job = on_tick(r, 1000, exists=False)
    assert job == Job(b"f", b"s", b"w", 1000, 0, 7)
    assert (new.last_tick, new.last_fired, new.fired, new.skipped) == (1000, 1000, 1, 0)


def test_tick_already_handled_changes_nothing() -> None:
    r = row(last_tick=1000)
    assert on_tick(r, 1000, exists=False) == (r, None)
    assert on_tick(r, 940, exists=False) == (r, None)


def test_skip_counts_and_queue_remembers_one() -> None:
    new, job = on_tick(row(last_tick=940), 1000, exists=True)
    assert job is None and (new.skipped, new.queued, new.last_tick) == (1, 0, 1000)
    q = row(overlap="queue", last_tick=940)
    new, job = on_tick(q, 1000, exists=True)
    assert job is None and (new.skipped, new.queued) == (0, 1)
    new2, job = on_tick(new, 1060, exists=True)
    assert job is None and (new2.skipped, new2.queued) == (1, 1)
    fired, job = on_release(new2, 1070.5, exists=False)
    assert job is not None and job.sched_at == 1070
    assert (fired.queued, fired.fired, fired.last_fired) == (0, 1, 1070)
    assert on_release(new2, 1070, exists=True) == (new2, None)


def test_catch_up_policies() -> None:
    cron = Cron("*/10 * * * *")
    last = int(at("2026-06-01T10:00:00+00:00"))
    now = at("2026-06-01T11:05:00+00:00")  # missed 10:10 .. 11:00: six ticks
    none, job = on_start(row(catch_up="none", last_tick=last), cron, now, exists=False)
    assert job is None and none.last_tick == int(at("2026-06-01T11:00:00+00:00"))
    assert none.fired == 0
    last_, job = on_start(row(catch_up="last", last_tick=last), cron, now, exists=False)
    assert job is not None and job.sched_at == int(at("2026-06-01T11:00:00+00:00"))
    assert last_.fired == 1
    all_, job = on_start(row(catch_up="all", last_tick=last), cron, now, exists=False)
    assert job is not None and all_.queued == 5 and all_.fired == 1
    # A job still pending from before the stop: all six wait behind it.
    waiting, job = on_start(row(catch_up="all", last_tick=last), cron, now, exists=True)
    assert job is None and waiting.queued == 6


def test_catch_up_all_keeps_the_newest_hundred() -> None:
    cron = Cron("* * * * *")
    last = int(at("2026-06-01T00:00:00+00:00"))
    now = at("2026-06-02T00:00:00+00:00")  # 1440 missed minutes
    new, job = on_start(row(catch_up="all", last_tick=last), cron, now, exists=True)
    assert job is None and new.queued == MAX_CATCH_UP
    assert new.last_tick == int(now)


def test_make_row_validates() -> None:
    with pytest.raises(CronError, match="overlap"):
        make_row(b"f", b"s", "* * * * *", "UTC", overlap="maybe", now=T0)
    with pytest.raises(CronError, match="catch-up"):
        make_row(b"f", b"s", "* * * * *", "UTC", catch_up="some", now=T0)
    with pytest.raises(CronError, match="zone"):
        make_row(b"f", b"s", "* * * * *", "Nowhere/Else", now=T0)


# -- the core ---------------------------------------------------------------


def test_added_mid_minute_fires_first_at_the_next_minute() -> None:
    core = core_with(row())
    assert core.take_changes() == [PutSchedule(row())]
    nxt = at("2026-06-01T10:01:00+00:00")
    assert core.next_wakeup() == nxt
    core.tick(nxt - 1)
    assert core.dump() == []
    core.tick(nxt)
    [entry] = core.dump()
    assert (entry.func, entry.name, entry.sched_at, entry.workload) == (b"f", b"s", int(nxt), b"w")
    changes = core.take_changes()
    assert isinstance(changes[0], PutJob) and isinstance(changes[1], PutSchedule)
    assert changes[1].row.fired == 1 and changes[1].row.last_tick == int(nxt)
    assert core.next_wakeup() == nxt + 60


def test_no_schedule_means_no_wakeup() -> None:
    core = Scheduler()
    core.submit(Job(b"f", b"a", sched_at=int(T0) + 100), T0)
    assert core.next_wakeup() == T0 + 100 or core.next_wakeup() == float("inf")
    core.schedule_put(row(), T0)
    core.schedule_remove(b"f", b"s")
    assert core.take_changes()[-1] == DeleteSchedule(b"f", b"s")
    assert core.schedules.wake == float("inf")


def test_skip_while_running_then_fire_again() -> None:
    core = core_with(row())
    conn = worker(core)
    t1 = at("2026-06-01T10:01:00+00:00")
    core.tick(t1)
    [a] = core.take_effects()
    assert isinstance(a, Assign) and a.job.name == b"s" and a.job.timeout == 7
    core.tick(t1 + 60)  # still running: skipped
    assert core.schedules.entries[(b"f", b"s")].row.skipped == 1
    assert core.take_effects() == []
    core.work_done(conn, b"f", b"s", b"")  # type: ignore[arg-type]
    core.add_slot(conn, 1)  # type: ignore[arg-type]
    core.tick(t1 + 90)
    assert core.take_effects() == []  # skip does not run the missed tick later
    core.tick(t1 + 120)
    [again] = core.take_effects()
    assert isinstance(again, Assign) and again.job.sched_at == int(t1 + 120)


def test_pending_job_not_run_yet_serves_the_tick() -> None:
    core = core_with(row())
    t1 = at("2026-06-01T10:01:00+00:00")
    core.tick(t1)  # no worker: stays pending
    core.tick(t1 + 60)
    r = core.schedules.entries[(b"f", b"s")].row
    assert (r.fired, r.skipped) == (1, 1)
    assert len(core.dump()) == 1


def test_queue_submits_when_the_run_ends() -> None:
    core = core_with(row(overlap="queue"))
    conn = worker(core)
    t1 = at("2026-06-01T10:01:00+00:00")
    core.tick(t1)
    core.take_effects()
    core.tick(t1 + 60)
    core.tick(t1 + 120)  # a second queued tick is not kept
    r = core.schedules.entries[(b"f", b"s")].row
    assert (r.fired, r.queued, r.skipped) == (1, 1, 1)
    assert core.schedules.queued
    core.work_done(conn, b"f", b"s", b"")  # type: ignore[arg-type]
    core.add_slot(conn, 1)  # type: ignore[arg-type]
    assert core.next_wakeup() == float("-inf")  # released: due at once
    core.tick(t1 + 125)
    [a] = core.take_effects()
    assert isinstance(a, Assign) and a.job.sched_at == int(t1 + 125)
    r = core.schedules.entries[(b"f", b"s")].row
    assert (r.fired, r.queued) == (2, 0)
    assert not core.schedules.queued


def test_queue_releases_on_remove_too() -> None:
    core = core_with(row(overlap="queue"))
    t1 = at("2026-06-01T10:01:00+00:00")
    core.tick(t1)
    core.tick(t1 + 60)  # pending, not run: remembered
    core.remove_job(b"f", b"s")
    core.tick(t1 + 61)
    [entry] = core.dump()
    assert entry.sched_at == int(t1 + 61)


@pytest.mark.parametrize(
    ("policy", "fires", "queued"), [("none", 0, 0), ("last", 1, 0), ("all", 1, 5)]
)
def test_restore_catches_up(policy: str, fires: int, queued: int) -> None:
    last = int(at("2026-06-01T10:00:00+00:00"))
    now = at("2026-06-01T11:05:00+00:00")  # missed 10:10 .. 11:00
    stored = replace(row(catch_up=policy, last_tick=last), cron="*/10 * * * *")
    core = Scheduler()
    core.restore(StoredState(schedules=[stored]), now)
    assert core.next_wakeup() == float("-inf")
    core.tick(now)
    jobs = core.dump()
    # A missed tick's job is due at once (a past sched_at means now).
    assert [j.sched_at for j in jobs] == [int(now)] * fires
    r = core.schedules.entries[(b"f", b"s")].row
    assert (r.fired, r.queued) == (fires, queued)
    assert r.last_tick == int(at("2026-06-01T11:00:00+00:00"))
    if policy == "last":
        assert r.last_fired == r.last_tick
    assert core.next_wakeup() == at("2026-06-01T11:10:00+00:00")


def test_catch_up_all_runs_the_missed_ticks_one_after_another() -> None:
    last = int(at("2026-06-01T10:00:00+00:00"))
    now = at("2026-06-01T10:35:00+00:00")  # missed 10:10, 10:20, 10:30
    stored = replace(row(catch_up="all", last_tick=last), cron="*/10 * * * *")
    core = Scheduler()
    core.restore(StoredState(schedules=[stored]), now)
    conn = worker(core)
    runs = 0
    t = now
    for _ in range(10):
        core.tick(t)
        effects = core.take_effects()
        if not effects:
            break
        assert len(effects) == 1  # one at a time: the same job name
        runs += 1
        core.work_done(conn, b"f", b"s", b"")  # type: ignore[arg-type]
        core.add_slot(conn, 1)  # type: ignore[arg-type]
        t += 1
    assert runs == 3
