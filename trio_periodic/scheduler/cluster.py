"""Cluster mode: what the core does for a store shared by several servers.

Theory of operation
-------------------
``ClusterMirror`` is a mixin of ``Scheduler`` (``core.py``).  Every server
keeps the whole job set; a job another server holds is an entry in state
ELSEWHERE with its lease (``leases``, by expiry) and comes back to its queue
when the lease runs out or the other server reports.  The service claims due
jobs ahead (``due_pending``) and tells the core when a claim was refused
(``claim_failed``); what other servers change arrives as remote changes
(``remote_apply``), already in the store, so mirroring them writes nothing.
``self`` is typed by ``_Core``, the part of the scheduler these methods use.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Protocol

from sortedcontainers import SortedList

from trio_periodic.protocol.job import Job
from trio_periodic.scheduler.effects import RESULT_REMOVED
from trio_periodic.scheduler.record import fields, run_at_of
from trio_periodic.scheduler.schedules import ScheduleBook
from trio_periodic.scheduler.state import (
    ELSEWHERE,
    RUNNING,
    Assignment,
    ConnState,
    FuncState,
    Handle,
    JobEntry,
    JobState,
    Stored,
)
from trio_periodic.store.base import (
    Change,
    RemoteChange,
    RemoteConfig,
    RemoteDelete,
    RemoteDropFunc,
    RemoteJob,
    RemoteSchedule,
    RemoteScheduleDelete,
    RemoteScheduleSet,
)

__all__ = ["MISSING_ROW_TRIES", "ClusterMirror"]

#: Claims that find no row before a job is taken for deleted (about 10 s in all).
MISSING_ROW_TRIES = 12


class _Core(Protocol):
    funcs: dict[bytes, FuncState]
    config: dict[str, int]
    changes: list[Change]
    leases: SortedList
    attempts: dict[Handle, int]
    schedules: ScheduleBook
    _unclaimable: dict[Handle, int]

    def _next_seq(self) -> int: ...

    def _lookup(self, func: bytes, name: bytes) -> Stored | None: ...

    def _active(self, func: bytes, name: bytes) -> JobEntry | None: ...

    def _activate(
        self, fs: FuncState, record: bytes, run_at: float, state: JobState
    ) -> JobEntry: ...

    def _put(self, job: Job, now: float) -> None: ...

    def _delete(self, fs: FuncState, name: bytes) -> None: ...

    def _notify(self, func: bytes, name: bytes, result: bytes) -> None: ...

    def _drop_assignment(self, assignment: Assignment) -> None: ...

    def _leave_state(self, entry: JobEntry, fs: FuncState) -> None: ...

    def add_slot(self, conn: ConnState, msgid: int) -> None: ...

    def _hold_elsewhere(self, fs: FuncState, stored: Stored, lease_until: float) -> None: ...

    def _forget_retry_of(self, func: bytes) -> None: ...

    def _remote_retry(self, change: RemoteChange) -> None: ...


class ClusterMirror:
    """Jobs held elsewhere, refused claims, and other servers' changes."""

    def due_pending(
        self: _Core, now: float, limit: int, skip: Collection[Handle]
    ) -> list[tuple[bytes, bytes, int]]:
        """Cluster mode: up to ``limit`` pending jobs due by ``now``, earliest
        first per function, of functions with a worker here (not broadcast),
        except those in ``skip``: (func, name, effective timeout in seconds).
        The service claims them ahead of the slots that will take them."""
        out: list[tuple[bytes, bytes, int]] = []
        for fs in self.funcs.values():
            if not fs.workers or fs.broadcast:
                continue
            default = self.config["timeout"]
            for record in fs.queue:
                if run_at_of(record) > now or len(out) >= limit:
                    break
                name, _, _, _, timeout = fields(record)
                if (fs.name, name) not in skip:
                    out.append((fs.name, name, timeout if timeout > 0 else default))
            if len(out) >= limit:
                break
        return out

    def _hold_elsewhere(self: _Core, fs: FuncState, stored: Stored, lease_until: float) -> None:
        """Another server holds the job until ``lease_until``."""
        if isinstance(stored, bytes):
            fs.queue.remove(stored)
            entry = self._activate(fs, stored, run_at_of(stored), ELSEWHERE)
        else:
            entry = stored
            for assignment in list(entry.assignments):
                self._drop_assignment(assignment)
            self._leave_state(entry, fs)
            entry.state = ELSEWHERE
        fs.nrunning += 1
        entry.lease = (lease_until, self._next_seq(), entry)
        self.leases.add(entry.lease)

    def claim_failed(
        self: _Core, assignment: Assignment, lease_until: float | None, now: float
    ) -> None:
        """The store refused our claim: another server holds the job (until
        ``lease_until``) or it has no row (None).  The worker never saw the job;
        its slot is free again.

        No row usually means not *yet*: the submit that created the job here
        is still on its way to the store (jobs are dispatched before their
        commit).  A row another server deleted is reported by its
        notification, which deletes the job here.  So the claim is retried
        with a growing pause, and only a job that stays missing (a
        notification lost while the listener reconnected) is dropped."""
        entry = assignment.entry
        conn = assignment.conn
        self._drop_assignment(assignment)
        self.add_slot(conn, assignment.msgid)
        handle = (entry.func, entry.name)
        if entry.assignments or self._lookup(*handle) is not entry:
            return
        fs = self.funcs[entry.func]
        if lease_until is not None:
            self._unclaimable.pop(handle, None)
            self._hold_elsewhere(fs, entry, lease_until)
            return
        tries = self._unclaimable.get(handle, 0) + 1
        if tries > MISSING_ROW_TRIES:
            del self._unclaimable[handle]
            self.attempts.pop(handle, None)
            self._delete(fs, entry.name)
            self._notify(entry.func, entry.name, RESULT_REMOVED)
            return
        self._unclaimable[handle] = tries
        self._hold_elsewhere(fs, entry, now + min(0.01 * 2**tries, 2.0))

    def remote_apply(self: _Core, changes: Iterable[RemoteChange], now: float) -> None:
        """Mirror what other servers sharing the store did."""
        for change in changes:
            if isinstance(change, RemoteJob):
                job = change.job
                entry = self._active(job.func, job.name)
                if entry is not None and entry.state is RUNNING:
                    continue  # we hold it; our claim stands until we report
                # Counts change only by RemoteAttempts, never by a job's row.
                self._put(job, now)
                self.changes.pop()  # already in the store
                if change.lease_until is not None and change.lease_until > now:
                    held = self.funcs[job.func]
                    self._hold_elsewhere(held, held.jobs[job.name], change.lease_until)
            elif isinstance(change, RemoteDelete):
                self.attempts.pop((change.func, change.name), None)
                if self._lookup(change.func, change.name) is not None:
                    self._delete(self.funcs[change.func], change.name)
                # fix over the reference: a waiter here learns the job ended
                # elsewhere instead of waiting until it expires.
                self._notify(change.func, change.name, RESULT_REMOVED)
            elif isinstance(change, RemoteDropFunc):
                fs = self.funcs.get(change.func)
                if fs is None:
                    continue
                for name in list(fs.jobs):
                    self._delete(fs, name)
                    self._notify(change.func, name, RESULT_REMOVED)
                self._forget_retry_of(change.func)
                if not fs.workers:
                    del self.funcs[change.func]
            elif isinstance(change, RemoteConfig):
                if change.key in self.config:
                    self.config[change.key] = change.value
            elif isinstance(change, RemoteSchedule):
                self.schedules.mirror(change.row, now)
            elif isinstance(change, RemoteScheduleDelete):
                self.schedules.remove(change.func, change.name)
            elif isinstance(change, RemoteScheduleSet):
                self.schedules.replace_all(change.rows, now)
            else:
                self._remote_retry(change)
