"""The trio client and worker library against the in-process server (real sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import RunningServer

from trio_periodic import Client, Job, Worker
from trio_periodic.client import (
    ConnectError,
    Done,
    Fail,
    JobFailed,
    NoWorker,
    SchedLater,
    parse_status,
    parse_url,
)
from trio_periodic.client.errors import UnexpectedReply
from trio_periodic.protocol import decode_job_list
from trio_periodic.server.app import Server
from trio_periodic.store.memory import MemoryStore

LIMIT = 10


@asynccontextmanager
async def working(
    url: str, funcs: dict[str, Callable[[Job], Any]], size: int = 2, **opts: Any
) -> AsyncIterator[Worker]:
    worker = Worker(url, **opts)
    for name, handler in funcs.items():
        worker.add_func(name, handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.work, size)
        yield worker
        worker.stop()


async def test_connect_over_tcp_and_unix(server: RunningServer) -> None:
    with trio.fail_after(LIMIT):
        for url in (server.tcp_url, f"unix://{server.unix}", f"127.0.0.1:{server.tcp[1]}"):
            async with Client.connect(url) as client:
                assert await client.ping() >= 0
                assert client.conn.conn_id >= 0


async def test_unreachable_server_is_a_connect_error(tmp_path: Path) -> None:
    with trio.fail_after(LIMIT), pytest.raises(ConnectError, match="cannot connect"):
        async with Client.connect(f"unix://{tmp_path}/nothing.sock"):
            pass  # pragma: no cover


def test_parse_url() -> None:
    assert parse_url("tcp://:5000").host == "127.0.0.1"
    assert parse_url("tcp://[::1]:5000").host == "::1"
    assert str(parse_url("unix:///tmp/x.sock")) == "unix:///tmp/x.sock"
    assert parse_url("ws://h:80/p").path == "/p"
    assert parse_url("host:1").scheme == "tcp"
    for bad in ("tcp://nohost", "tcp://h:x", "nonsense", "tcp://h:0"):
        with pytest.raises(ConnectError):
            parse_url(bad)


async def test_run_job_echo_with_data_stream(server: RunningServer) -> None:
    async def echo(job: Job) -> bytes:
        await job.data(b"one")
        await job.data("two")
        return job.workload.upper()

    with trio.fail_after(LIMIT):
        async with working(server.tcp_url, {"echo": echo}), Client.connect(server.tcp_url) as c:
            assert await c.run_job("echo", "a", b"hi") == b"HI"
            chunks: list[bytes] = []
            assert await c.run_job("echo", "b", "yo", on_data=chunks.append) == b"YO"
            assert chunks == [b"one", b"two"]

            async def collect(chunk: bytes) -> None:
                chunks.append(chunk)

            assert await c.run_job("echo", "c", on_data=collect) == b""
            assert chunks[2:] == [b"one", b"two"]
            async with c.stream_job("echo", "d", b"z") as run:
                assert [chunk async for chunk in run] == [b"one", b"two"]
                assert await run.result() == b"Z"
            async with c.stream_job("echo", "e", b"q") as run:
                assert await run.result() == b"Q"  # chunks skipped


async def test_concurrent_requests_share_one_connection(server: RunningServer) -> None:
    async def slow(job: Job) -> str:
        await trio.sleep(0.2)
        return job.name

    with trio.fail_after(LIMIT):
        async with (
            working(server.tcp_url, {"slow": slow}, size=8),
            Client.connect(server.tcp_url) as c,
        ):
            results: dict[str, bytes] = {}

            async def one(i: int) -> None:
                results[f"j{i}"] = await c.run_job("slow", f"j{i}")

            start = trio.current_time()
            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(one, i)
                    nursery.start_soon(c.ping)
            assert results == {f"j{i}": f"j{i}".encode() for i in range(8)}
            assert trio.current_time() - start < 1.5  # eight slots ran them side by side


async def test_run_job_errors(server: RunningServer) -> None:
    gate = trio.Event()

    async def behave(job: Job) -> Any:
        if job.name == "fail":
            return Fail()
        if job.name == "later":
            return SchedLater(5)
        if job.name == "raise":
            raise RuntimeError("boom")
        if job.name.startswith("wait"):
            await gate.wait()
        return Done(b"ok")

    with trio.fail_after(LIMIT):
        async with Client.connect(server.tcp_url) as c:
            with pytest.raises(NoWorker, match="no worker for function 'behave'"):
                await c.run_job("behave", "x")
            async with working(server.tcp_url, {"behave": behave}):
                for name in ("fail", "later", "raise"):
                    with pytest.raises(JobFailed) as info:
                        await c.run_job("behave", name)
                    assert info.value.reason == "failed"
                assert await c.run_job("behave", "fail", check=False) == b"failed"
                async with trio.open_nursery() as nursery:

                    async def remove_soon() -> None:
                        await trio.sleep(0.2)
                        await c.remove_job("behave", "wait")
                        gate.set()

                    nursery.start_soon(remove_soon)
                    with pytest.raises(JobFailed, match="removed"):
                        await c.run_job("behave", "wait")
                await trio.sleep(0.1)  # let the removed job's late WORK_DONE pass
                gate = trio.Event()
                with pytest.raises(JobFailed) as info:
                    await c.run_job("behave", "wait-expire", timeout=1)
                assert info.value.reason in ("expired", "failed")
                gate.set()


async def test_submit_sched_later_and_count(server: RunningServer) -> None:
    runs: list[tuple[int, int]] = []
    done = trio.Event()

    async def tick(job: Job) -> Any:
        runs.append((job.count, job.timeout))
        if len(runs) < 3:
            return SchedLater(0, 1)
        done.set()
        return None

    with trio.fail_after(LIMIT):
        async with (
            working(f"unix://{server.unix}", {"tick": tick}),
            Client.connect(server.tcp_url) as c,
        ):
            await c.submit_job("tick", "t", b"w", timeout=30)
            await done.wait()
    assert runs == [(0, 30), (1, 30), (2, 30)]


async def test_submit_later_status_remove_drop(server: RunningServer) -> None:
    with trio.fail_after(LIMIT):
        async with Client.connect(server.tcp_url) as c:
            await c.submit_job("f", "a", later=3600)
            await c.submit_job("f", "b", sched_at=2_000_000_000)
            await c.submit_job("g", "c")
            rows = {row.func: row for row in await c.status()}
            assert rows["f"].jobs == 2 and rows["f"].workers == 0
            assert rows["f"].sched_at > 1_700_000_000
            assert rows["g"].jobs == 1
            assert rows["f"].as_dict()["func"] == "f"
            await c.remove_job("f", "a")
            assert {r.func: r.jobs for r in await c.status()}["f"] == 1
            await c.drop_func("g")
            assert "g" not in {r.func for r in await c.status()}


async def test_config_dump_load_roundtrip(server: RunningServer) -> None:
    with trio.fail_after(LIMIT):
        async with Client.connect(server.tcp_url) as c:
            assert await c.config_get("timeout") == 600
            await c.config_set("timeout", 42)
            assert await c.config_get("timeout") == 42
            assert await c.config_get("no-such-key") == 0
            for i in range(5):
                await c.submit_job("d", f"j{i}", b"x" * 100, later=3600)
            data = await c.dump()
            jobs = decode_job_list(data)
            assert sorted(j.name for j in jobs) == [b"j0", b"j1", b"j2", b"j3", b"j4"]
            await c.drop_func("d")
            assert await c.status() == []
            seen: list[tuple[int, int]] = []
            assert await c.load(data, progress=lambda d, t: seen.append((d, t))) == 5
            assert seen[-1] == (5, 5)
            assert {r.func: r.jobs for r in await c.status()} == {"d": 5}
            with pytest.raises(ValueError, match="not a Periodic dump"):
                await c.load(b"garbage")
            assert await c.load([]) == 0


async def test_load_in_batches(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from trio_periodic.client import client as client_module

    monkeypatch.setattr(client_module, "LOAD_BATCH_BYTES", 300)
    with trio.fail_after(LIMIT):
        async with Client.connect(server.tcp_url) as c:
            for i in range(10):
                await c.submit_job("b", f"j{i}", b"y" * 100, later=3600)
            data = await c.dump()
            await c.drop_func("b")
            seen: list[int] = []
            assert await c.load(data, progress=lambda d, t: seen.append(d)) == 10
            assert len(seen) > 2 and seen[-1] == 10


async def test_recv_data_stream(server: RunningServer) -> None:
    release = trio.Event()

    async def streamer(job: Job) -> bytes:
        await release.wait()
        for i in range(3):
            await job.data(f"c{i}")
        return b"end"

    with trio.fail_after(LIMIT):
        async with working(server.tcp_url, {"s": streamer}), Client.connect(server.tcp_url) as c:
            with pytest.raises(NoWorker):
                async for _ in c.recv_data("nobody", "x"):
                    pass  # pragma: no cover
            await c.submit_job("s", "job")
            stream = c.recv_data("s", "job")
            await stream.start()
            release.set()
            assert [chunk async for chunk in stream] == [b"c0", b"c1", b"c2"]


async def test_worker_locks(server: RunningServer) -> None:
    active = 0
    peak = 0
    finished = 0
    all_done = trio.Event()

    async def locked(job: Job) -> None:
        nonlocal active, peak, finished
        active += 1
        peak = max(peak, active)
        await trio.sleep(0.1)
        active -= 1
        finished += 1
        if finished == 3:
            all_done.set()

    worker = Worker(server.tcp_url)
    worker.add_func("l", locked, lock="db", lock_count=1)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery, Client.connect(server.tcp_url) as c:
            await nursery.start(worker.work, 3)
            for i in range(3):
                await c.submit_job("l", f"j{i}")
            await all_done.wait()
            worker.stop()
    assert peak == 1


async def test_job_acquire_release_explicitly(server: RunningServer) -> None:
    results: list[bool] = []

    async def handler(job: Job) -> bytes:
        results.append(await job.acquire("L", 1))
        await job.release("L")
        results.append(await job.acquire("L", 1))
        return b"ok"

    with trio.fail_after(LIMIT):
        async with working(server.tcp_url, {"h": handler}), Client.connect(server.tcp_url) as c:
            assert await c.run_job("h", "a") == b"ok"
    assert results == [True, True]


async def test_broadcast_reaches_every_worker(server: RunningServer) -> None:
    got: list[str] = []
    both = trio.Event()

    def make(tag: str) -> Callable[[Job], Awaitable[None]]:
        async def handler(job: Job) -> None:
            got.append(tag)
            if len(got) == 2:
                both.set()

        return handler

    w1, w2 = Worker(server.tcp_url), Worker(server.tcp_url)
    w1.func("b", broadcast=True)(make("w1"))
    w2.func("b", broadcast=True)(make("w2"))
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery, Client.connect(server.tcp_url) as c:
            await nursery.start(w1.work)
            await nursery.start(w2.work)
            await c.submit_job("b", "all")
            await both.wait()
            w1.stop()
            w2.stop()
    assert sorted(got) == ["w1", "w2"]


async def test_sync_handler_and_return_values(server: RunningServer) -> None:
    def sync(job: Job) -> dict[str, str]:
        return {"name": job.name}

    async def explicit(job: Job) -> str:
        await job.done(b"first")
        return "ignored"

    with trio.fail_after(LIMIT):
        async with (
            working(server.tcp_url, {"sync": sync, "explicit": explicit}),
            Client.connect(server.tcp_url) as c,
        ):
            assert await c.run_job("sync", "n") == b'{"name": "n"}'
            assert await c.run_job("explicit", "n") == b"first"


async def test_graceful_stop_finishes_running_jobs(server: RunningServer) -> None:
    started = trio.Event()
    finished: list[str] = []

    async def long(job: Job) -> bytes:
        started.set()
        await trio.sleep(0.5)
        finished.append(job.name)
        return b"done"

    worker = Worker(server.tcp_url)
    worker.add_func("long", long)
    with trio.fail_after(LIMIT):
        async with Client.connect(server.tcp_url) as c:
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.work, 2)
                nursery.start_soon(c.run_job, "long", "a")
                await started.wait()
                worker.stop()
            assert finished == ["a"]
            # CANT_DO went out: no worker any more.
            assert {r.func: r.workers for r in await c.status()}["long"] == 0


async def test_worker_reconnects_after_server_restart(tmp_path: Path) -> None:
    sock = str(tmp_path / "r.sock")
    url = f"unix://{sock}"
    ran: list[str] = []
    done = trio.Event()

    async def handler(job: Job) -> None:
        ran.append(job.name)
        if job.name == "after":
            done.set()

    worker = Worker(url, max_backoff=0.5)
    worker.add_func("r", handler)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as outer:
            async with trio.open_nursery() as first:
                await first.start(Server(MemoryStore(), [url]).run)
                await outer.start(worker.work, 2)
                async with Client.connect(url) as c:
                    assert await c.run_job("r", "before") == b""
                first.cancel_scope.cancel()
            async with trio.open_nursery() as second:
                await second.start(Server(MemoryStore(), [url]).run)
                async with Client.connect(url) as c:
                    await c.submit_job("r", "after")
                    await done.wait()
                    assert {r.func: r.workers for r in await c.status()}["r"] == 1
                worker.stop()
                second.cancel_scope.cancel()
    assert ran == ["before", "after"]
    assert worker.sessions == 2


async def test_connection_loss_fails_pending_requests(tmp_path: Path) -> None:
    sock = str(tmp_path / "l.sock")
    url = f"unix://{sock}"
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(Server(MemoryStore(), [url]).run)
            async with Client.connect(url) as c:
                worker = Worker(url)

                @worker.func("w")
                async def forever(job: Job) -> None:
                    await trio.sleep_forever()

                await nursery.start(worker.work)

                async def kill_server() -> None:
                    await trio.sleep(0.2)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(kill_server)
                from trio_periodic.client import ConnectionLost

                with pytest.raises(ConnectionLost):
                    await c.run_job("w", "x", timeout=30)
                with pytest.raises(ConnectionLost):
                    await c.ping()


async def test_shutdown(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/s.sock"
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(Server(MemoryStore(), [url]).run)
            async with Client.connect(url) as c:
                assert await c.shutdown() is True


async def test_identity_registration(server: RunningServer) -> None:
    with trio.fail_after(LIMIT):
        async with Client.connect(server.tcp_url, name="me", token="secret") as c:
            await c.ping()
    with pytest.raises(ValueError, match="together"):
        async with Client.connect(server.tcp_url, name="me"):
            pass  # pragma: no cover


def test_parse_status() -> None:
    rows = parse_status(b"a,b,1,2,3,4,1700000000\nx,0,0,0,0,5")
    assert [r.func for r in rows] == ["a,b", "x"]
    assert rows[0].workers == 1 and rows[0].sched_at == 1700000000
    assert parse_status(b"") == []
    with pytest.raises(UnexpectedReply):
        parse_status(b"a,1,2")


async def test_websocket_transport() -> None:
    srv = Server(MemoryStore(), ["ws://127.0.0.1:0/periodic"])
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(srv.run)
            url = bound[0]
            assert url.startswith("ws://")

            async def echo(job: Job) -> bytes:
                return job.workload

            async with working(url, {"echo": echo}), Client.connect(url) as c:
                assert await c.run_job("echo", "w", b"over ws") == b"over ws"
            nursery.cancel_scope.cancel()


async def test_keepalive_pings_keep_an_idle_connection_open(server: RunningServer) -> None:
    from trio_periodic.client import ConnectionLost

    with trio.fail_after(LIMIT):
        async with Client.connect(server.tcp_url) as admin:
            await admin.config_set("keepalive", 1)
            async with (
                Client.connect(server.tcp_url, ping_interval=0.3) as pinging,
                Client.connect(server.tcp_url, ping_interval=0) as silent,
            ):
                await trio.sleep(1.6)
                assert await pinging.ping() >= 0
                with pytest.raises(ConnectionLost):
                    await silent.ping()


async def fake_server() -> tuple[list[trio.SocketListener], str]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    return listeners, f"tcp://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def test_no_pong_means_connection_lost() -> None:
    from trio_periodic.client import ConnectionLost
    from trio_periodic.protocol import encode_registration_reply

    async def mute(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        await stream.send_all(encode_registration_reply(7))
        while await stream.receive_some():
            pass  # never answers

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            listeners, url = await fake_server()
            nursery.start_soon(trio.serve_listeners, mute, listeners)
            async with Client.connect(url, timeout=0.3, ping_interval=0.2) as c:
                assert c.conn.conn_id == 7
                await c.conn.wait_closed()
                assert "no PONG" in str(c.conn.error)
                with pytest.raises(ConnectionLost, match="no PONG"):
                    await c.status()
            nursery.cancel_scope.cancel()


async def test_not_a_periodic_server() -> None:
    async def http(stream: trio.SocketStream) -> None:
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await trio.sleep(5)

    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            listeners, url = await fake_server()
            nursery.start_soon(trio.serve_listeners, http, listeners)
            with pytest.raises(ConnectError, match="does not speak the Periodic protocol"):
                async with Client.connect(url):
                    pass  # pragma: no cover
            nursery.cancel_scope.cancel()
