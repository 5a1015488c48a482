"""Cluster mode: a claim that fails (the shared store is unreachable) loses no job.

The scheduler service with a fake shared store, on MockClock: the first
claim refuses one job (another server holds it), so the service assigns the
freed slot another job and claims again; that second claim raises
StoreError.  The job claimed in the first round must still go out, and the
one of the failed round must be retried, not left assigned to nobody.
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
from trio_periodic.scheduler import service
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.service import Clock, SchedulerService
from trio_periodic.store.base import (
    SharedStore,
    StoreError,
)


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


class FlakySharedStore(FakeSharedStore):
    """Claim 1 refuses ``busy`` (held elsewhere for an hour); claim 2 fails; the rest succeed."""

    def __init__(self, busy: bytes, epoch_now: Callable[[], float]) -> None:
        super().__init__()
        self.busy = busy
        self.now = epoch_now

    def answer(self, claims: Claims) -> Refused:
        if len(self.claims) == 2:
            raise StoreError("fake: no connection to the database within 10 s")
        if len(self.claims) == 1:
            return {(f, n): self.now() + 3600 for f, n, _ in claims if n == self.busy}
        return {}


async def test_a_failed_claim_round_loses_no_assignment(
    mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Claim exactly what is assigned (no claiming ahead), so that c needs a
    # round of its own.
    monkeypatch.setattr(service, "CLAIM_AHEAD", 0)
    monkeypatch.setattr(service, "CLAIM_AHEAD_MAX", 0)
    clock = Clock()
    store = FlakySharedStore(b"a", clock.now)
    assert isinstance(store, SharedStore)
    svc = SchedulerService(Scheduler(), store, clock)
    with trio.fail_after(60):  # MockClock seconds
        async with trio.open_nursery() as nursery:
            await nursery.start(svc.run)
            _, outbox = add_worker(svc, b"f", slots=2)
            for name in (b"a", b"b", b"c"):
                svc.core.submit(Job(b"f", name), clock.now())
            start = trio.current_time()
            await svc.settle()
            delivered: dict[bytes, float] = {}
            while len(delivered) < 2:
                at, _, packet = await outbox.next()
                assert isinstance(packet, JobAssign)
                delivered[packet.job.name] = at - start
            nursery.cancel_scope.cancel()
    assert store.claims[:3] == [[b"a", b"b"], [b"c"], [b"c"]]
    # b was claimed in the first round: out as soon as the second round failed;
    # c's claim failed: claimed again and out after the 1 s pause.
    assert delivered[b"b"] < 0.1
    assert delivered[b"c"] == pytest.approx(1.0, abs=0.1)
