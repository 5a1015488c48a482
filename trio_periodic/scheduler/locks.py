"""Locks a running job takes and gives back (ACQUIRE / RELEASE, SEMANTICS.md).

Theory of operation
-------------------
``LockTable`` is a mixin of ``Scheduler`` (``core.py``).  A lock has a
capacity; a running job that asks for a full lock is *parked* (state LOCKED,
its assignments dropped, so no stale deadline can run it twice) and queued
first come first served; a freed place goes to the oldest waiter, which goes
back to its queue keeping its place in time.  ``job_locks`` indexes the locks
by job, so a job that ends for any reason (done, failed, removed) lets go of
all of them (``_release_locks``).  ``self`` is typed by ``_Core``, the part of
the scheduler these methods use.
"""

from __future__ import annotations

from typing import Protocol

from trio_periodic.scheduler.state import (
    LOCKED,
    RUNNING,
    Assignment,
    FuncState,
    Handle,
    JobEntry,
    Lock,
)

__all__ = ["LockTable"]


class _Core(Protocol):
    funcs: dict[bytes, FuncState]
    locks: dict[bytes, Lock]
    job_locks: dict[Handle, set[bytes]]

    def _active(self, func: bytes, name: bytes) -> JobEntry | None: ...

    def _drop_assignment(self, assignment: Assignment) -> None: ...

    def _requeue(self, entry: JobEntry, run_at: float, release: bool = True) -> None: ...

    def _promote(self, lock: Lock) -> None: ...


class LockTable:
    """ACQUIRE and RELEASE, and letting go of a job's locks when it ends."""

    def acquire(self: _Core, lock_name: bytes, count: int, func: bytes, name: bytes) -> bool:
        """ACQUIRE by the running job ``func/name``: True when it holds the lock
        (or is not running: nothing to guard), False when it is parked."""
        handle = (func, name)
        entry = self._active(*handle)
        if entry is None or entry.state is not RUNNING:
            return True
        lock = self.locks.get(lock_name)
        if lock is None:
            lock = self.locks[lock_name] = Lock(capacity=count)
        lock.capacity = max(lock.capacity, count)
        if handle in lock.holders:
            return True
        if handle in lock.waiters:
            return False
        held = self.job_locks.get(handle)
        if held is None:
            held = self.job_locks[handle] = set()
        held.add(lock_name)
        if len(lock.holders) < lock.capacity:
            lock.holders.add(handle)
            return True
        lock.waiters.append(handle)
        # Park the job.  fix: its holders are dropped now, so no stale deadline
        # can fire later and run it twice.
        for assignment in list(entry.assignments):
            self._drop_assignment(assignment)
        fs = self.funcs[func]
        fs.nrunning -= 1
        fs.nlocked += 1
        entry.state = LOCKED
        return False

    def release(self: _Core, lock_name: bytes, func: bytes, name: bytes, now: float) -> None:
        """RELEASE: give the place to the next waiter; a parked job that lets
        go of the lock it waits for goes back to its queue."""
        handle = (func, name)
        lock = self.locks.get(lock_name)
        if lock is None:
            return
        entry = self._active(*handle)
        held = self.job_locks.get(handle)
        if held is not None:
            held.discard(lock_name)
            if not held:
                del self.job_locks[handle]
        if handle in lock.holders:
            lock.holders.discard(handle)
            self._promote(lock)
        elif handle in lock.waiters:
            lock.waiters.remove(handle)
            if entry is not None and entry.state is LOCKED:
                self._requeue(entry, now)
        if not lock.holders and not lock.waiters:
            del self.locks[lock_name]

    def _promote(self: _Core, lock: Lock) -> None:
        """Give freed places to waiting jobs, first come first served.  A
        promoted job keeps its place in time: it was due when it was parked."""
        while lock.waiters and len(lock.holders) < lock.capacity:
            handle = lock.waiters.pop(0)
            entry = self._active(*handle)
            if entry is None or entry.state is not LOCKED:
                continue  # gone meanwhile: the place goes to the next one
            lock.holders.add(handle)
            self._requeue(entry, entry.run_at)

    def _release_locks(self: _Core, handle: Handle) -> None:
        """The job ended: every lock it holds or waits for lets go of it."""
        if not self.job_locks:
            return
        held = self.job_locks.pop(handle, None)
        if held is None:
            return
        for lock_name in held:
            lock = self.locks.get(lock_name)
            if lock is None:
                continue
            if handle in lock.holders:
                lock.holders.discard(handle)
                self._promote(lock)
            elif handle in lock.waiters:
                lock.waiters.remove(handle)
            if not lock.holders and not lock.waiters:
                del self.locks[lock_name]
