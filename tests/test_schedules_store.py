"""Schedules in the stores: upgrading a database made before schedules existed,
and the PostgreSQL store's ``fire_schedule`` (exactly one server per tick)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import trio
from pg_fixture import pg_database_url, postgres_cluster  # noqa: F401  (fixtures)

from trio_periodic.protocol.job import Job
from trio_periodic.scheduler.cron import Cron
from trio_periodic.scheduler.schedules import on_release, on_tick
from trio_periodic.store.base import PutSchedule, ScheduleRow
from trio_periodic.store.sqlite import MIGRATIONS, SqliteStore

TIMEOUT = 30
ROW = ScheduleRow(b"f", b"s", "* * * * *", "UTC", b"w", 5, "skip", "none", last_tick=1000)


def make_v1_sqlite(path: Path) -> None:
    """A file as the release before schedules writes it (schema version 1)."""
    conn = sqlite3.connect(path, isolation_level=None)
    MIGRATIONS[0](conn)
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', 1)")
    conn.execute(
        "INSERT INTO jobs (func, name, sched_at, count, timeout, workload)"
        " VALUES (x'66', x'6a', 7, 1, 2, x'77')"
    )
    conn.execute("INSERT INTO funcs (func) VALUES (x'66')")
    conn.close()


async def test_sqlite_version_1_file_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    make_v1_sqlite(path)
    with trio.fail_after(TIMEOUT):
        store = SqliteStore(path)
        state = await store.open()
        assert state.jobs == [Job(b"f", b"j", b"w", 7, 1, 2)] and state.schedules == []
        await store.commit([PutSchedule(ROW)])
        await store.aclose()
        store = SqliteStore(path)
        state = await store.open()
        await store.aclose()
    assert state.schedules == [ROW] and len(state.jobs) == 1
    conn = sqlite3.connect(path)
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    conn.close()
    assert version == len(MIGRATIONS) == 3  # 2: retry tables, 3: schedules


# -- PostgreSQL ---------------------------------------------------------------------


def make_v1_postgres(url: str) -> None:
    import psycopg

    from trio_periodic.store.postgres import MIGRATIONS as PG_MIGRATIONS

    with psycopg.connect(url) as conn:
        PG_MIGRATIONS[0](conn)
        conn.execute("INSERT INTO periodic_meta (key, value) VALUES ('schema_version', '1')")
        conn.execute(
            "INSERT INTO periodic_jobs (func, name, sched_at, count, timeout, workload)"
            " VALUES ('\\x66', '\\x6a', 7, 1, 2, '\\x77')"
        )


@pytest.mark.postgres
async def test_postgres_version_1_database_is_upgraded(pg_database_url: str) -> None:  # noqa: F811
    from trio_periodic.store.postgres import PostgresStore

    await trio.to_thread.run_sync(make_v1_postgres, pg_database_url)
    with trio.fail_after(TIMEOUT):
        store = PostgresStore(pg_database_url)
        state = await store.open()
        assert state.jobs == [Job(b"f", b"j", b"w", 7, 1, 2)] and state.schedules == []
        await store.commit([PutSchedule(ROW)])
        await store.aclose()
        store = PostgresStore(pg_database_url)
        state = await store.open()
        await store.aclose()
    assert state.schedules == [ROW] and len(state.jobs) == 1


@pytest.mark.postgres
async def test_fire_schedule_fires_each_tick_once(pg_database_url: str) -> None:  # noqa: F811
    from trio_periodic.store.postgres import PostgresStore

    cron = Cron("* * * * *")
    assert cron.next_after(1000) == 1020
    a, b = PostgresStore(pg_database_url), PostgresStore(pg_database_url)
    with trio.fail_after(TIMEOUT):
        await a.open()
        await b.open()
        try:
            await a.commit([PutSchedule(ROW)])
            results: list[tuple[ScheduleRow, Job | None] | None] = []

            async def fire(store: PostgresStore, tick: int) -> None:
                results.append(
                    await store.fire_schedule(b"f", b"s", lambda r, e: on_tick(r, tick, e))
                )

            # Both servers handle the same tick at once: one job, one fire.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(fire, a, 1020)
                nursery.start_soon(fire, b, 1020)
            jobs = [r[1] for r in results if r is not None and r[1] is not None]
            assert len(jobs) == 1 and jobs[0].sched_at == 1020
            # The job exists now: the next tick is skipped, by whichever server.
            results.clear()
            await fire(b, 1080)
            await fire(a, 1080)
            assert [r[0].skipped if r else None for r in results] == [1, 1]
            assert all(r is not None and r[1] is None for r in results)
            # A release with nothing queued does nothing; unknown schedules: None.
            out = await a.fire_schedule(b"f", b"s", lambda r, e: on_release(r, 2000, e))
            assert out is not None and out[1] is None
            assert await a.fire_schedule(b"f", b"nope", lambda r, e: on_tick(r, 1, e)) is None
            state = await PostgresStore(pg_database_url).open()
        finally:
            await a.aclose()
            await b.aclose()
    [row] = state.schedules
    assert (row.fired, row.skipped, row.last_tick) == (1, 1, 1080)
    assert [(j.func, j.name, j.sched_at) for j in state.jobs] == [(b"f", b"s", 1020)]
