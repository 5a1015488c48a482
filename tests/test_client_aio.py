"""Interoperability with aio_periodic 1.0.0: our client with their worker and the reverse.

aio_periodic runs on asyncio, so it gets its own event loop in a thread and
talks to periodicd in a subprocess (the ``daemon`` fixture).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
from conftest import DaemonProcess, collect_asyncio_leftovers

from trio_periodic import Client, Job, Worker

aio = pytest.importorskip("aio_periodic")

LIMIT = 20


class AsyncioThread:
    """Run one asyncio coroutine in a thread until it ends or is stopped."""

    def __init__(self, main: Callable[[], Awaitable[Any]]) -> None:
        self._main = main
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def runner() -> None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.ensure_future(self._main())
            self._ready.set()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

        asyncio.run(runner())

    def __enter__(self) -> AsyncioThread:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(5)
        collect_asyncio_leftovers()


async def wait_for_workers(client: Client, func: str, n: int = 1) -> None:
    while {r.func: r.workers for r in await client.status()}.get(func, 0) < n:
        await trio.sleep(0.05)


async def test_our_client_their_worker(daemon: DaemonProcess) -> None:
    async def aio_worker() -> None:
        worker = aio.Worker()

        @worker.func("aio-echo")  # type: ignore[untyped-decorator]
        async def echo(job: Any) -> bytes:
            await job.data(b"from-aio")
            return bytes(job.workload) + b"-aio"

        await worker.connect(aio.Transport(daemon.url))
        try:
            await worker.work(2)
        finally:
            worker.close()

    with AsyncioThread(aio_worker), trio.fail_after(LIMIT):
        async with Client.connect(daemon.url) as client:
            await wait_for_workers(client, "aio-echo")
            chunks: list[bytes] = []
            result = await client.run_job("aio-echo", "job1", b"hi", on_data=chunks.append)
            assert result == b"hi-aio"
            assert chunks == [b"from-aio"]
            assert await client.run_job("aio-echo", "job2", b"x") == b"x-aio"


async def test_their_client_our_worker(daemon: DaemonProcess) -> None:
    worker = Worker(daemon.url)

    @worker.func("trio-upper")
    async def upper(job: Job) -> bytes:
        # aio_periodic sends RECV_DATA from a task it starts alongside RUN_JOB,
        # so it may subscribe after the job started; and its per-msgid buffer
        # drops a frame when two arrive before its reader wakes (the chunk and
        # the EOF behind it).  Give it time on both sides.
        await trio.sleep(0.3)
        await job.data(b"partial")
        await trio.sleep(0.3)
        return job.workload.upper()

    results: dict[str, Any] = {}

    def aio_client() -> None:
        async def main() -> None:
            client = aio.Client()
            await client.connect(aio.Transport(daemon.url))
            chunks: list[bytes] = []
            results["run"] = await client.run_job(
                "trio-upper", "a", workload=b"abc", stream=chunks.append
            )
            results["chunks"] = chunks
            results["submit"] = await client.submit_job("trio-upper", "b", workload=b"zz")
            results["status"] = await client.status()
            client.close()

        asyncio.run(main())

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.work, 2)
            await trio.to_thread.run_sync(aio_client)
            worker.stop()
    collect_asyncio_leftovers()
    assert results["run"] == b"ABC"
    assert results["chunks"] == [b"partial"]
    assert results["submit"] is True
    assert results["status"]["trio-upper"]["worker_count"] == 1
