"""The PostgreSQL store; several servers on one database form one job server.

Theory of operation
-------------------
psycopg 3 (its async API needs asyncio, so the hot statements are driven
on the trio thread by ``pg_trio.py``; the rest runs its sync API on worker
threads).  Two *lanes* each keep one connection of a small
``psycopg_pool.ConnectionPool`` and use it one caller at a time: commits,
and claims plus schedule firings (so claims never wait behind commits).
The pool only hands out and re-creates connections.  Commits go through the
same ``GroupCommitter`` as the SQLite store: concurrent ``commit`` calls are
merged into one transaction, applied in call order, and each call returns
after the COMMIT holding its changes returned (``synchronous_commit`` as the
server has it; PostgreSQL's default fsyncs the WAL).

A transaction of puts, deletes and lease extensions of distinct jobs is one
statement in autocommit mode, run on the trio thread; anything else is a
BEGIN ... COMMIT block in pipeline mode (one round trip) on a worker thread.
Either way the hot kinds go as one statement per run over arrays
(``unnest``); the SQL lives in ``pg_sql.py``.  A claim is one statement too.

A lost connection is retried a few times with exponential backoff on a
fresh connection from the pool.  When the pool has none to give within
``connect_timeout`` the database is down: the call fails at once instead of
waiting that long again for each retry, so that callers hear within about
``connect_timeout`` (10 s by default) and can answer their clients.
Replaying a transaction is safe
even if the lost COMMIT in fact went through: every change sets a key to a
value that does not depend on what was there, so applying the same sequence
twice leaves the same rows.  When the retries run out every caller in that
transaction gets ``StoreError``.

Cluster mode (``shared = True``)
--------------------------------
Every server keeps the whole job set in RAM and mirrors the others:

* A job is handed out only after ``claim`` wrote ``claimed_by = server_id``
  and ``lease_until`` (epoch seconds) on its row.  ``claim``'s statement
  first locks the rows with ``SELECT … ORDER BY func, name FOR UPDATE``, so
  two servers claiming overlapping sets lock in the same order (no deadlock)
  and the second one sees the first one's claim: each row is claimed by
  exactly one.
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
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from itertools import starmap
from typing import Final, TypeVar

import psycopg
import psycopg_pool
import trio

from trio_periodic.protocol.job import Job
from trio_periodic.store import pg_retry, pg_trio
from trio_periodic.store.base import (
    Change,
    PutJob,
    RemoteChange,
    ScheduleDecision,
    ScheduleRow,
    StoredState,
    StoreError,
)
from trio_periodic.store.group import (
    SCHEDULE_COLUMNS,
    GroupCommitter,
    gc_paused,
    schedule_row,
    split_outcomes,
)
from trio_periodic.store.pg_known import KnownJobs
from trio_periodic.store.pg_notify import (
    CHANNEL,
    Handle,
    Listener,
    OwnLines,
    change_lines,
    claim_lines,
    payloads,
    schedule_lines,
)
from trio_periodic.store.pg_sql import (
    CLAIM,
    JOB_EXISTS,
    LOAD_JOBS,
    LOAD_LEASES,
    LOCK_SCHEDULE,
    NOTIFY_ALL,
    PUT_SCHEDULED_JOB,
    UPDATE_SCHEDULE,
    Conn,
    claim_outcome,
    claim_params,
    one_statement,
    run_block,
    run_single,
    without_moot_extensions,
)
from trio_periodic.store.uri import is_keyword_form, redact_uri

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class _ConnectionTrouble(StoreError):
    """The database could not be reached for long enough: do not retry per batch."""


_Pool = psycopg_pool.ConnectionPool[Conn]
#: Connections kept out of the pool: commits, and claims plus schedule firings.
_LANES: Final = 2


class _Lane:
    """A connection kept out of the pool for one kind of work, used by one
    caller at a time (``PostgresStore._on_lane``)."""

    def __init__(self) -> None:
        self.lock = trio.Lock()
        self.conn: Conn | None = None


def _migrate_to_1(conn: Conn) -> None:
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


def _migrate_to_3(conn: Conn) -> None:
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
MIGRATIONS: Final[list[Callable[[Conn], None]]] = [
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

#: Seconds between attempts to get the LISTEN connection back (doubling up to this).
_MAX_LISTEN_BACKOFF: Final = 5.0


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
        self._clock = clock
        #: Number of transactions committed (group commit makes it << calls).
        self.commits = 0
        #: Jobs put with a claim (``PutJob.lease``) that the write did not
        #: claim: another server holds them.  The caller of ``commit`` takes
        #: its own out once the call returned.
        self.put_claims_refused: set[Handle] = set()
        self._pool: _Pool | None = None
        self._closed = False
        # Claims do not wait behind commits: each lane has a connection of its own.
        self._commits = _Lane()
        self._claims = _Lane()
        self._committer = GroupCommitter(self._apply)
        #: The jobs the scheduler may hold, for the resync (trio thread only).
        self._known = KnownJobs()
        #: Our job lines not heard back yet (see pg_notify; trio thread only).
        self._own = OwnLines(self.server_id)
        #: The listener ``watch`` is reading with (for ``reread``).
        self._watching: Listener | None = None
        #: Listening since ``open``, until the first ``watch`` takes it over.
        self._listener: Listener | None = None
        self._listeners: set[Listener] = set()  # every live one, for aclose

    async def open(self) -> StoredState:
        if self._pool is not None or self._closed:
            raise StoreError(f"{self.uri}: store already opened")
        pool, listener, state = await trio.to_thread.run_sync(self._open_sync)
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
        wanted = {(func, name): until for func, name, until in claims}

        async def attempt(conn: Conn) -> dict[Handle, float | None]:
            now = self._clock()
            lines = claim_lines(self.server_id, wanted)
            params = claim_params(
                {h: until - now for h, until in wanted.items()}, self.server_id, payloads(lines)
            )
            with self._sending(lines) as sent:
                rows = await pg_trio.fetch(conn, CLAIM, params)
                sent(bool(rows[0][0]))  # notifications go out only if a job was claimed
            won, held = claim_outcome(rows[0])
            return {h: (None if h not in held else now + held[h]) for h in wanted if h not in won}

        try:
            return await self._on_lane(self._claims, "claim", attempt)
        except psycopg.Error as exc:
            raise StoreError(f"{self.uri}: claim failed: {exc}") from exc

    async def fire_schedule(
        self, func: bytes, name: bytes, decide: ScheduleDecision
    ) -> tuple[ScheduleRow, Job | None] | None:
        """Decide a schedule's event with its row locked (see the module
        docstring); the new row and the job submitted, or None (no row)."""
        if self._pool is None or self._closed:
            raise StoreError(f"{self.uri}: store is not open")
        # The job's line goes out only if the firing puts a job.
        with self._sending(claim_lines(self.server_id, [(func, name)])) as sent:
            out = await self._on_lane(
                self._claims, "schedule",
                lambda conn: trio.to_thread.run_sync(self._fire_sync, conn, func, name, decide),
            )  # fmt: skip
            sent(out is not None and out[1] is not None)
        if out is not None and out[1] is not None:
            self._known.submitted(self._known.submitting([PutJob(out[1])]))
        return out

    def _fire_sync(
        self, conn: Conn, func: bytes, name: bytes, decide: ScheduleDecision
    ) -> tuple[ScheduleRow, Job | None] | None:
        me = self.server_id
        try:
            with conn.transaction(), conn.cursor(binary=True) as cur:
                # The lock orders the servers; the job is looked up in a later
                # statement, so it sees what the previous holder committed.
                cur.execute(LOCK_SCHEDULE, (func, name))
                found = cur.fetchone()
                if found is None:
                    return None
                row = schedule_row(found)
                cur.execute(JOB_EXISTS, (func, name))
                exists = cur.fetchone() is not None
                new, job = decide(row, exists)
                if new == row:
                    return new, None
                cur.execute(
                    UPDATE_SCHEDULE,
                    (new.last_tick, new.last_fired, new.fired, new.skipped, new.queued, func, name),
                )
                lines = schedule_lines(me, [(func, name)])
                if job is not None:
                    cur.execute(
                        PUT_SCHEDULED_JOB,
                        (job.func, job.name, job.sched_at, job.count, job.timeout, job.workload),
                    )
                    lines += claim_lines(me, [(func, name)])
                cur.execute(NOTIFY_ALL, (CHANNEL, payloads(lines)))
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
            self._watching = listener
            await self._watch_loop(listener, partial(self._report, on_changes), resync=fresh)
        finally:
            if self._watching is listener:
                self._watching = None
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
                listener.interrupt()
                await trio.to_thread.run_sync(listener.stop)
            self._listeners.clear()
            self._listener = None
            for lane in (self._commits, self._claims):
                _close_lane(lane)
            pool, self._pool = self._pool, None
            if pool is not None:
                await trio.to_thread.run_sync(pool.close)

    def reread(self, handles: Sequence[Handle]) -> None:
        """Have ``watch`` read these jobs' rows again at its next turn (trio thread)."""
        if self._watching is not None:
            self._watching.reread(handles)

    @contextmanager
    def _sending(self, lines: Sequence[str]) -> Iterator[Callable[[bool], None]]:
        """Count our job lines among ``lines`` as on their way to our listener
        for the ``with`` block, which sends them.  They are uncounted when
        PostgreSQL refused the transaction, or when the block calls the
        function it gets with False (nothing was sent).  A broken connection
        leaves them counted: the transaction may have committed."""
        keys = self._own.sending(lines)

        def sent(yes: bool) -> None:
            if not yes:
                self._own.unsent(keys)

        try:
            yield sent
        except psycopg.Error as exc:
            if not isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
                self._own.unsent(keys)
            raise

    # -- watching (trio side) -----------------------------------------------------

    def _report(
        self, on_changes: Callable[[list[RemoteChange]], None], changes: list[RemoteChange]
    ) -> None:
        self._known.reported(changes)
        on_changes(changes)

    def _new_listener(self) -> Listener:
        listener = self._make_listener()
        self._listeners.add(listener)
        return listener

    def _make_listener(self) -> Listener:
        return Listener(
            self._conninfo, self._connect_seconds, self.server_id, self._clock, self._own
        )

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
                changes = await listener.next_changes()
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
        listener = self._make_listener()
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
            # one_statement); everything else opens a block with transaction().
            kwargs={"connect_timeout": self._connect_seconds, "autocommit": True},
            # One connection per lane; the pool only replaces broken ones.
            min_size=_LANES,
            max_size=_LANES,
            open=False,
            # No check on checkout: a broken connection fails its statement,
            # which is retried on a fresh one (_on_lane).
            timeout=self._connect_timeout,
            name="trio-periodic",
        )
        try:
            pool.open(wait=True, timeout=self._connect_timeout)
        except psycopg.Error as exc:
            pool.close()
            raise StoreError(f"cannot connect to PostgreSQL at {self.uri}: {exc}") from exc
        return pool

    def _migrate(self, conn: Conn) -> None:
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

    def _schema_version(self, conn: Conn) -> int:
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
        return await split_outcomes(batches, self._transaction, _worth_splitting)

    async def _on_lane(self, lane: _Lane, what: str, fn: Callable[[Conn], Awaitable[_T]]) -> _T:
        """``await fn(conn)`` on ``lane``'s connection, one caller at a time;
        again on a fresh connection (with backoff) when the connection broke
        or PostgreSQL rolled the transaction back (deadlock)."""
        async with lane.lock:
            delay = self._retry_delay
            for attempt in range(self._retries + 1):
                try:
                    return await fn(await self._lane_conn(lane))
                except psycopg_pool.PoolTimeout as exc:
                    # The pool has been trying to connect for connect_timeout:
                    # waiting that long again per retry would only hold every
                    # caller longer.
                    raise _ConnectionTrouble(
                        f"{self.uri}: {what} failed: no connection to the database"
                        f" within {self._connect_timeout:g} s"
                    ) from exc
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    # A broken connection is replaced on the next attempt; a
                    # deadlock victim's connection is fine and kept.
                    if self._pool is None or attempt == self._retries:
                        raise _ConnectionTrouble(
                            f"{self.uri}: {what} failed after {attempt + 1} attempts: {exc}"
                        ) from exc
                await trio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def _lane_conn(self, lane: _Lane) -> Conn:
        """The lane's connection: a broken one (a lost backend, or closed by a
        cancelled statement) goes back to the pool, which replaces it, and a
        fresh one is checked out (PoolTimeout after connect_timeout)."""
        pool = self._pool
        if pool is None or self._closed:
            raise StoreError(f"{self.uri}: store is closed")
        conn = lane.conn
        if conn is not None and (conn.closed or conn.broken):
            lane.conn = None
            await trio.to_thread.run_sync(pool.putconn, conn)
            conn = None
        if conn is None:
            conn = lane.conn = await trio.to_thread.run_sync(pool.getconn)
        return conn

    async def _transaction(self, changes: Iterable[Change]) -> None:
        changes = list(changes)  # may be replayed
        claimed: list[Handle] = []

        async def attempt(conn: Conn) -> set[Handle]:
            me, now = self.server_id, self._clock()
            batch = without_moot_extensions(changes)
            lines = change_lines(me, batch)
            notes = payloads(lines)
            claimed[:] = [
                (c.job.func, c.job.name) for c in batch if isinstance(c, PutJob) and c.lease
            ]
            single = one_statement(batch, notes, bool(claimed), me, now)
            with self._sending(lines):
                if single is not None:
                    return await run_single(conn, single, bool(claimed))
                return await trio.to_thread.run_sync(
                    run_block, conn, batch, notes, claimed, me, now
                )

        try:
            won = await self._on_lane(self._commits, "commit", attempt)
        except psycopg.Error as exc:
            raise StoreError(f"{self.uri}: commit failed: {exc}") from exc
        self.commits += 1
        if claimed:
            self.put_claims_refused.update(h for h in claimed if h not in won)


def _close_lane(lane: _Lane) -> None:
    conn, lane.conn = lane.conn, None
    if conn is None or conn.closed:
        return
    # A statement of a cancelled caller may still wait on the socket.
    trio.lowlevel.notify_closing(conn.pgconn.socket)
    conn.close()


async def _in_thread(listener: Listener, fn: Callable[[], _T]) -> _T:
    # Abandoned on cancel: when its call returns, the thread sees that
    # ``listener.stop`` came meanwhile and closes the connection itself.
    return await trio.to_thread.run_sync(listener.run, fn, abandon_on_cancel=True)


def _worth_splitting(exc: Exception) -> bool:
    # A batch-specific error (bad value) may spare the other batches; an
    # unreachable database will not.
    return not isinstance(exc, _ConnectionTrouble)


def _load(conn: Conn, now: float) -> StoredState:
    with conn.transaction(), conn.cursor(binary=True) as cur:
        # One snapshot for jobs and leases; nothing is written.
        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute(LOAD_JOBS)
        with gc_paused():
            jobs = list(starmap(Job, cur.fetchall()))
        cur.execute(LOAD_LEASES)
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
