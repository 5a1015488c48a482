"""Group commit, shared by the SQLite and PostgreSQL stores.

Theory of operation
-------------------
``commit`` may be called by many tasks at once.  The calls are queued in call
order; the first caller that finds nobody committing becomes the *leader*: it
takes everything queued so far, applies it in one transaction on the worker
thread and wakes the callers whose batches were in it.  Callers that arrive
while a transaction is in flight wait in the queue; when the leader is done it
promotes the oldest of them, which takes the whole queue for the next
transaction.  There is no long-lived task, so ``open`` needs no nursery.
Batches are applied in queue order and a transaction starts only after the
previous one finished, so a change submitted later never lands before one
submitted earlier.

A failing transaction is rolled back.  If it held several callers' batches,
each batch is then retried in a transaction of its own (``split_outcomes``),
so one bad batch (say, an integer too large for a column) fails only its own
caller; a disk that is full fails them all.  Either way the store keeps
working.

Cancellation: a caller cancelled while its batch is still queued withdraws it
(it will never be written).  Once a transaction holding its batch has
started, the caller waits for the outcome, shielded, and reports it truthfully.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import chain, groupby
from typing import Any, Final

import trio

from trio_periodic.store.base import (
    Change,
    DeleteFailed,
    DeleteFunc,
    DeleteJob,
    DeletePolicy,
    DeleteSchedule,
    ExtendLease,
    PutFailed,
    PutFunc,
    PutJob,
    PutPolicy,
    PutSchedule,
    ScheduleRow,
    SetAttempts,
    SetConfig,
    StoreError,
)

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
        yield kind, [change_row(c) for c in run]


#: A schedule row's columns, in the order ``schedule_values`` gives them.
SCHEDULE_COLUMNS = (
    "func, name, cron, tz, workload, timeout, overlap, catch_up,"
    " last_tick, last_fired, fired, skipped, queued"
)


def schedule_values(row: ScheduleRow) -> tuple[Any, ...]:
    return (
        row.func, row.name, row.cron, row.tz, row.workload, row.timeout, row.overlap,
        row.catch_up, row.last_tick, row.last_fired, row.fired, row.skipped, row.queued,
    )  # fmt: skip


def schedule_row(values: Sequence[Any]) -> ScheduleRow:
    """The inverse of ``schedule_values`` (a row read with SCHEDULE_COLUMNS)."""
    func, name, cron, tz, workload, *ints = values
    timeout, overlap, catch_up, last_tick, last_fired, fired, skipped, queued = ints
    return ScheduleRow(
        bytes(func), bytes(name), cron, tz, bytes(workload), int(timeout), overlap, catch_up,
        int(last_tick), int(last_fired), int(fired), int(skipped), int(queued),
    )  # fmt: skip


def change_row(change: Change) -> tuple[Any, ...]:
    match change:
        case PutJob(job=j):
            return (j.func, j.name, j.sched_at, j.count, j.timeout, j.workload)
        case DeleteJob(func=func, name=name):
            return (func, name)
        case PutFunc(func=func) | DeleteFunc(func=func):
            return (func,)
        case SetConfig(key=key, value=value):
            return (key, value)
        case ExtendLease(func=func, name=name, until=until):
            return (func, name, until)
        case PutPolicy(func=func, policy=p):
            return (func, p.max_attempts, p.backoff, p.base, p.cap, p.jitter)
        case DeletePolicy(func=func):
            return (func,)
        case SetAttempts(func=func, name=name, attempts=attempts):
            return (func, name, attempts)
        case PutFailed(failed=f):
            j = f.job
            return (
                j.func, j.name, j.workload, j.sched_at, j.count, j.timeout,
                f.attempts, f.failed_at, f.how, f.peer, f.data,
            )  # fmt: skip
        case DeleteFailed(func=func, name=name):
            return (func, name)
        case PutSchedule(row=row):
            return schedule_values(row)
        case DeleteSchedule(func=func, name=name):
            return (func, name)
    raise TypeError(f"not a store change: {change!r}")


async def split_outcomes(
    batches: list[Sequence[Change]],
    run_one: Callable[[Iterable[Change]], Awaitable[None]],
    worth_splitting: Callable[[Exception], bool] = lambda exc: True,
) -> list[BaseException | None]:
    """Run all batches in one transaction; if that fails, each in its own.

    Splitting is skipped when ``worth_splitting`` says the error would fail
    every batch anyway (the database is unreachable).
    """
    try:
        await run_one(chain.from_iterable(batches))
        return [None] * len(batches)
    except Exception as exc:
        if len(batches) == 1 or not worth_splitting(exc):
            return [exc] * len(batches)
    outcome: list[BaseException | None] = []
    for batch in batches:
        try:
            await run_one(batch)
            outcome.append(None)
        except Exception as exc:
            outcome.append(exc)
    return outcome


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
