"""Cluster mode: another server's change never overtakes a write of ours.

Notifications arrive in commit order, our own included.  Two rules follow
(pg_notify's and the service's theory of operation):

* another server's delete line is taken as it stands (no row read) only when
  no line of ours about the job is still on its way to our listener;
* another server's change of a job we are writing (not committed yet) was
  read before our write and is held back; the job is read again afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from fake_shared_store import FakeSharedStore
from pg_fixture import pg_database_url, postgres_cluster  # noqa: F401  (fixtures)

from trio_periodic.protocol.job import Job
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.service import Clock, SchedulerService
from trio_periodic.store.base import Change, DeleteJob, PutJob, RemoteDelete, RemoteJob
from trio_periodic.store.pg_notify import OwnLines, parse

F, X = b"f", b"x"


def line(server: str, op: str, func: bytes = F, name: bytes = X) -> str:
    return f"{server} {op} {func.hex()} {name.hex()}"


# -- which lines need a row read ------------------------------------------------


def test_a_delete_line_is_taken_as_it_stands_when_no_line_of_ours_is_outstanding() -> None:
    own = OwnLines("A")
    assert parse([line("B", "d")], "A", own) == [("d", F, X)]
    assert parse([line("B", "j")], "A", own) == [("j", F, X)]
    # Without the count of our own lines every job line means "read the row".
    assert parse([line("B", "d")], "A") == [("j", F, X)]


def test_a_delete_line_is_read_while_a_line_of_ours_about_the_job_is_on_its_way() -> None:
    own = OwnLines("A")
    sent = own.sending([line("A", "j"), line("A", "s")])  # a schedule line is not a job's
    assert sent == [f"{F.hex()} {X.hex()}"]
    # Our put may have committed after their delete: only the row can tell.
    assert parse([line("B", "d")], "A", own) == [("j", F, X)]
    assert own.outstanding(f"{F.hex()} {X.hex()}")
    # Our line heard before theirs: our write is the older one.
    assert parse([line("A", "j") + "\n" + line("B", "d")], "A", own) == [("d", F, X)]
    assert len(own) == 0
    # Theirs first, then ours, in one batch: ours is newer, the row is read.
    own.sending([line("A", "j")])
    assert parse([line("B", "d"), line("A", "j")], "A", own) == [("j", F, X)]
    assert len(own) == 0


def test_lines_of_a_transaction_that_did_not_commit_are_uncounted() -> None:
    own = OwnLines("A")
    keys = own.sending([line("A", "j"), line("A", "d", name=b"y")])
    assert len(own) == 2
    own.unsent(keys)
    assert len(own) == 0
    assert parse([line("B", "d")], "A", own) == [("d", F, X)]
    own.heard(f"{F.hex()} {X.hex()}")  # a line heard that was never counted: no count below 0
    assert len(own) == 0


def test_each_job_is_looked_at_for_its_last_line() -> None:
    own = OwnLines("A")
    assert parse([line("B", "j"), line("C", "d")], "A", own) == [("d", F, X)]
    assert parse([line("B", "d"), line("C", "j")], "A", own) == [("j", F, X)]
    y = b"y"
    assert parse([line("B", "d"), line("B", "j", name=y), line("B", "j")], "A", own) == [
        ("j", F, y),
        ("j", F, X),
    ]


# -- the service holds back what overtook a write of ours ------------------------------


class GatedCommitStore(FakeSharedStore):
    """Commits wait until ``release`` is set (it is at first)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = trio.Event()
        self.release.set()

    async def commit(self, changes: Sequence[Change]) -> None:
        await self.release.wait()


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


@pytest.mark.parametrize("ours", ["put", "delete"])
async def test_another_servers_change_of_a_job_we_are_writing_waits_for_our_commit(
    mock_clock: trio.testing.MockClock, ours: str
) -> None:
    """A delete read before our put's row existed would drop the job we just
    accepted (its row then stays in the store, unknown here); a row read
    before our delete would bring the job back.  Both wait, and the job is
    read again once our write is committed; other jobs' changes go through."""
    store = GatedCommitStore()
    svc = SchedulerService(Scheduler(), store, Clock())
    now = svc.clock.now()
    svc.core.submit(Job(F, X, workload=b"old"), now)
    await svc.commit(svc.finish_batch()[1])
    store.release = trio.Event()
    if ours == "put":
        svc.core.submit(Job(F, X, workload=b"new"), now)
        overtaking: RemoteDelete | RemoteJob = RemoteDelete(F, X)
    else:
        svc.core.remove_job(F, X)
        overtaking = RemoteJob(Job(F, X, workload=b"old"), None)
    _, changes = svc.finish_batch()
    assert [type(c) for c in changes] == [PutJob if ours == "put" else DeleteJob]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(svc.commit, changes)
            await trio.sleep(0.01)
            svc.remote_changes([overtaking, RemoteJob(Job(F, b"other"), None)])
            entry = svc.core.entry(F, X)
            if ours == "put":
                assert entry is not None and entry.workload == b"new"
            else:
                assert entry is None
            assert svc.core.entry(F, b"other") is not None
            assert store.rereads == []
            store.release.set()
    assert store.rereads == [(F, X)]
    # Once committed, nothing is held back any more.
    svc.remote_changes([RemoteDelete(F, b"other")])
    assert svc.core.entry(F, b"other") is None


# -- PostgreSQL: the count of our lines, and reading a job again -----------------------

pytest.importorskip("psycopg")
from trio_periodic.store.postgres import PostgresStore  # noqa: E402

TIMEOUT = 20


@pytest.fixture
def url(pg_database_url: str) -> str:  # noqa: F811
    return pg_database_url


@pytest.mark.postgres
async def test_our_lines_are_counted_until_our_listener_hears_them(url: str) -> None:
    store, other = PostgresStore(url), PostgresStore(url)
    seen: list[Any] = []
    with trio.fail_after(TIMEOUT):
        await store.open()
        await other.open()
        try:
            await store.commit([PutJob(Job(F, X)), PutJob(Job(F, b"y"))])
            await store.claim([(F, X, time.time() + 60)])
            # Nothing reads the notifications before the watch starts.
            assert len(store._own) == 3  # two puts and a claim
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(store.watch, seen.extend))
                while len(store._own):
                    await trio.sleep(0.01)
                # Another server deletes both: reported as deletes, with no job lost.
                await other.commit([DeleteJob(F, X), DeleteJob(F, b"y")])
                while len(seen) < 2:
                    await trio.sleep(0.01)
                assert seen == [RemoteDelete(F, X), RemoteDelete(F, b"y")]
                nursery.cancel_scope.cancel()
        finally:
            await store.aclose()
            await other.aclose()


@pytest.mark.postgres
async def test_a_job_asked_for_again_is_read_as_it_is_now(url: str) -> None:
    """``reread`` wakes the listener waiting for notifications; the row (or
    its absence) is reported, whoever wrote it last."""
    store = PostgresStore(url)
    seen: list[Any] = []
    with trio.fail_after(TIMEOUT):
        await store.open()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(store.watch, seen.extend))
                await store.commit([PutJob(Job(F, X, workload=b"w"))])
                await trio.sleep(0.2)  # the watch waits on its socket again
                assert seen == []  # our own change: nothing to report
                store.reread([(F, X), (F, b"gone")])
                while len(seen) < 2:
                    await trio.sleep(0.01)
                assert seen[0] == RemoteJob(Job(F, X, workload=b"w"), None)
                assert seen[1] == RemoteDelete(F, b"gone")
                nursery.cancel_scope.cancel()
        finally:
            await store.aclose()
