"""Two servers on one PostgreSQL database: each tick of a schedule fires once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from pg_fixture import pg_database_url, postgres_cluster  # noqa: F401  (fixtures)
from test_scheduler_service import RecordingOutbox

from trio_periodic.protocol.packets import JobAssign
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.schedules import make_row
from trio_periodic.scheduler.service import Clock, SchedulerService

pytestmark = [pytest.mark.postgres]

TIMEOUT = 60  # seconds of real time for the whole test


class SteppedClock(Clock):
    """Epoch seconds set by the test (``step``), moving with trio's clock between steps."""

    def __init__(self, epoch: float) -> None:
        self._offset = epoch - trio.current_time()

    def step(self, seconds: float) -> None:
        self._offset += seconds


@asynccontextmanager
async def servers(
    url: str, clock: SteppedClock, runs: list[tuple[int, bytes, int]]
) -> AsyncIterator[list[SchedulerService]]:
    """Two services on one database, each with one worker for ``f`` that
    records (server index, job name, sched_at) and finishes the job at once."""
    from trio_periodic.store.postgres import PostgresStore

    services: list[SchedulerService] = []
    stores = []
    async with trio.open_nursery() as nursery:
        for index in range(2):
            store = PostgresStore(url)
            stores.append(store)
            core = Scheduler()
            core.restore(await store.open(), clock.now())
            svc = SchedulerService(core, store, clock)
            await nursery.start(svc.run)
            services.append(svc)
            nursery.start_soon(worker, svc, index, runs)
        try:
            yield services
        finally:
            nursery.cancel_scope.cancel()
            for store in stores:
                await store.aclose()


async def worker(svc: SchedulerService, index: int, runs: list[tuple[int, bytes, int]]) -> None:
    outbox = RecordingOutbox()
    conn = svc.core.connect(is_worker=True, sink=outbox)
    svc.core.can_do(conn, b"f")
    svc.core.add_slot(conn, 1)
    await svc.settle()
    while True:
        _, msgid, packet = await outbox.next()
        assert isinstance(packet, JobAssign)
        runs.append((index, packet.job.name, packet.job.sched_at))
        svc.core.job_assigned(conn, msgid, svc.clock.now())
        svc.core.work_done(conn, b"f", packet.job.name, b"")
        svc.core.add_slot(conn, msgid)
        await svc.settle()


def _job_rows(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM periodic_jobs").fetchone()
    return int(row[0]) if row else 0


async def until(predicate: object, what: str) -> None:
    for _ in range(1000):
        if callable(predicate) and predicate():
            return
        await trio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def test_each_tick_fires_once_across_two_servers(pg_database_url: str) -> None:  # noqa: F811
    # Near the real time: the store's leases are on the real clock, and the
    # steps below only move this clock ahead of it (leases grow longer).
    start = time.time() // 60 * 60 + 30
    runs: list[tuple[int, bytes, int]] = []
    with trio.fail_after(TIMEOUT):
        clock = SteppedClock(start)
        async with servers(pg_database_url, clock, runs) as (a, b):
            a.core.schedule_put(make_row(b"f", b"s", "* * * * *", "UTC", now=start), start)
            await a.settle()
            # B learns of it by notification.
            await until(lambda: (b"f", b"s") in b.core.schedules.entries, "B to see it")
            ticks = []
            for i in range(12):
                tick = int(start) + 30 + 60 * i
                clock.step(tick - clock.now())  # to the tick, exactly
                ticks.append(tick)
                for svc in (a, b):
                    svc._wake.set()
                await until(lambda n=i + 1: len(runs) >= n, f"run {i + 1}")  # type: ignore[misc]
                # The job ended before the next tick: both mirrors know, and its
                # row is gone (the server that ran it commits the delete after
                # WORK_DONE; a tick that still finds the row is skipped).
                await until(
                    lambda: (
                        a.core.entry(b"f", b"s") is None
                        and b.core.entry(b"f", b"s") is None
                        and not _job_rows(pg_database_url)
                    ),
                    "the job to end everywhere",
                )
            await trio.sleep(0.5)  # a second fire of any tick would show up now
            counts = Counter(sched_at for _, _, sched_at in runs)
            assert sorted(counts) == ticks and set(counts.values()) == {1}, runs
            rows = [svc.core.schedules.entries[(b"f", b"s")].row for svc in (a, b)]
            fired_here = [svc.core.schedules.entries[(b"f", b"s")].local_fired for svc in (a, b)]
            assert sum(fired_here) == 12
            # Both see the shared row; the one that fired last knows the count.
            assert max(r.fired for r in rows) == 12
            assert max(r.last_tick for r in rows) == ticks[-1]
            # Removal on B reaches A.
            assert b.core.schedule_remove(b"f", b"s")
            await b.settle()
            await until(lambda: not a.core.schedules.entries, "A to drop it")
