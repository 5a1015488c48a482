"""One contract for every Store: memory, SQLite and PostgreSQL.

Durable stores (``store.durable``) must give back after a reopen exactly what
was committed; the memory store keeps nothing across a reopen, and the tests
check that too.  "Durable when commit returns" is checked by reading through a
second, independent connection right after ``commit`` returns.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing
from pg_fixture import pg_database_url, postgres_cluster  # noqa: F401  (fixtures)

from trio_periodic.protocol.job import Job
from trio_periodic.store.base import (
    Change,
    DeleteFunc,
    DeleteJob,
    DeleteSchedule,
    ExtendLease,
    PutFunc,
    PutJob,
    PutSchedule,
    ScheduleRow,
    SetConfig,
    Store,
    StoredState,
    StoreError,
)
from trio_periodic.store.from_uri import default_store_uri, open_store
from trio_periodic.store.memory import MemoryStore
from trio_periodic.store.sqlite import SqliteStore

TIMEOUT = 30  # seconds, for every test that does I/O

#: Reads one job row through a connection of its own: (func, name) -> row or None.
Peek = Callable[[bytes, bytes], tuple[object, ...] | None]


@dataclass
class Backend:
    name: str
    make: Callable[[], Store]
    peek: Peek | None  # None for stores with nothing to peek at


def _sqlite_peek(path: Path) -> Peek:
    def peek(func: bytes, name: bytes) -> tuple[object, ...] | None:
        conn = sqlite3.connect(path)
        try:
            row: tuple[object, ...] | None = conn.execute(
                "SELECT func, name, workload, sched_at, count, timeout FROM jobs"
                " WHERE func = ? AND name = ?",
                (func, name),
            ).fetchone()
            return row
        finally:
            conn.close()

    return peek


def _postgres_peek(url: str) -> Peek:
    import psycopg

    def peek(func: bytes, name: bytes) -> tuple[object, ...] | None:
        with psycopg.connect(url) as conn:
            row: tuple[object, ...] | None = conn.execute(
                "SELECT func, name, workload, sched_at, count, timeout FROM periodic_jobs"
                " WHERE func = %s AND name = %s",
                (func, name),
            ).fetchone()
            return row

    return peek


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        yield Backend("memory", MemoryStore, None)
    elif request.param == "sqlite":
        path = tmp_path / "sub" / "dir" / "periodic.db"  # parents do not exist yet
        yield Backend("sqlite", lambda: SqliteStore(path), _sqlite_peek(path))
    else:
        url: str = request.getfixturevalue("pg_database_url")  # skips without PostgreSQL
        from trio_periodic.store.postgres import PostgresStore

        yield Backend("postgres", lambda: PostgresStore(url), _postgres_peek(url))


async def reopen(backend: Backend) -> StoredState:
    store = backend.make()
    try:
        return await store.open()
    finally:
        await store.aclose()


def expected(store: Store, state: StoredState) -> StoredState:
    """What a reopen must give back: everything if durable, else nothing."""
    return state if store.durable else StoredState()


def as_set(jobs: list[Job]) -> set[tuple[bytes, bytes, bytes, int, int, int]]:
    return {(j.func, j.name, j.workload, j.sched_at, j.count, j.timeout) for j in jobs}


def same(a: StoredState, b: StoredState) -> bool:
    return (
        as_set(a.jobs) == as_set(b.jobs)
        and len(a.jobs) == len(b.jobs)
        and a.funcs == b.funcs
        and a.config == b.config
    )


async def commit_all(backend: Backend, *batches: list[Change]) -> Store:
    """Open a store, commit ``batches`` one call after the other, close it."""
    store = backend.make()
    await store.open()
    for batch in batches:
        await store.commit(batch)
    await store.aclose()
    return store


# -- the contract --------------------------------------------------------------


async def test_open_empty_and_close_twice(backend: Backend) -> None:
    with trio.fail_after(TIMEOUT):
        store = backend.make()
        state = await store.open()
        assert state.jobs == [] and state.funcs == set() and state.config == {}
        assert isinstance(store, Store)
        assert isinstance(store.uri, str) and store.uri
        assert store.shared is (backend.name == "postgres")
        await store.commit([])
        await store.aclose()
        await store.aclose()


async def test_put_job_comes_back_with_every_field(backend: Backend) -> None:
    job = Job(b"echo", b"job-1", b"payload", sched_at=1_700_000_000, count=3, timeout=45)
    odd = Job(b"echo", b"job-2", b"", sched_at=-5, count=-1, timeout=2**31 - 1)
    with trio.fail_after(TIMEOUT):
        store = await commit_all(backend, [PutFunc(b"echo"), PutJob(job), PutJob(odd)])
        state = await reopen(backend)
    want = StoredState(jobs=[job, odd], funcs={b"echo"})
    assert same(state, expected(store, want))
    for got in state.jobs:  # real Job objects with exact types
        assert type(got) is Job and type(got.func) is bytes and type(got.workload) is bytes
        assert type(got.sched_at) is int


async def test_put_job_replaces(backend: Backend) -> None:
    old = Job(b"f", b"n", b"old", sched_at=1, count=1, timeout=1)
    new = Job(b"f", b"n", b"new", sched_at=2, count=0, timeout=9)
    with trio.fail_after(TIMEOUT):
        store = await commit_all(backend, [PutJob(old)], [PutJob(new)])
        state = await reopen(backend)
    assert same(state, expected(store, StoredState(jobs=[new])))


async def test_put_and_replace_in_one_call(backend: Backend) -> None:
    a1, a2 = Job(b"f", b"a", b"1"), Job(b"f", b"a", b"2")
    with trio.fail_after(TIMEOUT):
        store = await commit_all(backend, [PutJob(a1), PutJob(a2), DeleteJob(b"f", b"zz")])
        state = await reopen(backend)
    assert same(state, expected(store, StoredState(jobs=[a2])))


async def test_delete_job(backend: Backend) -> None:
    a, b = Job(b"f", b"a"), Job(b"f", b"b")
    with trio.fail_after(TIMEOUT):
        store = await commit_all(
            backend, [PutJob(a), PutJob(b)], [DeleteJob(b"f", b"a"), DeleteJob(b"f", b"gone")]
        )
        state = await reopen(backend)
    assert same(state, expected(store, StoredState(jobs=[b])))


async def test_delete_func_removes_only_its_jobs(backend: Backend) -> None:
    ls = [Job(b"ls", b"%d" % i) for i in range(3)]
    ls5 = [Job(b"ls5", b"%d" % i) for i in range(3)]
    other = Job(b"l", b"s5")  # "l"+"s5" must not be confused with "ls"+"5"
    with trio.fail_after(TIMEOUT):
        store = await commit_all(
            backend,
            [PutFunc(b"ls"), PutFunc(b"ls5"), PutFunc(b"l")],
            [PutJob(j) for j in [*ls, *ls5, other]],
            [DeleteFunc(b"ls")],
        )
        state = await reopen(backend)
    want = StoredState(jobs=[*ls5, other], funcs={b"ls5", b"l"})
    assert same(state, expected(store, want))


async def test_put_func_twice_and_delete_func_without_jobs(backend: Backend) -> None:
    with trio.fail_after(TIMEOUT):
        store = await commit_all(
            backend, [PutFunc(b"a"), PutFunc(b"a"), PutFunc(b"b")], [DeleteFunc(b"b")]
        )
        state = await reopen(backend)
    assert same(state, expected(store, StoredState(funcs={b"a"})))


async def test_set_config_persists(backend: Backend) -> None:
    with trio.fail_after(TIMEOUT):
        store = await commit_all(
            backend,
            [SetConfig("poll-interval", 300), SetConfig("timeout", 10)],
            [SetConfig("timeout", 20), SetConfig("max-batch-size", 0)],
        )
        state = await reopen(backend)
    want = StoredState(config={"poll-interval": 300, "timeout": 20, "max-batch-size": 0})
    assert same(state, expected(store, want))


async def test_concurrent_commits_all_land_and_each_is_durable_on_return(
    backend: Backend,
) -> None:
    store = backend.make()
    seen_on_return: list[tuple[object, ...] | None] = []

    async def one(i: int) -> None:
        job = Job(b"f", b"job-%d" % i, b"w%d" % i, sched_at=i, count=i % 3, timeout=i)
        await store.commit([PutJob(job)])
        if backend.peek is not None:
            # Read through an independent connection the moment commit returns.
            seen_on_return.append(backend.peek(job.func, job.name))

    with trio.fail_after(TIMEOUT):
        await store.open()
        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
        await store.aclose()
        state = await reopen(backend)
    if backend.peek is not None:
        assert len(seen_on_return) == 50 and None not in seen_on_return
    want = [Job(b"f", b"job-%d" % i, b"w%d" % i, i, i % 3, i) for i in range(50)]
    assert same(state, expected(store, StoredState(jobs=want)))


async def test_put_then_delete_in_two_calls_stays_deleted(backend: Backend) -> None:
    job = Job(b"f", b"n", b"x")
    with trio.fail_after(TIMEOUT):
        store = await commit_all(backend, [PutJob(job)], [DeleteJob(b"f", b"n")])
        state = await reopen(backend)
    assert same(state, StoredState())
    assert store is not None


async def test_concurrent_calls_apply_in_call_order(backend: Backend) -> None:
    """Calls queued behind an in-flight commit land in the order they were made."""
    ops: list[list[Change]] = []
    model: dict[bytes, Job] = {}
    for i in range(40):
        key = b"k%d" % (i % 4)
        if i % 3 == 2:
            ops.append([DeleteJob(b"f", key)])
            model.pop(key, None)
        else:
            job = Job(b"f", key, b"v%d" % i)
            ops.append([PutJob(job)])
            model[key] = job
    store = backend.make()
    with trio.fail_after(TIMEOUT):
        await store.open()
        async with trio.open_nursery() as nursery:
            for changes in ops:
                nursery.start_soon(store.commit, changes)
                # Let this call enqueue before the next one is made.
                await trio.testing.wait_all_tasks_blocked()
        await store.aclose()
        state = await reopen(backend)
    assert same(state, expected(store, StoredState(jobs=list(model.values()))))


async def test_binary_names_round_trip(backend: Backend) -> None:
    funcs = [b"\x00", b"\x00\x00", b"f\x00", b"\xff\xfe\x80", b"caf\xc3\xa9", b"\x00ls"]
    jobs = [
        Job(f, n, bytes(range(256)), sched_at=i)
        for i, f in enumerate(funcs)
        for n in (b"", b"\x00", b"a\x00b", b"\x80\x81\xff")
    ]
    with trio.fail_after(TIMEOUT):
        store = await commit_all(
            backend,
            [PutFunc(f) for f in funcs],
            [PutJob(j) for j in jobs],
            [DeleteFunc(b"\x00"), DeleteJob(b"f\x00", b"a\x00b")],
        )
        state = await reopen(backend)
    want_jobs = [j for j in jobs if j.func != b"\x00" and (j.func, j.name) != (b"f\x00", b"a\x00b")]
    want = StoredState(jobs=want_jobs, funcs=set(funcs) - {b"\x00"})
    assert same(state, expected(store, want))


async def test_extend_lease_is_accepted_and_changes_no_job(backend: Backend) -> None:
    """Stores that are not shared ignore ExtendLease; a shared one moves only a claim
    (none here), so every store gives the jobs back unchanged."""
    job = Job(b"f", b"n", b"w", sched_at=5)
    with trio.fail_after(TIMEOUT):
        store = await commit_all(
            backend,
            [ExtendLease(b"f", b"n", 1e10)],  # alone in a call, before the job exists
            [PutJob(job), ExtendLease(b"f", b"n", 1e10), PutFunc(b"f")],
            [ExtendLease(b"f", b"gone", 0.0), SetConfig("timeout", 3)],
        )
        state = await reopen(backend)
    want = StoredState(jobs=[job], funcs={b"f"}, config={"timeout": 3})
    assert same(state, expected(store, want))
    assert state.leases == {}


SCHEDULE = ScheduleRow(
    b"f", b"nightly", "30 2 * * *", "Europe/Paris", b"\x00work", 45, "queue", "all",
    last_tick=1_700_000_000, last_fired=1_699_999_000, fired=7, skipped=2, queued=1,
)  # fmt: skip


async def test_schedules_come_back_with_every_field(backend: Backend) -> None:
    other = ScheduleRow(b"\x00g", b"h\xff", "* * * * *", "UTC")
    changed = ScheduleRow(b"f", b"nightly", "0 * * * *", "UTC", fired=8)
    with trio.fail_after(TIMEOUT):
        store = await commit_all(
            backend,
            [
                PutSchedule(SCHEDULE),
                PutSchedule(other),
                PutSchedule(ScheduleRow(b"x", b"y", "", "")),
            ],
            [DeleteSchedule(b"x", b"y"), DeleteSchedule(b"x", b"never")],
        )
        state = await reopen(backend)
        if store.durable:
            assert sorted(state.schedules, key=lambda r: r.handle) == [other, SCHEDULE]
            assert all(type(r.func) is bytes and type(r.fired) is int for r in state.schedules)
        else:
            assert state.schedules == []
        # A put replaces the whole row, counters included; a job of the same
        # handle and a dropped function leave schedules alone.
        store = await commit_all(
            backend,
            [PutSchedule(changed), PutJob(Job(b"f", b"nightly")), DeleteFunc(b"f")],
        )
        state = await reopen(backend)
    if store.durable:
        assert sorted(state.schedules, key=lambda r: r.handle) == [other, changed]
        assert state.jobs == []


async def test_commit_after_close_fails_for_durable_stores(backend: Backend) -> None:
    store = backend.make()
    with trio.fail_after(TIMEOUT):
        await store.open()
        await store.aclose()
        if store.durable:
            with pytest.raises(StoreError):
                await store.commit([PutFunc(b"f")])


# -- choosing a store by URI ----------------------------------------------------


def test_open_store_by_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store(":memory:"), MemoryStore)
    store = open_store(f"file://{tmp_path}/p.db")  # file:///abs/path
    assert isinstance(store, SqliteStore) and store.path == f"{tmp_path}/p.db"
    monkeypatch.chdir(tmp_path)
    store = open_store("file://data/p.db")  # relative to the working directory
    assert isinstance(store, SqliteStore) and store.path == f"{tmp_path}/data/p.db"
    pg = open_store("postgresql://u:secret@127.0.0.1:5/db")
    assert type(pg).__name__ == "PostgresStore" and "secret" not in pg.uri
    assert type(open_store("postgres://localhost/db")).__name__ == "PostgresStore"
    for bad in ["", "periodic.db", "sqlite:///x.db", "file://", "mysql://u:pw@h/db"]:
        with pytest.raises(StoreError, match=r"unsupported store URI|no path") as info:
            open_store(bad)
        assert "pw@" not in str(info.value)


def test_default_store_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    assert default_store_uri() == "file:///srv/data/trio-periodic/periodic.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert default_store_uri() == "file:///home/u/.local/share/trio-periodic/periodic.db"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    assert default_store_uri() == "file:///home/u/.local/share/trio-periodic/periodic.db"
