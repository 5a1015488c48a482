"""PostgreSQL store specifics: connection errors, retries, schema, and cluster mode
(claims, leases, notifications).  Skipped without PostgreSQL."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from pg_fixture import pg_database_url, postgres_cluster  # noqa: F401  (fixtures)

from trio_periodic.protocol.job import Job
from trio_periodic.store.base import (
    Change,
    DeleteFunc,
    DeleteJob,
    ExtendLease,
    PutFunc,
    PutJob,
    RemoteChange,
    RemoteConfig,
    RemoteDelete,
    RemoteDropFunc,
    RemoteJob,
    SetConfig,
    StoreError,
)

pytest.importorskip("psycopg")
import psycopg

from trio_periodic.store import postgres
from trio_periodic.store.pg_notify import MAX_PAYLOAD, change_lines, parse, payloads
from trio_periodic.store.pg_sql import one_statement
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
    real = postgres.run_single
    attempts = 0

    async def dies_once(conn: Any, *args: Any) -> Any:
        nonlocal attempts
        attempts += 1
        if attempts == 1:  # the backend dies under us, just before the statement
            with _admin(url) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        return await real(conn, *args)

    with trio.fail_after(TIMEOUT):
        await store.open()
        monkeypatch.setattr(postgres, "run_single", dies_once)
        await store.commit([PutJob(Job(b"f", b"retried"))])
        await store.aclose()
        assert attempts == 2
        assert await _names(url) == {b"retried"}


@pytest.mark.postgres
@pytest.mark.slow  # the pool's own reconnect backoff takes a few seconds
async def test_database_gone_for_good_fails_then_recovers(url: str) -> None:
    db = _dbname(url)
    with trio.fail_after(TIMEOUT):
        store = PostgresStore(url, retries=3, retry_delay=0.05, connect_timeout=1)
        await store.open()
        with _admin(url) as admin:
            admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (db,),
            )
        try:
            started = trio.current_time()
            with pytest.raises(StoreError, match="no connection to the database within 1 s"):
                await store.commit([PutJob(Job(b"f", b"lost"))])
            # One wait for the pool (1 s), not one per attempt (4 s).
            assert trio.current_time() - started < 2.5
            with pytest.raises(StoreError, match="claim failed"):
                await store.claim([(b"f", b"lost", 1.0)])
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


def test_a_transaction_is_one_statement_only_when_order_cannot_matter() -> None:
    a, b = Job(b"f", b"a"), Job(b"f", b"b")
    single = one_statement([PutJob(a), DeleteJob(b"f", b"b"), PutJob(a)], ["n"], False, "me", 0)
    assert single is not None and single[0].startswith("WITH p AS (INSERT")
    assert "pg_notify" in single[0]
    # The same job under two kinds of change: their order matters, so a block.
    assert one_statement([PutJob(a), DeleteJob(b"f", b"a")], [], False, "me", 0) is None
    assert one_statement([DeleteJob(b"f", b"b"), PutJob(b)], [], False, "me", 0) is None
    # Rare kinds always go as a block.
    assert one_statement([PutFunc(b"f"), PutJob(a)], [], False, "me", 0) is None


@pytest.mark.postgres
async def test_both_transaction_shapes_apply_changes_in_order(url: str) -> None:
    """One statement (disjoint jobs) and a block (a job touched twice) leave the
    rows that applying the changes one after the other would."""
    job = Job(b"f", b"x", b"w1")
    with trio.fail_after(TIMEOUT):
        store = PostgresStore(url)
        await store.open()
        try:
            await store.commit([PutJob(Job(b"f", b"keep")), PutJob(job), PutJob(Job(b"f", b"z"))])
            await store.commit([DeleteJob(b"f", b"z"), PutJob(Job(b"f", b"x", b"w2"))])
            assert _claim_row(url, b"f", b"x") == (None, None, b"w2")
            await store.commit([PutJob(Job(b"f", b"y")), DeleteJob(b"f", b"y")])
            await store.commit([DeleteJob(b"f", b"keep"), PutJob(Job(b"f", b"keep", b"back"))])
            commits_before = store.commits
            # A claim on put comes back through the statement's own result.
            await store.commit([PutJob(Job(b"f", b"claimed"), lease=LEASE), DeleteJob(b"f", b"x")])
            assert store.commits == commits_before + 1
            assert b"claimed" not in {n for _, n in store.put_claims_refused}
        finally:
            await store.aclose()
    assert await _names(url) == {b"keep", b"claimed"}
    assert _claim_row(url, b"f", b"keep") == (None, None, b"back")
    row = _claim_row(url, b"f", b"claimed")
    assert row is not None and row[0] is not None


# -- cluster mode: claims, leases, notifications ---------------------------------------

LEASE = 60.0  # seconds: "live" in these tests


def near(expected: object) -> object:
    """Leases live on the database's clock and come back on ours: equal up to
    the time between two clock readings (seconds)."""
    return pytest.approx(expected, abs=0.5)


def _claim_row(url: str, func: bytes, name: bytes) -> tuple[object, ...] | None:
    with psycopg.connect(url) as conn:
        row: tuple[object, ...] | None = conn.execute(
            "SELECT claimed_by, lease_until, workload FROM periodic_jobs"
            " WHERE func = %s AND name = %s",
            (func, name),
        ).fetchone()
        return row


def _lease(url: str, func: bytes, name: bytes) -> tuple[object, ...]:
    """(claimed_by, lease_until) of a row that exists."""
    row = _claim_row(url, func, name)
    assert row is not None
    return row[:2]


@asynccontextmanager
async def _stores(url: str, n: int = 2) -> AsyncIterator[list[PostgresStore]]:
    stores = [PostgresStore(url) for _ in range(n)]
    try:
        for store in stores:
            await store.open()
        yield stores
    finally:
        for store in stores:
            await store.aclose()


class _Seen:
    """A watch callback that remembers everything it was given."""

    def __init__(self) -> None:
        self.changes: list[RemoteChange] = []
        self.calls = 0

    def __call__(self, changes: list[RemoteChange]) -> None:
        assert changes  # never called with nothing
        self.calls += 1
        self.changes += changes

    async def wait_for(self, *wanted: RemoteChange, timeout: float = 1.0) -> None:
        """Until every ``wanted`` change arrived (seconds: the latency budget)."""
        with trio.fail_after(timeout):
            while not all(w in self.changes for w in wanted):
                await trio.sleep(0.002)

    async def wait_leased(self, job: Job, until: float, timeout: float = 1.0) -> None:
        """Until ``job`` arrived held by another server until about ``until``."""
        with trio.fail_after(timeout):
            while not any(
                isinstance(c, RemoteJob) and c.job == job and c.lease_until == near(until)
                for c in self.changes
            ):
                await trio.sleep(0.002)


def test_payloads_stay_under_the_limit_and_parse_back() -> None:
    jobs = [Job(bytes([i]) * 200, b"n\x00%d" % i) for i in range(100)]
    changes: list[Change] = [PutJob(j) for j in jobs]
    changes += [DeleteJob(b"f", b""), DeleteFunc(b""), SetConfig("timeout", 5), PutFunc(b"x")]
    changes += [ExtendLease(b"f", b"n", 1.0), PutJob(jobs[0])]  # a repeat is sent once
    lines = change_lines("me", changes)
    assert len(lines) == 103
    texts = payloads(lines)
    assert len(texts) > 1 and all(len(t.encode()) <= MAX_PAYLOAD for t in texts)
    assert "\n".join(texts).split("\n") == lines
    assert parse(texts, "me") == []  # our own lines are ignored
    keys = parse(texts, "other")
    assert keys[0] == ("j", jobs[0].func, jobs[0].name)
    assert keys[-3:] == [("j", b"f", b""), ("f", b""), ("c", "timeout")]
    # Each key at its last occurrence: a drop then a re-put keeps that order.
    assert parse(["a j 66 6e\na f 66\na j 66 6e\nb j 66 6e\ngarbage\na j zz 00"], "b") == [
        ("f", b"f"),
        ("j", b"f", b"n"),
    ]


_Refused = dict[tuple[bytes, bytes], float | None]


@pytest.mark.postgres
@pytest.mark.parametrize("shape", ["whole", "chunks", "overlap"])
async def test_claim_race_each_job_claimed_exactly_once(url: str, shape: str) -> None:
    """Two servers claim the same 200 jobs at the same time: every job goes to
    exactly one, the loser learns the winner's lease, and nobody deadlocks.

    whole: one claim of all 200 each (b lists them backwards); chunks: claims of
    10 from opposite ends, so the two meet in the middle; overlap: a wants
    0..149 and b 50..199."""
    names = [b"%03d" % i for i in range(200)]
    handles = [(b"f", n) for n in names]
    with trio.fail_after(TIMEOUT):
        async with _stores(url) as (a, b):
            await a.commit([PutJob(Job(b"f", n)) for n in names])
            now = time.time()
            until = {a: now + 100, b: now + 200}
            order = {a: handles, b: handles[::-1]}
            if shape == "overlap":
                order = {a: handles[:150], b: handles[::-1][:150]}
            size = 10 if shape == "chunks" else 200
            refused: dict[PostgresStore, _Refused] = {a: {}, b: {}}

            async def claim_all(store: PostgresStore) -> None:
                mine = [(f, n, until[store]) for f, n in order[store]]
                for i in range(0, len(mine), size):
                    refused[store].update(await store.claim(mine[i : i + size]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(claim_all, a)
                nursery.start_soon(claim_all, b)
            won = {s: set(order[s]) - refused[s].keys() for s in (a, b)}
            assert not won[a] & won[b]
            assert won[a] | won[b] == set(handles)
            for store, other in ((a, b), (b, a)):
                assert refused[store].keys() <= won[other]
                assert all(v == near(until[other]) for v in refused[store].values())
                for handle in won[store]:
                    row = _claim_row(url, *handle)
                    assert row is not None and row[:2] == near((store.server_id, until[store]))
    print(f"\n{shape}: a won {len(won[a])}, b won {len(won[b])}")
    if shape == "chunks":
        assert won[a] and won[b]  # they did meet


@pytest.mark.postgres
async def test_claim_blocked_on_a_locked_row_then_sees_the_winner(url: str) -> None:
    """Both claims run into a row lock held by a third session, so they overlap for
    sure; the one that locks the rows first wins them all."""
    names = [b"%03d" % i for i in range(200)]
    with trio.fail_after(TIMEOUT):
        async with _stores(url) as (a, b):
            await a.commit([PutJob(Job(b"f", n)) for n in names])
            until = time.time() + LEASE
            results: list[dict[tuple[bytes, bytes], float | None]] = []
            with psycopg.connect(url) as blocker:
                blocker.execute(
                    "SELECT 1 FROM periodic_jobs WHERE name = '\\x313030'::bytea FOR UPDATE"
                )  # row b"100", in the middle
                async with trio.open_nursery() as nursery:
                    for store in (a, b):
                        nursery.start_soon(_claim_into, results, store, names, until)
                    await trio.sleep(0.3)  # both are now waiting on the lock
                    assert results == []
                    blocker.rollback()
            assert sorted(len(r) for r in results) == [0, 200]
            loser = next(r for r in results if r)
            assert all(v == near(until) for v in loser.values())


async def _claim_into(
    out: list[dict[tuple[bytes, bytes], float | None]],
    store: PostgresStore,
    names: list[bytes],
    until: float,
) -> None:
    out.append(await store.claim([(b"f", n, until) for n in names]))


@pytest.mark.postgres
async def test_claim_takes_expired_leases_and_reports_missing_rows(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with _stores(url) as (a, b):
            await a.commit([PutJob(Job(b"f", b"x")), PutJob(Job(b"f", b"y"))])
            now = time.time()
            assert await a.claim([(b"f", b"x", now - 1), (b"f", b"y", now + LEASE)]) == {}
            assert await a.claim([]) == {}
            # x's lease ran out: b takes it; y is a's; z never existed.
            got = await b.claim([(b"f", b"x", now + 5), (b"f", b"y", now + 5), (b"f", b"z", 1.0)])
            assert got == near({(b"f", b"y"): now + LEASE, (b"f", b"z"): None})
            assert _lease(url, b"f", b"x") == near((b.server_id, now + 5))
            # Claiming again what we hold moves our lease.
            assert await a.claim([(b"f", b"y", now + 2 * LEASE)]) == {}
            assert _lease(url, b"f", b"y") == near((a.server_id, now + 2 * LEASE))
            await a.aclose()
            with pytest.raises(StoreError):
                await a.claim([(b"f", b"x", now)])


@pytest.mark.postgres
async def test_put_job_never_clobbers_a_live_claim_of_another_server(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with _stores(url) as (a, b):
            jobs = [Job(b"f", n, b"old") for n in (b"live", b"expired", b"own")]
            await a.commit([PutJob(j) for j in jobs])
            now = time.time()
            await a.claim([(b"f", b"live", now + LEASE), (b"f", b"expired", now - 1)])
            await b.claim([(b"f", b"own", now + LEASE)])
            await b.commit([PutJob(Job(b"f", n, b"new")) for n in (b"live", b"expired", b"own")])
            assert _claim_row(url, b"f", b"live") == near((a.server_id, now + LEASE, b"old"))
            assert _claim_row(url, b"f", b"expired") == (None, None, b"new")
            assert _claim_row(url, b"f", b"own") == (None, None, b"new")
            # Deleting is unconditional.
            await b.commit([DeleteJob(b"f", b"live")])
            assert _claim_row(url, b"f", b"live") is None


@pytest.mark.postgres
async def test_extend_lease_moves_only_our_own_claim(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with _stores(url) as (a, b):
            await a.commit([PutJob(Job(b"f", b"n")), PutJob(Job(b"f", b"free"))])
            now = time.time()
            await a.claim([(b"f", b"n", now + 10)])
            await a.commit([ExtendLease(b"f", b"n", now + 20), ExtendLease(b"f", b"free", 5.0)])
            assert _lease(url, b"f", b"n") == near((a.server_id, now + 20))
            assert _lease(url, b"f", b"free") == (None, None)
            await b.commit([ExtendLease(b"f", b"n", now + 99)])
            assert _lease(url, b"f", b"n") == near((a.server_id, now + 20))


@pytest.mark.postgres
async def test_open_reports_live_leases_and_keeps_claims(url: str) -> None:
    with trio.fail_after(TIMEOUT):
        async with _stores(url, 1) as (a,):
            await a.commit([PutJob(Job(b"f", n)) for n in (b"live", b"expired", b"free")])
            now = time.time()
            await a.claim([(b"f", b"live", now + LEASE), (b"f", b"expired", now - 1)])
            restarted = PostgresStore(url)
            try:
                state = await restarted.open()
            finally:
                await restarted.aclose()
    assert {j.name for j in state.jobs} == {b"live", b"expired", b"free"}
    assert state.leases == near({(b"f", b"live"): now + LEASE})
    # Opening does not reset anybody's claims.
    assert _lease(url, b"f", b"live") == near((a.server_id, now + LEASE))
    assert _lease(url, b"f", b"expired") == near((a.server_id, now - 1))


@pytest.mark.postgres
@pytest.mark.parametrize("skew", [3600.0, -3600.0], ids=["ahead", "behind"])
async def test_leases_are_compared_on_the_database_clock(url: str, skew: float) -> None:
    """A server whose clock is an hour off can neither steal nor clobber a live
    lease, nor hand out one that is already over on the database's clock; it
    sees other servers' leases with their true time left, on its own clock."""

    def off() -> float:
        return time.time() + skew

    f, x, y = b"f", b"x", b"y"
    honest, skewed = PostgresStore(url), PostgresStore(url, clock=off)
    seen = _Seen()
    with trio.fail_after(TIMEOUT):
        try:
            await honest.open()
            await skewed.open()
            async with trio.open_nursery() as nursery:
                await nursery.start(skewed.watch, seen)
                await honest.commit([PutJob(Job(f, x)), PutJob(Job(f, y))])
                now = time.time()
                assert await honest.claim([(f, x, now + LEASE)]) == {}
                await seen.wait_leased(Job(f, x), off() + LEASE)
                # Ahead, x's lease looks an hour over: it must still be refused.
                refused = await skewed.claim([(f, x, off() + LEASE)])
                assert refused == near({(f, x): off() + LEASE})
                await skewed.commit([PutJob(Job(f, x, b"clobbered"))])
                assert _claim_row(url, f, x) == near((honest.server_id, now + LEASE, b""))

                # Behind, a 5 s lease must not be over before it began.
                assert await skewed.claim([(f, y, off() + 5)]) == {}
                assert _lease(url, f, y) == near((skewed.server_id, time.time() + 5))
                assert await honest.claim([(f, y, time.time() + LEASE)]) == near(
                    {(f, y): time.time() + 5}
                )
                await skewed.commit([ExtendLease(f, y, off() + 30)])
                assert _lease(url, f, y) == near((skewed.server_id, time.time() + 30))
                nursery.cancel_scope.cancel()
            # A restarted skewed server loads live leases on its own clock.
            again = PostgresStore(url, clock=off)
            try:
                state = await again.open()
            finally:
                await again.aclose()
            assert state.leases == near({(f, x): off() + LEASE, (f, y): off() + 30})
        finally:
            await skewed.aclose()
            await honest.aclose()


@pytest.mark.postgres
async def test_watch_sees_other_servers_changes_within_a_second(url: str) -> None:
    seen_a, seen_b = _Seen(), _Seen()
    with trio.fail_after(TIMEOUT):
        async with _stores(url) as (a, b), trio.open_nursery() as nursery:
            await nursery.start(a.watch, seen_a)
            await nursery.start(b.watch, seen_b)
            job = Job(b"f", b"n", b"w", sched_at=123, count=2, timeout=30)
            await a.commit([PutFunc(b"f"), PutJob(job), PutJob(Job(b"g", b"m"))])
            await seen_b.wait_for(RemoteJob(job, None), RemoteJob(Job(b"g", b"m"), None))

            until = time.time() + LEASE
            assert await a.claim([(b"f", b"n", until)]) == {}
            await seen_b.wait_leased(job, until)

            await a.commit([DeleteJob(b"f", b"n")])
            await seen_b.wait_for(RemoteDelete(b"f", b"n"))
            await a.commit([DeleteFunc(b"g")])
            await seen_b.wait_for(RemoteDropFunc(b"g"))
            await a.commit([SetConfig("timeout", 42)])
            await seen_b.wait_for(RemoteConfig("timeout", 42))

            # The other way round: a hears b, and never hears itself.
            await b.commit([PutJob(Job(b"h", b"from-b"))])
            await seen_a.wait_for(RemoteJob(Job(b"h", b"from-b"), None))
            await trio.sleep(0.2)
            assert seen_a.changes == [RemoteJob(Job(b"h", b"from-b"), None)]
            # A row b holds itself is nothing b needs to hear about.
            await b.claim([(b"h", b"from-b", until)])
            await a.commit([PutJob(Job(b"h", b"from-b", b"ignored"))])  # b's claim stands
            await a.commit([SetConfig("marker", 1)])
            await seen_b.wait_for(RemoteConfig("marker", 1))
            assert not [
                c for c in seen_b.changes if isinstance(c, RemoteJob) and c.job.func == b"h"
            ]
            nursery.cancel_scope.cancel()


@pytest.mark.postgres
async def test_watch_large_transactions_are_split_and_batched(url: str) -> None:
    seen = _Seen()
    jobs = [Job(b"f" * 200, b"%03d" % i + b"n" * 200) for i in range(500)]
    with trio.fail_after(TIMEOUT):
        async with _stores(url) as (a, b), trio.open_nursery() as nursery:
            await nursery.start(b.watch, seen)
            await a.commit([PutJob(j) for j in jobs])  # ~420 KB of notification lines
            await seen.wait_for(*(RemoteJob(j, None) for j in jobs), timeout=5)
            assert len(seen.changes) == 500 and seen.calls < 10
            nursery.cancel_scope.cancel()


@pytest.mark.postgres
async def test_nothing_is_missed_between_open_and_watch(url: str) -> None:
    seen = _Seen()
    with trio.fail_after(TIMEOUT):
        async with _stores(url) as (a, b):
            await a.commit([PutJob(Job(b"f", b"early"))])  # after b loaded, before b watches
            async with trio.open_nursery() as nursery:
                await nursery.start(b.watch, seen)
                await seen.wait_for(RemoteJob(Job(b"f", b"early"), None))
                nursery.cancel_scope.cancel()


@pytest.mark.postgres
async def test_watch_reconnects_and_rereads_after_losing_its_connection(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    seen = _Seen()
    with trio.fail_after(TIMEOUT):
        async with _stores(url) as (a, b), trio.open_nursery() as nursery:
            b._retry_delay = 0.05
            await a.commit([PutJob(Job(b"f", b"before")), SetConfig("k", 7)])
            await nursery.start(b.watch, seen)
            await seen.wait_for(RemoteJob(Job(b"f", b"before"), None), RemoteConfig("k", 7))
            (listener,) = b._listeners
            pid = listener.backend_pid
            with _admin(url) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            # Committed while b may be disconnected: the re-read or a notification brings it.
            await a.commit([PutJob(Job(b"f", b"during"))])
            await seen.wait_for(RemoteJob(Job(b"f", b"during"), None), timeout=10)
            while listener.backend_pid in (None, pid):
                await trio.sleep(0.01)
            await a.commit([PutJob(Job(b"f", b"after"))])
            await seen.wait_for(RemoteJob(Job(b"f", b"after"), None))
            nursery.cancel_scope.cancel()
    assert "lost the LISTEN connection" in caplog.text


@pytest.mark.postgres
async def test_resync_reports_what_was_deleted_while_disconnected(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """b's LISTEN connection is down (and cannot come back) while a deletes jobs:
    no notification can reach b, so only the resync can tell it."""
    db = _dbname(url)
    seen = _Seen()
    loaded = [Job(b"f", b"gone"), Job(b"f", b"kept"), Job(b"g", b"dropped")]
    deleted = [RemoteDelete(b"f", b"gone"), RemoteDelete(b"f", b"mine")]
    deleted += [RemoteDelete(b"g", b"dropped")]

    def deletes() -> list[RemoteChange]:
        return sorted((c for c in seen.changes if isinstance(c, RemoteDelete)), key=repr)

    with trio.fail_after(TIMEOUT):
        async with _stores(url) as (a, b):
            b._retry_delay = 0.05
            async with trio.open_nursery() as nursery:
                await a.commit([PutJob(j) for j in loaded])
                await nursery.start(b.watch, seen)
                await seen.wait_for(*(RemoteJob(j, None) for j in loaded))
                await b.commit([PutJob(Job(b"f", b"mine"))])  # b knows it by its own commit
                (listener,) = b._listeners
                with _admin(url) as admin:
                    admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS false')
                    try:
                        admin.execute("SELECT pg_terminate_backend(%s)", (listener.backend_pid,))
                        while "lost the LISTEN connection" not in caplog.text:
                            await trio.sleep(0.01)
                        # a commits on the pooled connection it already has.
                        await a.commit([DeleteJob(b"f", b"gone"), DeleteJob(b"f", b"mine")])
                        await a.commit([DeleteFunc(b"g"), PutJob(Job(b"f", b"new"))])
                        # b's own put while it cannot listen is no delete.
                        await b.commit([PutJob(Job(b"h", b"own-during"))])
                        await trio.sleep(0.3)  # b keeps failing to reconnect meanwhile
                        assert deletes() == []
                    finally:
                        admin.execute(f'ALTER DATABASE "{db}" ALLOW_CONNECTIONS true')
                await seen.wait_for(*deleted, RemoteJob(Job(b"f", b"new"), None), timeout=10)
                # ... and nothing else: not kept, not new, not b's own.
                assert deletes() == sorted(deleted, key=repr)
                nursery.cancel_scope.cancel()
            # Reported once: the resync of a new watch has nothing more to delete.
            async with trio.open_nursery() as nursery:
                await nursery.start(b.watch, seen)
                await seen.wait_for(RemoteJob(Job(b"h", b"own-during"), None))
                nursery.cancel_scope.cancel()
            assert deletes() == sorted(deleted, key=repr)
    assert "3 jobs were deleted elsewhere" in caplog.text


@pytest.mark.postgres
async def test_cancelled_watch_stops_promptly_and_closes_its_connection(url: str) -> None:
    def listeners() -> int:
        with _admin(url) as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = %s AND query LIKE 'LISTEN%%'",
                (_dbname(url),),
            ).fetchone()
            assert row is not None and isinstance(row[0], int)
            return row[0]

    seen = _Seen()
    with trio.fail_after(TIMEOUT):
        async with _stores(url) as (a, b):
            assert listeners() == 2  # open() listens already
            for _ in range(2):  # the second watch makes a connection of its own
                async with trio.open_nursery() as nursery:
                    await nursery.start(b.watch, seen)
                    await trio.sleep(0.05)
                    started = trio.current_time()
                    nursery.cancel_scope.cancel()
                assert trio.current_time() - started < 0.1
                deadline = trio.current_time() + 2
                while listeners() != 1:  # the abandoned thread closes it within a slice
                    assert trio.current_time() < deadline
                    await trio.sleep(0.02)
            # A watch after a watch re-reads everything it may have missed.
            await a.commit([PutJob(Job(b"f", b"missed"))])
            async with trio.open_nursery() as nursery:
                await nursery.start(b.watch, seen)
                await seen.wait_for(RemoteJob(Job(b"f", b"missed"), None))
                nursery.cancel_scope.cancel()
        assert listeners() == 0


# -- retry policies, attempt counts and the failed set across servers ------------


@pytest.mark.postgres
async def test_watch_mirrors_policies_counts_and_failed_jobs(url: str) -> None:
    from trio_periodic.store.base import (
        DeleteFailed,
        DeletePolicy,
        FailedJob,
        PutFailed,
        PutPolicy,
        RemoteAttempts,
        RemoteFailed,
        RemotePolicy,
        RemoteRetryState,
        RetryPolicy,
        SetAttempts,
    )

    policy = RetryPolicy(3, "exponential", 2.0, 30.0, False)
    job = Job(b"f", b"n", b"w")
    gone = FailedJob(job, 3, 1_700_000_000.5, "timeout", "10.0.0.1:4", b"tail")
    seen = _Seen()
    with trio.fail_after(TIMEOUT):
        async with _stores(url) as (a, b):
            async with trio.open_nursery() as nursery:
                await nursery.start(b.watch, seen)
                await a.commit([PutPolicy(b"f", policy), PutJob(job), SetAttempts(b"f", b"n", 2)])
                await seen.wait_for(RemotePolicy(b"f", policy), RemoteAttempts(b"f", b"n", 2))
                # The move to the failed set, as the scheduler writes it.
                await a.commit([SetAttempts(b"f", b"n", 0), DeleteJob(b"f", b"n"), PutFailed(gone)])
                await seen.wait_for(
                    RemoteAttempts(b"f", b"n", 0),
                    RemoteDelete(b"f", b"n"),
                    RemoteFailed(b"f", b"n", gone),
                )
                await a.commit([DeleteFailed(b"f", b"n"), DeletePolicy(b"f")])
                await seen.wait_for(RemoteFailed(b"f", b"n", None), RemotePolicy(b"f", None))
                nursery.cancel_scope.cancel()
            # Missed while b was not watching; a new watch reads it all again.
            await a.commit([PutFailed(gone), PutPolicy(b"g", policy)])
            seen = _Seen()
            async with trio.open_nursery() as nursery:
                await nursery.start(b.watch, seen)
                await seen.wait_for(RemoteRetryState({b"g": policy}, {}, [gone]))
                nursery.cancel_scope.cancel()
