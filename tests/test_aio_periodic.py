"""aio-periodic 1.0.0 (CLIENTS.md §8) as client and worker against a periodicd subprocess.

aio-periodic is asyncio, so each scenario runs under ``asyncio.run`` inside a
plain (sync) test function; pytest-trio only takes ``async def`` tests.  Every
scenario is bounded by ``asyncio.wait_for``.

Notes on the client that shape these tests:

* ``Worker.connect`` re-registers its funcs and then sleeps 1 s; ``add_func``
  before ``connect`` fails in 1.0.0 (no event yet), so funcs are added after.
* ``Worker.work(n)`` announces one idle slot per second (more as jobs
  arrive), and confirms a job (JOB_ASSIGNED) only when a task slot is free:
  with more jobs than slots, confirmations come late.  The reference server
  drops such workers (SEMANTICS.md §17); ours must not.
* A closed connection reconnects by itself after 1 s; ``Session.close``
  turns that off first.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from aio_periodic import Client, Job, Transport, Worker, rsp
from aio_periodic.types.base_client import BaseClient
from conftest import DaemonProcess, run_asyncio

#: Jobs in the throughput run.
MANY = 3000


def run(scenario: Coroutine[Any, Any, None], timeout: float) -> None:
    run_asyncio(scenario, timeout)


class Session:
    """Clients and workers of one scenario; ``close`` tears them all down."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.entry = daemon.address
        self.conns: list[BaseClient] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.disconnects: Counter[int] = Counter()

    def _track(self, conn: BaseClient) -> None:
        idx = len(self.conns)
        self.conns.append(conn)

        async def lost() -> None:
            self.disconnects[idx] += 1

        conn.set_on_disconnected(lost)

    async def client(self) -> Client:
        c = Client()
        self._track(c)
        assert await c.connect(Transport(self.entry))
        return c

    async def worker(self, setup: Callable[[Worker], Awaitable[Any]], slots: int) -> Worker:
        """A worker: connect, ``setup`` registers its funcs (add_func / broadcast, as in
        the project's example), then work(slots)."""
        w = Worker()
        self._track(w)
        assert await w.connect(Transport(self.entry))
        await setup(w)
        self.tasks.append(asyncio.create_task(w.work(slots)))
        await asyncio.sleep(0.05)  # let work() send its first GRAB_JOB
        return w

    def drop(self, conn: BaseClient, task: asyncio.Task[None] | None = None) -> None:
        """Close one connection for good (no reconnect)."""
        if task is not None:
            task.cancel()
        conn.start_connect = lambda: None  # type: ignore[method-assign]
        conn.close()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for conn in self.conns:
            conn.set_on_disconnected(None)  # type: ignore[arg-type]
            self.drop(conn)
        await asyncio.sleep(0)

    def total_disconnects(self) -> int:
        return sum(self.disconnects.values())


async def wait_until(pred: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def drained(c: Client, func: str, timeout: float = 3) -> dict[str, Any]:
    """The func's STATUS once its job count is 0 (tasks record a run just before
    their WORK_DONE goes out, so the server may not have seen it yet)."""
    deadline = time.monotonic() + timeout
    while True:
        st: dict[str, Any] = (await c.status())[func]
        if st["job_count"] == 0 or time.monotonic() > deadline:
            return st
        await asyncio.sleep(0.02)


def closing_lines(daemon: DaemonProcess) -> list[str]:
    """Connections the server closed on an error, and tracebacks.

    A reset by the peer or a broken pipe is left out: aio-periodic closes its
    sockets without reading what is still on its way (an assignment or a reply
    the server sent just before), and the kernel then resets the connection,
    which the server sees on its next read or write; the scenarios check with
    ``total_disconnects`` that no connection dropped before then."""
    return [
        line
        for line in daemon.log
        if ("closing" in line and not any(peer in line for peer in PEER_CLOSED))
        or "Traceback" in line
    ]


#: How a connection the peer closed first shows in the server's "closing" line.
PEER_CLOSED = ("Connection reset by peer", "Broken pipe")


# ------------------------------------------------------------------------ quick start


def test_quick_start_echo_example(daemon: DaemonProcess) -> None:
    """The project's echo example (examples/echo_worker.py + echo_client.py; the PyPI
    README only says `pip3 install aio_periodic`), ported to the 1.0.0 API
    (``connect(Transport(...))``) and shortened."""
    done: list[str] = []

    async def echo(job: Any) -> None:
        done.append(job.name)
        await job.done(job.name)

    async def echo_later(job: Any) -> None:
        if job.payload.count > 1:
            await job.done(job.name)
        else:
            await job.sched_later(1, 1)

    async def test_lock(job: Any) -> None:
        async def do_lock() -> None:
            await asyncio.sleep(0.05)
            await echo(job)

        await job.with_lock("test", 2, do_lock)

    async def setup(w: Worker) -> None:
        await w.add_func("echo", echo)
        await w.add_func("echo_later", echo_later)
        await w.add_func("test_lock", test_lock)

    async def scenario() -> None:
        s = Session(daemon)
        try:
            await s.worker(setup, 10)
            client = await s.client()
            now = int(time.time())
            job = Job(func="echo", name="test_echo")
            job2 = Job(func="echo", name="test_echo2", sched_at=now + 10000, timeout=10)
            job3 = Job(func="echo", name="test_echo3", sched_at=now + 1)
            job4 = Job(func="echo2", name="test_echo3", sched_at=now + 1)
            job5 = Job(func="echo_later", name="test_echo_later")
            assert await client.ping() is True
            assert await client.submit_job(job=job) is True
            assert await client.run_job(job=job) == b"test_echo"
            assert await client.submit_job(job=job2) is True
            assert await client.remove_job("echo", "test_echo2") is True
            assert await client.run_job(job=job3) == b"test_echo3"
            assert await client.submit_job(job=job4) is True
            status = await client.status()
            assert status["echo2"]["job_count"] == 1
            assert status["echo"]["worker_count"] == 1
            assert await client.drop_func("echo2") is True
            assert "echo2" not in await client.status()
            # SCHED_LATER under RUN_JOB answers "failed" (SEMANTICS.md §6.3).
            assert await client.run_job(job=job5) == b"failed"
            with pytest.raises(Exception, match="no worker"):
                await client.run_job(job=job4)
            for i in range(20):
                await client.submit_job(job=Job(func="test_lock", name=f"test_lock_{i}"))
            await wait_until(
                lambda: sum(n.startswith("test_lock_") for n in done) == 20, 10, "lock jobs"
            )
            assert s.total_disconnects() == 0
        finally:
            await s.close()

    run(scenario(), 30)
    assert closing_lines(daemon) == []


# ------------------------------------------------------------------ basic round trips


def test_submit_work_done(daemon: DaemonProcess) -> None:
    seen: dict[str, bytes] = {}

    async def task(job: Any) -> Any:
        seen[job.name] = job.workload
        return rsp.done(b"ok")

    async def scenario() -> None:
        s = Session(daemon)
        try:
            await s.worker(lambda w: w.add_func("f", task), 2)
            c = await s.client()
            for i in range(5):
                assert await c.submit_job("f", f"job{i}", workload=b"w%d" % i)
            await wait_until(lambda: len(seen) == 5, 10, "5 jobs")
            assert seen == {f"job{i}": b"w%d" % i for i in range(5)}
            st = await drained(c, "f")
            assert (st["worker_count"], st["job_count"], st["processing"]) == (1, 0, 0)
            assert s.total_disconnects() == 0
        finally:
            await s.close()

    run(scenario(), 20)


def test_run_job(daemon: DaemonProcess) -> None:
    async def upper(job: Any) -> Any:
        return job.workload.upper()

    async def jsonify(job: Any) -> Any:
        return rsp.jsonify({"name": job.name})

    async def scenario() -> None:
        s = Session(daemon)
        try:
            c = await s.client()
            with pytest.raises(Exception, match="no worker"):
                await c.run_job("up", "x", workload=b"abc")

            async def setup(w: Worker) -> None:
                await w.add_func("up", upper)
                await w.add_func("js", jsonify)

            await s.worker(setup, 2)
            assert await c.run_job("up", "x", workload=b"abc") == b"ABC"
            assert await c.run_job("js", "n1") == b'{"name": "n1"}'
            results = await asyncio.gather(
                *(c.run_job("up", f"p{i}", workload=b"w%d" % i) for i in range(10))
            )
            assert results == [b"W%d" % i for i in range(10)]
            assert (await c.status())["up"]["job_count"] == 0
        finally:
            await s.close()

    run(scenario(), 20)


def test_status_remove_job_drop_func(daemon: DaemonProcess) -> None:
    async def scenario() -> None:
        s = Session(daemon)
        try:
            c = await s.client()
            later = int(time.time()) + 1000
            assert await c.submit_job("f1", "a", sched_at=later)
            assert await c.submit_job("f1", "b", sched_at=later + 5)
            assert await c.submit_job("f2", "a")
            st = await c.status()
            assert st["f1"] == {
                "func_name": "f1",
                "worker_count": 0,
                "job_count": 2,
                "processing": 0,
                "locked": 0,
                "sched_at": later,
            }
            assert st["f2"]["job_count"] == 1
            assert await c.remove_job("f1", "a") is True
            assert await c.remove_job("f1", "missing") is True
            st = await c.status()
            assert (st["f1"]["job_count"], st["f1"]["sched_at"]) == (1, later + 5)
            assert await c.drop_func("f1") is True
            st = await c.status()
            assert "f1" not in st
            assert st["f2"]["job_count"] == 1
        finally:
            await s.close()

    run(scenario(), 15)


def test_fail_then_retry(daemon: DaemonProcess) -> None:
    """rsp.fail() → WORK_FAIL → the job runs again 1 s later, until it succeeds."""
    times: list[float] = []

    async def flaky(job: Any) -> Any:
        times.append(time.monotonic())
        if len(times) < 3:
            return rsp.fail()
        return rsp.done(b"finally")

    async def boom(job: Any) -> Any:
        raise RuntimeError("task error → defrsp (FailResponse) → WORK_FAIL")

    async def scenario() -> None:
        s = Session(daemon)
        try:

            async def setup(w: Worker) -> None:
                await w.add_func("flaky", flaky)
                await w.add_func("boom", boom)

            await s.worker(setup, 2)
            c = await s.client()
            assert await c.submit_job("flaky", "x")
            await wait_until(lambda: len(times) == 3, 10, "3 runs")
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert all(0.9 <= g <= 1.5 for g in gaps), gaps
            # Under RUN_JOB a failure is final.
            assert await c.run_job("boom", "y") == b"failed"
            assert (await drained(c, "flaky"))["job_count"] == 0
            assert (await drained(c, "boom"))["job_count"] == 0
        finally:
            await s.close()

    run(scenario(), 20)


def test_sched_later(daemon: DaemonProcess) -> None:
    """rsp.sched_later(1, 1): the job comes back 1 s later with count + 1."""
    runs: list[tuple[int, float]] = []

    async def later(job: Any) -> Any:
        runs.append((job.payload.count, time.monotonic()))
        if job.payload.count >= 2:
            return rsp.done()
        return rsp.sched_later(1, 1)

    async def scenario() -> None:
        s = Session(daemon)
        try:
            await s.worker(lambda w: w.add_func("later", later), 2)
            c = await s.client()
            assert await c.submit_job("later", "x")
            await wait_until(lambda: len(runs) == 3, 10, "3 runs")
            assert [n for n, _ in runs] == [0, 1, 2]
            gaps = [b[1] - a[1] for a, b in itertools.pairwise(runs)]
            assert all(0.9 <= g <= 1.5 for g in gaps), gaps
            assert (await drained(c, "later"))["job_count"] == 0
        finally:
            await s.close()

    run(scenario(), 20)


# ----------------------------------------------------------------------------- locks


def test_locker_serialises_jobs(daemon: DaemonProcess) -> None:
    """``locker=`` → ACQUIRE(name, 1) around each task: never two at once; parked jobs
    run after the holder's WORK_DONE releases the lock (implicitly)."""
    active = 0
    peak = 0
    done: list[str] = []

    async def task(job: Any) -> Any:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.1)
        active -= 1
        done.append(job.name)
        return rsp.done()

    async def scenario() -> None:
        s = Session(daemon)
        try:
            await s.worker(lambda w: w.add_func("lk", task, locker=lambda job: ("L", 1)), 4)
            c = await s.client()
            for i in range(6):
                assert await c.submit_job("lk", f"j{i}")
            await wait_until(lambda: len(done) == 6, 20, "6 locked jobs")
            assert sorted(done) == [f"j{i}" for i in range(6)]
            assert peak == 1
            st = await drained(c, "lk")
            assert (st["job_count"], st["locked"]) == (0, 0)
            assert s.total_disconnects() == 0
        finally:
            await s.close()

    run(scenario(), 30)


def test_with_lock_and_release(daemon: DaemonProcess) -> None:
    """``job.with_lock(name, 2, ..., release=True)``: at most two at once, explicit RELEASE."""
    active = 0
    peak = 0
    done: list[str] = []

    async def task(job: Any) -> None:
        async def inner() -> None:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.1)
            active -= 1

        await job.with_lock("L2", 2, inner, release=True)
        if not job.finished:  # not parked
            done.append(job.name)
            await job.done()

    async def scenario() -> None:
        s = Session(daemon)
        try:
            await s.worker(lambda w: w.add_func("wl", task), 4)
            c = await s.client()
            for i in range(6):
                assert await c.submit_job("wl", f"j{i}")
            await wait_until(lambda: len(done) == 6, 20, "6 jobs")
            assert sorted(done) == [f"j{i}" for i in range(6)]
            assert peak <= 2
            st = await drained(c, "wl")
            assert (st["job_count"], st["locked"]) == (0, 0)
        finally:
            await s.close()

    run(scenario(), 30)


# ----------------------------------------------------------------- broadcast, stream


def test_broadcast(daemon: DaemonProcess) -> None:
    """A broadcast func's job runs on every worker; the first WORK_DONE ends it."""
    ran: list[tuple[int, str]] = []

    def make(idx: int) -> Callable[[Any], Awaitable[Any]]:
        async def task(job: Any) -> Any:
            ran.append((idx, job.name))
            await asyncio.sleep(0.05 * idx)
            return rsp.done()

        return task

    async def scenario() -> None:
        s = Session(daemon)
        try:
            await s.worker(lambda w: w.broadcast("bc", make(1)), 2)
            await s.worker(lambda w: w.broadcast("bc", make(2)), 2)
            c = await s.client()
            assert (await c.status())["bc"]["worker_count"] == 2
            assert await c.submit_job("bc", "all")
            await wait_until(lambda: len(ran) == 2, 10, "both workers")
            assert sorted(ran) == [(1, "all"), (2, "all")]
            assert (await drained(c, "bc"))["job_count"] == 0
            await asyncio.sleep(0.2)
            assert len(ran) == 2
            assert s.total_disconnects() == 0
        finally:
            await s.close()

    run(scenario(), 20)


def test_streamed_run_job(daemon: DaemonProcess) -> None:
    """run_job(stream=...) sends RECV_DATA and RUN_JOB; WORK_DATA chunks reach the
    callable (sync or async), then the result comes back."""

    async def producer(job: Any) -> Any:
        await asyncio.sleep(0.1)
        for i in range(3):
            await job.data(b"chunk%d" % i)
            # aio-periodic's Agent keeps at most one unread message per waiting
            # reader and drops the older one (Agent.feed_data), so chunks that
            # arrive while the stream callable runs are lost on the client side.
            # Space them out; the server's side of this is checked byte-exact in
            # test_conformance.py (C45).
            await asyncio.sleep(0.05)
        return rsp.done(b"final:" + job.workload)

    async def scenario() -> None:
        s = Session(daemon)
        try:
            await s.worker(lambda w: w.add_func("st", producer), 2)
            c = await s.client()
            chunks: list[bytes] = []
            result = await c.run_job("st", "s1", workload=b"x", stream=chunks.append)
            assert result == b"final:x"
            assert chunks == [b"chunk0", b"chunk1", b"chunk2"]

            achunks: list[bytes] = []

            async def astream(data: bytes) -> None:
                achunks.append(data)

            result = await c.run_job("st", "s2", workload=b"y", stream=astream)
            assert result == b"final:y"
            assert achunks == [b"chunk0", b"chunk1", b"chunk2"]
            # recv_job_data with no worker for the func raises.
            with pytest.raises(Exception, match="no worker"):
                async for _ in c.recv_job_data("nobody", "x", 2):
                    pass
        finally:
            await s.close()

    run(scenario(), 20)


# ------------------------------------------------------------------ disconnects


def test_worker_disconnects_mid_job(daemon: DaemonProcess) -> None:
    """A worker that goes away while running a job: another worker gets the job
    (about 1 s later: a confirmed job is failed and retried) and finishes it."""
    started = asyncio.Event
    first_started: list[str] = []
    finished_by: list[tuple[str, str]] = []

    async def scenario() -> None:
        hang_started = started()

        async def hang(job: Any) -> Any:
            first_started.append(job.name)
            hang_started.set()
            await asyncio.Event().wait()

        async def finish(job: Any) -> Any:
            finished_by.append(("w2", job.name))
            return rsp.done()

        s = Session(daemon)
        try:
            w1 = await s.worker(lambda w: w.add_func("f", hang), 1)
            w1_task = s.tasks[-1]
            c = await s.client()
            assert await c.submit_job("f", "job", workload=b"p")
            await asyncio.wait_for(hang_started.wait(), 5)
            await s.worker(lambda w: w.add_func("f", finish), 1)
            assert (await c.status())["f"]["processing"] == 1
            assert finished_by == []
            t0 = time.monotonic()
            s.drop(w1, w1_task)
            await wait_until(lambda: len(finished_by) == 1, 5, "job on the second worker")
            assert time.monotonic() - t0 <= 2.5
            assert finished_by == [("w2", "job")]
            assert first_started == ["job"]
            # The disconnect counter works (the other tests rely on it reading 0).
            assert s.disconnects[0] == 1
            assert s.total_disconnects() == 1
            st = await drained(c, "f")
            assert (st["worker_count"], st["job_count"]) == (1, 0)
        finally:
            await s.close()

    run(scenario(), 20)


# ----------------------------------------------------------------------- throughput


def test_3000_jobs_through_one_worker_with_four_slots(
    daemon: DaemonProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """MANY queued jobs, ONE aio worker with work(4): all done, none twice, no
    disconnects, nothing logged as an error.  (The reference drops such a worker:
    its JOB_ASSIGNED comes late because the task pool is full.)"""
    caplog.set_level(logging.WARNING, logger="aio_periodic")
    seen: list[str] = []
    rate: list[float] = []

    async def task(job: Any) -> Any:
        seen.append(job.name)
        await asyncio.sleep(0)
        return rsp.done()

    async def scenario() -> None:
        s = Session(daemon)
        try:
            c = await s.client()
            names = [f"job-{i:05d}" for i in range(MANY)]
            for start in range(0, MANY, 250):
                oks = await asyncio.gather(
                    *(c.submit_job("bulk", n) for n in names[start : start + 250])
                )
                assert all(oks)
            assert (await c.status())["bulk"]["job_count"] == MANY
            w = Worker()
            s._track(w)
            assert await w.connect(Transport(s.entry))
            assert await w.add_func("bulk", task)
            t0 = time.monotonic()
            s.tasks.append(asyncio.create_task(w.work(4)))
            await wait_until(lambda: len(seen) >= MANY, 90, f"{MANY} jobs")
            elapsed = time.monotonic() - t0
            rate.append(MANY / elapsed)
            st = await drained(c, "bulk")
            assert (st["job_count"], st["processing"], st["worker_count"]) == (0, 0, 1)
            assert s.total_disconnects() == 0
        finally:
            await s.close()

    run(scenario(), 120)
    print(f"\n{MANY} jobs through one aio-periodic worker (work(4)): {rate[0]:.0f} jobs/s")
    assert len(seen) == MANY
    assert len(set(seen)) == MANY, [n for n, k in Counter(seen).items() if k > 1][:10]
    assert closing_lines(daemon) == []
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors[:5]]
