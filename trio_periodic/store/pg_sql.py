"""The SQL of the PostgreSQL store: statements, and how a transaction is built.

A commit's changes become either one statement (``one_statement``: puts,
deletes and lease extensions of distinct jobs, as data-modifying CTEs, in
autocommit mode) or a pipelined BEGIN ... COMMIT block (``run_block``); the
hot kinds go as one statement per run over arrays (``_batched``), the rare
ones with executemany (``_SQL``).  Nothing here opens a connection: the store
(``postgres.py``) hands one in.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any, Final

from trio_periodic.store import pg_retry, pg_trio
from trio_periodic.store.base import (
    Change,
    DeleteFunc,
    DeleteJob,
    DeleteSchedule,
    ExtendLease,
    PutFunc,
    PutJob,
    PutSchedule,
    SetConfig,
)
from trio_periodic.store.group import (
    SCHEDULE_COLUMNS,
    change_row,
)
from trio_periodic.store.pg_arrays import Bytea, Float8, Int8, Text
from trio_periodic.store.pg_notify import (
    CHANNEL,
    DB_NOW,
    Handle,
)

#: A connection of the store's pool.
Conn = pg_trio.Conn

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

LOCK_SCHEDULE: Final = (
    f"SELECT {SCHEDULE_COLUMNS} FROM periodic_schedules WHERE func = %s AND name = %s FOR UPDATE"
)
JOB_EXISTS: Final = "SELECT 1 FROM periodic_jobs WHERE func = %s AND name = %s"
UPDATE_SCHEDULE: Final = (
    "UPDATE periodic_schedules SET last_tick = %s, last_fired = %s, fired = %s,"
    " skipped = %s, queued = %s WHERE func = %s AND name = %s"
)
# A schedule's job: a plain put (no claim); the row was absent a moment ago.
PUT_SCHEDULED_JOB: Final = (
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
NOTIFY_ALL: Final = "SELECT pg_notify(%s, n) FROM unnest(%s::text[]) AS n"
LOAD_JOBS: Final = "SELECT func, name, workload, sched_at, count, timeout FROM periodic_jobs"
# Leases come out as seconds left on the database's clock.
LOAD_LEASES: Final = (
    f"SELECT func, name, lease_until - {DB_NOW} FROM periodic_jobs"
    f" WHERE claimed_by IS NOT NULL AND lease_until > {DB_NOW}"
)
# A claim as one statement: lock the rows in key order (two servers claiming
# overlapping sets then wait for each other instead of deadlocking, and the
# second sees the first's claim once it has the lock), claim those that are
# free, notify if anything was claimed, and return the claimed handles and the
# holders' leases of the others (seconds left on the database's clock).
CLAIM: Final = (
    f"WITH l AS (SELECT j.func, j.name, v.secs, j.lease_until - {DB_NOW} AS left_s,"
    " (j.claimed_by IS NULL OR j.claimed_by = %s OR j.lease_until IS NULL"
    f" OR j.lease_until < {DB_NOW}) AS free"
    " FROM periodic_jobs j"
    " JOIN unnest(%s::bytea[], %s::bytea[], %s::float8[]) AS v(func, name, secs)"
    " ON j.func = v.func AND j.name = v.name"
    " ORDER BY j.func, j.name FOR UPDATE OF j),"
    # Each locked row joins back by its key (an index scan), never to a CTE
    # scan of the input (one pass over it per row).
    f" c AS (UPDATE periodic_jobs j SET claimed_by = %s, lease_until = {DB_NOW} + l.secs"
    " FROM l WHERE l.free AND j.func = l.func AND j.name = l.name RETURNING j.func, j.name),"
    " n AS (SELECT pg_notify(%s, m) IS NULL AS sent FROM unnest(%s::text[]) AS m"
    " WHERE EXISTS (SELECT 1 FROM c))"
    " SELECT (SELECT count(sent) FROM n),"
    " (SELECT array_agg(func) FROM c), (SELECT array_agg(name) FROM c),"
    " (SELECT array_agg(func) FROM l WHERE NOT free),"
    " (SELECT array_agg(name) FROM l WHERE NOT free),"
    " (SELECT array_agg(left_s) FROM l WHERE NOT free)"
)


def claim_params(wanted: dict[Handle, float], me: str, notes: list[str]) -> tuple[Any, ...]:
    """CLAIM's parameters: ``wanted`` maps each job to its lease's seconds."""
    handles = sorted(wanted)
    return (
        me, Bytea(h[0] for h in handles), Bytea(h[1] for h in handles),
        Float8(wanted[h] for h in handles), me, CHANNEL, Text(notes),
    )  # fmt: skip


def claim_outcome(row: tuple[Any, ...]) -> tuple[set[Handle], dict[Handle, float]]:
    """(the jobs claimed, the others' seconds left of their holder's lease)
    from CLAIM's row.  A job in neither has no row."""
    _, won_f, won_n, held_f, held_n, held_left = row
    won = set(zip(won_f or (), won_n or (), strict=True))
    held = dict(zip(zip(held_f or (), held_n or (), strict=True), held_left or (), strict=True))
    return won, held


# Of the jobs put with a claim, those the write left claimed by us.
_PUT_CLAIMED: Final = (
    "SELECT j.func, j.name FROM periodic_jobs j"
    " JOIN unnest(%s::bytea[], %s::bytea[]) AS v(func, name)"
    " ON j.func = v.func AND j.name = v.name WHERE j.claimed_by = %s"
)


def one_statement(
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
        params += [CHANNEL, Text(notes)]
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
    funcs, names = Bytea(h[0] for h in handles), Bytea(h[1] for h in handles)
    if kind is PutJob:
        puts = [c for c in last.values() if isinstance(c, PutJob)]
        jobs = [c.job for c in puts]
        return _PUT_JOBS, (
            funcs, names,
            Int8(j.sched_at for j in jobs), Int8(j.count for j in jobs),
            Int8(j.timeout for j in jobs), Bytea(j.workload for j in jobs),
            Text(None if c.lease is None else me for c in puts),
            Float8(c.lease for c in puts),
            me,
        )  # fmt: skip
    if kind is DeleteJob:
        return _DELETE_JOBS, (funcs, names)
    leases = [c for c in last.values() if isinstance(c, ExtendLease)]
    return _EXTEND_LEASES, (Float8(c.until - now for c in leases), funcs, names, me)


_BATCHED: Final = (PutJob, DeleteJob, ExtendLease)


async def run_single(
    conn: Conn, statement: tuple[str, tuple[Any, ...]], claimed: bool
) -> set[Handle]:
    """Run a transaction made one statement (``one_statement``) on the trio
    thread; the jobs its puts left claimed by us."""
    rows = await pg_trio.fetch(conn, *statement)
    row = rows[0] if rows else None
    if not claimed or row is None or row[-1] is None:
        return set()
    return set(zip(row[-2], row[-1], strict=True))


def run_block(
    conn: Conn,
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
                cur.execute(NOTIFY_ALL, (CHANNEL, Text(notes)))
            if claimed:
                handles = (Bytea(h[0] for h in claimed), Bytea(h[1] for h in claimed), me)
                cur.execute(_PUT_CLAIMED, handles)
        if claimed:
            return set(cur.fetchall())
    return set()


def without_moot_extensions(changes: list[Change]) -> list[Change]:
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
