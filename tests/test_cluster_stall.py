"""Cluster mode: a job deleted by another server while our claim is in flight
must not take the worker's grab slot with it.

The race behind a server that stopped handing jobs to its own idle workers
in two-server runs: server A dispatches job X to a worker's slot and claims
it; meanwhile server B (whose worker ran X) deletes the row, and B's
notification reaches A before A's claim returns (refused: no row).  The
RemoteDelete dropped A's assignment, so the refusal found nothing to hand
back, and the slot, popped by the dispatch and never delivered, was lost
for good.  A few such races and every slot of A's workers was gone while
thousands of jobs waited.

The service with a fake shared store, on MockClock.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing
from fake_shared_store import Claims, FakeSharedStore, Refused
from test_scheduler_service import add_worker

from trio_periodic.protocol.job import Job
from trio_periodic.protocol.packets import JobAssign
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.service import Clock, SchedulerService
from trio_periodic.store.base import (
    RemoteDelete,
    RemoteJob,
    SharedStore,
    StoreError,
)


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class RacingSharedStore(FakeSharedStore):
    """While the claim of ``victim`` is in flight, another server's change to
    it arrives (``during``); the claim then refuses it or fails."""

    def __init__(self, victim: bytes, outcome: str, epoch_now: Callable[[], float]) -> None:
        super().__init__()
        self.victim = victim
        self.outcome = outcome  # "gone", "held" or "error"
        self.now = epoch_now
        self.during: Callable[[], None] = lambda: None

    def answer(self, claims: Claims) -> Refused:
        hit = [(f, n) for f, n, _ in claims if n == self.victim]
        if hit:
            self.during()
            if self.outcome == "error":
                raise StoreError("fake: connection lost")
            if self.outcome == "held":
                return {h: self.now() + 3600 for h in hit}
            return dict.fromkeys(hit)
        return {}


@pytest.mark.parametrize("outcome", ["gone", "held", "error"])
async def test_a_remote_delete_during_a_claim_keeps_the_workers_slot(
    mock_clock: trio.testing.MockClock, outcome: str
) -> None:
    clock = Clock()
    store = RacingSharedStore(b"a", outcome, clock.now)
    assert isinstance(store, SharedStore)
    svc = SchedulerService(Scheduler(), store, clock)
    store.during = lambda: svc.remote_changes([RemoteDelete(b"f", b"a")])
    delivered: list[bytes] = []
    with trio.fail_after(60):  # MockClock seconds
        async with trio.open_nursery() as nursery:
            await nursery.start(svc.run)
            conn, outbox = add_worker(svc, b"f", slots=1)
            svc.core.submit(Job(b"f", b"a"), clock.now())
            await svc.settle()
            svc.core.submit(Job(b"f", b"b"), clock.now())
            await svc.settle()
            with trio.move_on_after(10):
                while b"b" not in delivered:
                    _, _, packet = await outbox.next()
                    assert isinstance(packet, JobAssign)
                    delivered.append(packet.job.name)
            nursery.cancel_scope.cancel()
    # a was deleted elsewhere: never handed out here; b goes to the same slot.
    assert delivered == [b"b"], (delivered, conn.slots, store.claims)


async def test_a_remote_rewrite_during_a_claim_keeps_the_workers_slot(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The same race with another server's claim arriving as a RemoteJob
    while ours is refused."""
    clock = Clock()
    store = RacingSharedStore(b"a", "held", clock.now)
    svc = SchedulerService(Scheduler(), store, clock)
    store.during = lambda: svc.remote_changes([RemoteJob(Job(b"f", b"a"), clock.now() + 3600)])
    delivered: list[bytes] = []
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(svc.run)
            add_worker(svc, b"f", slots=1)
            svc.core.submit(Job(b"f", b"a"), clock.now())
            svc.core.submit(Job(b"f", b"b"), clock.now())
            await svc.settle()
            with trio.move_on_after(10):
                while b"b" not in delivered:
                    _, _, packet = await outbox_next(svc)
                    assert isinstance(packet, JobAssign)
                    delivered.append(packet.job.name)
            nursery.cancel_scope.cancel()
    assert delivered == [b"b"]


async def outbox_next(svc: SchedulerService) -> tuple[float, int, object]:
    (conn,) = svc.core.funcs[b"f"].workers
    sink = conn.sink
    assert sink is not None
    result: tuple[float, int, object] = await sink.next()  # type: ignore[attr-defined]
    return result
