"""KnownJobs (store/pg_known.py): which deletes a resync may report, without a database."""

from __future__ import annotations

from trio_periodic.protocol.job import Job
from trio_periodic.store.base import (
    DeleteFunc,
    DeleteJob,
    PutJob,
    RemoteDelete,
    RemoteDropFunc,
    RemoteJob,
)
from trio_periodic.store.pg_known import KnownJobs


def _put(known: KnownJobs, func: bytes, name: bytes) -> None:
    known.submitted(known.submitting([PutJob(Job(func, name))]))


def test_known_jobs_absent_from_the_table_are_reported_once() -> None:
    known = KnownJobs()
    known.load([Job(b"f", b"a"), Job(b"f", b"b"), Job(b"g", b"c")])
    assert len(known) == 3
    known.begin_resync()
    assert known.end_resync({b"f": {b"b", b"other"}}) == [
        RemoteDelete(b"f", b"a"),
        RemoteDelete(b"g", b"c"),
    ]
    assert len(known) == 1 and (b"f", b"b") in known
    known.begin_resync()
    assert known.end_resync({b"f": {b"b"}}) == []


def test_a_put_that_the_pages_may_have_missed_is_not_a_delete() -> None:
    known = KnownJobs()
    known.load([Job(b"f", b"old")])
    in_flight = known.submitting([PutJob(Job(b"f", b"slow")), PutJob(Job(b"f", b"old"))])
    known.begin_resync()
    _put(known, b"f", b"quick")  # committed after the pages were (possibly) read
    # None of them is in the pages: "old" was re-put, "slow" is still in flight.
    assert known.end_resync({}) == []
    known.submitted(in_flight)
    assert all(h in known for h in [(b"f", b"old"), (b"f", b"slow"), (b"f", b"quick")])
    # The next resync judges them like any other job.
    known.begin_resync()
    assert sorted(known.end_resync({b"f": {b"quick"}}), key=repr) == [
        RemoteDelete(b"f", b"old"),
        RemoteDelete(b"f", b"slow"),
    ]


def test_a_put_finished_before_the_resync_began_can_be_reported() -> None:
    known = KnownJobs()
    _put(known, b"f", b"x")  # committed, then deleted by another server
    known.begin_resync()
    assert known.end_resync({}) == [RemoteDelete(b"f", b"x")]


def test_our_deletes_and_other_servers_changes_are_followed() -> None:
    known = KnownJobs()
    known.load([Job(b"f", b"a"), Job(b"f", b"b"), Job(b"g", b"c")])
    known.submitted(known.submitting([DeleteJob(b"f", b"a")]))
    known.reported([RemoteJob(Job(b"h", b"d"), None), RemoteDelete(b"f", b"b")])
    assert (b"h", b"d") in known and (b"f", b"b") not in known
    known.reported([RemoteDropFunc(b"h")])
    known.submitted(known.submitting([DeleteFunc(b"g")]))
    assert len(known) == 0
    known.begin_resync()
    assert known.end_resync({}) == []


def test_an_aborted_resync_leaves_nothing_behind() -> None:
    known = KnownJobs()
    known.load([Job(b"f", b"a")])
    known.begin_resync()
    _put(known, b"f", b"b")
    known.abort_resync()
    known.begin_resync()  # the retry after the next reconnect
    assert sorted(known.end_resync({}), key=repr) == [
        RemoteDelete(b"f", b"a"),
        RemoteDelete(b"f", b"b"),
    ]
