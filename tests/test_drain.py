"""Graceful drain: SIGTERM / SIGINT / SHUTDOWN let running jobs report first."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from conftest import start_daemon
from rawclient import RawConn
from test_durability import BlockingConn, dump_names

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.constants import ClientType
from trio_periodic.protocol.job import Job
from trio_periodic.server.app import Server
from trio_periodic.store.memory import MemoryStore


@asynccontextmanager
async def running(srv: Server) -> AsyncIterator[tuple[tuple[str, int], trio.Event]]:
    """Run ``srv``; yield its address and an event set when ``run`` returns."""
    finished = trio.Event()

    async def run(task_status: trio.TaskStatus[list[str]]) -> None:
        try:
            await srv.run(task_status=task_status)
        finally:
            finished.set()

    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(run)
        yield ("127.0.0.1", int(url.rsplit(":", 1)[1])), finished
        nursery.cancel_scope.cancel()


async def holding_worker(address: tuple[str, int], func: bytes, name: bytes) -> RawConn:
    """A worker that has taken (and confirmed) job ``func``/``name``."""
    worker = await RawConn.open(address, ClientType.WORKER)
    assert isinstance(await worker.request(1, p.CanDo(func)), p.Success)
    assert isinstance(await worker.request(2, p.GrabJob()), p.Success)
    assign = await worker.recv_for(2)
    assert isinstance(assign.packet, p.JobAssign) and assign.packet.job.name == name
    await worker.send(2, p.JobAssigned())
    return worker


async def test_running_jobs_finish_and_nothing_new_starts() -> None:
    srv = Server(MemoryStore(), ["tcp://127.0.0.1:0"], drain_timeout=20)
    async with running(srv) as (address, finished):
        with trio.fail_after(10):
            client = await RawConn.open(address)
            assert isinstance(await client.request(1, p.SubmitJob(Job(b"f", b"run"))), p.Success)
            worker = await holding_worker(address, b"f", b"run")
            assert isinstance(await client.request(2, p.SubmitJob(Job(b"f", b"next"))), p.Success)
            idle = await RawConn.open(address, ClientType.WORKER)
            started = trio.current_time()
            srv.request_shutdown()
            # Connections that hold no job close; nobody new gets in.
            assert await client.closed_by_server(timeout=2)
            assert await idle.closed_by_server(timeout=2)
            with pytest.raises(OSError):
                await trio.open_tcp_stream(*address)
            # The worker may still report; its next grab gets nothing.
            assert isinstance(await worker.request(3, p.GrabJob()), p.Success)
            assert isinstance(await worker.request(4, p.WorkDone(b"f", b"run", b"ok")), p.Success)
            assert not any(isinstance(r.packet, p.JobAssign) for r in worker._pending), (
                "a job was handed out during the drain"
            )
            await finished.wait()
            assert trio.current_time() - started < 5  # no need to wait for the timeout
        assert [job.name for job in srv.core.dump()] == [b"next"]


async def test_jobs_not_reported_in_time_are_handed_back() -> None:
    srv = Server(MemoryStore(), ["tcp://127.0.0.1:0"], drain_timeout=0.5)
    async with running(srv) as (address, finished):
        with trio.fail_after(10):
            client = await RawConn.open(address)
            assert isinstance(await client.request(1, p.SubmitJob(Job(b"f", b"slow"))), p.Success)
            worker = await holding_worker(address, b"f", b"slow")
            started = trio.current_time()
            srv.request_shutdown()
            await finished.wait()
            assert 0.4 < trio.current_time() - started < 5
            assert await worker.closed_by_server(timeout=2)
    [row] = srv.core.status_rows(time.time())
    assert (row.jobs, row.processing) == (1, 0)  # pending again, not running


async def test_a_second_request_skips_the_wait() -> None:
    srv = Server(MemoryStore(), ["tcp://127.0.0.1:0"], drain_timeout=60)
    async with running(srv) as (address, finished):
        with trio.fail_after(10):
            client = await RawConn.open(address)
            assert isinstance(await client.request(1, p.SubmitJob(Job(b"f", b"j"))), p.Success)
            worker = await holding_worker(address, b"f", b"j")
            srv.request_shutdown()
            await trio.sleep(0.2)
            assert not finished.is_set()
            srv.request_shutdown()
            await finished.wait()
            assert await worker.closed_by_server(timeout=2)
    assert [job.name for job in srv.core.dump()] == [b"j"]


@pytest.mark.parametrize("second_signal", [False, True])
def test_sigterm_drains_a_real_daemon(tmp_path: Path, second_signal: bool) -> None:
    db = f"file://{tmp_path}/jobs.db"
    d = start_daemon("-p", db, "--drain-timeout", "30")
    client = BlockingConn(d.port)
    assert isinstance(client.request(1, p.SubmitJob(Job(b"f", b"held"))), p.Success)
    assert isinstance(client.request(2, p.SubmitJob(Job(b"g", b"waits"))), p.Success)
    worker = BlockingConn(d.port, ClientType.WORKER)
    worker.request(1, p.CanDo(b"f"))
    worker.request(2, p.GrabJob())
    while not isinstance(worker.recv().packet, p.JobAssign):
        pass
    worker.send(2, p.JobAssigned())
    started = time.monotonic()
    os.kill(d.proc.pid, signal.SIGTERM)
    time.sleep(0.3)
    assert d.proc.poll() is None, "the daemon did not wait for the running job"
    if second_signal:
        os.kill(d.proc.pid, signal.SIGTERM)
    else:
        assert isinstance(worker.request(3, p.WorkDone(b"f", b"held", b"")), p.Success)
    assert d.proc.wait(10) == 0
    assert time.monotonic() - started < 10
    d2 = start_daemon("-p", db)
    try:
        expected = {b"held", b"waits"} if second_signal else {b"waits"}
        assert dump_names(d2.port) == expected
    finally:
        d2.proc.terminate()
        d2.proc.wait(10)
