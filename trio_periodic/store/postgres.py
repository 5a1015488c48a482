"""The PostgreSQL store.

Theory of operation
-------------------
psycopg 3's *sync* API on worker threads (its async API needs asyncio) with a
small ``psycopg_pool.ConnectionPool``.  Commits go through the same
``GroupCommitter`` as the SQLite store: concurrent ``commit`` calls are merged
into one transaction, applied in call order, and each call returns after the
COMMIT holding its changes returned (``synchronous_commit`` as the server
has it; PostgreSQL's default fsyncs the WAL).

A lost connection while committing is retried a few times with exponential
backoff on a fresh connection from the pool.  Replaying a transaction is safe
even if the lost COMMIT in fact went through: every change sets a key to a
value that does not depend on what was there, so applying the same sequence
twice leaves the same rows.  When the retries run out every caller in that
transaction gets ``StoreError``.

Schema version 1 (tables carry a fixed ``periodic_`` prefix)::

    periodic_meta(key TEXT PRIMARY KEY, value TEXT)   -- ('schema_version', '1')
    periodic_jobs(func BYTEA, name BYTEA, sched_at BIGINT, count BIGINT,
                  timeout BIGINT, workload BYTEA,
                  claimed_by TEXT NULL, lease_until DOUBLE PRECISION NULL,
                  PRIMARY KEY (func, name))
    periodic_funcs(func BYTEA PRIMARY KEY)
    periodic_configs(key TEXT PRIMARY KEY, value BIGINT)

``claimed_by``/``lease_until`` are unused by a single server (always NULL; a
PutJob clears them): they are there for multi-server job claiming.  Migrations
run in one transaction under an advisory lock so that several servers
starting at once do not race.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Sequence
from itertools import starmap
from typing import Any, Final

import psycopg
import psycopg_pool
import trio

from trio_periodic.protocol.job import Job
from trio_periodic.store.base import (
    Change,
    DeleteFunc,
    DeleteJob,
    PutFunc,
    PutJob,
    SetConfig,
    StoredState,
    StoreError,
)
from trio_periodic.store.sqlite import GroupCommitter, change_runs, gc_paused, split_outcomes
from trio_periodic.store.uri import is_keyword_form, redact_uri


class _ConnectionTrouble(StoreError):
    """The database could not be reached for long enough: do not retry per batch."""


_Conn = psycopg.Connection[Any]
_Pool = psycopg_pool.ConnectionPool[_Conn]


def _migrate_to_1(conn: _Conn) -> None:
    conn.execute("CREATE TABLE periodic_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(
        "CREATE TABLE periodic_jobs ("
        " func BYTEA NOT NULL, name BYTEA NOT NULL,"
        " sched_at BIGINT NOT NULL DEFAULT 0,"  # seconds since the epoch
        " count BIGINT NOT NULL DEFAULT 0,"
        " timeout BIGINT NOT NULL DEFAULT 0,"  # seconds
        " workload BYTEA NOT NULL DEFAULT '\\x',"
        " claimed_by TEXT NULL,"  # server id holding the job (multi-server)
        " lease_until DOUBLE PRECISION NULL,"  # seconds since the epoch
        " PRIMARY KEY (func, name))"
    )
    conn.execute("CREATE TABLE periodic_funcs (func BYTEA PRIMARY KEY)")
    conn.execute("CREATE TABLE periodic_configs (key TEXT PRIMARY KEY, value BIGINT NOT NULL)")


#: MIGRATIONS[i] upgrades a database at schema version i to version i + 1.
MIGRATIONS: Final[list[Callable[[_Conn], None]]] = [_migrate_to_1]
SCHEMA_VERSION: Final = len(MIGRATIONS)
_TABLES: Final = ("periodic_meta", "periodic_jobs", "periodic_funcs", "periodic_configs")
#: pg_advisory_xact_lock key serialising schema migrations ("periodic" in ASCII).
_MIGRATION_LOCK: Final = 0x706572696F646963

_SQL: Final[dict[type, tuple[str, ...]]] = {
    PutJob: (
        "INSERT INTO periodic_jobs (func, name, sched_at, count, timeout, workload)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (func, name) DO UPDATE SET"
        " sched_at = EXCLUDED.sched_at, count = EXCLUDED.count,"
        " timeout = EXCLUDED.timeout, workload = EXCLUDED.workload,"
        " claimed_by = NULL, lease_until = NULL",
    ),
    DeleteJob: ("DELETE FROM periodic_jobs WHERE func = %s AND name = %s",),
    PutFunc: ("INSERT INTO periodic_funcs (func) VALUES (%s) ON CONFLICT DO NOTHING",),
    DeleteFunc: (
        "DELETE FROM periodic_jobs WHERE func = %s",
        "DELETE FROM periodic_funcs WHERE func = %s",
    ),
    SetConfig: (
        "INSERT INTO periodic_configs (key, value) VALUES (%s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    ),
}

_LOAD_JOBS: Final = "SELECT func, name, workload, sched_at, count, timeout FROM periodic_jobs"


# -- URIs ---------------------------------------------------------------------

_SCHEME = re.compile(r"^(postgres|postgresql)://", re.IGNORECASE)
_PREFIX_KV = re.compile(r"(?:^|\s)prefix\s*=\s*('(?:[^'\\]|\\.)*'|\S*)")


def to_conninfo(uri: str) -> str:
    """A libpq connection string for ``uri`` (URI or the reference's key=value form)."""
    m = _SCHEME.match(uri)
    if not m:
        raise StoreError(f"not a PostgreSQL URI: {redact_uri(uri)}")
    rest = uri[m.end() :]
    if not is_keyword_form(rest):
        return uri
    prefix = _PREFIX_KV.search(rest)
    if prefix:
        if prefix.group(1).strip("'"):
            raise StoreError(
                f"{redact_uri(uri)}: table prefixes are not supported (tables are periodic_*)"
            )
        rest = rest[: prefix.start()] + rest[prefix.end() :]
    return rest.strip()


# -- the store ----------------------------------------------------------------


class PostgresStore:
    """Jobs, funcs and configs in PostgreSQL tables ``periodic_*``."""

    durable = True

    def __init__(
        self,
        uri: str,
        *,
        connect_timeout: float = 10.0,  # seconds, for open and for each reconnect
        retries: int = 3,
        retry_delay: float = 0.2,  # seconds before the first retry; doubles
        pool_size: int = 2,
    ) -> None:
        self.uri = redact_uri(uri)
        self._conninfo = to_conninfo(uri)
        self._connect_timeout = connect_timeout
        self._connect_seconds = max(1, round(connect_timeout))  # libpq wants whole seconds
        self._retries = retries
        self._retry_delay = retry_delay
        self._pool_size = max(1, pool_size)
        #: Number of transactions committed (group commit makes it << calls).
        self.commits = 0
        self._pool: _Pool | None = None
        self._closed = False
        self._limiter = trio.CapacityLimiter(1)
        self._committer = GroupCommitter(self._apply)

    async def open(self) -> StoredState:
        if self._pool is not None or self._closed:
            raise StoreError(f"{self.uri}: store already opened")
        pool, state = await trio.to_thread.run_sync(self._open_sync, limiter=self._limiter)
        self._pool = pool
        return state

    async def commit(self, changes: Sequence[Change]) -> None:
        if self._pool is None or self._closed:
            raise StoreError(f"{self.uri}: store is not open")
        if changes:
            await self._committer.submit(changes)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._committer.drain()
            pool, self._pool = self._pool, None
            if pool is not None:
                await trio.to_thread.run_sync(pool.close, limiter=self._limiter)

    # -- worker-thread side ----------------------------------------------------

    def _open_sync(self) -> tuple[_Pool, StoredState]:
        try:
            conn = psycopg.connect(self._conninfo, connect_timeout=self._connect_seconds)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self.uri}: {exc}") from exc
        try:
            with conn:
                self._migrate(conn)
                state = _load(conn)
        except psycopg.Error as exc:
            raise StoreError(f"{self.uri}: {exc}") from exc
        pool: _Pool = psycopg_pool.ConnectionPool(
            self._conninfo,
            kwargs={"connect_timeout": self._connect_seconds},
            min_size=1,
            max_size=self._pool_size,
            open=False,
            check=psycopg_pool.ConnectionPool.check_connection,
            timeout=self._connect_timeout,
            name="trio-periodic",
        )
        try:
            pool.open(wait=True, timeout=self._connect_timeout)
        except psycopg.Error as exc:
            pool.close()
            raise StoreError(f"cannot connect to PostgreSQL at {self.uri}: {exc}") from exc
        return pool, state

    def _migrate(self, conn: _Conn) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            version = self._schema_version(conn)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.uri}: schema version {version} is newer than this program's"
                    f" ({SCHEMA_VERSION}); upgrade trio_periodic"
                )
            for migrate in MIGRATIONS[version:]:
                migrate(conn)
            if version < SCHEMA_VERSION:
                conn.execute(
                    "INSERT INTO periodic_meta (key, value) VALUES ('schema_version', %s)"
                    " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                    (str(SCHEMA_VERSION),),
                )

    def _schema_version(self, conn: _Conn) -> int:
        rows = conn.execute(
            "SELECT t FROM unnest(%s::text[]) AS t WHERE to_regclass(t) IS NOT NULL",
            (list(_TABLES),),
        ).fetchall()
        present = [row[0] for row in rows]
        if "periodic_meta" not in present:
            if present:
                raise StoreError(
                    f"{self.uri}: tables {', '.join(present)} exist but periodic_meta does"
                    " not; refusing to modify them"
                )
            return 0
        row = conn.execute(
            "SELECT value FROM periodic_meta WHERE key = 'schema_version'"
        ).fetchone()
        if row is None or not str(row[0]).isdigit():
            raise StoreError(f"{self.uri}: periodic_meta has no valid schema_version")
        return int(row[0])

    async def _apply(self, batches: list[Sequence[Change]]) -> list[BaseException | None]:
        return await trio.to_thread.run_sync(
            split_outcomes,
            batches,
            self._transaction_retrying,
            _worth_splitting,
            limiter=self._limiter,
        )

    def _transaction_retrying(self, changes: Iterable[Change]) -> None:
        changes = list(changes)  # may be replayed
        delay = self._retry_delay
        for attempt in range(self._retries + 1):
            try:
                self._transaction(changes)
                return
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if self._pool is None or attempt == self._retries:
                    raise _ConnectionTrouble(
                        f"{self.uri}: commit failed after {attempt + 1} attempts: {exc}"
                    ) from exc
            time.sleep(delay)  # on the worker thread: the next commit waits for us anyway
            delay *= 2

    def _transaction(self, changes: list[Change]) -> None:
        pool = self._pool
        if pool is None:
            raise StoreError(f"{self.uri}: store is closed")
        try:
            with pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                for kind, rows in change_runs(changes):
                    for sql in _SQL[kind]:
                        cur.executemany(sql, rows)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except psycopg.Error as exc:
            raise StoreError(f"{self.uri}: commit failed: {exc}") from exc
        self.commits += 1


def _worth_splitting(exc: Exception) -> bool:
    # A batch-specific error (bad value) may spare the other batches; an
    # unreachable database will not.
    return not isinstance(exc, _ConnectionTrouble)


def _load(conn: _Conn) -> StoredState:
    with conn.cursor(binary=True) as cur:
        cur.execute(_LOAD_JOBS)
        with gc_paused():
            jobs = list(starmap(Job, cur.fetchall()))
        cur.execute("SELECT func FROM periodic_funcs")
        funcs = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT key, value FROM periodic_configs")
        config = {key: value for key, value in cur.fetchall()}
    return StoredState(jobs=jobs, funcs=funcs, config=config)
