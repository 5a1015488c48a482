"""The per-second throughput ring, pure and through the service on MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_periodic.protocol.job import Job
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.service import Clock, SchedulerService
from trio_periodic.scheduler.throughput import Throughput
from trio_periodic.store.memory import MemoryStore


def test_add_counts_in_the_current_second() -> None:
    ring = Throughput(["done", "failed"], span=10)
    ring.tick(100.2)
    ring.add("done")
    ring.add("done", 2)
    ring.tick(100.9)  # same second
    ring.add("failed")
    ring.tick(102.0)
    ring.add("done", 5)
    series = ring.series(4)
    assert series.start == 99
    assert series.counts == {"done": [0, 3, 0, 5], "failed": [0, 1, 0, 0]}
    assert ring.total("done", 10) == 8


def test_add_before_tick_is_a_mistake() -> None:
    with pytest.raises(RuntimeError):
        Throughput(["done"]).add("done")


def test_samples_count_growth_in_the_second_that_ended() -> None:
    ring = Throughput(["submitted", "done"], span=60)
    ring.sample(1000.001, {"submitted": 7, "done": 3})  # counted from zero
    ring.sample(1001.001, {"submitted": 10, "done": 3})
    ring.sample(1002.001, {"submitted": 10, "done": 9})
    # A missed second (a busy process) reads as zero; growth lands in 1003.
    ring.sample(1004.001, {"submitted": 11, "done": 9})
    series = ring.series(5)
    assert series.start == 999
    assert series.counts == {"submitted": [7, 3, 0, 0, 1], "done": [3, 0, 6, 0, 0]}


def test_a_lap_around_the_ring_forgets_old_seconds() -> None:
    ring = Throughput(["done"], span=5)
    ring.tick(10)
    ring.add("done", 4)
    ring.tick(15)  # slot of second 10 again: must read as a fresh second
    assert ring.series(5).counts["done"] == [0, 0, 0, 0, 0]
    ring.tick(1000)
    ring.add("done")
    assert ring.series(50).counts["done"] == [0, 0, 0, 0, 1]  # at most span seconds
    assert ring.series(50).start == 996


def test_time_never_goes_back() -> None:
    ring = Throughput(["done"], span=5)
    ring.tick(20.5)
    ring.tick(18.0)
    ring.add("done")
    assert ring.series(1).start == 20 and ring.series(1).counts["done"] == [1]


async def test_the_service_samples_the_core_counters_every_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    core = Scheduler()
    service = SchedulerService(core, MemoryStore(), Clock())
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        now = service.clock.now()
        await trio.sleep_until(service.clock.to_trio(int(now) + 1.5))
        for i in range(4):
            core.submit(Job(b"f", b"j%d" % i), service.clock.now())
        submitted_in = int(service.clock.now())
        await trio.sleep(2)
        counts = service.throughput.series(10).counts["submitted"]
        start = service.throughput.series(10).start
        assert sum(counts) == 4
        assert counts[submitted_in - start] == 4
        nursery.cancel_scope.cancel()


async def test_an_idle_hour_on_mock_clock(autojump_clock: trio.testing.MockClock) -> None:
    core = Scheduler()
    service = SchedulerService(core, MemoryStore(), Clock())
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)
        await trio.sleep(3600)
        series = service.throughput.series(600)
        assert len(series.counts["done"]) == 600 and not any(series.counts["done"])
        assert series.start == int(service.clock.now()) - 600
        nursery.cancel_scope.cancel()
