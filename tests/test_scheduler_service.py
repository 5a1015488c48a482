"""The scheduler service on MockClock: exact due times and timeouts in zero wall time."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from trio_periodic.protocol.frames import decode_body
from trio_periodic.protocol.job import Job
from trio_periodic.protocol.packets import Data, JobAssign
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.service import Clock, SchedulerService
from trio_periodic.scheduler.state import ConnState
from trio_periodic.store.memory import MemoryStore


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@dataclass
class RecordingOutbox:
    """Collects frames with the trio time they were queued at."""

    frames: list[tuple[float, int, object]] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    def push_frame(self, frame: bytes) -> None:
        msgid, packet = decode_body(frame[12:])
        self.frames.append((trio.current_time(), msgid, packet))
        self.arrived.set()

    def flush_eagerly(self) -> bool:
        return False

    async def next(self) -> tuple[float, int, object]:
        while not self.frames:
            self.arrived = trio.Event()
            await self.arrived.wait()
        return self.frames.pop(0)


@pytest.fixture
async def service() -> AsyncIterator[SchedulerService]:
    svc = SchedulerService(Scheduler(), MemoryStore(), Clock())
    async with trio.open_nursery() as nursery:
        await nursery.start(svc.run)
        yield svc
        nursery.cancel_scope.cancel()


def add_worker(
    svc: SchedulerService, func: bytes, slots: int = 1
) -> tuple[ConnState, RecordingOutbox]:
    outbox = RecordingOutbox()
    conn = svc.core.connect(is_worker=True, sink=outbox)
    svc.core.can_do(conn, func)
    for msgid in range(1, slots + 1):
        svc.core.add_slot(conn, msgid)
    return conn, outbox


async def settle(svc: SchedulerService) -> None:
    await svc.settle()


async def test_job_due_in_an_hour_is_assigned_at_exactly_that_time(
    service: SchedulerService, mock_clock: trio.testing.MockClock
) -> None:
    wall = time.monotonic()
    _, outbox = add_worker(service, b"f")
    due = int(service.clock.now()) + 3600
    service.core.submit(Job(b"f", b"later", sched_at=due), service.clock.now())
    await settle(service)
    at, msgid, packet = await outbox.next()
    assert isinstance(packet, JobAssign) and packet.job.name == b"later"
    assert msgid == 1
    assert service.clock.to_trio(due) <= at < service.clock.to_trio(due) + 0.001
    assert time.monotonic() - wall < 2  # an hour of scheduling in (almost) no wall time


async def test_timeout_hands_job_to_next_worker_exactly_after_timeout(
    service: SchedulerService, mock_clock: trio.testing.MockClock
) -> None:
    w1, out1 = add_worker(service, b"f")
    service.core.submit(Job(b"f", b"a", timeout=5), service.clock.now())
    await settle(service)
    t_assign, msgid, _ = await out1.next()
    service.core.job_assigned(w1, msgid, service.clock.now())
    await settle(service)
    _, out2 = add_worker(service, b"f")
    await settle(service)
    # The job is only offered again once its 5 s are over, plus the 1 s retry delay.
    t_again, _, packet = await out2.next()
    assert isinstance(packet, JobAssign)
    assert t_again - t_assign == pytest.approx(6.0, abs=0.01)


async def test_sched_later_runs_after_exactly_the_delay(
    service: SchedulerService, mock_clock: trio.testing.MockClock
) -> None:
    w, out = add_worker(service, b"f")
    service.core.submit(Job(b"f", b"a"), service.clock.now())
    await settle(service)
    await out.next()
    await trio.sleep(0.4)  # the worker is mid-second when it answers
    service.core.job_assigned(w, 1, service.clock.now())
    t_report = trio.current_time()
    service.core.sched_later(w, b"f", b"a", 1, 1, service.clock.now())
    service.core.add_slot(w, 1)
    await settle(service)
    t_again, _, packet = await out.next()
    assert isinstance(packet, JobAssign) and packet.job.count == 1
    assert t_again - t_report == pytest.approx(1.0, abs=0.01)


async def test_run_job_waiter_expires_on_time(
    service: SchedulerService, mock_clock: trio.testing.MockClock
) -> None:
    add_worker(service, b"f", slots=0)  # registered but never grabs
    outbox = RecordingOutbox()
    client = service.core.connect(is_worker=False, sink=outbox)
    start = trio.current_time()
    assert service.core.run_job(client, 7, Job(b"f", b"a", timeout=3), service.clock.now())
    await settle(service)
    at, msgid, packet = await outbox.next()
    assert (msgid, packet) == (7, Data(b"expired"))
    assert at - start == pytest.approx(3.0, abs=0.01)
    assert service.core.dump() == []


async def test_jobs_due_at_many_times_each_go_out_on_time(
    service: SchedulerService, mock_clock: trio.testing.MockClock
) -> None:
    w, out = add_worker(service, b"f", slots=1)
    base = int(service.clock.now()) + 10
    offsets = [7, 3, 3, 12, 1, 5]
    for i, off in enumerate(offsets):
        service.core.submit(Job(b"f", b"%d" % i, sched_at=base + off), service.clock.now())
    await settle(service)
    seen = []
    for _ in offsets:
        at, msgid, packet = await out.next()
        assert isinstance(packet, JobAssign)
        seen.append((round(service.clock.now() - base), packet.job.name))
        assert at == pytest.approx(service.clock.to_trio(packet.job.sched_at), abs=0.01)
        service.core.job_assigned(w, msgid, service.clock.now())
        service.core.work_done(w, b"f", packet.job.name, b"")
        service.core.add_slot(w, msgid)
        await settle(service)
    assert seen == [(1, b"4"), (3, b"1"), (3, b"2"), (5, b"5"), (7, b"0"), (12, b"3")]
