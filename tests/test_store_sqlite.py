"""SQLite store specifics: group commit, refusing foreign files, disk full, cancellation."""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_periodic.protocol.job import Job
from trio_periodic.store.base import Change, PutFunc, PutJob, SetConfig, StoreError
from trio_periodic.store.sqlite import SCHEMA_VERSION, SqliteStore

TIMEOUT = 30  # seconds


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file of the database (main, -wal, -shm) that exists, with its bytes."""
    return {p.name: p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name)}


async def stored_names(path: Path) -> set[bytes]:
    store = SqliteStore(path)
    try:
        return {job.name for job in (await store.open()).jobs}
    finally:
        await store.aclose()


class Gate:
    """Holds each transaction on the worker thread until the test lets one through."""

    def __init__(self, store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self._permits = threading.Semaphore(0)
        self.entered = 0
        real: Callable[[Iterable[Change]], None] = store._transaction

        self._entered_event = trio.Event()

        def gated(changes: Iterable[Change]) -> None:
            trio.from_thread.run_sync(self._enter)
            assert self._permits.acquire(timeout=TIMEOUT)
            real(changes)

        monkeypatch.setattr(store, "_transaction", gated)

    def _enter(self) -> None:
        self.entered += 1
        self._entered_event.set()
        self._entered_event = trio.Event()

    async def wait_entered(self, n: int) -> None:
        """Wait until ``n`` transactions have reached the gate."""
        while self.entered < n:
            await self._entered_event.wait()

    def let_one_through(self) -> None:
        self._permits.release()


async def test_open_sets_wal_and_full_sync_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "p.db"
    store = SqliteStore(path)
    with trio.fail_after(TIMEOUT):
        await store.open()
        assert store._conn is not None
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store.uri == f"sqlite:{path}"
        await store.aclose()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == (SCHEMA_VERSION,)
    columns = [row[1] for row in conn.execute("PRAGMA table_info(jobs)")]
    assert columns == ["func", "name", "sched_at", "count", "timeout", "workload"]
    conn.close()


async def test_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    path.touch()
    with trio.fail_after(TIMEOUT):
        store = SqliteStore(path)
        await store.open()
        await store.commit([PutFunc(b"f")])
        await store.aclose()
        assert await stored_names(path) == set()


async def test_group_commit_batches_concurrent_calls(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "p.db")
    with trio.fail_after(TIMEOUT):
        await store.open()
        before = store.commits
        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(store.commit, [PutJob(Job(b"f", b"%d" % i))])
        transactions = store.commits - before
        await store.aclose()
        assert len(await stored_names(tmp_path / "p.db")) == 1000
    print(f"\n1000 concurrent single-job commits -> {transactions} transactions")
    assert transactions < 50


async def test_sequential_commits_are_one_transaction_each(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "p.db")
    with trio.fail_after(TIMEOUT):
        await store.open()
        before = store.commits
        for i in range(10):
            await store.commit([PutJob(Job(b"f", b"%d" % i)), SetConfig("n", i)])
        assert store.commits - before == 10
        await store.aclose()


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a database\n" * 100,
        b"x",
        b"SQLite format 3\x00" + bytes(range(256)) * 16,  # right magic, garbage after
    ],
    ids=["text", "one-byte", "bad-header"],
)
async def test_non_sqlite_file_is_refused_and_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "p.db"
    path.write_bytes(content)
    before = snapshot(path)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(StoreError) as info:
            await SqliteStore(path).open()
    assert str(path) in str(info.value)
    assert snapshot(path) == before


async def test_foreign_sqlite_database_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "periodicd.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE jobs (func CHAR(256), name CHAR(256), value BLOB)")
    conn.execute("INSERT INTO jobs VALUES (x'66', x'6e', x'00')")
    conn.commit()
    conn.close()
    before = snapshot(path)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(StoreError, match="not a trio_periodic store") as info:
            await SqliteStore(path).open()
    assert str(path) in str(info.value)
    assert snapshot(path) == before


async def test_newer_schema_is_refused_and_untouched(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with trio.fail_after(TIMEOUT):
        store = SqliteStore(path)
        await store.open()
        await store.commit([PutJob(Job(b"f", b"keep"))])
        await store.aclose()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    conn.commit()
    conn.close()
    before = snapshot(path)
    with trio.fail_after(TIMEOUT):
        with pytest.raises(StoreError, match="newer") as info:
            await SqliteStore(path).open()
    assert str(path) in str(info.value)
    assert snapshot(path) == before


async def test_unreadable_location_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    with trio.fail_after(TIMEOUT):
        with pytest.raises(StoreError, match=str(blocker)):
            await SqliteStore(blocker / "p.db").open()


async def test_one_store_per_file_until_closed(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with trio.fail_after(TIMEOUT):
        first = SqliteStore(path)
        await first.open()
        await first.commit([PutJob(Job(b"f", b"mine"))])
        second = SqliteStore(path)
        with pytest.raises(StoreError) as info:
            await second.open()
        # The message names the file and the holder (this process).
        assert str(info.value) == (
            f"store file://{path} is in use by another periodicd (pid {os.getpid()})"
        )
        await first.commit([PutJob(Job(b"f", b"still"))])  # the holder is unharmed
        await first.aclose()
        assert await stored_names(path) == {b"mine", b"still"}  # released by aclose
        # A store that failed to open holds nothing either.
        assert (await second.open()).jobs  # reopening the refused object works
        await second.aclose()


async def test_disk_full_fails_the_batch_and_the_store_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    store = SqliteStore(path)
    big = b"x" * 1_000_000
    with trio.fail_after(TIMEOUT):
        await store.open()
        await store.commit([PutJob(Job(b"f", b"before"))])
        assert store._conn is not None
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")  # the disk is now "full"

        with pytest.raises(StoreError, match="full"):
            await store.commit([PutJob(Job(b"f", b"big", big))])

        failures = 0

        async def one(i: int) -> None:
            nonlocal failures
            try:
                await store.commit([PutJob(Job(b"f", b"big%d" % i, big))])
            except StoreError:
                failures += 1

        async with trio.open_nursery() as nursery:  # a whole group fails, every caller hears
            for i in range(5):
                nursery.start_soon(one, i)
        assert failures == 5

        store._conn.execute("PRAGMA max_page_count = 1073741823")  # space again
        await store.commit([PutJob(Job(b"f", b"after", big))])
        await store.aclose()
        assert await stored_names(path) == {b"before", b"after"}


async def test_a_bad_batch_fails_only_its_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.db"
    store = SqliteStore(path)
    outcome: dict[bytes, str] = {}

    async def one(name: bytes, sched_at: int) -> None:
        try:
            await store.commit([PutJob(Job(b"f", name, sched_at=sched_at))])
            outcome[name] = "ok"
        except StoreError:
            outcome[name] = "error"

    with trio.fail_after(TIMEOUT):
        await store.open()
        gate = Gate(store, monkeypatch)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, b"lead", 1)
            await trio.testing.wait_all_tasks_blocked()  # in flight, holding the gate
            for name, sched_at in [(b"a", 1), (b"bad", 2**70), (b"b", 1)]:  # 2**70: no int64
                nursery.start_soon(one, name, sched_at)
                await trio.testing.wait_all_tasks_blocked()
            for _ in range(5):  # the lead, the merged group, then a, bad, b on their own
                gate.let_one_through()
        await store.aclose()
    assert outcome == {b"lead": "ok", b"a": "ok", b"bad": "error", b"b": "ok"}
    assert gate.entered == 5
    assert await stored_names(path) == {b"lead", b"a", b"b"}


async def _commit_one(
    store: SqliteStore,
    returned: list[bytes],
    scopes: dict[bytes, trio.CancelScope],
    name: bytes,
) -> None:
    """Commit one job in its own cancel scope; note the name once commit returns."""
    with trio.CancelScope() as scope:
        scopes[name] = scope
        await store.commit([PutJob(Job(b"f", name))])
        returned.append(name)


async def test_cancelled_while_queued_is_withdrawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.db"
    store = SqliteStore(path)
    returned: list[bytes] = []
    scopes: dict[bytes, trio.CancelScope] = {}
    one = partial(_commit_one, store, returned, scopes)

    with trio.fail_after(TIMEOUT):
        await store.open()
        gate = Gate(store, monkeypatch)
        async with trio.open_nursery() as nursery:
            for name in (b"lead", b"queued-1", b"cancelled", b"queued-2"):
                nursery.start_soon(one, name)
                await trio.testing.wait_all_tasks_blocked()
            scopes[b"cancelled"].cancel()
            await trio.testing.wait_all_tasks_blocked()
            gate.let_one_through()
            gate.let_one_through()
        assert scopes[b"cancelled"].cancelled_caught
        await store.aclose()
    assert sorted(returned) == [b"lead", b"queued-1", b"queued-2"]
    assert await stored_names(path) == {b"lead", b"queued-1", b"queued-2"}


async def test_cancelled_in_flight_waits_for_the_truth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.db"
    store = SqliteStore(path)
    returned: list[bytes] = []
    scopes: dict[bytes, trio.CancelScope] = {}
    one = partial(_commit_one, store, returned, scopes)

    with trio.fail_after(TIMEOUT):
        await store.open()
        gate = Gate(store, monkeypatch)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, b"lead")
            await trio.testing.wait_all_tasks_blocked()
            for name in (b"f1", b"f2"):
                nursery.start_soon(one, name)
                await trio.testing.wait_all_tasks_blocked()
            scopes[b"lead"].cancel()  # the leader's transaction is in flight
            gate.let_one_through()
            await gate.wait_entered(2)  # f1 now leads [f1, f2]
            scopes[b"f2"].cancel()  # f2 is in flight as a follower
            await trio.testing.wait_all_tasks_blocked()
            gate.let_one_through()
        await store.aclose()
    # Both cancelled calls had their transactions under way: they report success.
    assert sorted(returned) == [b"f1", b"f2", b"lead"]
    assert await stored_names(path) == {b"lead", b"f1", b"f2"}


async def test_aclose_flushes_queued_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.db"
    store = SqliteStore(path)
    with trio.fail_after(TIMEOUT):
        await store.open()
        gate = Gate(store, monkeypatch)
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(store.commit, [PutJob(Job(b"f", b"%d" % i))])
                await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(store.aclose)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(StoreError, match="not open"):
                await store.commit([PutJob(Job(b"f", b"late"))])
            gate.let_one_through()
            gate.let_one_through()
    assert await stored_names(path) == {b"0", b"1", b"2"}


async def test_restart_loads_100k_jobs(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    n = 100_000
    store = SqliteStore(path)
    with trio.fail_after(120):
        await store.open()
        t0 = time.perf_counter()
        for start in range(0, n, 5000):
            await store.commit(
                [
                    PutJob(
                        Job(b"func-%d" % (i % 10), b"job-%08d" % i, b"w" * 32, 1_700_000_000 + i)
                    )
                    for i in range(start, start + 5000)
                ]
            )
        t_write = time.perf_counter() - t0
        await store.aclose()
        store = SqliteStore(path)
        t0 = time.perf_counter()
        state = await store.open()
        t_open = time.perf_counter() - t0
        await store.aclose()
    print(f"\nwrote {n} jobs in {t_write:.2f} s; open() loaded them in {t_open:.2f} s")
    assert len(state.jobs) == n
    assert t_open < 30  # generous: the target is well under a second


# Twenty tasks commit one job after another; the 100th acknowledgement kills
# the process while the others' commits are queued or mid-transaction.  (A
# kill after a fixed sleep found nothing acknowledged yet on a slow fsync.)
_KILLED_WRITER = """
import os, signal, sys, trio
from trio_periodic.protocol.job import Job
from trio_periodic.store.base import PutJob
from trio_periodic.store.sqlite import SqliteStore

async def main():
    store = SqliteStore(sys.argv[1])
    await store.open()
    acked = 0
    async def writer(w):
        nonlocal acked
        for i in range(50):
            await store.commit([PutJob(Job(b"f", b"%d-%d" % (w, i), b"w" * 100))])
            print("%d-%d" % (w, i), flush=True)  # acknowledged
            acked += 1
            if acked == 100:
                os.kill(os.getpid(), signal.SIGKILL)  # no aclose, no checkpoint
    async with trio.open_nursery() as nursery:
        for w in range(20):
            nursery.start_soon(writer, w)

trio.run(main)
"""


async def test_acknowledged_commits_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with trio.fail_after(TIMEOUT):
        proc = await trio.run_process(
            [sys.executable, "-c", _KILLED_WRITER, str(path)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
        acknowledged = {name.encode() for name in proc.stdout.decode().split()}
        assert len(acknowledged) == 100  # the kill came at the 100th
        assert acknowledged <= await stored_names(path)
