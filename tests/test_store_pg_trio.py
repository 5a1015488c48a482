"""Statements driven on the trio thread (``store/pg_trio.py``), and what the
PostgreSQL store builds on them: its connection lanes and its listener."""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import pytest
import trio
from pg_fixture import pg_database_url, postgres_cluster  # noqa: F401  (fixtures)

from trio_periodic.protocol.job import Job
from trio_periodic.store.base import PutJob, RemoteJob, StoreError

pytest.importorskip("psycopg")
import psycopg

from trio_periodic.store import pg_trio
from trio_periodic.store.pg_arrays import Bytea, Float8, Int8, Text
from trio_periodic.store.pg_notify import Listener
from trio_periodic.store.postgres import PostgresStore

TIMEOUT = 60  # seconds


@pytest.fixture
def url(pg_database_url: str) -> str:  # noqa: F811
    return pg_database_url


def _connect(url: str) -> pg_trio.Conn:
    return psycopg.connect(url, autocommit=True)


@pytest.mark.postgres
async def test_statements_run_on_the_trio_thread(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pg_trio.NATIVE  # the psycopg this project pins has the generator

    async def no_threads(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a statement went to a worker thread")

    monkeypatch.setattr(trio.to_thread, "run_sync", no_threads)
    with _connect(url) as conn, trio.fail_after(TIMEOUT):
        assert await pg_trio.fetch(conn, "SELECT %s::int + 1, %s::bytea", (41, b"x")) == [
            (42, b"x")
        ]
        assert await pg_trio.fetch(conn, "CREATE TABLE t (b bytea)", ()) == []
        # An error PostgreSQL reports leaves the connection usable.
        with pytest.raises(psycopg.errors.UndefinedTable):
            await pg_trio.fetch(conn, "SELECT * FROM missing", ())
        assert await pg_trio.fetch(conn, "SELECT 1", ()) == [(1,)]


@pytest.mark.postgres
async def test_a_statement_larger_than_the_socket_buffers_goes_through(url: str) -> None:
    big = bytes(range(256)) * (32 * 1024)  # 8 MiB: several waits for a writable socket
    with _connect(url) as conn, trio.fail_after(TIMEOUT):
        rows = await pg_trio.fetch(conn, "SELECT length(%s::bytea), md5(%s::bytea)", (big, big))
        assert rows[0][0] == len(big)


@pytest.mark.postgres
async def test_a_cancelled_statement_closes_its_connection(url: str) -> None:
    with _connect(url) as conn, trio.fail_after(TIMEOUT):
        with trio.move_on_after(0.2) as scope:
            await pg_trio.fetch(conn, "SELECT pg_sleep(30)", ())
        assert scope.cancelled_caught
        assert conn.closed  # mid-conversation: never reused


@pytest.mark.postgres
async def test_without_the_generator_statements_use_a_worker_thread(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_trio, "NATIVE", False)
    with _connect(url) as conn, trio.fail_after(TIMEOUT):
        assert await pg_trio.fetch(conn, "SELECT %s::text", ("ok",)) == [("ok",)]
    store = PostgresStore(url)
    with trio.fail_after(TIMEOUT):
        await store.open()
        try:
            await store.commit([PutJob(Job(b"f", b"a"))])
            assert await store.claim([(b"f", b"a", time.time() + 60)]) == {}
        finally:
            await store.aclose()


@pytest.mark.postgres
async def test_a_claim_cancelled_while_it_waits_for_a_lock_leaves_the_store_working(
    url: str,
) -> None:
    store = PostgresStore(url)
    with trio.fail_after(TIMEOUT):
        await store.open()
        try:
            await store.commit([PutJob(Job(b"f", b"a")), PutJob(Job(b"f", b"b"))])
            with _connect(url) as blocker, blocker.transaction():
                blocker.execute("SELECT 1 FROM periodic_jobs WHERE name = 'a' FOR UPDATE")
                with trio.move_on_after(0.3) as scope:
                    await store.claim([(b"f", b"a", time.time() + 60)])
                assert scope.cancelled_caught
            # The lane connects again (the pool replaces the closed connection).
            assert await store.claim([(b"f", b"b", time.time() + 60)]) == {}
            assert await store.claim([(b"f", b"a", time.time() + 60)]) == {}
        finally:
            await store.aclose()


@pytest.mark.postgres
async def test_a_claim_postgresql_refuses_is_a_store_error(url: str) -> None:
    """The claimer handles StoreError (the round's jobs go back and are retried);
    a raw psycopg error would end the service."""
    store = PostgresStore(url)
    with trio.fail_after(TIMEOUT):
        await store.open()
        try:
            with _connect(url) as admin:
                admin.execute("ALTER TABLE periodic_jobs RENAME TO periodic_jobs_away")
                try:
                    with pytest.raises(StoreError, match="claim failed"):
                        await store.claim([(b"f", b"a", time.time() + 60)])
                finally:
                    admin.execute("ALTER TABLE periodic_jobs_away RENAME TO periodic_jobs")
            assert await store.claim([(b"f", b"a", time.time() + 60)]) == {(b"f", b"a"): None}
        finally:
            await store.aclose()


@pytest.mark.postgres
async def test_the_listener_waits_through_its_own_servers_notifications(url: str) -> None:
    """Each commit notifies every listener, ours too: ours are counted off and
    skipped; only another server's change is read and reported."""
    with trio.fail_after(TIMEOUT):
        ours, other = PostgresStore(url), PostgresStore(url)
        await ours.open()
        await other.open()
        listener = Listener(psycopg.conninfo.make_conninfo(url), 5, ours.server_id)
        try:
            await trio.to_thread.run_sync(listener.connect)
            got: list[Any] = []

            async def listen() -> None:
                got.append(await listener.next_changes())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(listen)
                for i in range(20):
                    await ours.commit([PutJob(Job(b"f", b"own%d" % i))])
                await trio.sleep(0.5)
                assert got == []  # still waiting
                await other.commit([PutJob(Job(b"f", b"theirs"))])
            (changes,) = got
            assert [c.job.name for c in changes if isinstance(c, RemoteJob)] == [b"theirs"]
        finally:
            await trio.to_thread.run_sync(listener.stop)
            await ours.aclose()
            await other.aclose()


@pytest.mark.postgres
async def test_array_parameters_arrive_as_postgresql_arrays(url: str) -> None:
    values: list[tuple[Any, str, list[Any]]] = [
        (Bytea, "bytea[]", [b"", b"\x00\xff", b"x" * 70_000]),
        (Int8, "int8[]", [0, -1, 2**63 - 1, -(2**63)]),
        (Float8, "float8[]", [None, 1.5, -0.0, 1e300, None]),
        (Text, "text[]", ["", None, "héllo ☃", "a\nb"]),
    ]
    with _connect(url) as conn, trio.fail_after(TIMEOUT):
        for cls, pg_type, items in values:
            got = await pg_trio.fetch(
                conn, f"SELECT %s::{pg_type}, cardinality(%s::{pg_type})", (cls(items), cls(items))
            )
            assert got == [(items, len(items))], pg_type
            empty = await pg_trio.fetch(conn, f"SELECT cardinality(%s::{pg_type})", (cls(),))
            assert empty == [(0,)], pg_type


@pytest.mark.postgres
async def test_closing_the_store_ends_a_watch_waiting_for_notifications(url: str) -> None:
    """aclose while watch waits on the LISTEN socket: the wait is woken before
    the socket is closed under it, and watch returns (no hang, no error)."""
    store = PostgresStore(url)
    calls: list[Any] = []
    with trio.fail_after(TIMEOUT):
        await store.open()
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(store.watch, calls.append))
            await trio.sleep(0.2)  # the watch is now waiting on the socket
            started = trio.current_time()
            await store.aclose()
        assert trio.current_time() - started < 5
    assert calls == []
