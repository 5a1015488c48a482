"""Cluster mode: jobs are claimed ahead, so most assignments need no round trip.

The service with a fake shared store that records each claim, on MockClock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from fake_shared_store import FakeSharedStore
from test_scheduler_service import RecordingOutbox, add_worker

from trio_periodic.protocol.job import Job
from trio_periodic.protocol.packets import JobAssign
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.effects import Assign
from trio_periodic.scheduler.service import (
    AHEAD_FRESH,
    CLAIM_AHEAD,
    CLAIM_AHEAD_MAX,
    Clock,
    SchedulerService,
)
from trio_periodic.scheduler.state import ConnState
from trio_periodic.store.base import PutJob


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class CountingSharedStore(FakeSharedStore):
    """Every claim succeeds; the claims are counted."""


@asynccontextmanager
async def _serving(
    store: FakeSharedStore, names: list[bytes], slots: int
) -> AsyncIterator[tuple[SchedulerService, ConnState, RecordingOutbox]]:
    """A running service with one worker for ``f`` and ``names`` submitted;
    cancelled on the way out."""
    svc = SchedulerService(Scheduler(), store, Clock())
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(svc.run)
            conn, outbox = add_worker(svc, b"f", slots=slots)
            for name in names:
                svc.core.submit(Job(b"f", name), svc.clock.now())
            await svc.settle()
            yield svc, conn, outbox
            nursery.cancel_scope.cancel()


async def _finish_next(
    svc: SchedulerService, conn: ConnState, outbox: RecordingOutbox, pause: float = 0.0
) -> bytes:
    """The worker takes its next job, works ``pause`` seconds, reports it done
    and asks for another; the job's name."""
    _, msgid, packet = await outbox.next()
    assert isinstance(packet, JobAssign)
    await trio.sleep(pause)
    svc.core.work_done(conn, b"f", packet.job.name, b"")
    svc.core.add_slot(conn, msgid)
    await svc.settle()
    return packet.job.name


async def test_one_claim_serves_the_next_jobs_and_a_put_forgets_its_claim(
    mock_clock: trio.testing.MockClock,
) -> None:
    store = CountingSharedStore()
    names = [b"j%d" % i for i in range(10)]
    delivered: list[bytes] = []
    async with _serving(store, names, slots=1) as (svc, conn, outbox):
        for _ in range(5):
            delivered.append(await _finish_next(svc, conn, outbox))
        # One claim round took the assigned job and the 9 due after it.
        assert store.claims == [sorted(names)]
        # Our own put of a job claimed ahead clears its claim in the store:
        # it needs a claim of its own before it goes out.
        svc.core.submit(Job(b"f", b"j9", workload=b"again"), svc.clock.now())
        await svc.settle()
        for _ in range(5):
            delivered.append(await _finish_next(svc, conn, outbox))
    assert sorted(delivered) == sorted(names)
    assert store.claims[1] == [b"j9"]


async def test_a_stale_claim_ahead_is_claimed_again(mock_clock: trio.testing.MockClock) -> None:
    """A job claimed ahead but not handed out within AHEAD_FRESH seconds goes
    through a claim again: its lease may no longer outlast the worker's timeout."""
    store = CountingSharedStore()
    async with _serving(store, [b"a", b"b"], slots=1) as (svc, conn, outbox):
        _, msgid, packet = await outbox.next()
        assert isinstance(packet, JobAssign) and packet.job.name == b"a"
        assert store.claims == [[b"a", b"b"]]
        await trio.sleep(AHEAD_FRESH + 1)
        svc.core.work_done(conn, b"f", b"a", b"")
        svc.core.add_slot(conn, msgid)
        await svc.settle()
        _, _, packet = await outbox.next()
        assert isinstance(packet, JobAssign) and packet.job.name == b"b"
    assert store.claims == [[b"a", b"b"], [b"b"]]


class PutClaimingStore(FakeSharedStore):
    """Claims puts' jobs in the same write (``PutJob.lease``), like PostgreSQL."""

    def __init__(self) -> None:
        super().__init__()
        self.put_claims_refused: set[tuple[bytes, bytes]] = set()


async def test_only_assignments_riding_on_the_batchs_put_wait_for_its_commit(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A batch that submits a job and hands it out claims it by its put: that
    assignment waits for the commit.  An assignment of a job committed before
    needs no part of this commit and goes out at once (through the claimer)."""
    clock = Clock()
    store = PutClaimingStore()
    svc = SchedulerService(Scheduler(), store, clock)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(svc.run)
            svc.core.submit(Job(b"f", b"old"), clock.now() - 10)  # due first
            _, changes = svc.finish_batch()
            await svc.commit(changes)
            add_worker(svc, b"f", slots=2)
            svc.core.submit(Job(b"f", b"new"), clock.now())
            effects, changes = svc.finish_batch()
            assert [c.lease is not None for c in changes if isinstance(c, PutJob)] == [True]
            assert svc.committing((b"f", b"new"))  # from the batch on, not from the commit on
            early, later = svc.before_commit(effects)
            assert [e.job.name for e in early if isinstance(e, Assign)] == [b"old"]
            assert [e.job.name for e in later if isinstance(e, Assign)] == [b"new"]
            await svc.commit(changes)
            assert not svc.committing((b"f", b"new"))
            nursery.cancel_scope.cancel()


async def test_abandoned_changes_stop_being_waited_for(mock_clock: trio.testing.MockClock) -> None:
    clock = Clock()
    svc = SchedulerService(Scheduler(), PutClaimingStore(), clock)
    svc.core.submit(Job(b"f", b"x"), clock.now())
    _, changes = svc.finish_batch()
    assert svc.committing((b"f", b"x"))
    svc.abandon(changes)
    assert not svc.committing((b"f", b"x"))


async def test_the_stock_claimed_ahead_follows_the_pace_of_hand_outs(
    mock_clock: trio.testing.MockClock,
) -> None:
    """Handing jobs out fast makes claim rounds larger (fewer transactions),
    never past CLAIM_AHEAD_MAX; a quiet spell brings them back down."""
    store = CountingSharedStore()
    names = [b"j%04d" % i for i in range(3000)]
    async with _serving(store, names, slots=8) as (svc, conn, outbox):
        for _ in range(1500):  # a job per 0.1 ms: 500 per AHEAD_HORIZON
            await _finish_next(svc, conn, outbox, 0.0001)
        busy = [len(c) for c in store.claims]
        for _ in range(200):  # a job per 50 ms
            await _finish_next(svc, conn, outbox, 0.05)
        quiet = [len(c) for c in store.claims[len(busy) :]]
    assert busy[0] <= CLAIM_AHEAD + 8  # the first round: the assignments plus the minimum
    assert max(busy) > 2 * CLAIM_AHEAD
    assert max(busy) <= CLAIM_AHEAD_MAX + 8
    assert quiet and max(quiet[-3:]) <= CLAIM_AHEAD + 8
