"""The PostgreSQL store; several servers on one database form one job server.

Theory of operation
-------------------
psycopg 3's *sync* API on worker threads (its async API needs asyncio) with a
small ``psycopg_pool.ConnectionPool``.  Commits go through the same
``GroupCommitter`` as the SQLite store: concurrent ``commit`` calls are merged
into one transaction, applied in call order, and each call returns after the
COMMIT holding its changes returned (``synchronous_commit`` as the server
has it; PostgreSQL's default fsyncs the WAL).

A transaction is sent in pipeline mode (one round trip), and puts, deletes
and lease extensions go as one statement per run over arrays (``unnest``).

A lost connection while committing is retried a few times with exponential
backoff on a fresh connection from the pool.  When the pool has none to
give within ``connect_timeout`` the database is down: the call fails at
once instead of waiting that long again for each retry, so that callers
hear within about ``connect_timeout`` (10 s by default) and can answer
their clients.  Replaying a transaction is safe
even if the lost COMMIT in fact went through: every change sets a key to a
value that does not depend on what was there, so applying the same sequence
twice leaves the same rows.  When the retries run out every caller in that
transaction gets ``StoreError``.

Cluster mode (``shared = True``)
--------------------------------
Every server keeps the whole job set in RAM and mirrors the others:

* A job is handed out only after ``claim`` wrote ``claimed_by = server_id``
  and ``lease_until`` (epoch seconds) on its row.  ``claim`` first locks the
  rows with ``SELECT … ORDER BY func, name FOR UPDATE``, so two servers
  claiming overlapping sets lock in the same order (no deadlock) and the
  second one sees the first one's claim: each row is claimed by exactly one.
  A lease that ran out (its server died) can be claimed by anyone.
* A ``PutJob`` with a ``lease`` (a job handed out as it is submitted) writes
  our claim with the row, in the same transaction; a check in that
  transaction reports the puts the guard below refused
  (``put_claims_refused``).  ``claim`` is also used to claim jobs ahead of
  the slots that will take them (see the scheduler service).
* ``PutJob`` (a submit, or this server handing a job back) clears the claim,
  but never overwrites a live claim of *another* server; ``ExtendLease``
  moves only our own claim's ``lease_until``; ``DeleteJob`` always deletes.
* Each transaction that changes rows also sends ``pg_notify`` (see
  ``pg_notify.py``); ``watch`` listens on a dedicated connection, reads the
  rows named by other servers' notifications and hands them to the scheduler
  as ``RemoteChange``s.  ``open`` starts listening *before* it reads the
  tables, so nothing committed between the load and ``watch`` is missed.
* Leases are kept and compared on the *database's* clock
  (``clock_timestamp()``), so a server whose clock is wrong can neither
  steal a live lease nor keep one alive for longer than it asked.  The
  interface still speaks this server's epoch seconds (``clock``): a
  ``lease_until`` handed in becomes a duration (``until - clock()``) added
  to the database's now, and one handed back is the database's time left
  added to ``clock()``.  Only the durations cross between clocks, so a
  skew between the two does not matter.

After the LISTEN connection was lost, ``watch`` reconnects with backoff and
reads every row again (as RemoteJobs, a page at a time) plus every config.
Jobs *deleted* by other servers while it was disconnected have no row left
to read: the store keeps the set of jobs the scheduler may hold
(``KnownJobs``, see ``pg_known.py``) and reports those missing from the
table as RemoteDeletes once the last page is read.  Functions dropped
meanwhile lose their jobs that way; the empty function itself stays listed
until restart (no job of it can be lost by that).

Schedules (``periodic_schedules``) are mirrored like jobs (notification
lines ``s``).  A schedule's tick, or the end of a run with ticks queued, is
decided by ``fire_schedule`` in a transaction of its own that locks the
schedule's row, looks whether the job has a row and writes the outcome (the
row and the job) with the lock held: ``last_tick`` only moves forward, so of
the servers handling one tick exactly one fires it.

Schema version 3 (tables carry a fixed ``periodic_`` prefix; version 2 added
the retry tables of ``pg_retry.py``, version 3 ``periodic_schedules``)::

    periodic_meta(key TEXT PRIMARY KEY, value TEXT)   -- ('schema_version', '1')
    periodic_jobs(func BYTEA, name BYTEA, sched_at BIGINT, count BIGINT,
                  timeout BIGINT, workload BYTEA,
                  claimed_by TEXT NULL, lease_until DOUBLE PRECISION NULL,
                  PRIMARY KEY (func, name))
    periodic_funcs(func BYTEA PRIMARY KEY)
    periodic_configs(key TEXT PRIMARY KEY, value BIGINT)
    periodic_schedules(func BYTEA, name BYTEA, cron TEXT, tz TEXT, workload BYTEA,
                       timeout BIGINT, overlap TEXT, catch_up TEXT,
                       last_tick BIGINT, last_fired BIGINT, fired BIGINT,
                       skipped BIGINT, queued BIGINT, PRIMARY KEY (func, name))

``claimed_by`` is a server id (random per process, so a restarted server does
not inherit its former claims: they run out like those of a dead server).
Migrations run in one transaction under an advisory lock so that several
servers starting at once do not race.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import groupby, starmap
from typing import Any, Final, TypeVar

import psycopg
import psycopg_pool
import trio

from trio_periodic.protocol.job import Job
from trio_periodic.store import pg_retry
from trio_periodic.store.base import (
    Change,
    DeleteFunc,
    DeleteJob,
    DeleteSchedule,
    ExtendLease,
    PutFunc,
    PutJob,
    PutSchedule,
    RemoteChange,
    ScheduleDecision,
    ScheduleRow,
    SetConfig,
    StoredState,
    StoreError,
)
from trio_periodic.store.group import (
    SCHEDULE_COLUMNS,
    GroupCommitter,
    change_row,
    gc_paused,
    schedule_row,
    split_outcomes,
)
from trio_periodic.store.pg_known import KnownJobs
from trio_periodic.store.pg_notify import (
    CHANNEL,
    DB_NOW,
    Handle,
    Listener,
    change_lines,
    claim_lines,
    payloads,
    schedule_lines,
)
from trio_periodic.store.uri import is_keyword_form, redact_uri

log = logging.getLogger(__name__)
_T = TypeVar("_T")


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
        " lease_until DOUBLE PRECISION NULL,"  # seconds since the epoch, database clock
        " PRIMARY KEY (func, name))"
    )
    conn.execute("CREATE TABLE periodic_funcs (func BYTEA PRIMARY KEY)")
    conn.execute("CREATE TABLE periodic_configs (key TEXT PRIMARY KEY, value BIGINT NOT NULL)")


def _migrate_to_3(conn: _Conn) -> None:
    """Schedules kept by the server; times in epoch seconds."""
    conn.execute(
        "CREATE TABLE periodic_schedules ("
        " func BYTEA NOT NULL, name BYTEA NOT NULL, cron TEXT NOT NULL, tz TEXT NOT NULL,"
        " workload BYTEA NOT NULL DEFAULT '\\x', timeout BIGINT NOT NULL DEFAULT 0,"
        " overlap TEXT NOT NULL DEFAULT 'skip', catch_up TEXT NOT NULL DEFAULT 'none',"
        " last_tick BIGINT NOT NULL DEFAULT 0, last_fired BIGINT NOT NULL DEFAULT 0,"
        " fired BIGINT NOT NULL DEFAULT 0, skipped BIGINT NOT NULL DEFAULT 0,"
        " queued BIGINT NOT NULL DEFAULT 0,"
        " PRIMARY KEY (func, name))"
    )


#: MIGRATIONS[i] upgrades a database at schema version i to version i + 1.
MIGRATIONS: Final[list[Callable[[_Conn], None]]] = [
    _migrate_to_1,
    pg_retry.migrate_to_2,
    _migrate_to_3,
]
SCHEMA_VERSION: Final = len(MIGRATIONS)
_TABLES: Final = (
    "periodic_meta", "periodic_jobs", "periodic_funcs", "periodic_configs", "periodic_schedules"
)  # fmt: skip
#: pg_advisory_xact_lock key serialising schema migrations ("periodic" in ASCII).
_MIGRATION_LOCK: Final = 0x706572696F646963

# Statements for the rare kinds, run with executemany (one row per change).
_SQL: Final[dict[type, tuple[str, ...]]] = {
    PutFunc: ("INSERT INTO periodic_funcs (func) VALUES (%s) ON CONFLICT DO NOTHING",),
    DeleteFunc: (
        "DELETE FROM periodic_jobs WHERE func = %s",
        "DELETE FROM periodic_funcs WHERE func = %s",
        *pg_retry.DELETE_FUNC,
    ),
    SetConfig: (
        "INSERT INTO periodic_configs (key, value) VALUES (%s, %s)"
        " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
    ),
    **pg_retry.SQL,
    PutSchedule: (
        f"INSERT INTO periodic_schedules ({SCHEDULE_COLUMNS})"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (func, name) DO UPDATE SET"
        " cron = EXCLUDED.cron, tz = EXCLUDED.tz, workload = EXCLUDED.workload,"
        " timeout = EXCLUDED.timeout, overlap = EXCLUDED.overlap, catch_up = EXCLUDED.catch_up,"
        " last_tick = EXCLUDED.last_tick, last_fired = EXCLUDED.last_fired,"
        " fired = EXCLUDED.fired, skipped = EXCLUDED.skipped, queued = EXCLUDED.queued",
    ),
    DeleteSchedule: ("DELETE FROM periodic_schedules WHERE func = %s AND name = %s",),
}

_LOCK_SCHEDULE: Final = (
    f"SELECT {SCHEDULE_COLUMNS} FROM periodic_schedules WHERE func = %s AND name = %s FOR UPDATE"
)
_JOB_EXISTS: Final = "SELECT 1 FROM periodic_jobs WHERE func = %s AND name = %s"
_UPDATE_SCHEDULE: Final = (
    "UPDATE periodic_schedules SET last_tick = %s, last_fired = %s, fired = %s,"
    " skipped = %s, queued = %s WHERE func = %s AND name = %s"
)
# A schedule's job: a plain put (no claim); the row was absent a moment ago.
_PUT_SCHEDULED_JOB: Final = (
    "INSERT INTO periodic_jobs (func, name, sched_at, count, timeout, workload)"
    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (func, name) DO UPDATE SET"
    " sched_at = EXCLUDED.sched_at, count = EXCLUDED.count, timeout = EXCLUDED.timeout,"
    " workload = EXCLUDED.workload, claimed_by = NULL, lease_until = NULL"
)

# The hot kinds as one statement per run of changes, the rows as arrays:
# one Bind/Execute instead of one per row (CPU on both sides).
_PUT_JOBS: Final = (
    "INSERT INTO periodic_jobs AS j"
    " (func, name, sched_at, count, timeout, workload, claimed_by, lease_until)"
    f" SELECT v.func, v.name, v.sched_at, v.count, v.timeout, v.workload, v.by, {DB_NOW} + v.secs"
    " FROM unnest(%s::bytea[], %s::bytea[], %s::int8[], %s::int8[], %s::int8[], %s::bytea[],"
    " %s::text[], %s::float8[]) AS v(func, name, sched_at, count, timeout, workload, by, secs)"
    " ON CONFLICT (func, name) DO UPDATE SET"
    " sched_at = EXCLUDED.sched_at, count = EXCLUDED.count,"
    " timeout = EXCLUDED.timeout, workload = EXCLUDED.workload,"
    " claimed_by = EXCLUDED.claimed_by, lease_until = EXCLUDED.lease_until"
    # never overwrite a live claim of another server
    " WHERE j.claimed_by IS NULL OR j.claimed_by = %s"
    f" OR j.lease_until IS NULL OR j.lease_until < {DB_NOW}"
)
_DELETE_JOBS: Final = (
    "DELETE FROM periodic_jobs j USING unnest(%s::bytea[], %s::bytea[]) AS v(func, name)"
    " WHERE j.func = v.func AND j.name = v.name"
)
_EXTEND_LEASES: Final = (
    f"UPDATE periodic_jobs j SET lease_until = {DB_NOW} + v.secs"
    " FROM unnest(%s::float8[], %s::bytea[], %s::bytea[]) AS v(secs, func, name)"
    " WHERE j.func = v.func AND j.name = v.name AND j.claimed_by = %s"
)
_NOTIFY_ALL: Final = "SELECT pg_notify(%s, n) FROM unnest(%s::text[]) AS n"
_LOAD_JOBS: Final = "SELECT func, name, workload, sched_at, count, timeout FROM periodic_jobs"
# Leases come out as seconds left on the database's clock.
_LOAD_LEASES: Final = (
    f"SELECT func, name, lease_until - {DB_NOW} FROM periodic_jobs"
    f" WHERE claimed_by IS NOT NULL AND lease_until > {DB_NOW}"
)
# Lock the rows in key order: two servers claiming overlapping sets then wait
# for each other instead of deadlocking, and the second sees the first's claim.
_LOCK_FOR_CLAIM: Final = (
    f"SELECT j.func, j.name, j.claimed_by, j.lease_until - {DB_NOW} FROM periodic_jobs j"
    " JOIN unnest(%s::bytea[], %s::bytea[]) AS v(func, name)"
    " ON j.func = v.func AND j.name = v.name"
    " ORDER BY j.func, j.name FOR UPDATE OF j"
)
# v.secs: seconds the lease lasts from now.
_CLAIM: Final = (
    f"UPDATE periodic_jobs j SET claimed_by = %s, lease_until = {DB_NOW} + v.secs"
    " FROM unnest(%s::bytea[], %s::bytea[], %s::float8[]) AS v(func, name, secs)"
    " WHERE j.func = v.func AND j.name = v.name"
)
#: Seconds between attempts to get the LISTEN connection back (doubling up to this).
_MAX_LISTEN_BACKOFF: Final = 5.0


# Of the jobs put with a claim, those the write left claimed by us.
_PUT_CLAIMED: Final = (
    "SELECT j.func, j.name FROM periodic_jobs j"
    " JOIN unnest(%s::bytea[], %s::bytea[]) AS v(func, name)"
    " ON j.func = v.func AND j.name = v.name WHERE j.claimed_by = %s"
)


def _one_statement(
    changes: list[Change], notes: list[str], claimed: bool, me: str, now: float
) -> tuple[str, tuple[Any, ...]] | None:
    """The whole transaction as one statement, when it can be one: only puts,
    deletes and lease extensions, and no job touched by two of those kinds
    (then the order between kinds does not matter, and within a kind the last
    change of a job wins, as one after the other would leave it).  Each kind
    becomes a data-modifying CTE (always run to completion); the last SELECT
    sends the notifications and returns, if puts claimed jobs, the ones this
    write left claimed by us.  One statement in autocommit mode is its own
    transaction: one round trip and a fraction of the client CPU of a
    pipelined BEGIN … COMMIT.  None: use a transaction block."""
    runs: dict[type, list[Change]] = {}
    owner: dict[Handle, type] = {}
    for c in changes:
        kind = type(c)
        if kind not in _BATCHED:
            return None
        h = (c.job.func, c.job.name) if isinstance(c, PutJob) else (c.func, c.name)  # type: ignore[union-attr]
        if owner.setdefault(h, kind) is not kind:
            return None
        runs.setdefault(kind, []).append(c)
    ctes: list[str] = []
    params: list[Any] = []
    for kind, cte, returning in (
        (PutJob, "p", " RETURNING j.func, j.name, j.claimed_by"),
        (DeleteJob, "d", " RETURNING 1"),
        (ExtendLease, "e", " RETURNING 1"),
    ):
        run = runs.get(kind)
        if run:
            sql, args = _batched(kind, run, me, now)
            ctes.append(f"{cte} AS ({sql}{returning})")
            params += args
    outputs = []
    if notes:
        ctes.append("n AS (SELECT pg_notify(%s, m) IS NULL AS sent FROM unnest(%s::text[]) AS m)")
        params += [CHANNEL, notes]
        outputs.append("(SELECT count(sent) FROM n)")
    if claimed and PutJob in runs:
        outputs += [
            "(SELECT array_agg(func) FROM p WHERE claimed_by = %s)",
            "(SELECT array_agg(name) FROM p WHERE claimed_by = %s)",
        ]
        params += [me, me]
    return f"WITH {', '.join(ctes)} SELECT {', '.join(outputs) or '0'}", tuple(params)


def _batched(kind: type, run: list[Change], me: str, now: float) -> tuple[str, tuple[Any, ...]]:
    """One statement and its array parameters for a run of PutJob, DeleteJob or
    ExtendLease changes.  A key that occurs twice in a run keeps its last
    change (one statement may not write a row twice)."""
    last: dict[Handle, Change] = {}
    for c in run:
        h = (c.job.func, c.job.name) if isinstance(c, PutJob) else (c.func, c.name)  # type: ignore[union-attr]
        last.pop(h, None)
        last[h] = c
    handles = list(last)
    funcs, names = [h[0] for h in handles], [h[1] for h in handles]
    if kind is PutJob:
        puts = [c for c in last.values() if isinstance(c, PutJob)]
        jobs = [c.job for c in puts]
        return _PUT_JOBS, (
            funcs, names,
            [j.sched_at for j in jobs], [j.count for j in jobs], [j.timeout for j in jobs],
            [j.workload for j in jobs],
            [None if c.lease is None else me for c in puts],
            [c.lease for c in puts],
            me,
        )  # fmt: skip
    if kind is DeleteJob:
        return _DELETE_JOBS, (funcs, names)
    leases = [c for c in last.values() if isinstance(c, ExtendLease)]
    return _EXTEND_LEASES, ([c.until - now for c in leases], funcs, names, me)


_BATCHED: Final = (PutJob, DeleteJob, ExtendLease)


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
    """Jobs, funcs and configs in PostgreSQL tables ``periodic_*``, shareable by servers."""

    durable = True
    shared = True

    def __init__(
        self,
        uri: str,
        *,
        connect_timeout: float = 10.0,  # seconds, for open and for each reconnect
        retries: int = 3,
        retry_delay: float = 0.2,  # seconds before the first retry; doubles
        pool_size: int = 2,
        clock: Callable[[], float] = time.time,  # epoch seconds, for leases
    ) -> None:
        self.uri = redact_uri(uri)
        #: This process's name in ``claimed_by`` and in notifications.
        self.server_id = secrets.token_hex(8)
        self._conninfo = to_conninfo(uri)
        self._connect_timeout = connect_timeout
        self._connect_seconds = max(1, round(connect_timeout))  # libpq wants whole seconds
        self._retries = retries
        self._retry_delay = retry_delay
        self._pool_size = max(1, pool_size)
        self._clock = clock
        #: Number of transactions committed (group commit makes it << calls).
        self.commits = 0
        #: Jobs put with a claim (``PutJob.lease``) that the write did not
        #: claim: another server holds them.  The caller of ``commit`` takes
        #: its own out once the call returned.
        self.put_claims_refused: set[Handle] = set()
        self._pool: _Pool | None = None
        self._closed = False
        self._limiter = trio.CapacityLimiter(1)
        # Claims do not wait behind commits: they use a pooled connection of their own.
        self._claim_limiter = trio.CapacityLimiter(1)
        self._committer = GroupCommitter(self._apply)
        #: The jobs the scheduler may hold, for the resync (trio thread only).
        self._known = KnownJobs()
        #: Listening since ``open``, until the first ``watch`` takes it over.
        self._listener: Listener | None = None
        self._listeners: set[Listener] = set()  # every live one, for aclose

    async def open(self) -> StoredState:
        if self._pool is not None or self._closed:
            raise StoreError(f"{self.uri}: store already opened")
        pool, listener, state = await trio.to_thread.run_sync(
            self._open_sync, limiter=self._limiter
        )
        self._pool = pool
        self._listener = listener
        self._listeners.add(listener)
        self._known.load(state.jobs)
        return state

    async def commit(self, changes: Sequence[Change]) -> None:
        if self._pool is None or self._closed:
            raise StoreError(f"{self.uri}: store is not open")
        if changes:
            puts = self._known.submitting(changes)
            try:
                await self._committer.submit(changes)
            finally:
                self._known.submitted(puts)

    async def claim(
        self, claims: Sequence[tuple[bytes, bytes, float]]
    ) -> dict[tuple[bytes, bytes], float | None]:
        """Claim each ``(func, name)`` for this server until its ``lease_until``
        (epoch seconds), all in one transaction.

        Returns the handles *not* claimed: each maps to the lease_until of the
        server that holds it, or to None when the job no longer exists.  A job
        already claimed by us is claimed again (its lease moves).  Whether a
        lease ran out is decided on the database's clock; the lease_until
        values in and out are on ``clock`` (see the module docstring).
        """
        if self._pool is None or self._closed:
            raise StoreError(f"{self.uri}: store is not open")
        if not claims:
            return {}
        return await trio.to_thread.run_sync(
            self._retrying, partial(self._claim_sync, claims), "claim",
            limiter=self._claim_limiter,
        )  # fmt: skip

    async def fire_schedule(
        self, func: bytes, name: bytes, decide: ScheduleDecision
    ) -> tuple[ScheduleRow, Job | None] | None:
        """Decide a schedule's event with its row locked (see the module
        docstring); the new row and the job submitted, or None (no row)."""
        if self._pool is None or self._closed:
            raise StoreError(f"{self.uri}: store is not open")
        out = await trio.to_thread.run_sync(
            self._retrying, partial(self._fire_sync, func, name, decide), "schedule",
            limiter=self._claim_limiter,
        )  # fmt: skip
        if out is not None and out[1] is not None:
            self._known.submitted(self._known.submitting([PutJob(out[1])]))
        return out

    def _fire_sync(
        self, func: bytes, name: bytes, decide: ScheduleDecision
    ) -> tuple[ScheduleRow, Job | None] | None:
        pool = self._pool
        if pool is None:
            raise StoreError(f"{self.uri}: store is closed")
        me = self.server_id
        try:
            with pool.connection() as conn, conn.transaction(), conn.cursor(binary=True) as cur:
                # The lock orders the servers; the job is looked up in a later
                # statement, so it sees what the previous holder committed.
                cur.execute(_LOCK_SCHEDULE, (func, name))
                found = cur.fetchone()
                if found is None:
                    return None
                row = schedule_row(found)
                cur.execute(_JOB_EXISTS, (func, name))
                exists = cur.fetchone() is not None
                new, job = decide(row, exists)
                if new == row:
                    return new, None
                cur.execute(
                    _UPDATE_SCHEDULE,
                    (new.last_tick, new.last_fired, new.fired, new.skipped, new.queued, func, name),
                )
                lines = schedule_lines(me, [(func, name)])
                if job is not None:
                    cur.execute(
                        _PUT_SCHEDULED_JOB,
                        (job.func, job.name, job.sched_at, job.count, job.timeout, job.workload),
                    )
                    lines += claim_lines(me, [(func, name)])
                cur.execute(_NOTIFY_ALL, (CHANNEL, payloads(lines)))
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except psycopg.Error as exc:
            raise StoreError(f"{self.uri}: firing a schedule failed: {exc}") from exc
        return new, job

    async def watch(
        self,
        on_changes: Callable[[list[RemoteChange]], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call ``on_changes`` (on the trio thread) with what other servers
        commit, until cancelled or the store is closed.

        Started once it listens.  The first call takes over the connection
        ``open`` started listening on; a later call (or a reconnect) first
        reports every row again, since it may have missed changes.
        """
        if self._pool is None or self._closed:
            raise StoreError(f"{self.uri}: store is not open")
        listener, self._listener = self._listener, None
        fresh = listener is None
        if listener is None:
            listener = self._new_listener()
        try:
            if fresh:
                try:
                    await _in_thread(listener, listener.connect)
                except psycopg.Error as exc:
                    raise StoreError(f"cannot LISTEN on PostgreSQL at {self.uri}: {exc}") from exc
            task_status.started()
            await self._watch_loop(listener, partial(self._report, on_changes), resync=fresh)
        finally:
            self._listeners.discard(listener)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(listener.stop)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._committer.drain()
            for listener in list(self._listeners):
                await trio.to_thread.run_sync(listener.stop)
            self._listeners.clear()
            self._listener = None
            pool, self._pool = self._pool, None
            if pool is not None:
                await trio.to_thread.run_sync(pool.close, limiter=self._limiter)

    # -- watching (trio side) -----------------------------------------------------

    def _report(
        self, on_changes: Callable[[list[RemoteChange]], None], changes: list[RemoteChange]
    ) -> None:
        self._known.reported(changes)
        on_changes(changes)

    def _new_listener(self) -> Listener:
        listener = Listener(self._conninfo, self._connect_seconds, self.server_id, self._clock)
        self._listeners.add(listener)
        return listener

    async def _watch_loop(
        self, listener: Listener, on_changes: Callable[[list[RemoteChange]], None], resync: bool
    ) -> None:
        connected = True
        delay = self._retry_delay
        while not self._closed:
            try:
                if not connected:
                    await _in_thread(listener, listener.connect)
                    connected = True
                    log.warning("%s: listening again; re-reading every job", self.uri)
                if resync:
                    await self._resync(listener, on_changes)
                    resync = False
                delay = self._retry_delay
                changes = await _in_thread(listener, listener.next_changes)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if self._closed:
                    return
                log.warning(
                    "%s: lost the LISTEN connection (%s); retrying in %.1f s",
                    self.uri, str(exc).strip(), delay,
                )  # fmt: skip
                await trio.sleep(delay)
                delay = min(delay * 2, _MAX_LISTEN_BACKOFF)
                connected, resync = False, True
                continue
            except psycopg.Error as exc:
                raise StoreError(f"{self.uri}: reading other servers' changes: {exc}") from exc
            if changes:
                on_changes(changes)

    async def _resync(
        self, listener: Listener, on_changes: Callable[[list[RemoteChange]], None]
    ) -> None:
        """Report every row and config again, then the known jobs no row has."""
        present: dict[bytes, set[bytes]] = {}  # func → names: every row the pages held
        after: Handle | None = None
        self._known.begin_resync()
        try:
            while True:
                changes, rows, after = await _in_thread(
                    listener, partial(listener.resync_page, after)
                )
                for func, name in rows:
                    bucket = present.get(func)
                    if bucket is None:
                        bucket = present[func] = set()
                    bucket.add(name)
                if changes:
                    on_changes(changes)
                if after is None:
                    break
        except BaseException:
            self._known.abort_resync()
            raise
        gone = self._known.end_resync(present)
        if gone:
            log.warning("%s: %d jobs were deleted elsewhere meanwhile", self.uri, len(gone))
            on_changes(list[RemoteChange](gone))

    # -- worker-thread side ----------------------------------------------------

    def _open_sync(self) -> tuple[_Pool, Listener, StoredState]:
        try:
            conn = psycopg.connect(self._conninfo, connect_timeout=self._connect_seconds)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to PostgreSQL at {self.uri}: {exc}") from exc
        listener = Listener(self._conninfo, self._connect_seconds, self.server_id, self._clock)
        try:
            with conn:
                self._migrate(conn)
                # LISTEN before the load: whatever commits after the load's
                # snapshot is then notified to us.
                listener.connect()
                state = _load(conn, self._clock())
            pool = self._open_pool()
        except BaseException as exc:
            listener.stop()
            if isinstance(exc, psycopg.Error):
                raise StoreError(f"{self.uri}: {exc}") from exc
            raise
        return pool, listener, state

    def _open_pool(self) -> _Pool:
        pool: _Pool = psycopg_pool.ConnectionPool(
            self._conninfo,
            # Autocommit: a single statement is its own transaction (see
            # _one_statement); everything else opens a block with transaction().
            kwargs={"connect_timeout": self._connect_seconds, "autocommit": True},
            min_size=1,
            max_size=self._pool_size,
            open=False,
            # No check on checkout: it costs a round trip per transaction; a
            # broken connection fails the transaction, which is retried on a
            # fresh one (_retrying).
            timeout=self._connect_timeout,
            name="trio-periodic",
        )
        try:
            pool.open(wait=True, timeout=self._connect_timeout)
        except psycopg.Error as exc:
            pool.close()
            raise StoreError(f"cannot connect to PostgreSQL at {self.uri}: {exc}") from exc
        return pool

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
        self._retrying(partial(self._transaction, changes), "commit")

    def _retrying(self, fn: Callable[[], _T], what: str) -> _T:
        """``fn()``, again on a fresh connection (with backoff) when the connection
        broke or PostgreSQL rolled the transaction back (deadlock)."""
        delay = self._retry_delay
        for attempt in range(self._retries + 1):
            try:
                return fn()
            except psycopg_pool.PoolTimeout as exc:
                # The pool has been trying to connect for connect_timeout: waiting
                # that long again per retry would only hold every caller longer.
                raise _ConnectionTrouble(
                    f"{self.uri}: {what} failed: no connection to the database"
                    f" within {self._connect_timeout:g} s"
                ) from exc
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                if self._pool is None or attempt == self._retries:
                    raise _ConnectionTrouble(
                        f"{self.uri}: {what} failed after {attempt + 1} attempts: {exc}"
                    ) from exc
            time.sleep(delay)  # on the worker thread: the next call waits for us anyway
            delay *= 2
        raise AssertionError("unreachable")

    def _transaction(self, changes: list[Change]) -> None:
        pool = self._pool
        if pool is None:
            raise StoreError(f"{self.uri}: store is closed")
        me, now = self.server_id, self._clock()
        changes = _without_moot_extensions(changes)
        notes = payloads(change_lines(me, changes))
        claimed = [(c.job.func, c.job.name) for c in changes if isinstance(c, PutJob) and c.lease]
        single = _one_statement(changes, notes, bool(claimed), me, now)
        try:
            with pool.connection() as conn:
                if single is not None:
                    won = _run_single(conn, single, bool(claimed))
                else:
                    won = _run_block(conn, changes, notes, claimed, me, now)
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except psycopg.Error as exc:
            raise StoreError(f"{self.uri}: commit failed: {exc}") from exc
        self.commits += 1
        if claimed:
            self.put_claims_refused.update(h for h in claimed if h not in won)

    def _claim_sync(
        self, claims: Sequence[tuple[bytes, bytes, float]]
    ) -> dict[Handle, float | None]:
        pool = self._pool
        if pool is None:
            raise StoreError(f"{self.uri}: store is closed")
        wanted = {(func, name): until for func, name, until in claims}
        me, now = self.server_id, self._clock()
        held: dict[Handle, float | None] = {}
        won: list[Handle] = []
        try:
            with pool.connection() as conn, conn.transaction(), conn.cursor(binary=True) as cur:
                cur.execute(_LOCK_FOR_CLAIM, ([h[0] for h in wanted], [h[1] for h in wanted]))
                for func, name, by, left in cur.fetchall():  # left: database seconds
                    if by is None or by == me or left is None or left < 0:
                        won.append((func, name))
                    else:
                        held[(func, name)] = now + left
                if won:
                    lasts = [wanted[h] - now for h in won]
                    cur.execute(_CLAIM, (me, [h[0] for h in won], [h[1] for h in won], lasts))
                    notes = payloads(claim_lines(me, won))
                    cur.execute(_NOTIFY_ALL, (CHANNEL, notes))
        except (psycopg.OperationalError, psycopg.InterfaceError):
            raise
        except psycopg.Error as exc:
            raise StoreError(f"{self.uri}: claim failed: {exc}") from exc
        if len(won) == len(wanted):
            return {}
        claimed = set(won)
        return {h: held.get(h) for h in wanted if h not in claimed}


def _run_single(conn: _Conn, statement: tuple[str, tuple[Any, ...]], claimed: bool) -> set[Handle]:
    """Run a transaction made one statement (``_one_statement``); the jobs its
    puts left claimed by us."""
    with conn.cursor(binary=True) as cur:
        row = cur.execute(*statement).fetchone()
    if not claimed or row is None or row[-1] is None:
        return set()
    return set(zip(row[-2], row[-1], strict=True))


def _run_block(
    conn: _Conn,
    changes: list[Change],
    notes: list[str],
    claimed: list[Handle],
    me: str,
    now: float,
) -> set[Handle]:
    """Run a transaction as a BEGIN … COMMIT block in pipeline mode: the
    statements, the check and COMMIT go out together, one round trip (plus the
    COMMIT's WAL flush); the check's rows are read once the COMMIT came back.
    Returns the jobs its puts left claimed by us."""
    with conn.pipeline(), conn.cursor() as cur:
        with conn.transaction():
            for kind, run in groupby(changes, type):
                if kind in _BATCHED:
                    cur.execute(*_batched(kind, list(run), me, now))
                    continue
                params = [change_row(c) for c in run]
                for sql in _SQL[kind]:
                    cur.executemany(sql, params)
            if notes:  # delivered on COMMIT, never on a rollback
                cur.execute(_NOTIFY_ALL, (CHANNEL, notes))
            if claimed:
                handles = ([h[0] for h in claimed], [h[1] for h in claimed], me)
                cur.execute(_PUT_CLAIMED, handles)
        if claimed:
            return set(cur.fetchall())
    return set()


def _without_moot_extensions(changes: list[Change]) -> list[Change]:
    """Drop each ExtendLease whose job a later change in the same transaction
    deletes (a worker's JOB_ASSIGNED and WORK_DONE usually arrive together):
    one row write less per job."""
    if not any(isinstance(c, DeleteJob) for c in changes):
        return changes
    deleted_later: set[Handle] = set()
    keep: list[Change] = []
    for c in reversed(changes):
        if isinstance(c, DeleteJob):
            deleted_later.add((c.func, c.name))
        elif isinstance(c, PutJob):
            deleted_later.discard((c.job.func, c.job.name))
        elif isinstance(c, ExtendLease) and (c.func, c.name) in deleted_later:
            continue
        keep.append(c)
    keep.reverse()
    return keep


async def _in_thread(listener: Listener, fn: Callable[[], _T]) -> _T:
    # Abandoned on cancel: the thread notices ``listener.stop`` within a poll
    # slice, closes the connection and exits on its own.
    return await trio.to_thread.run_sync(listener.run, fn, abandon_on_cancel=True)


def _worth_splitting(exc: Exception) -> bool:
    # A batch-specific error (bad value) may spare the other batches; an
    # unreachable database will not.
    return not isinstance(exc, _ConnectionTrouble)


def _load(conn: _Conn, now: float) -> StoredState:
    with conn.transaction(), conn.cursor(binary=True) as cur:
        # One snapshot for jobs and leases; nothing is written.
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute(_LOAD_JOBS)
        with gc_paused():
            jobs = list(starmap(Job, cur.fetchall()))
        cur.execute(_LOAD_LEASES)
        leases = {(func, name): now + left for func, name, left in cur.fetchall()}
        cur.execute("SELECT func FROM periodic_funcs")
        funcs = {row[0] for row in cur.fetchall()}
        cur.execute("SELECT key, value FROM periodic_configs")
        config = {key: value for key, value in cur.fetchall()}
        retry = pg_retry.read_all(cur)
        cur.execute(f"SELECT {SCHEDULE_COLUMNS} FROM periodic_schedules")
        schedules = [schedule_row(r) for r in cur.fetchall()]
    return StoredState(
        jobs=jobs, funcs=funcs, config=config, leases=leases,
        policies=retry.policies, attempts=retry.attempts, failed=retry.failed,
        schedules=schedules,
    )  # fmt: skip
