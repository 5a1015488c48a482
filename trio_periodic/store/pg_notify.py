"""Cluster notifications for the PostgreSQL store: payloads and the LISTEN connection.

Theory of operation
-------------------
Every transaction that changes rows sends ``pg_notify('periodic_changes', …)``
inside the transaction, so that listeners hear of it only once it committed
(and never of a rollback).  A payload is lines of ASCII::

    <server id> j <hex func> <hex name>     a job row was written or claimed
    <server id> d <hex func> <hex name>     a job row was deleted
    <server id> f <hex func>                a function and all its jobs were dropped
    <server id> c <hex key>                 a config key was set
    <server id> p <hex func>                a retry policy was set or cleared
    <server id> a <hex func> <hex name>     a job's attempt count changed
    <server id> x <hex func> <hex name>     a job entered or left the failed set
    <server id> s <hex func> <hex name>     a schedule row was written or deleted

split over several notifications when it would pass ``MAX_PAYLOAD`` bytes
(PostgreSQL refuses payloads of 8000 bytes or more).  A notification says
only *what* changed; the listener reads the rows as they are *now*.  That
makes the mirror converge whatever the interleaving: a row read too early is
read again when the notification of the later change arrives, and
notifications arrive in commit order.  Within a batch of notifications each
key is kept at its last occurrence, so "drop func f, then put job (f, x)"
comes out in that order.

One exception spares most reads: a job whose last line is another server's
``d`` is reported deleted without reading its row.  Any later write of the
row is announced by a later line: another server's is read when it comes;
one of ours is older news only if we have heard its line already.  So a
``d`` is taken as it stands only when none of our own lines about the job
is outstanding (``OwnLines``: counted before each transaction that sends
them, uncounted when heard back or when the transaction failed); otherwise
the row is read.  (A write of ours not committed yet is the service's to
guard: ``SchedulerService.remote_changes`` holds such jobs' changes back.)

``Listener`` owns one autocommit connection (not from the pool) that has run
``LISTEN``; a notify handler collects every payload it receives, whatever
the connection is doing at the time.  Waiting for notifications and reading
the job rows they name happen on the trio thread (``pg_trio``): every commit
of this server notifies its own listener too, and skipping those must not
cost a thread hand-over each.  Connecting, the resync pages and reads of the
rare kinds run on worker threads, one at a time (``lock``); a thread
abandoned by a cancelled trio task closes the connection itself when its
call returns if ``stop`` came meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any, Final, TypeVar

import psycopg
import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from trio_periodic.protocol.job import Job
from trio_periodic.store import pg_retry, pg_trio
from trio_periodic.store.base import (
    Change,
    DeleteFailed,
    DeleteFunc,
    DeleteJob,
    DeletePolicy,
    DeleteSchedule,
    PutFailed,
    PutJob,
    PutPolicy,
    PutSchedule,
    RemoteAttempts,
    RemoteChange,
    RemoteConfig,
    RemoteDelete,
    RemoteDropFunc,
    RemoteFailed,
    RemoteJob,
    RemotePolicy,
    RemoteSchedule,
    RemoteScheduleDelete,
    RemoteScheduleSet,
    SetAttempts,
    SetConfig,
)
from trio_periodic.store.group import SCHEDULE_COLUMNS, schedule_row
from trio_periodic.store.pg_arrays import Bytea

CHANNEL: Final = "periodic_changes"
#: Largest payload we send, in bytes (PostgreSQL's limit is 8000).
MAX_PAYLOAD: Final = 7000
#: Most notifications turned into one batch of remote changes.
MAX_BATCH: Final = 256
#: Rows per callback when the whole table is read again after a reconnect.
RESYNC_PAGE: Final = 10_000
#: libpq TCP keepalives (seconds) so that a silently dead network is noticed.
KEEPALIVES: Final[dict[str, int]] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}

_Conn = psycopg.Connection[Any]
Handle = tuple[bytes, bytes]
_T = TypeVar("_T")

#: The database's clock in epoch seconds: leases are compared on it alone, so
#: servers with clocks out of step cannot take each other's live leases.
DB_NOW: Final = "extract(epoch FROM clock_timestamp())::float8"
# The last column is the lease's seconds left on the database's clock.
_ROW_COLUMNS: Final = (
    "j.func, j.name, j.workload, j.sched_at, j.count, j.timeout, j.claimed_by,"
    f" j.lease_until - {DB_NOW}"
)
_FETCH_JOBS: Final = (
    f"SELECT {_ROW_COLUMNS} FROM periodic_jobs j"
    " JOIN unnest(%s::bytea[], %s::bytea[]) AS v(func, name)"
    " ON j.func = v.func AND j.name = v.name"
)
_FETCH_SCHEDULES: Final = (
    f"SELECT {SCHEDULE_COLUMNS} FROM periodic_schedules"
    " WHERE (func, name) IN (SELECT * FROM unnest(%s::bytea[], %s::bytea[]))"
)
_FETCH_CONFIGS: Final = "SELECT key, value FROM periodic_configs WHERE key = ANY(%s::text[])"
_FIRST_PAGE: Final = f"SELECT {_ROW_COLUMNS} FROM periodic_jobs j ORDER BY j.func, j.name LIMIT %s"
_NEXT_PAGE: Final = (
    f"SELECT {_ROW_COLUMNS} FROM periodic_jobs j WHERE (j.func, j.name) > (%s, %s)"
    " ORDER BY j.func, j.name LIMIT %s"
)


# -- payloads -----------------------------------------------------------------


def change_lines(server_id: str, changes: Iterable[Change]) -> list[str]:
    """Notification lines for a transaction's changes (ExtendLease and PutFunc send none:
    a lease extension is learnt by whoever tries to claim the job)."""
    lines: dict[str, None] = {}  # ordered set
    for change in changes:
        match change:
            case PutJob(job=job):
                lines[f"{server_id} j {job.func.hex()} {job.name.hex()}"] = None
            case DeleteJob(func=func, name=name):
                lines[f"{server_id} d {func.hex()} {name.hex()}"] = None
            case DeleteFunc(func=func):
                lines[f"{server_id} f {func.hex()}"] = None
            case SetConfig(key=key):
                lines[f"{server_id} c {key.encode().hex()}"] = None
            case PutPolicy(func=func) | DeletePolicy(func=func):
                lines[f"{server_id} p {func.hex()}"] = None
            case SetAttempts(func=func, name=name):
                lines[f"{server_id} a {func.hex()} {name.hex()}"] = None
            case PutFailed(failed=failed):
                lines[f"{server_id} x {failed.job.func.hex()} {failed.job.name.hex()}"] = None
            case DeleteFailed(func=func, name=name):
                lines[f"{server_id} x {func.hex()} {name.hex()}"] = None
            case PutSchedule(row=row):
                lines[f"{server_id} s {row.func.hex()} {row.name.hex()}"] = None
            case DeleteSchedule(func=func, name=name):
                lines[f"{server_id} s {func.hex()} {name.hex()}"] = None
    return list(lines)


def schedule_lines(server_id: str, handles: Iterable[Handle]) -> list[str]:
    return [f"{server_id} s {func.hex()} {name.hex()}" for func, name in handles]


def claim_lines(server_id: str, handles: Iterable[Handle]) -> list[str]:
    return [f"{server_id} j {func.hex()} {name.hex()}" for func, name in handles]


def payloads(lines: Sequence[str]) -> list[str]:
    """Join lines into payloads of at most MAX_PAYLOAD bytes (lines are ASCII)."""
    out: list[str] = []
    chunk: list[str] = []
    size = 0
    for line in lines:
        if chunk and size + 1 + len(line) > MAX_PAYLOAD:
            out.append("\n".join(chunk))
            chunk, size = [], 0
        size += len(line) + (1 if chunk else 0)
        chunk.append(line)
    if chunk:
        out.append("\n".join(chunk))
    return out


class OwnLines:
    """This server's job lines (``j``, ``d``) on their way to its own
    listener: sent, or about to be, and not heard back yet (see the module
    docstring).  Keyed by the line's tail, ``"<hex func> <hex name>"``;
    trio thread only.

    A count may only err high: a line counted is uncounted before it is heard
    only when its transaction certainly did not commit (PostgreSQL refused
    it).  A transaction whose fate is unknown (the connection broke) and a
    line sent while the LISTEN connection was down stay counted; that costs
    the row reads a delete line would have spared, never a job."""

    def __init__(self, server_id: str) -> None:
        #: Where the op letter is in our lines ("<server id> <op> ...").
        self._op = len(server_id) + 1
        self._count: dict[str, int] = {}

    def sending(self, lines: Iterable[str]) -> list[str]:
        """Count the job lines among our ``lines``; returns them for ``unsent``."""
        op = self._op
        keys = [line[op + 2 :] for line in lines if line[op] in ("j", "d")]
        count = self._count
        for key in keys:
            count[key] = count.get(key, 0) + 1
        return keys

    def unsent(self, keys: Iterable[str]) -> None:
        """The transaction that was to send these lines did not commit."""
        for key in keys:
            self.heard(key)

    def heard(self, key: str) -> None:
        left = self._count.get(key, 0) - 1
        if left > 0:
            self._count[key] = left
        else:
            self._count.pop(key, None)

    def outstanding(self, key: str) -> bool:
        return key in self._count

    def __len__(self) -> int:
        return sum(self._count.values())


#: What a batch of notifications asks us to look at, in last-occurrence order:
#: ("j", func, name) for a job row, ("d", func, name) for a job deleted (no
#: row to read), ("f", func) for a dropped func, ("c", key); ("p", func) a
#: retry policy, ("a", func, name) a count, ("x", func, name) a failed job.
Key = tuple[Any, ...]


def parse(texts: Iterable[str], me: str, own: OwnLines | None = None) -> list[Key]:
    """The keys named by other servers' lines, each job at its last occurrence.
    Our own job lines are counted off ``own``; without it every job line
    means "read the row"."""
    keys: dict[Key, None] = {}
    mine = me + " "
    tail = len(mine) + 2  # where a job line's "<hex func> <hex name>" starts
    for text in texts:
        for line in text.split("\n"):
            if line.startswith(mine):
                if own is not None and line[tail - 2 : tail] in ("j ", "d "):
                    own.heard(line[tail:])
                continue
            parts = line.split(" ")
            if len(parts) < 3:
                continue
            try:
                key = _key(parts, own)
            except ValueError:
                continue  # not ours or damaged: nothing to look at
            if key is None:
                continue
            if key[0] in ("j", "d"):
                keys.pop(("d" if key[0] == "j" else "j", key[1], key[2]), None)
            keys.pop(key, None)
            keys[key] = None
    return list(keys)


def _key(parts: list[str], own: OwnLines | None) -> Key | None:
    op = parts[1]
    if op in ("j", "d") and len(parts) == 4:
        gone = op == "d" and own is not None and not own.outstanding(f"{parts[2]} {parts[3]}")
        return ("d" if gone else "j", bytes.fromhex(parts[2]), bytes.fromhex(parts[3]))
    if op == "s" and len(parts) == 4:
        return ("s", bytes.fromhex(parts[2]), bytes.fromhex(parts[3]))
    if op == "f" and len(parts) == 3:
        return ("f", bytes.fromhex(parts[2]))
    if op == "c" and len(parts) == 3:
        return ("c", bytes.fromhex(parts[2]).decode())
    if op in ("a", "x") and len(parts) == 4:
        return (op, bytes.fromhex(parts[2]), bytes.fromhex(parts[3]))
    if op == "p" and len(parts) == 3:
        return ("p", bytes.fromhex(parts[2]))
    return None


def remote_job(row: Sequence[Any], me: str, now: float) -> RemoteJob | None:
    """A RemoteJob for a periodic_jobs row read with _ROW_COLUMNS; None for a row
    we hold ourselves (only we change such a row: nothing to mirror).  ``now``
    is this server's epoch seconds: the lease's seconds left are added to it."""
    func, name, workload, sched_at, count, timeout, claimed_by, left = row
    if claimed_by == me:
        return None
    lease = now + left if claimed_by is not None and left is not None else None
    return RemoteJob(Job(func, name, workload, sched_at, count, timeout), lease)


# -- the LISTEN connection ----------------------------------------------------------


class Listener:
    """One autocommit connection listening on CHANNEL (see the module docstring)."""

    def __init__(
        self,
        conninfo: str,
        connect_seconds: int,
        server_id: str,
        clock: Callable[[], float] = time.time,  # epoch seconds, for leases
        own: OwnLines | None = None,
    ) -> None:
        # Keepalives unless the user's conninfo sets its own.
        self._conninfo = make_conninfo("", **{**KEEPALIVES, **conninfo_to_dict(conninfo)})
        self._connect_seconds = connect_seconds
        self._me = server_id
        self._clock = clock
        #: Our job lines not heard back yet (None: read every job row named).
        self._own = own
        #: Jobs to read again at the next turn (``reread``).
        self._wanted: dict[Handle, None] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._conn: _Conn | None = None
        #: Payloads received and not looked at yet.
        self._heard: list[str] = []
        #: While the trio thread waits for notifications: the socket it waits
        #: on (``interrupt`` closes it under the wait) and the wait's scope
        #: (``reread`` cancels it).
        self._waiting: tuple[int, trio.CancelScope] | None = None

    # Each worker-thread call goes through ``run``; ``stop`` may come from any thread.

    def run(self, fn: Callable[[], _T]) -> _T:
        try:
            with self._lock:
                if self._stopping.is_set():
                    raise psycopg.InterfaceError("listener stopped")
                return fn()
        finally:
            if self._stopping.is_set():  # stop() may have come while we held the lock
                self.stop()

    def interrupt(self) -> None:
        """(trio thread) Wake a wait for notifications before ``stop`` closes
        its socket: it then fails with InterfaceError."""
        if self._waiting is not None:
            trio.lowlevel.notify_closing(self._waiting[0])

    def stop(self) -> None:
        """Close the connection now, or make the thread using it close it when done."""
        self._stopping.set()
        if self._lock.acquire(blocking=False):
            try:
                self._close()
            finally:
                self._lock.release()

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    @property
    def backend_pid(self) -> int | None:
        """The server process of the connection (for tests and logs)."""
        conn = self._conn
        return None if conn is None or conn.closed else int(conn.info.backend_pid)

    # -- the calls (worker thread, under the lock) ------------------------------------

    def connect(self) -> None:
        """(Re)connect and LISTEN.  psycopg.Error when the database cannot be reached."""
        self._close()
        conn = psycopg.connect(
            self._conninfo, autocommit=True, connect_timeout=self._connect_seconds
        )
        # A resync follows a reconnect: what the old connection heard is moot.
        self._heard = []
        try:
            conn.add_notify_handler(self._on_notify)
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _on_notify(self, notify: psycopg.Notify) -> None:
        self._heard.append(notify.payload)

    def reread(self, handles: Iterable[Handle]) -> None:
        """(trio thread) Read these jobs' rows again at the next turn."""
        for handle in handles:
            self._wanted[handle] = None
        if self._waiting is not None:
            self._waiting[1].cancel()

    async def next_changes(self) -> list[RemoteChange]:
        """(trio thread) Wait for other servers' notifications and read what
        they name.  Our own notifications are skipped without a reply."""
        conn = self._connection()
        while True:
            heard, self._heard = self._heard[:MAX_BATCH], self._heard[MAX_BATCH:]
            keys = parse(heard, self._me, self._own)
            if self._wanted:
                wanted, self._wanted = self._wanted, {}
                keys = [k for k in keys if k[0] not in ("j", "d") or (k[1], k[2]) not in wanted]
                keys += [("j", *h) for h in wanted]
            if keys:
                if all(k[0] in ("j", "d") for k in keys):  # the hot kinds: on this thread
                    return await self._read_jobs(conn, keys)
                return await trio.to_thread.run_sync(
                    self.run, partial(self.read, keys), abandon_on_cancel=True
                )
            if not self._heard:
                self._drain(conn)  # what libpq has already read but not parsed
            if not self._heard and not self._wanted:
                await self._wait_readable(conn)
                conn.pgconn.consume_input()  # psycopg.OperationalError: the connection died
                self._drain(conn)

    def _drain(self, conn: _Conn) -> None:
        pgconn = conn.pgconn
        while (notify := pgconn.notifies()) is not None:
            if pgconn.notify_handler is not None:
                pgconn.notify_handler(notify)  # to _on_notify

    async def _wait_readable(self, conn: _Conn) -> None:
        fileno = conn.pgconn.socket
        try:
            with trio.CancelScope() as scope:
                self._waiting = (fileno, scope)
                await trio.lowlevel.wait_readable(fileno)
        except trio.ClosedResourceError:
            raise psycopg.InterfaceError("listener stopped") from None
        finally:
            self._waiting = None

    async def _read_jobs(self, conn: _Conn, keys: Sequence[Key]) -> list[RemoteChange]:
        read = [k for k in keys if k[0] == "j"]
        rows: dict[Handle, Sequence[Any]] = {}
        if read:
            handles = Bytea(k[1] for k in read), Bytea(k[2] for k in read)
            rows = {(r[0], r[1]): r for r in await pg_trio.fetch(conn, _FETCH_JOBS, handles)}
        now = self._clock()
        out: list[RemoteChange] = []
        for key in keys:
            self._job_change(out, key, rows, now)
        return out

    def _job_change(
        self, out: list[RemoteChange], key: Key, rows: Mapping[Handle, Sequence[Any]], now: float
    ) -> None:
        """Add what a job key's current row (or its absence) means to ``out``."""
        row = rows.get((key[1], key[2])) if key[0] == "j" else None
        if row is None:
            out.append(RemoteDelete(key[1], key[2]))
        elif (job := remote_job(row, self._me, now)) is not None:
            out.append(job)

    def read(self, keys: Sequence[Key]) -> list[RemoteChange]:
        """The current rows for ``keys``, as remote changes in the order of
        ``keys`` (worker thread)."""
        conn = self._connection()
        handles = [(k[1], k[2]) for k in keys if k[0] == "j"]
        config_keys = [k[1] for k in keys if k[0] == "c"]
        schedule_keys = [(k[1], k[2]) for k in keys if k[0] == "s"]
        rows: dict[Handle, Sequence[Any]] = {}
        configs: dict[str, int] = {}
        retry = _RetryRows()
        schedules: dict[Handle, Sequence[Any]] = {}
        with conn.cursor(binary=True) as cur:
            if schedule_keys:
                cur.execute(
                    _FETCH_SCHEDULES,
                    (Bytea(h[0] for h in schedule_keys), Bytea(h[1] for h in schedule_keys)),
                )
                schedules = {(r[0], r[1]): r for r in cur.fetchall()}
            if handles:
                cur.execute(
                    _FETCH_JOBS, (Bytea(h[0] for h in handles), Bytea(h[1] for h in handles))
                )
                rows = {(r[0], r[1]): r for r in cur.fetchall()}
            if config_keys:
                cur.execute(_FETCH_CONFIGS, (config_keys,))
                configs = dict(cur.fetchall())
            retry.read(cur, keys)
        out: list[RemoteChange] = []
        now = self._clock()
        for key in keys:
            if key[0] in _RETRY_KEYS:
                out.append(retry.change(key))
            elif key[0] in ("j", "d"):
                self._job_change(out, key, rows, now)
            elif key[0] == "s":
                srow = schedules.get((key[1], key[2]))
                if srow is None:
                    out.append(RemoteScheduleDelete(key[1], key[2]))
                else:
                    out.append(RemoteSchedule(schedule_row(srow)))
            elif key[0] == "f":
                out.append(RemoteDropFunc(key[1]))
            elif key[1] in configs:
                out.append(RemoteConfig(key[1], configs[key[1]]))
        return out

    def resync_page(
        self, after: Handle | None
    ) -> tuple[list[RemoteChange], list[Handle], Handle | None]:
        """One page of every row (in key order after ``after``) as RemoteJobs, every
        config on the first page; the handles of every row in the page (ours
        too); and where the next page starts (None: done)."""
        conn = self._connection()
        out: list[RemoteChange] = []
        with conn.cursor(binary=True) as cur:
            if after is None:
                cur.execute("SELECT key, value FROM periodic_configs")
                out += [RemoteConfig(key, value) for key, value in cur.fetchall()]
                out.append(pg_retry.read_all(cur))
                cur.execute(f"SELECT {SCHEDULE_COLUMNS} FROM periodic_schedules")
                out.append(RemoteScheduleSet(tuple(schedule_row(r) for r in cur.fetchall())))
                cur.execute(_FIRST_PAGE, (RESYNC_PAGE,))
            else:
                cur.execute(_NEXT_PAGE, (*after, RESYNC_PAGE))
            rows = cur.fetchall()
        now = self._clock()
        out += [job for row in rows if (job := remote_job(row, self._me, now)) is not None]
        handles = [(row[0], row[1]) for row in rows]
        last = handles[-1] if len(rows) == RESYNC_PAGE else None
        return out, handles, last

    def _connection(self) -> _Conn:
        conn = self._conn
        if conn is None or conn.closed:
            raise psycopg.OperationalError("the LISTEN connection is closed")
        return conn


_RETRY_KEYS: Final = frozenset({"p", "a", "x"})


class _RetryRows:
    """The retry rows a batch of notifications names, read in three statements."""

    def __init__(self) -> None:
        self.policies: dict[bytes, Any] = {}
        self.attempts: dict[Handle, int] = {}
        self.failed: dict[Handle, Any] = {}

    def read(self, cur: psycopg.Cursor[Any], keys: Sequence[Key]) -> None:
        funcs = [k[1] for k in keys if k[0] == "p"]
        counted = [(k[1], k[2]) for k in keys if k[0] == "a"]
        failed = [(k[1], k[2]) for k in keys if k[0] == "x"]
        if funcs:
            self.policies = pg_retry.read_policies(cur, funcs)
        if counted:
            self.attempts = pg_retry.read_attempts(cur, counted)
        if failed:
            self.failed = pg_retry.read_failed(cur, failed)

    def change(self, key: Key) -> RemoteChange:
        if key[0] == "p":
            return RemotePolicy(key[1], self.policies.get(key[1]))
        handle = (key[1], key[2])
        if key[0] == "a":
            return RemoteAttempts(key[1], key[2], self.attempts.get(handle, 0))
        return RemoteFailed(key[1], key[2], self.failed.get(handle))
