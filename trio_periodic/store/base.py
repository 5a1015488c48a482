"""The Store interface: where acknowledged changes become durable.

Theory of operation
-------------------
The scheduler keeps the live job set in RAM and is the only source of truth
while the server runs.  A Store is its write-ahead log and its memory across
restarts: every change the server is about to acknowledge is handed to
``Store.commit`` and the acknowledgement goes out only after ``commit``
returned.  Many connections commit at the same time; a store is free to
merge concurrent calls into one transaction (group commit) as long as each
call returns only once its own changes are durable and batches are applied in
the order the calls were made.

At start the server calls ``open`` and gets back every stored job, the set of
known functions and the persisted configuration.  Jobs that were running when
the previous process stopped come back as plain pending jobs: running state,
locks and grab slots are never trusted across a restart.

Changes are small value objects so that a store can translate them into SQL
(or nothing at all, for the in-memory store).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import trio

from trio_periodic.protocol.job import Job


class StoreError(Exception):
    """A store could not be opened or could not make a change durable."""


@dataclass(frozen=True, slots=True)
class PutJob:
    """Insert or replace the job with this (func, name), state pending.

    Cluster mode: with ``lease`` (seconds from the commit) the same write
    claims the job for this server, so that a job handed out as soon as it
    is submitted costs one transaction, not two.  Stores that are not shared
    ignore it; see ``PostgresStore.put_claims_refused`` for the outcome."""

    job: Job
    lease: float | None = None


@dataclass(frozen=True, slots=True)
class DeleteJob:
    func: bytes
    name: bytes


@dataclass(frozen=True, slots=True)
class PutFunc:
    """Remember that a function exists (a worker registered it)."""

    func: bytes


@dataclass(frozen=True, slots=True)
class DeleteFunc:
    """Forget a function and delete every job it has."""

    func: bytes


@dataclass(frozen=True, slots=True)
class SetConfig:
    key: str
    value: int


@dataclass(frozen=True, slots=True)
class ExtendLease:
    """Cluster mode: this server still holds the job until ``until`` (epoch s).
    Stores that are not shared ignore it."""

    func: bytes
    name: bytes
    until: float


# Retry policies and the failed set (opt-in; see scheduler/retry.py).

#: Backoff kinds of a RetryPolicy.
BACKOFF_FIXED = "fixed"
BACKOFF_EXPONENTIAL = "exponential"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a function's failed jobs are retried.

    ``max_attempts`` counts every attempt, the first included (0: no limit).
    ``backoff`` is ``fixed`` (``base`` seconds after each failure) or
    ``exponential`` (``base * 2**(n-1)`` seconds after the n-th failure),
    capped at ``cap`` seconds (0: no cap).  With ``jitter`` the wait is drawn
    between half of it and all of it."""

    max_attempts: int = 0
    backoff: str = BACKOFF_FIXED
    base: float = 1.0
    cap: float = 0.0
    jitter: bool = False


#: How a job in the failed set failed the last time.
HOW_FAIL = "fail"
HOW_TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class FailedJob:
    """A job past its function's attempt limit, kept out of the pending set.

    ``failed_at`` is epoch seconds; ``peer`` names the worker that held it
    last; ``data`` is the tail of the last WORK_DATA it sent (bounded)."""

    job: Job
    attempts: int
    failed_at: float
    how: str = HOW_FAIL
    peer: str = ""
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class PutPolicy:
    func: bytes
    policy: RetryPolicy


@dataclass(frozen=True, slots=True)
class DeletePolicy:
    func: bytes


@dataclass(frozen=True, slots=True)
class SetAttempts:
    """The job has failed ``attempts`` times so far (0: forget the count).
    Kept apart from the job's row so that writing the job (PutJob) never
    touches it: only these changes and DeleteFunc do."""

    func: bytes
    name: bytes
    attempts: int


@dataclass(frozen=True, slots=True)
class PutFailed:
    """Insert or replace a job of the failed set (its pending row is deleted
    by a DeleteJob of the same batch)."""

    failed: FailedJob


@dataclass(frozen=True, slots=True)
class DeleteFailed:
    func: bytes
    name: bytes


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A schedule kept by the server, as stored (see scheduler/schedules.py).

    Times are whole seconds since the epoch; 0 means "never"."""

    func: bytes
    name: bytes
    cron: str  # five cron fields
    tz: str  # IANA zone name
    workload: bytes = b""
    timeout: int = 0  # seconds; 0 = the server's default
    overlap: str = "skip"  # "skip" | "queue"
    catch_up: str = "none"  # "none" | "last" | "all"
    #: The latest tick handled (fired, skipped or queued), by any server.
    last_tick: int = 0
    #: When the latest job was submitted for this schedule.
    last_fired: int = 0
    fired: int = 0
    skipped: int = 0
    #: Ticks waiting for the current run to end (overlap queue, catch-up all).
    queued: int = 0

    @property
    def handle(self) -> tuple[bytes, bytes]:
        return (self.func, self.name)


@dataclass(frozen=True, slots=True)
class PutSchedule:
    """Insert or replace a schedule (its definition and its counters)."""

    row: ScheduleRow


@dataclass(frozen=True, slots=True)
class DeleteSchedule:
    func: bytes
    name: bytes


Change = (
    PutJob
    | DeleteJob
    | PutFunc
    | DeleteFunc
    | SetConfig
    | ExtendLease
    | PutPolicy
    | DeletePolicy
    | SetAttempts
    | PutFailed
    | DeleteFailed
    | PutSchedule
    | DeleteSchedule
)


# What other servers sharing the store changed (cluster mode), as seen now.


@dataclass(frozen=True, slots=True)
class RemoteJob:
    """The job's row as it is now; ``lease_until`` is set while another server holds it."""

    job: Job
    lease_until: float | None


@dataclass(frozen=True, slots=True)
class RemoteDelete:
    func: bytes
    name: bytes


@dataclass(frozen=True, slots=True)
class RemoteDropFunc:
    func: bytes


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    key: str
    value: int


@dataclass(frozen=True, slots=True)
class RemotePolicy:
    """The function's retry policy as it is now (None: cleared)."""

    func: bytes
    policy: RetryPolicy | None


@dataclass(frozen=True, slots=True)
class RemoteAttempts:
    func: bytes
    name: bytes
    attempts: int


@dataclass(frozen=True, slots=True)
class RemoteFailed:
    """The failed-set entry of (func, name) as it is now (None: gone)."""

    func: bytes
    name: bytes
    failed: FailedJob | None


@dataclass(frozen=True, slots=True)
class RemoteRetryState:
    """Every policy, attempt count and failed job as they are now (after the
    LISTEN connection was lost: replaces what the server had)."""

    policies: dict[bytes, RetryPolicy]
    attempts: dict[tuple[bytes, bytes], int]
    failed: list[FailedJob]


@dataclass(frozen=True, slots=True)
class RemoteSchedule:
    """A schedule's row as it is now (added, changed or fired elsewhere)."""

    row: ScheduleRow


@dataclass(frozen=True, slots=True)
class RemoteScheduleDelete:
    func: bytes
    name: bytes


@dataclass(frozen=True, slots=True)
class RemoteScheduleSet:
    """Every schedule there is (after a reconnect): the others are gone."""

    rows: tuple[ScheduleRow, ...]


RemoteChange = (
    RemoteJob
    | RemoteDelete
    | RemoteDropFunc
    | RemoteConfig
    | RemotePolicy
    | RemoteAttempts
    | RemoteFailed
    | RemoteRetryState
    | RemoteSchedule
    | RemoteScheduleDelete
    | RemoteScheduleSet
)


@dataclass(slots=True)
class StoredState:
    """What a store hands back when it is opened."""

    jobs: list[Job] = field(default_factory=list)
    funcs: set[bytes] = field(default_factory=set)
    config: dict[str, int] = field(default_factory=dict)
    #: Cluster mode: jobs another server holds, handle → lease_until (epoch s).
    leases: dict[tuple[bytes, bytes], float] = field(default_factory=dict)
    #: Retry policies by function.
    policies: dict[bytes, RetryPolicy] = field(default_factory=dict)
    #: Failures so far of pending jobs of functions with a policy, by handle.
    attempts: dict[tuple[bytes, bytes], int] = field(default_factory=dict)
    #: The failed set.
    failed: list[FailedJob] = field(default_factory=list)
    schedules: list[ScheduleRow] = field(default_factory=list)


@runtime_checkable
class Store(Protocol):
    #: A short description for the startup log line, e.g. ``sqlite:/var/lib/p.db``.
    uri: str
    #: False for stores whose commit is a no-op; the hot path skips the await.
    durable: bool
    #: True when several servers share the store (PostgreSQL): jobs must be
    #: claimed before they are handed out (see PostgresStore.claim / watch).
    shared: bool

    async def open(self) -> StoredState:
        """Open (creating if needed) and return what is stored."""
        ...

    async def commit(self, changes: Sequence[Change]) -> None:
        """Make ``changes`` durable, in order.  Raises StoreError on failure."""
        ...

    async def aclose(self) -> None:
        """Flush and close.  Safe to call twice."""
        ...


@runtime_checkable
class SharedStore(Store, Protocol):
    """A store several servers share (``shared`` is True): cluster mode."""

    async def claim(
        self, claims: Sequence[tuple[bytes, bytes, float]]
    ) -> dict[tuple[bytes, bytes], float | None]:
        """Claim each (func, name) until its lease_until (epoch s), in one
        transaction; return the ones refused, mapped to the holder's lease_until
        or None when there is no row."""
        ...

    async def watch(
        self,
        on_changes: Callable[[list[RemoteChange]], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Report what other servers change, until cancelled."""
        ...

    def reread(self, handles: Sequence[tuple[bytes, bytes]]) -> None:
        """Have ``watch`` report these jobs' rows (or their absence) as they are
        now, soon: changes of them were held back while we wrote them."""
        ...


#: Given a schedule's row (locked) and whether its job exists, the new row and
#: the job to submit (None: none).  Pure; see scheduler/schedules.py.
ScheduleDecision = Callable[[ScheduleRow, bool], tuple[ScheduleRow, Job | None]]


@runtime_checkable
class ScheduleStore(Protocol):
    """A shared store that fires schedules: exactly one server per tick."""

    async def fire_schedule(
        self, func: bytes, name: bytes, decide: ScheduleDecision
    ) -> tuple[ScheduleRow, Job | None] | None:
        """In one transaction: lock the schedule's row, see whether its job has
        a row, apply ``decide`` and write what it changed (the new row, the
        job).  None when the schedule has no row."""
        ...
