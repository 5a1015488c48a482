"""The store contract for retry policies, attempt counts and the failed set
(memory, SQLite, PostgreSQL), and the upgrade of a version-1 database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import test_store_contract as contract
import trio
from pg_fixture import pg_database_url, postgres_cluster  # noqa: F401  (fixtures)
from test_store_contract import TIMEOUT, Backend, commit_all, reopen

from trio_periodic.protocol.job import Job
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.store import sqlite as sqlite_store
from trio_periodic.store.base import (
    DeleteFailed,
    DeleteFunc,
    DeleteJob,
    DeletePolicy,
    FailedJob,
    PutFailed,
    PutFunc,
    PutJob,
    PutPolicy,
    RetryPolicy,
    SetAttempts,
    StoredState,
)
from trio_periodic.store.sqlite import SCHEMA_VERSION as SQLITE_SCHEMA_VERSION
from trio_periodic.store.sqlite import SqliteStore

#: The contract suite's fixture: memory, SQLite and PostgreSQL.
backend = contract.backend

T0 = 1_700_000_000.0
POLICY = RetryPolicy(5, "exponential", 0.5, 120.0, True)


def failed(func: bytes, name: bytes, **kw: object) -> FailedJob:
    job = Job(func, name, b"work\x00load", sched_at=1_700_000_123, count=2, timeout=30)
    fields: dict[str, object] = {
        "attempts": 5, "failed_at": T0 + 0.25, "how": "timeout",
        "peer": "127.0.0.1:5555", "data": bytes(range(256)) * 4,
    }  # fmt: skip
    fields.update(kw)
    return FailedJob(job, **fields)  # type: ignore[arg-type]


def retry_state(state: StoredState) -> tuple[object, ...]:
    return (
        state.policies,
        state.attempts,
        sorted(state.failed, key=lambda f: (f.job.func, f.job.name)),
    )


async def test_policies_round_trip_replace_and_delete(backend: Backend) -> None:
    fixed = RetryPolicy(3)
    with trio.fail_after(TIMEOUT):
        store = await commit_all(
            backend,
            [PutPolicy(b"f", fixed), PutPolicy(b"g", fixed), PutPolicy(b"\x00h", POLICY)],
            [PutPolicy(b"f", POLICY), DeletePolicy(b"g"), DeletePolicy(b"nope")],
            [DeleteFunc(b"f")],  # a policy is configuration: DROP_FUNC keeps it
        )
        state = await reopen(backend)
    if store.durable:
        assert state.policies == {b"f": POLICY, b"\x00h": POLICY}
        for p in state.policies.values():
            assert type(p.jitter) is bool and type(p.max_attempts) is int
    else:
        assert state.policies == {}


async def test_attempts_round_trip_only_for_existing_jobs(backend: Backend) -> None:
    with trio.fail_after(TIMEOUT):
        store = await commit_all(
            backend,
            [PutJob(Job(b"f", b"a")), PutJob(Job(b"f", b"b")), PutJob(Job(b"f", b"c"))],
            [SetAttempts(b"f", b"a", 1), SetAttempts(b"f", b"b", 2), SetAttempts(b"f", b"x", 4)],
            # A job written again (requeue, SCHED_LATER) keeps its count.
            [PutJob(Job(b"f", b"a", b"again")), SetAttempts(b"f", b"a", 3)],
            [SetAttempts(b"f", b"b", 0)],  # the count ends
            [SetAttempts(b"f", b"c", 1), SetAttempts(b"f", b"c", 0), SetAttempts(b"f", b"c", 2)],
        )
        state = await reopen(backend)
    want = {(b"f", b"a"): 3, (b"f", b"c"): 2} if store.durable else {}
    assert state.attempts == want


async def test_failed_set_round_trips_and_deletes(backend: Backend) -> None:
    a, b, c = failed(b"f", b"a"), failed(b"f", b"b", how="fail", data=b""), failed(b"g", b"c")
    a2 = failed(b"f", b"a", attempts=7, peer="")
    with trio.fail_after(TIMEOUT):
        store = await commit_all(
            backend,
            [PutJob(a.job), SetAttempts(b"f", b"a", 4)],
            # The move to the failed set, as the scheduler writes it.
            [SetAttempts(b"f", b"a", 0), DeleteJob(b"f", b"a"), PutFailed(a)],
            [PutFailed(b), PutFailed(c), PutFailed(a2)],
            [DeleteFailed(b"f", b"b"), DeleteFailed(b"f", b"zz")],
        )
        state = await reopen(backend)
    if not store.durable:
        assert retry_state(state) == ({}, {}, [])
        return
    assert state.jobs == [] and state.attempts == {}
    assert retry_state(state)[2] == [a2, c]
    for f in state.failed:
        assert type(f.data) is bytes and type(f.failed_at) is float
        assert type(f.job.workload) is bytes and type(f.job.sched_at) is int


async def test_delete_func_drops_its_counts_and_failed_jobs(backend: Backend) -> None:
    with trio.fail_after(TIMEOUT):
        store = await commit_all(
            backend,
            [PutFunc(b"f"), PutJob(Job(b"f", b"a")), PutJob(Job(b"ff", b"a"))],
            [SetAttempts(b"f", b"a", 2), SetAttempts(b"ff", b"a", 1)],
            [PutFailed(failed(b"f", b"x")), PutFailed(failed(b"ff", b"x"))],
            [PutPolicy(b"f", POLICY), DeleteFunc(b"f")],
            [PutJob(Job(b"f", b"a"))],  # back again: no count from before
        )
        state = await reopen(backend)
    if store.durable:
        assert state.attempts == {(b"ff", b"a"): 1}
        assert [f.job.handle for f in state.failed] == [(b"ff", b"x")]
        assert state.policies == {b"f": POLICY}


async def test_scheduler_state_survives_a_restart(backend: Backend) -> None:
    """The core's changes, committed and reopened, give the same retry state."""
    core = Scheduler()
    core.set_policy(b"f", RetryPolicy(max_attempts=2, base=10))
    w = core.connect(is_worker=True)
    core.can_do(w, b"f")
    core.add_slot(w, 1)
    core.submit(Job(b"f", b"a", b"x"), T0)
    core.submit(Job(b"f", b"b", b"y"), T0)
    batches = [core.take_changes()]
    for t in (T0, T0 + 10, T0 + 20):
        core.tick(t)
        for e in core.take_effects():
            core.work_fail(w, b"f", e.job.name, t)  # type: ignore[attr-defined]
        core.add_slot(w, 1)
        batches.append(core.take_changes())
    assert core.failed and core.attempts  # one failed out, one counting
    with trio.fail_after(TIMEOUT):
        store = await commit_all(backend, *batches)
        state = await reopen(backend)
    if not store.durable:
        return
    again = Scheduler()
    again.restore(state, T0 + 30)
    assert again.policies == core.policies
    assert again.attempts == core.attempts
    assert again.failed_jobs() == core.failed_jobs()


# -- upgrading a database created by schema version 1 --------------------------


def _version_1_sqlite(path: Path) -> None:
    """A file as the previous release left it: version 1 tables, one job."""
    conn = sqlite3.connect(path, isolation_level=None)
    sqlite_store.MIGRATIONS[0](conn)
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', 1)")
    conn.execute(
        "INSERT INTO jobs (func, name, sched_at, count, timeout, workload)"
        " VALUES (x'66', x'6f6c64', 5, 1, 9, x'77')"
    )
    conn.execute("INSERT INTO funcs (func) VALUES (x'66')")
    conn.close()


async def test_sqlite_version_1_file_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    _version_1_sqlite(path)
    store = SqliteStore(path)
    with trio.fail_after(TIMEOUT):
        state = await store.open()
        assert [(j.func, j.name, j.workload, j.sched_at) for j in state.jobs] == [
            (b"f", b"old", b"w", 5)
        ]
        assert retry_state(state) == ({}, {}, [])
        await store.commit([PutPolicy(b"f", POLICY), SetAttempts(b"f", b"old", 1)])
        await store.aclose()
        state = await reopen(Backend("sqlite", lambda: SqliteStore(path), None))
    assert state.policies == {b"f": POLICY} and state.attempts == {(b"f", b"old"): 1}
    conn = sqlite3.connect(path)
    version = conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    assert version == (SQLITE_SCHEMA_VERSION,)
    conn.close()


@pytest.mark.postgres
async def test_postgres_version_1_database_is_upgraded(pg_database_url: str) -> None:  # noqa: F811
    import psycopg

    from trio_periodic.store import postgres

    with psycopg.connect(pg_database_url) as conn:
        postgres.MIGRATIONS[0](conn)
        conn.execute("INSERT INTO periodic_meta (key, value) VALUES ('schema_version', '1')")
        conn.execute(
            "INSERT INTO periodic_jobs (func, name, sched_at, workload) VALUES ('f', 'old', 5, 'w')"
        )
    store = postgres.PostgresStore(pg_database_url)
    with trio.fail_after(TIMEOUT):
        state = await store.open()
        assert [(j.func, j.name, j.workload) for j in state.jobs] == [(b"f", b"old", b"w")]
        assert retry_state(state) == ({}, {}, [])
        await store.commit([PutFailed(failed(b"f", b"x")), SetAttempts(b"f", b"old", 2)])
        await store.aclose()
        state = await reopen(Backend("pg", lambda: postgres.PostgresStore(pg_database_url), None))
    assert state.attempts == {(b"f", b"old"): 2}
    assert state.failed == [failed(b"f", b"x")]
    with psycopg.connect(pg_database_url) as conn:
        row = conn.execute("SELECT value FROM periodic_meta WHERE key='schema_version'").fetchone()
    assert row == (str(postgres.SCHEMA_VERSION),)
