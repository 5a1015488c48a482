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


Change = PutJob | DeleteJob | PutFunc | DeleteFunc | SetConfig | ExtendLease


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


RemoteChange = RemoteJob | RemoteDelete | RemoteDropFunc | RemoteConfig


@dataclass(slots=True)
class StoredState:
    """What a store hands back when it is opened."""

    jobs: list[Job] = field(default_factory=list)
    funcs: set[bytes] = field(default_factory=set)
    config: dict[str, int] = field(default_factory=dict)
    #: Cluster mode: jobs another server holds, handle → lease_until (epoch s).
    leases: dict[tuple[bytes, bytes], float] = field(default_factory=dict)


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
