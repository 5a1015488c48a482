"""Retry policies, attempt counts and the failed set in PostgreSQL (schema version 2).

Theory of operation
-------------------
Three tables beside ``periodic_jobs``; none of the hot statements on
``periodic_jobs`` touches them, so a server whose functions have no policy
pays nothing for them::

    periodic_retry_policies(func BYTEA PRIMARY KEY, max_attempts BIGINT,
                            backoff TEXT, base DOUBLE PRECISION,
                            cap DOUBLE PRECISION, jitter BOOLEAN)
    periodic_job_attempts(func BYTEA, name BYTEA, attempts BIGINT,
                          PRIMARY KEY (func, name))
    periodic_failed_jobs(func BYTEA, name BYTEA, workload BYTEA, sched_at BIGINT,
                         count BIGINT, timeout BIGINT, attempts BIGINT,
                         failed_at DOUBLE PRECISION, how TEXT, peer TEXT,
                         data BYTEA, PRIMARY KEY (func, name))

Every change to them is notified like a job row (``pg_notify.py``: lines
``p`` for a policy, ``a`` for a count, ``x`` for a failed job), and the other
servers read the row as it is now.  After the LISTEN connection was lost the
whole of the three tables is read again (``read_all``) and replaces what the
server knew, so a deletion missed meanwhile is not kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import psycopg

from trio_periodic.protocol.job import Job
from trio_periodic.store.base import (
    DeleteFailed,
    DeletePolicy,
    FailedJob,
    PutFailed,
    PutPolicy,
    RemoteRetryState,
    RetryPolicy,
    SetAttempts,
)
from trio_periodic.store.pg_arrays import Bytea

_Conn = psycopg.Connection[Any]
Handle = tuple[bytes, bytes]


def migrate_to_2(conn: _Conn) -> None:
    conn.execute(
        "CREATE TABLE periodic_retry_policies ("
        " func BYTEA PRIMARY KEY,"
        " max_attempts BIGINT NOT NULL,"  # 0: no limit
        " backoff TEXT NOT NULL,"  # fixed | exponential
        " base DOUBLE PRECISION NOT NULL, cap DOUBLE PRECISION NOT NULL,"  # seconds
        " jitter BOOLEAN NOT NULL)"
    )
    conn.execute(
        "CREATE TABLE periodic_job_attempts ("
        " func BYTEA NOT NULL, name BYTEA NOT NULL, attempts BIGINT NOT NULL,"
        " PRIMARY KEY (func, name))"
    )
    conn.execute(
        "CREATE TABLE periodic_failed_jobs ("
        " func BYTEA NOT NULL, name BYTEA NOT NULL, workload BYTEA NOT NULL,"
        " sched_at BIGINT NOT NULL, count BIGINT NOT NULL, timeout BIGINT NOT NULL,"
        " attempts BIGINT NOT NULL,"
        " failed_at DOUBLE PRECISION NOT NULL,"  # seconds since the epoch
        " how TEXT NOT NULL, peer TEXT NOT NULL, data BYTEA NOT NULL,"
        " PRIMARY KEY (func, name))"
    )


#: Statements per change kind, run with executemany (one row per change).
SQL: Final[dict[type, tuple[str, ...]]] = {
    PutPolicy: (
        "INSERT INTO periodic_retry_policies (func, max_attempts, backoff, base, cap, jitter)"
        " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (func) DO UPDATE SET"
        " max_attempts = EXCLUDED.max_attempts, backoff = EXCLUDED.backoff,"
        " base = EXCLUDED.base, cap = EXCLUDED.cap, jitter = EXCLUDED.jitter",
    ),
    DeletePolicy: ("DELETE FROM periodic_retry_policies WHERE func = %s",),
    # A count of 0 deletes the row.
    SetAttempts: (
        "WITH v(func, name, n) AS (VALUES (%s::bytea, %s::bytea, %s::int8)),"
        " d AS (DELETE FROM periodic_job_attempts a USING v"
        " WHERE a.func = v.func AND a.name = v.name AND v.n <= 0)"
        " INSERT INTO periodic_job_attempts (func, name, attempts)"
        " SELECT func, name, n FROM v WHERE n > 0"
        " ON CONFLICT (func, name) DO UPDATE SET attempts = EXCLUDED.attempts",
    ),
    PutFailed: (
        "INSERT INTO periodic_failed_jobs (func, name, workload, sched_at, count, timeout,"
        " attempts, failed_at, how, peer, data)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        " ON CONFLICT (func, name) DO UPDATE SET workload = EXCLUDED.workload,"
        " sched_at = EXCLUDED.sched_at, count = EXCLUDED.count, timeout = EXCLUDED.timeout,"
        " attempts = EXCLUDED.attempts, failed_at = EXCLUDED.failed_at, how = EXCLUDED.how,"
        " peer = EXCLUDED.peer, data = EXCLUDED.data",
    ),
    DeleteFailed: ("DELETE FROM periodic_failed_jobs WHERE func = %s AND name = %s",),
}

#: What DeleteFunc also deletes.
DELETE_FUNC: Final = (
    "DELETE FROM periodic_job_attempts WHERE func = %s",
    "DELETE FROM periodic_failed_jobs WHERE func = %s",
)

_POLICY_COLUMNS: Final = "func, max_attempts, backoff, base, cap, jitter"
_FAILED_COLUMNS: Final = (
    "func, name, workload, sched_at, count, timeout, attempts, failed_at, how, peer, data"
)
# Only counts of jobs that exist (a count outliving its job means nothing).
_ALL_ATTEMPTS: Final = (
    "SELECT a.func, a.name, a.attempts FROM periodic_job_attempts a"
    " JOIN periodic_jobs j ON j.func = a.func AND j.name = a.name"
)


def policy_of(row: Sequence[Any]) -> RetryPolicy:
    return RetryPolicy(int(row[1]), row[2], float(row[3]), float(row[4]), bool(row[5]))


def failed_of(row: Sequence[Any]) -> FailedJob:
    job = Job(row[0], row[1], row[2], row[3], row[4], row[5])
    return FailedJob(job, int(row[6]), float(row[7]), row[8], row[9], bytes(row[10]))


def read_all(cur: psycopg.Cursor[Any]) -> RemoteRetryState:
    """Every policy, count and failed job (``cur`` may be binary)."""
    cur.execute(f"SELECT {_POLICY_COLUMNS} FROM periodic_retry_policies")
    policies = {bytes(r[0]): policy_of(r) for r in cur.fetchall()}
    cur.execute(_ALL_ATTEMPTS)
    attempts = {(bytes(f), bytes(n)): int(a) for f, n, a in cur.fetchall()}
    cur.execute(f"SELECT {_FAILED_COLUMNS} FROM periodic_failed_jobs")
    failed = [failed_of(r) for r in cur.fetchall()]
    return RemoteRetryState(policies, attempts, failed)


def read_policies(cur: psycopg.Cursor[Any], funcs: list[bytes]) -> dict[bytes, RetryPolicy]:
    cur.execute(
        f"SELECT {_POLICY_COLUMNS} FROM periodic_retry_policies WHERE func = ANY(%s::bytea[])",
        (funcs,),
    )
    return {bytes(r[0]): policy_of(r) for r in cur.fetchall()}


def read_attempts(cur: psycopg.Cursor[Any], handles: list[Handle]) -> dict[Handle, int]:
    cur.execute(
        "SELECT a.func, a.name, a.attempts FROM periodic_job_attempts a"
        " JOIN unnest(%s::bytea[], %s::bytea[]) AS v(func, name)"
        " ON a.func = v.func AND a.name = v.name",
        (Bytea(h[0] for h in handles), Bytea(h[1] for h in handles)),
    )
    return {(bytes(f), bytes(n)): int(a) for f, n, a in cur.fetchall()}


def read_failed(cur: psycopg.Cursor[Any], handles: list[Handle]) -> dict[Handle, FailedJob]:
    cur.execute(
        f"SELECT {', '.join('f.' + c for c in _FAILED_COLUMNS.split(', '))}"
        " FROM periodic_failed_jobs f"
        " JOIN unnest(%s::bytea[], %s::bytea[]) AS v(func, name)"
        " ON f.func = v.func AND f.name = v.name",
        (Bytea(h[0] for h in handles), Bytea(h[1] for h in handles)),
    )
    return {(bytes(r[0]), bytes(r[1])): failed_of(r) for r in cur.fetchall()}
