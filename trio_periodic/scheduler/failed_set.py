"""The failed set and retry policies as the scheduler keeps them: the
administration (``retry set/clear``, ``failed list/retry/purge``), a restart's
restore and the mirror of other servers' changes.

Theory of operation
-------------------
``FailedSet`` is a mixin of ``Scheduler`` (``core.py``): these methods change
the same state as the rest of the core (``policies``, ``attempts``,
``failed``, the jobs) and append their store changes to ``changes``, but none
of them is on the way of a job from submit to done, so they live here.  The
failure path itself (``_fail``, the move to the failed set) is in the core.
``self`` is typed by ``_Core``, the part of the scheduler they use.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Protocol

from trio_periodic.protocol.job import Job
from trio_periodic.scheduler.state import ConnState, FuncState, Handle, Stored
from trio_periodic.store.base import (
    Change,
    DeleteFailed,
    DeletePolicy,
    FailedJob,
    PutPolicy,
    RemoteAttempts,
    RemoteChange,
    RemoteFailed,
    RemotePolicy,
    RemoteRetryState,
    RetryPolicy,
)

__all__ = ["FailedSet"]


class _Core(Protocol):
    policies: dict[bytes, RetryPolicy]
    attempts: dict[Handle, int]
    failed: dict[bytes, dict[bytes, FailedJob]]
    changes: list[Change]
    counters: dict[str, int]
    describe: Callable[[ConnState], str]

    def _func(self, name: bytes) -> FuncState: ...

    def _lookup(self, func: bytes, name: bytes) -> Stored | None: ...

    def _put(self, job: Job, now: float) -> None: ...

    def _restore_retry(
        self,
        policies: dict[bytes, RetryPolicy],
        attempts: dict[Handle, int],
        failed: Iterable[FailedJob],
        only_known: bool = True,
    ) -> None: ...


class FailedSet:
    """Retry policies and the failed set: the methods off the hot path."""

    def _restore_retry(
        self: _Core,
        policies: dict[bytes, RetryPolicy],
        attempts: dict[Handle, int],
        failed: Iterable[FailedJob],
        only_known: bool = True,
    ) -> None:
        """Take the stored retry state: at start (``only_known``: counts of jobs
        we have; one outliving its job means nothing), or at a cluster resync,
        where the jobs' rows come after it (a count of a job deleted meanwhile
        goes with the RemoteDelete the resync ends with)."""
        self.policies = dict(policies)
        self.attempts = {
            h: n for h, n in attempts.items() if not only_known or self._lookup(*h) is not None
        }
        by_func: dict[bytes, dict[bytes, FailedJob]] = {}
        for f in failed:
            self._func(f.job.func)  # a function with only failed jobs is still known
            by_func.setdefault(f.job.func, {})[f.job.name] = f
        self.failed = by_func

    def _forget_retry_of(self: _Core, func: bytes) -> None:
        """The function was dropped: its counts and failed jobs go with it."""
        self.failed.pop(func, None)
        if self.attempts:
            for handle in [h for h in self.attempts if h[0] == func]:
                del self.attempts[handle]

    def _remote_retry(self: _Core, change: RemoteChange) -> None:
        """Mirror another server's retry state change (cluster mode)."""
        if isinstance(change, RemotePolicy):
            if change.policy is None:
                self.policies.pop(change.func, None)
            else:
                self.policies[change.func] = change.policy
        elif isinstance(change, RemoteAttempts):
            handle = (change.func, change.name)
            if change.attempts > 0 and self._lookup(*handle) is not None:
                self.attempts[handle] = change.attempts
            else:
                self.attempts.pop(handle, None)
        elif isinstance(change, RemoteFailed):
            names = self.failed.get(change.func)
            if change.failed is None:
                if names is not None:
                    names.pop(change.name, None)
                    if not names:
                        del self.failed[change.func]
            else:
                self._func(change.func)
                self.failed.setdefault(change.func, {})[change.name] = change.failed
        elif isinstance(change, RemoteRetryState):
            self._restore_retry(change.policies, change.attempts, change.failed, False)

    def set_policy(self: _Core, func: bytes, policy: RetryPolicy) -> None:
        """``retry set``: the policy applies from the next failure on; counts
        so far are kept."""
        self.policies[func] = policy
        self.changes.append(PutPolicy(func, policy))

    def clear_policy(self: _Core, func: bytes) -> bool:
        """``retry clear``: back to the reference behaviour.  False if none was set."""
        if self.policies.pop(func, None) is None:
            return False
        self.changes.append(DeletePolicy(func))
        return True

    def failed_jobs(self: _Core, only: Collection[bytes] | None = None) -> list[FailedJob]:
        """The failed set, by function then name; ``only`` limits the functions."""
        return [
            self.failed[func][name]
            for func in sorted(self.failed)
            if only is None or func in only
            for name in sorted(self.failed[func])
        ]

    def retry_failed(self: _Core, func: bytes, name: bytes, now: float) -> bool:
        """``failed retry``: the job is pending again, due now, with every
        attempt ahead of it.  False if it is not in the failed set."""
        names = self.failed.get(func)
        failed = names.pop(name, None) if names is not None else None
        if failed is None:
            return False
        if not names:
            del self.failed[func]
        self.changes.append(DeleteFailed(func, name))
        job = failed.job
        self.counters["submitted"] += 1
        self._put(Job(func, name, job.workload, 0, job.count, job.timeout), now)
        return True

    def purge_failed(self: _Core, func: bytes, names: Iterable[bytes] | None = None) -> list[bytes]:
        """``failed purge``: delete failed jobs (every one of ``func`` when
        ``names`` is None); the names deleted."""
        have = self.failed.get(func)
        if have is None:
            return []
        gone = [n for n in (list(have) if names is None else names) if have.pop(n, None)]
        if not have:
            del self.failed[func]
        self.changes.extend(DeleteFailed(func, n) for n in gone)
        return gone
