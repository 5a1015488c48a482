"""PostgreSQL store specifics: connection errors, retries, schema.  Skipped without PostgreSQL."""

from __future__ import annotations

import socket

import pytest
import trio
from pg_fixture import pg_database_url, postgres_cluster  # noqa: F401  (fixtures)

from trio_periodic.protocol.job import Job
from trio_periodic.store.base import Change, PutJob, StoreError

pytest.importorskip("psycopg")
import psycopg

from trio_periodic.store.postgres import (
    SCHEMA_VERSION,
    PostgresStore,
    to_conninfo,
)
from trio_periodic.store.uri import redact_uri

TIMEOUT = 60  # seconds


def _dbname(url: str) -> str:
    return url.rsplit("/", 1)[1]


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nothing listens here once the socket is closed


async def _names(url: str) -> set[bytes]:
    store = PostgresStore(url)
    try:
        return {job.name for job in (await store.open()).jobs}
    finally:
        await store.aclose()


# -- no server needed ------------------------------------------------------------


def test_redaction() -> None:
    assert redact_uri("postgresql://bob:s3cret@db:5432/p") == "postgresql://bob:***@db:5432/p"
    assert redact_uri("postgres://bob:p@ss@db/p") == "postgres://bob:***@db/p"
    assert redact_uri("postgres://db/p?user=u&password=zz&x=1") == (
        "postgres://db/p?user=u&password=***&x=1"
    )
    assert redact_uri("postgres://host=h password='a b' dbname=d") == (
        "postgres://host=h password=*** dbname=d"
    )
    assert redact_uri("postgres://bob@db/p") == "postgres://bob@db/p"


def test_reference_keyword_form() -> None:
    ref = (
        "postgres://host='127.0.0.1' port=5432 dbname='periodicd' user='postgres'"
        " password='' prefix=''"
    )
    assert to_conninfo(ref) == (
        "host='127.0.0.1' port=5432 dbname='periodicd' user='postgres' password=''"
    )
    assert to_conninfo("postgres://u@h/db") == "postgres://u@h/db"
    with pytest.raises(StoreError, match="prefix"):
        to_conninfo("postgres://host=h prefix=p1")


async def test_unreachable_server_is_a_store_error_naming_the_uri() -> None:
    url = f"postgresql://periodic:hunter2@127.0.0.1:{_closed_port()}/periodic"
    with trio.fail_after(TIMEOUT):
        with pytest.raises(StoreError) as info:
            await PostgresStore(url, connect_timeout=2).open()
    message = str(info.value)
    assert "postgresql://periodic:***@127.0.0.1" in message
    assert "hunter2" not in message


# -- against the throwaway cluster ---------------------------------------------------


@pytest.fixture
def url(pg_database_url: str) -> str:  # noqa: F811  (the imported fixture)
    return pg_database_url


@pytest.mark.postgres
async def test_schema_is_ready_for_claiming(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        store = PostgresStore(url)
        await store.open()
        await store.commit([PutJob(Job(b"f", b"n"))])
        await store.aclose()
    with psycopg.connect(url) as conn:
        cols: dict[str, str] = dict(
            conn.execute(
                "SELECT column_name, is_nullable FROM information_schema.columns"
                " WHERE table_name = 'periodic_jobs'"
            ).fetchall()
        )
        assert cols["claimed_by"] == "YES" and cols["lease_until"] == "YES"
        assert conn.execute("SELECT claimed_by, lease_until FROM periodic_jobs").fetchall() == [
            (None, None)
        ]
        version = conn.execute("SELECT value FROM periodic_meta").fetchone()
        assert version == (str(SCHEMA_VERSION),)


@pytest.mark.postgres
async def test_newer_schema_is_refused(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        store = PostgresStore(url)
        await store.open()
        await store.aclose()
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE periodic_meta SET value = '99'")
        with pytest.raises(StoreError, match="newer"):
            await PostgresStore(url).open()


@pytest.mark.postgres
async def test_foreign_tables_are_refused(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE periodic_jobs (x int)")
    with trio.fail_after(TIMEOUT):
        with pytest.raises(StoreError, match="refusing"):
            await PostgresStore(url).open()


@pytest.mark.postgres
async def test_reference_style_uri_opens(url: str) -> None:
    port = url.split(":")[2].split("/")[0]
    ref = (
        f"postgres://host='127.0.0.1' port={port} dbname='{_dbname(url)}' user='postgres' prefix=''"
    )
    with trio.fail_after(TIMEOUT):
        store = PostgresStore(ref)
        await store.open()
        await store.commit([PutJob(Job(b"f", b"ref"))])
        await store.aclose()
        assert await _names(url) == {b"ref"}


@pytest.mark.postgres
async def test_group_commit_batches(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        store = PostgresStore(url)
        await store.open()
        async with trio.open_nursery() as nursery:
            for i in range(300):
                nursery.start_soon(store.commit, [PutJob(Job(b"f", b"%d" % i))])
        transactions = store.commits
        await store.aclose()
        assert len(await _names(url)) == 300
    print(f"\n300 concurrent commits -> {transactions} transactions")
    assert transactions < 30


@pytest.mark.postgres
async def test_lost_connection_is_retried(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        store = PostgresStore(url, retry_delay=0.05)
        await store.open()
        await store.commit([PutJob(Job(b"f", b"one"))])
        with _admin(url) as admin:  # kill the store's pooled connection(s)
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (_dbname(url),),
            )
        await store.commit([PutJob(Job(b"f", b"two"))])
        await store.aclose()
        assert await _names(url) == {b"one", b"two"}


@pytest.mark.postgres
async def test_connection_dying_mid_commit_is_retried(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PostgresStore(url, retry_delay=0.05)
    real = store._transaction
    attempts = 0

    def dies_once(changes: list[Change]) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            assert store._pool is not None
            with store._pool.connection() as conn:  # the backend dies under us
                conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        real(changes)

    with trio.fail_after(TIMEOUT):
        await store.open()
        monkeypatch.setattr(store, "_transaction", dies_once)
        await store.commit([PutJob(Job(b"f", b"retried"))])
        await store.aclose()
        assert attempts == 2
        assert await _names(url) == {b"retried"}


@pytest.mark.postgres
@pytest.mark.slow  # the pool's own reconnect backoff takes a few seconds
async def test_database_gone_for_good_fails_then_recovers(url: str) -> None:
    db = _dbname(url)
    with trio.fail_after(TIMEOUT):
        store = PostgresStore(url, retries=2, retry_delay=0.05, connect_timeout=1)
        await store.open()
        with _admin(url) as admin:
            admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (db,),
            )
        try:
            with pytest.raises(StoreError, match="attempts"):
                await store.commit([PutJob(Job(b"f", b"lost"))])
        finally:
            with _admin(url) as admin:
                admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
        while True:  # the pool reconnects in the background, with its own backoff
            try:
                await store.commit([PutJob(Job(b"f", b"back"))])
                break
            except StoreError:
                await trio.sleep(0.2)
        await store.aclose()
        assert await _names(url) == {b"back"}
