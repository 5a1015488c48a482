"""The SQLite store (the default durable store).

Theory of operation
-------------------
One ``sqlite3`` connection, in WAL mode with ``synchronous=FULL`` so that a
returned COMMIT has been fsynced to the WAL and survives a power cut.  Every
call on the connection runs on a worker thread through a ``CapacityLimiter``
of 1, so the connection is used by one thread at a time and the trio thread
never blocks on the disk.

Concurrent ``commit`` calls share transactions through the ``GroupCommitter``
(``store/group.py``, shared with the PostgreSQL store): batches land in call
order, each caller returns once the COMMIT holding its batch returned, and a
failing transaction is retried batch by batch so that one bad batch fails only
its own caller.  ``ExtendLease`` (cluster mode) means nothing to a store that
is not shared: it is accepted and ignored.

File layout (schema version 3; version 2 added the retry tables, version 3
``schedules``)::

    meta(key TEXT PRIMARY KEY, value)            -- ('schema_version', 1)
    jobs(func BLOB, name BLOB, sched_at INTEGER, count INTEGER,
         timeout INTEGER, workload BLOB, PRIMARY KEY (func, name)) WITHOUT ROWID
    funcs(func BLOB PRIMARY KEY) WITHOUT ROWID
    configs(key TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID
    -- version 2: retry policies, attempt counts, the failed set
    retry_policies(func BLOB PRIMARY KEY, max_attempts INTEGER, backoff TEXT,
                   base REAL, cap REAL, jitter INTEGER) WITHOUT ROWID
    job_attempts(func BLOB, name BLOB, attempts INTEGER,
                 PRIMARY KEY (func, name)) WITHOUT ROWID
    failed_jobs(func, name, workload, sched_at, count, timeout, attempts,
                failed_at REAL, how TEXT, peer TEXT, data BLOB,
                PRIMARY KEY (func, name)) WITHOUT ROWID
    -- version 3: schedules kept by the server
    schedules(func BLOB, name BLOB, cron TEXT, tz TEXT, workload BLOB,
              timeout INTEGER, overlap TEXT, catch_up TEXT, last_tick INTEGER,
              last_fired INTEGER, fired INTEGER, skipped INTEGER, queued INTEGER,
              PRIMARY KEY (func, name)) WITHOUT ROWID

Attempt counts live in a table of their own so that the hot statements on
``jobs`` (PutJob, DeleteJob) never touch them: the scheduler writes a
``SetAttempts`` of 0 wherever a count ends (see ``scheduler/retry.py``).

One server per file: ``open`` takes an exclusive ``flock`` on the sidecar
file ``<file>.lock`` (created if missing, never deleted: unlinking a lock
file lets two processes lock two different inodes) and writes its PID there
for the error message of the next one.  It does so once the file is known to
be ours (a file we refuse gets no lock file beside it) and before anything is
written.  The lock belongs to the open file description, so the kernel drops
it when the process dies, ``kill -9`` included; ``aclose`` drops it
explicitly.  It is not taken on the database file itself because SQLite's
own POSIX locks live there, and closing any descriptor of a file drops every
POSIX lock the process holds on it.

Job fields live in columns, not in an encoded blob, so a restart builds its
``Job`` objects straight from rows.  ``MIGRATIONS[i]`` upgrades a file from
version ``i`` to ``i + 1``; a file with a newer version, a file that is not
SQLite and an SQLite file that is not ours are refused and left untouched.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from itertools import starmap
from typing import Final

import trio

from trio_periodic.protocol.job import Job
from trio_periodic.store.base import (
    Change,
    DeleteFailed,
    DeleteFunc,
    DeleteJob,
    DeletePolicy,
    DeleteSchedule,
    ExtendLease,
    FailedJob,
    PutFailed,
    PutFunc,
    PutJob,
    PutPolicy,
    PutSchedule,
    RetryPolicy,
    SetAttempts,
    SetConfig,
    StoredState,
    StoreError,
)
from trio_periodic.store.group import (
    SCHEDULE_COLUMNS,
    GroupCommitter,
    change_runs,
    gc_paused,
    schedule_row,
    split_outcomes,
)

_SQLITE_MAGIC: Final = b"SQLite format 3\x00"


def _migrate_to_1(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY NOT NULL, value) WITHOUT ROWID")
    conn.execute(
        "CREATE TABLE jobs ("
        " func BLOB NOT NULL, name BLOB NOT NULL,"
        " sched_at INTEGER NOT NULL DEFAULT 0,"  # seconds since the epoch
        " count INTEGER NOT NULL DEFAULT 0,"
        " timeout INTEGER NOT NULL DEFAULT 0,"  # seconds
        " workload BLOB NOT NULL DEFAULT x'',"
        " PRIMARY KEY (func, name)) WITHOUT ROWID"
    )
    conn.execute("CREATE TABLE funcs (func BLOB PRIMARY KEY NOT NULL) WITHOUT ROWID")
    conn.execute(
        "CREATE TABLE configs (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL) WITHOUT ROWID"
    )


def _migrate_to_2(conn: sqlite3.Connection) -> None:
    """Retry policies, attempt counts and the failed set (none in a version 1 file)."""
    conn.execute(
        "CREATE TABLE retry_policies ("
        " func BLOB PRIMARY KEY NOT NULL,"
        " max_attempts INTEGER NOT NULL,"  # 0: no limit
        " backoff TEXT NOT NULL,"  # fixed | exponential
        " base REAL NOT NULL, cap REAL NOT NULL,"  # seconds; cap 0: none
        " jitter INTEGER NOT NULL) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE job_attempts ("
        " func BLOB NOT NULL, name BLOB NOT NULL, attempts INTEGER NOT NULL,"
        " PRIMARY KEY (func, name)) WITHOUT ROWID"
    )
    conn.execute(
        "CREATE TABLE failed_jobs ("
        " func BLOB NOT NULL, name BLOB NOT NULL,"
        " workload BLOB NOT NULL, sched_at INTEGER NOT NULL,"
        " count INTEGER NOT NULL, timeout INTEGER NOT NULL,"
        " attempts INTEGER NOT NULL,"
        " failed_at REAL NOT NULL,"  # seconds since the epoch
        " how TEXT NOT NULL, peer TEXT NOT NULL, data BLOB NOT NULL,"
        " PRIMARY KEY (func, name)) WITHOUT ROWID"
    )


def _migrate_to_3(conn: sqlite3.Connection) -> None:
    """Schedules kept by the server (scheduler/schedules.py); times in epoch seconds."""
    conn.execute(
        "CREATE TABLE schedules ("
        " func BLOB NOT NULL, name BLOB NOT NULL, cron TEXT NOT NULL, tz TEXT NOT NULL,"
        " workload BLOB NOT NULL DEFAULT x'', timeout INTEGER NOT NULL DEFAULT 0,"
        " overlap TEXT NOT NULL DEFAULT 'skip', catch_up TEXT NOT NULL DEFAULT 'none',"
        " last_tick INTEGER NOT NULL DEFAULT 0, last_fired INTEGER NOT NULL DEFAULT 0,"
        " fired INTEGER NOT NULL DEFAULT 0, skipped INTEGER NOT NULL DEFAULT 0,"
        " queued INTEGER NOT NULL DEFAULT 0,"
        " PRIMARY KEY (func, name)) WITHOUT ROWID"
    )


#: MIGRATIONS[i] upgrades a file at schema version i to version i + 1.
MIGRATIONS: Final[list[Callable[[sqlite3.Connection], None]]] = [
    _migrate_to_1,
    _migrate_to_2,
    _migrate_to_3,
]
SCHEMA_VERSION: Final = len(MIGRATIONS)

_SQL: Final[dict[type, tuple[str, ...]]] = {
    PutJob: (
        "INSERT OR REPLACE INTO jobs (func, name, sched_at, count, timeout, workload)"
        " VALUES (?, ?, ?, ?, ?, ?)",
    ),
    DeleteJob: ("DELETE FROM jobs WHERE func = ? AND name = ?",),
    PutFunc: ("INSERT OR IGNORE INTO funcs (func) VALUES (?)",),
    DeleteFunc: (
        "DELETE FROM jobs WHERE func = ?",
        "DELETE FROM funcs WHERE func = ?",
        "DELETE FROM job_attempts WHERE func = ?",
        "DELETE FROM failed_jobs WHERE func = ?",
    ),
    SetConfig: ("INSERT OR REPLACE INTO configs (key, value) VALUES (?, ?)",),
    ExtendLease: (),  # leases only mean something in a shared store
    PutPolicy: (
        "INSERT OR REPLACE INTO retry_policies (func, max_attempts, backoff, base, cap, jitter)"
        " VALUES (?, ?, ?, ?, ?, ?)",
    ),
    DeletePolicy: ("DELETE FROM retry_policies WHERE func = ?",),
    # A count of 0 deletes the row: one statement of the two does nothing.
    SetAttempts: (
        "INSERT OR REPLACE INTO job_attempts (func, name, attempts) SELECT ?1, ?2, ?3 WHERE ?3 > 0",
        "DELETE FROM job_attempts WHERE func = ?1 AND name = ?2 AND ?3 <= 0",
    ),
    PutFailed: (
        "INSERT OR REPLACE INTO failed_jobs (func, name, workload, sched_at, count, timeout,"
        " attempts, failed_at, how, peer, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ),
    DeleteFailed: ("DELETE FROM failed_jobs WHERE func = ? AND name = ?",),
    PutSchedule: (
        f"INSERT OR REPLACE INTO schedules ({SCHEDULE_COLUMNS})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    ),
    DeleteSchedule: ("DELETE FROM schedules WHERE func = ? AND name = ?",),
}

# Column order matches Job's positional fields: func, name, workload, sched_at,
# count, timeout (the contract tests check every field round-trips).
_LOAD_JOBS: Final = "SELECT func, name, workload, sched_at, count, timeout FROM jobs"


class SqliteStore:
    """Jobs, funcs and configs in one SQLite file."""

    durable = True
    shared = False

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.uri = f"sqlite:{self.path}"
        #: Number of transactions committed (group commit makes it << calls).
        self.commits = 0
        self.lock_path = self.path + ".lock"
        self._conn: sqlite3.Connection | None = None
        #: The open ``<file>.lock`` holding our flock, from open until aclose.
        self._lock_fd: int | None = None
        self._closed = False
        self._limiter = trio.CapacityLimiter(1)
        self._committer = GroupCommitter(self._apply)

    # -- lifecycle -----------------------------------------------------------

    async def open(self) -> StoredState:
        if self._conn is not None or self._closed:
            raise StoreError(f"{self.path}: store already opened")
        conn, state = await trio.to_thread.run_sync(self._open_sync, limiter=self._limiter)
        self._conn = conn
        return state

    async def commit(self, changes: Sequence[Change]) -> None:
        if self._conn is None or self._closed:
            raise StoreError(f"{self.path}: store is not open")
        if changes:
            await self._committer.submit(changes)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            await self._committer.drain()
            conn, self._conn = self._conn, None
            if conn is not None:
                await trio.to_thread.run_sync(conn.close, limiter=self._limiter)
            self._unlock()

    # -- worker-thread side ----------------------------------------------------

    def _open_sync(self) -> tuple[sqlite3.Connection, StoredState]:
        path = self.path
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "ab+") as f:  # creates it; never truncates
                f.seek(0)
                head = f.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise StoreError(f"{path}: cannot open store file: {exc}") from exc
        if head and head != _SQLITE_MAGIC:  # an empty file is a new database
            raise StoreError(f"{path}: not an SQLite database; refusing to touch it")
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: cannot open SQLite database: {exc}") from exc
        try:
            self._prepare(conn)
            return conn, _load(conn)
        except BaseException as exc:
            conn.close()
            self._unlock()
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{path}: {exc}") from exc
            raise

    def _lock(self) -> None:
        """Take the exclusive lock on ``<file>.lock`` or raise StoreError."""
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open lock file: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StoreError(f"{self.path}: cannot lock {self.lock_path}: {exc}") from exc
            by = f" (pid {holder})" if holder is not None else ""
            raise StoreError(
                f"store file://{self.path} is in use by another periodicd{by}"
            ) from exc
        try:  # best effort: the PID only makes the next one's message better
            os.ftruncate(fd, 0)
            os.pwrite(fd, b"%d\n" % os.getpid(), 0)
        except OSError:
            pass
        self._lock_fd = fd

    def _unlock(self) -> None:
        # Closing the descriptor releases the flock; the file stays (see above).
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check the file is ours and current (read-only), lock it, then set it up."""
        conn.execute("PRAGMA busy_timeout = 5000")  # milliseconds
        version = self._schema_version(conn)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this program's"
                f" ({SCHEMA_VERSION}); upgrade trio_periodic or use another file"
            )
        # Only now: a file we refuse gets no lock file beside it.  Nothing was
        # written yet, and the migration re-reads the version under its lock.
        self._lock()
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError(f"{self.path}: cannot switch to WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
        if version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                version = self._schema_version(conn)  # re-read under the write lock
                for migrate in MIGRATIONS[version:]:
                    migrate(conn)
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (SCHEMA_VERSION,),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            if tables:
                raise StoreError(
                    f"{self.path}: an SQLite database but not a trio_periodic store"
                    f" (tables: {', '.join(sorted(tables))}); refusing to modify it"
                )
            return 0
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or not isinstance(row[0], int):
            raise StoreError(f"{self.path}: meta table has no valid schema_version")
        return row[0]

    async def _apply(self, batches: list[Sequence[Change]]) -> list[BaseException | None]:
        return await split_outcomes(batches, self._transaction_in_thread)

    async def _transaction_in_thread(self, changes: Iterable[Change]) -> None:
        await trio.to_thread.run_sync(self._transaction, changes, limiter=self._limiter)

    def _transaction(self, changes: Iterable[Change]) -> None:
        conn = self._conn
        if conn is None:
            raise StoreError(f"{self.path}: store is closed")
        try:
            conn.execute("BEGIN IMMEDIATE")
            for kind, rows in change_runs(changes):
                if kind is SetAttempts:
                    # Two statements per change, in order: a count set, ended
                    # and set again in one run must end up set.
                    for row in rows:
                        for sql in _SQL[kind]:
                            conn.execute(sql, row)
                    continue
                for sql in _SQL[kind]:
                    conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # the original error is the one worth reporting
            if isinstance(exc, sqlite3.Error | OverflowError):
                raise StoreError(f"{self.path}: commit failed: {exc}") from exc
            raise
        self.commits += 1


def _read_pid(fd: int) -> int | None:
    """The PID the holder of the lock wrote into it, if readable."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _load(conn: sqlite3.Connection) -> StoredState:
    with gc_paused():
        jobs = list(starmap(Job, conn.execute(_LOAD_JOBS)))
    funcs = {row[0] for row in conn.execute("SELECT func FROM funcs")}
    config = {key: value for key, value in conn.execute("SELECT key, value FROM configs")}
    policies = {
        row[0]: RetryPolicy(row[1], row[2], row[3], row[4], bool(row[5]))
        for row in conn.execute(
            "SELECT func, max_attempts, backoff, base, cap, jitter FROM retry_policies"
        )
    }
    # Only counts of jobs that exist (a count outliving its job means nothing).
    attempts = {
        (func, name): n
        for func, name, n in conn.execute(
            "SELECT a.func, a.name, a.attempts FROM job_attempts a"
            " JOIN jobs j ON j.func = a.func AND j.name = a.name"
        )
    }
    failed = [
        FailedJob(Job(*row[:6]), *row[6:])
        for row in conn.execute(
            "SELECT func, name, workload, sched_at, count, timeout,"
            " attempts, failed_at, how, peer, data FROM failed_jobs"
        )
    ]
    schedules = [schedule_row(r) for r in conn.execute(f"SELECT {SCHEDULE_COLUMNS} FROM schedules")]
    return StoredState(
        jobs=jobs, funcs=funcs, config=config, policies=policies, attempts=attempts,
        failed=failed, schedules=schedules,
    )  # fmt: skip
