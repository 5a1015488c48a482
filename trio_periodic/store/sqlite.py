"""The SQLite store (the default durable store) and the group committer it shares.

Theory of operation
-------------------
One ``sqlite3`` connection, in WAL mode with ``synchronous=FULL`` so that a
returned COMMIT has been fsynced to the WAL and survives a power cut.  Every
call on the connection runs on a worker thread through a ``CapacityLimiter``
of 1, so the connection is used by one thread at a time and the trio thread
never blocks on the disk.

Group commit: ``commit`` may be called by many tasks at once.  The calls are
queued in call order; the first caller that finds nobody committing becomes
the *leader*: it takes everything queued so far, applies it in one
transaction on the worker thread and wakes the callers whose batches were in
it.  Callers that arrive while a transaction is in flight wait in the queue;
when the leader is done it promotes the oldest of them, which takes the
whole queue for the next transaction.  There is no long-lived task, so
``open`` needs no nursery.  Batches are applied in queue order and a
transaction starts only after the previous one finished, so a change
submitted later never lands before one submitted earlier.

A failing transaction is rolled back.  If it held several callers' batches,
each batch is then retried in a transaction of its own, so one bad batch
(say, an integer too large for a column) fails only its own caller; a disk
that is full fails them all.  Either way the store keeps working.

Cancellation: a caller cancelled while its batch is still queued withdraws it
(it will never be written).  Once a transaction holding its batch has
started, the caller waits for the outcome, shielded, and reports it truthfully.

File layout (schema version 1)::

    meta(key TEXT PRIMARY KEY, value)            -- ('schema_version', 1)
    jobs(func BLOB, name BLOB, sched_at INTEGER, count INTEGER,
         timeout INTEGER, workload BLOB, PRIMARY KEY (func, name)) WITHOUT ROWID
    funcs(func BLOB PRIMARY KEY) WITHOUT ROWID
    configs(key TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID

Job fields live in columns, not in an encoded blob, so a restart builds its
``Job`` objects straight from rows.  ``MIGRATIONS[i]`` upgrades a file from
version ``i`` to ``i + 1``; a file with a newer version, a file that is not
SQLite and an SQLite file that is not ours are refused and left untouched.
"""

from __future__ import annotations

import gc
import os
import sqlite3
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain, groupby, starmap
from typing import Any, Final

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

# --------------------------------------------------------------------------
# Group commit (shared with the PostgreSQL store)
# --------------------------------------------------------------------------

#: Applies a list of batches (in order) and returns one outcome per batch:
#: None when that batch is durable, else the exception that failed it.
ApplyBatches = Callable[[list[Sequence[Change]]], Awaitable[list[BaseException | None]]]

_QUEUED: Final = 0  # waiting for a leader to take it
_LEAD: Final = 1  # promoted: its caller must take the queue and commit it
_TAKEN: Final = 2  # inside a transaction that is in flight
_DONE: Final = 3  # outcome known (``error`` is None on success)
#: Most scheduler ticks a leader waits for more batches before committing.
_GATHER_TICKS: Final = 2


class _Batch:
    __slots__ = ("changes", "error", "event", "state")

    def __init__(self, changes: Sequence[Change]) -> None:
        self.changes = tuple(changes)  # the caller's list may change while we wait
        self.state: int = _QUEUED
        self.error: BaseException | None = None
        self.event = trio.Event()


class GroupCommitter:
    """Merges concurrent ``submit`` calls into few transactions (leader/follower).

    ``apply`` runs one transaction's worth of batches; it is awaited under a
    shield, one call at a time.
    """

    def __init__(self, apply: ApplyBatches) -> None:
        self._apply = apply
        self._queue: deque[_Batch] = deque()
        self._leading = False
        self._idle = trio.Event()
        self._idle.set()

    async def submit(self, changes: Sequence[Change]) -> None:
        batch = _Batch(changes)
        self._queue.append(batch)
        if not self._leading:
            self._leading = True
            self._idle = trio.Event()
            batch.state = _LEAD
        else:
            await self._wait(batch)
        if batch.state == _LEAD:
            await self._lead()
        _raise_outcome(batch.error)

    async def drain(self) -> None:
        """Return once nothing is queued or in flight."""
        while self._leading:
            await self._idle.wait()

    async def _wait(self, batch: _Batch) -> None:
        try:
            await batch.event.wait()
        except trio.Cancelled:
            if batch.state == _QUEUED:
                self._queue.remove(batch)  # withdrawn: it will never be written
                raise
            if batch.state == _LEAD:
                self._queue.remove(batch)  # still at the head, not taken
                self._hand_over()
                raise
            # Its transaction is in flight: the outcome is being decided now.
            with trio.CancelScope(shield=True):
                await batch.event.wait()

    async def _lead(self) -> None:
        # Let the tasks that are runnable right now (typically the callers the
        # previous transaction just woke, committing again) join this batch:
        # a scheduler tick costs microseconds, a transaction an fsync.  Two
        # ticks give every task runnable now one full step, even those that
        # run after us in the next batch.  A lone caller commits at once.
        if trio.lowlevel.current_statistics().tasks_runnable:
            for _ in range(_GATHER_TICKS):
                await trio.lowlevel.cancel_shielded_checkpoint()
        taken = list(self._queue)
        self._queue.clear()
        for batch in taken:
            batch.state = _TAKEN
        outcome: list[BaseException | None] | None = None
        try:
            with trio.CancelScope(shield=True):
                outcome = await self._apply([b.changes for b in taken])
        finally:
            if outcome is None or len(outcome) != len(taken):
                outcome = [StoreError("commit aborted by an internal error")] * len(taken)
            for batch, error in zip(taken, outcome, strict=True):
                batch.error = error
                batch.state = _DONE
                batch.event.set()
            self._hand_over()

    def _hand_over(self) -> None:
        if self._queue:
            head = self._queue[0]
            head.state = _LEAD
            head.event.set()
        else:
            self._leading = False
            self._idle.set()


def _raise_outcome(error: BaseException | None) -> None:
    if error is None:
        return
    # One exception object may be shared by many callers: raise a fresh one each.
    if isinstance(error, StoreError):
        raise StoreError(*error.args) from error.__cause__
    raise StoreError(f"commit failed: {error!r}") from error


# Rows for each kind of change, grouped into runs of the same kind so that a
# run becomes one executemany.  Runs keep the original order.
Rows = list[tuple[Any, ...]]


def change_runs(changes: Iterable[Change]) -> Iterator[tuple[type, Rows]]:
    for kind, run in groupby(changes, type):
        yield kind, [_row(c) for c in run]


def _row(change: Change) -> tuple[Any, ...]:
    match change:
        case PutJob(job=j):
            return (j.func, j.name, j.sched_at, j.count, j.timeout, j.workload)
        case DeleteJob(func=func, name=name):
            return (func, name)
        case PutFunc(func=func) | DeleteFunc(func=func):
            return (func,)
        case SetConfig(key=key, value=value):
            return (key, value)
    raise TypeError(f"not a store change: {change!r}")


def split_outcomes(
    batches: list[Sequence[Change]],
    run_one: Callable[[Iterable[Change]], None],
    worth_splitting: Callable[[Exception], bool] = lambda exc: True,
) -> list[BaseException | None]:
    """Run all batches in one transaction; if that fails, each in its own.

    Runs on the worker thread.  Splitting is skipped when ``worth_splitting``
    says the error would fail every batch anyway (the database is unreachable).
    """
    try:
        run_one(chain.from_iterable(batches))
        return [None] * len(batches)
    except Exception as exc:
        if len(batches) == 1 or not worth_splitting(exc):
            return [exc] * len(batches)
    outcome: list[BaseException | None] = []
    for batch in batches:
        try:
            run_one(batch)
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)
    return outcome


# --------------------------------------------------------------------------
# SQLite
# --------------------------------------------------------------------------

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


#: MIGRATIONS[i] upgrades a file at schema version i to version i + 1.
MIGRATIONS: Final[list[Callable[[sqlite3.Connection], None]]] = [_migrate_to_1]
SCHEMA_VERSION: Final = len(MIGRATIONS)

_SQL: Final[dict[type, tuple[str, ...]]] = {
    PutJob: (
        "INSERT OR REPLACE INTO jobs (func, name, sched_at, count, timeout, workload)"
        " VALUES (?, ?, ?, ?, ?, ?)",
    ),
    DeleteJob: ("DELETE FROM jobs WHERE func = ? AND name = ?",),
    PutFunc: ("INSERT OR IGNORE INTO funcs (func) VALUES (?)",),
    DeleteFunc: ("DELETE FROM jobs WHERE func = ?", "DELETE FROM funcs WHERE func = ?"),
    SetConfig: ("INSERT OR REPLACE INTO configs (key, value) VALUES (?, ?)",),
}

# Column order matches Job's positional fields: func, name, workload, sched_at,
# count, timeout (the contract tests check every field round-trips).
_LOAD_JOBS: Final = "SELECT func, name, workload, sched_at, count, timeout FROM jobs"


class SqliteStore:
    """Jobs, funcs and configs in one SQLite file."""

    durable = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.uri = f"sqlite:{self.path}"
        #: Number of transactions committed (group commit makes it << calls).
        self.commits = 0
        self._conn: sqlite3.Connection | None = None
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
            if isinstance(exc, sqlite3.Error):
                raise StoreError(f"{path}: {exc}") from exc
            raise

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check the file is ours and current (read-only), then set it up."""
        conn.execute("PRAGMA busy_timeout = 5000")  # milliseconds
        version = self._schema_version(conn)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this program's"
                f" ({SCHEMA_VERSION}); upgrade trio_periodic or use another file"
            )
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
        return await trio.to_thread.run_sync(
            split_outcomes, batches, self._transaction, limiter=self._limiter
        )

    def _transaction(self, changes: Iterable[Change]) -> None:
        conn = self._conn
        if conn is None:
            raise StoreError(f"{self.path}: store is closed")
        try:
            conn.execute("BEGIN IMMEDIATE")
            for kind, rows in change_runs(changes):
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


def _load(conn: sqlite3.Connection) -> StoredState:
    with gc_paused():
        jobs = list(starmap(Job, conn.execute(_LOAD_JOBS)))
    funcs = {row[0] for row in conn.execute("SELECT func FROM funcs")}
    config = {key: value for key, value in conn.execute("SELECT key, value FROM configs")}
    return StoredState(jobs=jobs, funcs=funcs, config=config)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building many objects at once.

    A million Jobs trigger dozens of collections that find nothing (they hold
    only bytes and ints): pausing it nearly halves the load time.  The GC is
    process-wide, which is harmless here: nothing else runs while the server
    opens its store.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
