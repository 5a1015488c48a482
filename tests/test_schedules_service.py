"""Schedules driven by the service's wake-up loop on MockClock, across DST days."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import trio
import trio.testing
from test_scheduler_service import RecordingOutbox

from trio_periodic.protocol.packets import JobAssign
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.schedules import make_row
from trio_periodic.scheduler.service import Clock, SchedulerService
from trio_periodic.store.memory import MemoryStore


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class StartingAt(Clock):
    """Epoch seconds that start at ``epoch`` and move with trio's clock."""

    def __init__(self, epoch: float) -> None:
        self._offset = epoch - trio.current_time()


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


async def run_schedule(
    expr: str, tz: str, start: str, until: str, overlap: str = "skip", work: float = 0.0
) -> list[tuple[str, str]]:
    """Run one schedule from ``start`` to ``until`` with a worker that takes
    ``work`` seconds per job; (when assigned, sched_at) as local ISO times."""
    svc = SchedulerService(Scheduler(), MemoryStore(), StartingAt(at(start)))
    zone = ZoneInfo(tz)
    seen: list[tuple[str, str]] = []

    def local(t: float) -> str:
        return datetime.fromtimestamp(round(t), zone).isoformat()

    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        outbox = RecordingOutbox()
        conn = svc.core.connect(is_worker=True, sink=outbox)
        svc.core.can_do(conn, b"f")
        svc.core.add_slot(conn, 1)
        svc.core.schedule_put(
            make_row(b"f", b"s", expr, tz, overlap=overlap, now=svc.clock.now()),
            svc.clock.now(),
        )
        await svc.settle()
        end = at(until)
        with trio.move_on_at(svc.clock.to_trio(end)):
            for _ in range(1000):
                _, msgid, packet = await outbox.next()
                assert isinstance(packet, JobAssign)
                seen.append((local(svc.clock.now()), local(packet.job.sched_at)))
                svc.core.job_assigned(conn, msgid, svc.clock.now())
                await svc.settle()
                await trio.sleep(work)
                svc.core.work_done(conn, b"f", packet.job.name, b"")
                svc.core.add_slot(conn, msgid)
                await svc.settle()
        nursery.cancel_scope.cancel()
    return seen


async def test_paris_hourly_over_spring_forward(mock_clock: trio.testing.MockClock) -> None:
    seen = await run_schedule(
        "0 * * * *", "Europe/Paris", "2026-03-29T00:20:10+01:00", "2026-03-29T05:30+02:00"
    )
    assert seen == [
        ("2026-03-29T01:00:00+01:00", "2026-03-29T01:00:00+01:00"),
        ("2026-03-29T03:00:00+02:00", "2026-03-29T03:00:00+02:00"),
        ("2026-03-29T04:00:00+02:00", "2026-03-29T04:00:00+02:00"),
        ("2026-03-29T05:00:00+02:00", "2026-03-29T05:00:00+02:00"),
    ]


async def test_paris_daily_over_both_changes(mock_clock: trio.testing.MockClock) -> None:
    seen = await run_schedule(
        "30 2 * * *", "Europe/Paris", "2026-03-29T01:50+01:00", "2026-03-29T03:30+02:00"
    )
    assert seen == [("2026-03-29T03:00:00+02:00", "2026-03-29T03:00:00+02:00")]
    seen = await run_schedule(
        "30 2 * * *", "Europe/Paris", "2026-10-25T02:20+02:00", "2026-10-25T03:00+01:00"
    )
    assert [s[0] for s in seen] == ["2026-10-25T02:30:00+02:00"]  # not again at +01:00


async def test_new_york_hourly_over_fall_back(mock_clock: trio.testing.MockClock) -> None:
    seen = await run_schedule(
        "0 * * * *", "America/New_York", "2026-11-01T00:00:30-04:00", "2026-11-01T03:30-05:00"
    )
    assert [s[0] for s in seen] == [
        "2026-11-01T01:00:00-04:00",
        "2026-11-01T02:00:00-05:00",
        "2026-11-01T03:00:00-05:00",
    ]


async def test_new_york_daily_over_spring_forward(mock_clock: trio.testing.MockClock) -> None:
    seen = await run_schedule(
        "30 2 * * *", "America/New_York", "2026-03-08T01:50-05:00", "2026-03-08T03:30-04:00"
    )
    assert [s[0] for s in seen] == ["2026-03-08T03:00:00-04:00"]


async def test_lord_howe_half_hour_change(mock_clock: trio.testing.MockClock) -> None:
    seen = await run_schedule(
        "15 2 * * *", "Australia/Lord_Howe", "2026-10-04T01:50+10:30", "2026-10-04T03:00+11:00"
    )
    assert [s[0] for s in seen] == ["2026-10-04T02:30:00+11:00"]


async def test_overlap_skip_and_queue_with_slow_runs(mock_clock: trio.testing.MockClock) -> None:
    # Each run takes 90 s; ticks every minute.
    args = ("* * * * *", "UTC", "2026-06-01T10:00:30+00:00", "2026-06-01T10:06:59+00:00")
    skip = await run_schedule(*args, work=90)
    assert [s[0][11:19] for s in skip] == ["10:01:00", "10:03:00", "10:05:00"]
    queue = await run_schedule(*args, overlap="queue", work=90)
    # Each run ends mid-minute; the tick remembered meanwhile goes out then.
    assert [s[0][11:19] for s in queue] == ["10:01:00", "10:02:30", "10:04:00", "10:05:30"]
