"""Which jobs this server may hold, so that a resync can report jobs deleted elsewhere.

Theory of operation
-------------------
While the LISTEN connection is down, notifications are lost.  A job another
server changed meanwhile is read again by the resync (every row comes back
as a ``RemoteJob``), but a job another server *deleted* has no row left to
read: the resync can only tell it is gone by comparing the table with the
jobs this server holds.  The scheduler's job set is not the store's to see,
so the store keeps ``KnownJobs``: the (func, name) of every job the
scheduler may hold, maintained from what passes through the store:

* ``load``: the jobs ``open`` returned;
* ``submitting`` / ``submitted``: this server's own commits (a put is known
  once its commit finished, whatever the outcome; a delete is forgotten as
  soon as it is submitted);
* ``reported``: what the store told the scheduler other servers did.

It is a superset: a job forgotten by the scheduler alone (say, given up
after its row stayed missing) stays here until a resync reports it deleted,
which the scheduler takes as a no-op.

The resync reads the table a page at a time while this server keeps
committing, so "not in the table" can be a put that the pages missed.
``begin_resync`` is called before the first page is read; from then on
every put that finishes is *touched*, and ``end_resync`` reports as deleted
only the known jobs that are absent from the pages, were not touched and
have no put in flight.  A put that finished before ``begin_resync`` was
committed before any page was read, so its row, if absent, was deleted
after it: by another server (a true delete) or by us (already forgotten).

Every method runs on the trio thread: no locking.  Memory: one set entry
per job (the name bytes are shared with the scheduler's ``Job``): 42 MB and
0.2 s to load for a million jobs, 0.5 µs per put (measured).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from trio_periodic.protocol.job import Job
from trio_periodic.store.base import (
    Change,
    DeleteFunc,
    DeleteJob,
    PutJob,
    RemoteChange,
    RemoteDelete,
    RemoteDropFunc,
    RemoteJob,
)

Handle = tuple[bytes, bytes]


class KnownJobs:
    def __init__(self) -> None:
        #: func → names of the jobs the scheduler may hold.
        self._names: dict[bytes, set[bytes]] = {}
        #: Puts submitted and not finished yet, with how many of each.
        self._pending: dict[Handle, int] = {}
        #: While a resync runs: the puts that finished since it began.
        self._touched: set[Handle] | None = None

    def __len__(self) -> int:
        return sum(map(len, self._names.values()))

    def __contains__(self, handle: object) -> bool:
        if not isinstance(handle, tuple) or len(handle) != 2:
            return False
        return handle[1] in self._names.get(handle[0], ())

    def load(self, jobs: Iterable[Job]) -> None:
        names = self._names
        for job in jobs:
            bucket = names.get(job.func)
            if bucket is None:
                bucket = names[job.func] = set()
            bucket.add(job.name)

    # -- this server's commits -------------------------------------------------

    def submitting(self, changes: Sequence[Change]) -> list[Handle]:
        """Before a commit: forget what it deletes; return its puts (for ``submitted``)."""
        puts: list[Handle] = []
        for change in changes:
            if isinstance(change, PutJob):
                handle = (change.job.func, change.job.name)
                puts.append(handle)
                self._pending[handle] = self._pending.get(handle, 0) + 1
            elif isinstance(change, DeleteJob):
                self._forget(change.func, change.name)
            elif isinstance(change, DeleteFunc):
                self._names.pop(change.func, None)
        return puts

    def submitted(self, puts: Sequence[Handle]) -> None:
        """After the commit finished (committed, failed or withdrawn alike)."""
        pending, touched = self._pending, self._touched
        for handle in puts:
            left = pending[handle] - 1
            if left:
                pending[handle] = left
            else:
                del pending[handle]
            self._add(handle)
            if touched is not None:
                touched.add(handle)

    # -- other servers' changes ------------------------------------------------

    def reported(self, changes: Iterable[RemoteChange]) -> None:
        for change in changes:
            if isinstance(change, RemoteJob):
                self._add((change.job.func, change.job.name))
            elif isinstance(change, RemoteDelete):
                self._forget(change.func, change.name)
            elif isinstance(change, RemoteDropFunc):
                self._names.pop(change.func, None)

    # -- resync -------------------------------------------------------------------

    def begin_resync(self) -> None:
        """Call before the first page of the table is read."""
        self._touched = set()

    def abort_resync(self) -> None:
        self._touched = None

    def end_resync(self, present: dict[bytes, set[bytes]]) -> list[RemoteDelete]:
        """The known jobs absent from ``present`` (func → names, every row the
        pages held), forgotten and returned as deletes, except those a put
        may have brought back meanwhile."""
        touched, self._touched = self._touched or set(), None
        gone: list[RemoteDelete] = []
        for func in list(self._names):
            names = self._names[func]
            missing = names - present.get(func, set())
            for name in missing:
                handle = (func, name)
                if handle in touched or handle in self._pending:
                    continue
                names.discard(name)
                gone.append(RemoteDelete(func, name))
            if not names:
                del self._names[func]
        return gone

    def _add(self, handle: Handle) -> None:
        bucket = self._names.get(handle[0])
        if bucket is None:
            bucket = self._names[handle[0]] = set()
        bucket.add(handle[1])

    def _forget(self, func: bytes, name: bytes) -> None:
        bucket = self._names.get(func)
        if bucket is not None:
            bucket.discard(name)
            if not bucket:
                del self._names[func]
