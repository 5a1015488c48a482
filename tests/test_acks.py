"""Acknowledgements wait for the store; reading and dispatching do not."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import trio
from rawclient import RawConn

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.constants import ClientType
from trio_periodic.protocol.job import Job
from trio_periodic.server.app import Server
from trio_periodic.store.base import Change, PutFunc, PutJob, StoredState, StoreError


class GatedStore:
    """A durable store whose commits wait until the test opens the gate."""

    uri = "gated"
    durable = True
    shared = False

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.committed: list[Change] = []
        self.fail_next = False

    async def open(self) -> StoredState:
        return StoredState()

    async def commit(self, changes: Sequence[Change]) -> None:
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise StoreError("disk full")
        self.committed.extend(changes)

    async def aclose(self) -> None:
        return None


@pytest.fixture
async def gated() -> AsyncIterator[tuple[GatedStore, tuple[str, int]]]:
    store = GatedStore()
    srv = Server(store, ["tcp://127.0.0.1:0"])
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(srv.run)
        yield store, ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        store.gate.set()
        nursery.cancel_scope.cancel()


async def test_success_only_after_commit_while_the_connection_keeps_working(gated) -> None:  # type: ignore[no-untyped-def]
    store, address = gated
    with trio.fail_after(10):
        worker = await RawConn.open(address, ClientType.WORKER)
        await worker.send_many([(1, p.CanDo(b"f")), (2, p.GrabJob())])
        assert isinstance((await worker.recv_for(2)).packet, p.Success)  # needs no commit
        client = await RawConn.open(address)
        await client.send(10, p.SubmitJob(Job(b"f", b"a")))
        # Not durable yet: no SUCCESS, but the same connection still answers...
        assert isinstance(await client.request(11, p.Ping()), p.Pong)
        assert await client.nothing_for(0.2)
        # ...and the job already went to the worker (that acknowledges nothing).
        assign = await worker.recv_for(2)
        assert isinstance(assign.packet, p.JobAssign)
        assert store.committed == []
        store.gate.set()
        assert isinstance((await client.recv_for(10)).packet, p.Success)
        put = PutJob(Job(b"f", b"a", sched_at=assign.packet.job.sched_at))
        # the job, and the function the worker's CAN_DO introduced (their own commits)
        assert sorted(map(repr, store.committed)) == sorted(map(repr, [PutFunc(b"f"), put]))


async def test_failed_commit_is_refused_and_the_server_goes_on(gated) -> None:  # type: ignore[no-untyped-def]
    store, address = gated
    with trio.fail_after(10):
        client = await RawConn.open(address)
        store.fail_next = True
        store.gate.set()
        assert isinstance(await client.request(1, p.SubmitJob(Job(b"f", b"a"))), p.NoWorker)
        assert isinstance(await client.request(2, p.SubmitJob(Job(b"f", b"b"))), p.Success)
        assert isinstance(await client.request(3, p.Ping()), p.Pong)
