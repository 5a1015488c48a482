"""The scheduler core, pure: every call takes ``now``; effects are inspected."""

from __future__ import annotations

import gc

import pytest

from trio_periodic.protocol.job import Job
from trio_periodic.scheduler.cluster import MISSING_ROW_TRIES
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.effects import Assign, Push
from trio_periodic.scheduler.state import ConnState, JobEntry, JobState
from trio_periodic.store.base import DeleteFunc, DeleteJob, PutFunc, PutJob, SetConfig

T0 = 1_700_000_000.0


def worker(core: Scheduler, *funcs: bytes, slots: int = 1, broadcast: bool = False) -> ConnState:
    conn = core.connect(is_worker=True)
    for func in funcs:
        core.can_do(conn, func, broadcast=broadcast)
    for msgid in range(1, slots + 1):
        core.add_slot(conn, msgid)
    return conn


def assigns(core: Scheduler) -> list[Assign]:
    return [e for e in core.take_effects() if isinstance(e, Assign)]


def pushes(core: Scheduler) -> list[Push]:
    return [e for e in core.take_effects() if isinstance(e, Push)]


def test_submit_records_change_and_status() -> None:
    core = Scheduler()
    core.submit(Job(b"f", b"a", b"hi"), T0)
    assert core.take_changes() == [PutJob(Job(b"f", b"a", b"hi", int(T0)))]
    assert core.status(T0) == b"f,0,1,0,0,%d" % int(T0)


def test_past_sched_at_becomes_now_and_is_assigned_with_effective_timeout() -> None:
    core = Scheduler()
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a", sched_at=0), T0 + 0.5)
    core.dispatch(T0 + 0.5)
    [a] = assigns(core)
    assert (a.conn, a.msgid) == (w, 1)
    assert a.job.sched_at == int(T0)
    assert a.job.timeout == 600


def test_future_job_waits_for_its_time() -> None:
    core = Scheduler()
    worker(core, b"f")
    core.submit(Job(b"f", b"a", sched_at=int(T0) + 3600), T0)
    core.dispatch(T0)
    assert assigns(core) == []
    assert core.next_wakeup() == T0 + 3600
    core.tick(T0 + 3599.999)
    assert assigns(core) == []
    core.tick(T0 + 3600)
    assert len(assigns(core)) == 1


def test_due_order_and_fifo_among_equal_times() -> None:
    core = Scheduler()
    for name, at in [(b"late", 10), (b"first", 5), (b"second", 5)]:
        core.submit(Job(b"f", name, sched_at=int(T0) + at), T0)
    w = worker(core, b"f", slots=3)
    core.tick(T0 + 20)
    assert [a.job.name for a in assigns(core)] == [b"first", b"second", b"late"]
    assert w.slots == []


def test_one_job_per_slot_and_duplicate_grab_ignored() -> None:
    core = Scheduler()
    w = worker(core, b"f", slots=1)
    core.add_slot(w, 1)  # the same msgid again: still one slot
    core.submit(Job(b"f", b"a"), T0)
    core.submit(Job(b"f", b"b"), T0)
    core.dispatch(T0)
    assert len(assigns(core)) == 1
    core.job_assigned(w, 1, T0)
    core.add_slot(w, 1)
    core.dispatch(T0)
    assert [a.job.name for a in assigns(core)] == [b"b"]


def test_grab_on_open_msgid_is_stale() -> None:
    core = Scheduler()
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    core.dispatch(T0)
    assigns(core)
    assert core.grab_wanted(w, 1) is False  # assignment on msgid 1 not confirmed yet
    core.job_assigned(w, 1, T0)
    assert core.grab_wanted(w, 1) is True


def test_only_registered_funcs_are_pushed() -> None:
    core = Scheduler()
    worker(core, b"other", slots=2)
    core.submit(Job(b"f", b"a"), T0)
    core.dispatch(T0)
    assert assigns(core) == []


def test_round_robin_across_workers() -> None:
    core = Scheduler()
    w1 = worker(core, b"f", slots=5)
    w2 = worker(core, b"f", slots=5)
    for i in range(6):
        core.submit(Job(b"f", b"%d" % i), T0)
    core.dispatch(T0)
    owners = [a.conn for a in assigns(core)]
    assert owners.count(w1) == 3 and owners.count(w2) == 3


def test_resubmit_replaces_pending_and_ignores_running() -> None:
    core = Scheduler()
    core.submit(Job(b"f", b"a", b"one"), T0)
    core.submit(Job(b"f", b"a", b"two"), T0 + 1)
    assert [j.workload for j in core.dump()] == [b"two"]
    w = worker(core, b"f")
    core.dispatch(T0 + 1)
    assert assigns(core)[0].job.workload == b"two"
    core.submit(Job(b"f", b"a", b"three"), T0 + 2)
    assert [j.workload for j in core.dump()] == [b"two"]
    core.work_done(w, b"f", b"a", b"")
    assert core.dump() == []


def test_done_fail_and_sched_later() -> None:
    core = Scheduler()
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    core.dispatch(T0)
    assigns(core)
    core.job_assigned(w, 1, T0)
    core.take_changes()
    core.work_fail(w, b"f", b"a", T0 + 10)
    assert core.entry(b"f", b"a").state is JobState.PENDING
    core.dispatch(T0 + 10)
    assert core.next_wakeup() == T0 + 11  # retried one second later, not earlier
    core.add_slot(w, 1)
    core.tick(T0 + 10.999)
    assert assigns(core) == []
    core.tick(T0 + 11)
    assert len(assigns(core)) == 1
    core.job_assigned(w, 1, T0 + 11)
    core.sched_later(w, b"f", b"a", 3, 2, T0 + 11.25)
    entry = core.entry(b"f", b"a")
    assert entry.run_at == T0 + 14.25 and entry.count == 2
    assert isinstance(core.take_changes()[-1], PutJob)
    core.add_slot(w, 1)
    core.tick(T0 + 14.25)
    [a] = assigns(core)
    assert a.job.count == 2
    core.work_done(w, b"f", b"a", b"ok")
    assert core.take_changes() == [DeleteJob(b"f", b"a")]
    assert core.status(T0 + 15) == b"f,1,0,0,0,%d" % int(T0 + 15)


def test_timeout_counts_from_assignment_and_confirmation() -> None:
    core = Scheduler()
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a", timeout=5), T0)
    core.dispatch(T0)
    assigns(core)
    core.job_assigned(w, 1, T0 + 2)  # confirmed late: the 5 s start now
    core.tick(T0 + 6.9)
    assert core.entry(b"f", b"a").state is JobState.RUNNING
    core.tick(T0 + 7)
    assert core.entry(b"f", b"a").state is JobState.PENDING
    assert w.held == {}


def test_late_fail_from_expired_holder_does_not_steal_job() -> None:
    core = Scheduler()
    w1 = worker(core, b"f")
    core.submit(Job(b"f", b"a", timeout=5), T0)
    core.dispatch(T0)
    assigns(core)
    core.job_assigned(w1, 1, T0)
    core.tick(T0 + 5)  # w1 ran out of time
    w2 = worker(core, b"f")
    core.tick(T0 + 6)
    [a] = assigns(core)
    assert a.conn is w2
    core.job_assigned(w2, 1, T0 + 6)
    core.work_fail(w1, b"f", b"a", T0 + 7)
    assert core.entry(b"f", b"a").state is JobState.RUNNING
    assert core.entry(b"f", b"a").assignments[0].conn is w2


def test_disconnect_hands_jobs_back() -> None:
    core = Scheduler()
    w1 = worker(core, b"f", slots=2)
    core.submit(Job(b"f", b"a"), T0)
    core.submit(Job(b"f", b"b"), T0)
    core.dispatch(T0)
    assigns(core)
    core.job_assigned(w1, 2, T0)  # b or a confirmed, the other not
    core.disconnect(w1, T0 + 1)
    assert core.worker_count(b"f") == 0
    assert all(e.state is JobState.PENDING for e in core.dump())
    w2 = worker(core, b"f", slots=2)
    core.tick(T0 + 2)
    assert len([a for a in assigns(core) if a.conn is w2]) == 2


def test_unassigned_returns_job() -> None:
    core = Scheduler()
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    core.dispatch(T0)
    assigns(core)
    core.job_unassigned(w, 1, T0)
    assert core.entry(b"f", b"a").state is JobState.PENDING
    core.add_slot(w, 1)
    core.dispatch(T0)
    assert len(assigns(core)) == 1


def test_run_job_result_and_failure() -> None:
    core = Scheduler()
    client = core.connect(is_worker=False)
    assert core.run_job(client, 9, Job(b"f", b"a"), T0) is False  # no worker
    w = worker(core, b"f")
    assert core.run_job(client, 9, Job(b"f", b"a"), T0)
    assert core.recv_data(client, 8, Job(b"f", b"a"), T0)
    core.dispatch(T0)
    assigns(core)
    core.work_data(b"f", b"a", b"chunk")
    core.work_done(w, b"f", b"a", b"result")
    got = [(p.msgid, p.data) for p in pushes(core)]
    assert got == [(8, b"chunk"), (8, b"EOF"), (9, b"result")]
    # failure path: the caller gets "failed", the job is deleted, not retried
    core.run_job(client, 10, Job(b"f", b"b"), T0)
    core.add_slot(w, 1)
    core.dispatch(T0)
    assigns(core)
    core.work_fail(w, b"f", b"b", T0)
    assert [(p.msgid, p.data) for p in pushes(core)] == [(10, b"failed")]
    assert core.entry(b"f", b"b") is None


def test_run_job_expires() -> None:
    core = Scheduler()
    client = core.connect(is_worker=False)
    core.connect(is_worker=True)
    w = core.connect(is_worker=True)
    core.can_do(w, b"f")  # registered, but no slot: cannot be assigned
    core.run_job(client, 3, Job(b"f", b"a", timeout=3), T0)
    core.tick(T0 + 2.9)
    assert pushes(core) == []
    core.tick(T0 + 3)
    assert [(p.msgid, p.data) for p in pushes(core)] == [(3, b"expired")]
    assert core.dump() == []


def test_remove_job_notifies_waiter() -> None:
    core = Scheduler()
    client = core.connect(is_worker=False)
    w = core.connect(is_worker=True)
    core.can_do(w, b"f")
    core.run_job(client, 4, Job(b"f", b"a"), T0)
    core.remove_job(b"f", b"a")
    assert [(p.msgid, p.data) for p in pushes(core)] == [(4, b"removed")]
    core.remove_job(b"f", b"missing")  # no error


def test_registration_counts_and_drop_func() -> None:
    core = Scheduler()
    w1 = core.connect(is_worker=True)
    w2 = core.connect(is_worker=True)
    core.can_do(w1, b"f")
    core.can_do(w1, b"f")
    assert core.worker_count(b"f") == 1
    core.can_do(w2, b"f")
    assert core.worker_count(b"f") == 2
    assert core.take_changes() == [PutFunc(b"f")]
    core.cant_do(w2, b"f")
    core.cant_do(w2, b"never")
    core.submit(Job(b"f", b"a"), T0)
    assert core.drop_func(b"f") is False
    core.disconnect(w1, T0)
    core.take_changes()
    assert core.drop_func(b"f") is True
    assert core.dump() == [] and core.status(T0) == b""
    assert core.take_changes() == [DeleteFunc(b"f")]


def test_drop_func_without_worker_ever() -> None:
    core = Scheduler()
    core.submit(Job(b"ls", b"a"), T0)
    core.submit(Job(b"ls5", b"b"), T0)
    assert core.drop_func(b"ls")
    assert [j.func for j in core.dump()] == [b"ls5"]


def test_locks_park_and_promote() -> None:
    core = Scheduler()
    w = worker(core, b"f", slots=3)
    core.submit(Job(b"f", b"a"), T0)
    core.submit(Job(b"f", b"b"), T0)
    core.submit(Job(b"f", b"c"), T0)
    core.dispatch(T0)
    for a in assigns(core):
        core.job_assigned(w, a.msgid, T0)
    assert core.acquire(b"db", 2, b"f", b"a") is True
    assert core.acquire(b"db", 2, b"f", b"b") is True
    assert core.acquire(b"db", 2, b"f", b"c") is False
    assert core.status(T0) == b"f,1,3,2,1,%d" % int(T0)
    assert (b"f", b"c") not in w.held  # parked: nothing left to expire later
    assert core.acquire(b"db", 1, b"f", b"unknown") is True
    core.work_done(w, b"f", b"a", b"")  # implicit release promotes c
    assert core.entry(b"f", b"c").state is JobState.PENDING
    core.add_slot(w, 1)
    core.dispatch(T0)
    [a] = assigns(core)
    assert a.job.name == b"c"
    assert core.acquire(b"db", 2, b"f", b"c") is True  # already a holder
    core.release(b"db", b"f", b"b", T0)
    core.release(b"db", b"f", b"c", T0)
    assert core.locks == {}


def test_broadcast_goes_to_every_worker() -> None:
    core = Scheduler()
    w1 = worker(core, b"f", broadcast=True)
    w2 = worker(core, b"f", broadcast=True)
    core.submit(Job(b"f", b"a"), T0)
    core.dispatch(T0)
    assert {a.conn for a in assigns(core)} == {w1, w2}
    core.work_done(w1, b"f", b"a", b"")
    assert core.dump() == []
    core.work_done(w2, b"f", b"a", b"")  # harmless


def test_config_get_set() -> None:
    core = Scheduler()
    assert core.config_get("timeout") == 600
    assert core.config_get("nope") == 0
    core.config_set("timeout", 30)
    core.config_set("nope", 5)
    assert core.config_get("timeout") == 30
    assert core.take_changes() == [SetConfig("timeout", 30)]


@pytest.mark.parametrize("n", [1, 50])
def test_load_is_submit(n: int) -> None:
    core = Scheduler()
    core.load([Job(b"f", b"%d" % i) for i in range(n)], T0)
    assert len(core.dump()) == n


# ---------------------------------------------------------------- cluster mode


def test_claim_refused_gives_slot_back_and_waits_for_lease() -> None:
    core = Scheduler()
    core.shared = True
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    core.submit(Job(b"f", b"b"), T0)
    core.dispatch(T0)
    [a] = assigns(core)
    core.claim_failed(w.held[(b"f", a.job.name)], T0 + 30, T0)
    assert core.status(T0) == b"f,1,2,1,0,%d" % int(T0)  # one held elsewhere
    core.dispatch(T0)
    [b] = assigns(core)
    assert b.job.name != a.job.name and b.msgid == 1  # the slot came back
    core.tick(T0 + 29.9)
    assert core.entry(b"f", a.job.name).state is JobState.ELSEWHERE
    core.tick(T0 + 30)  # the other server's lease ran out: ours to try again
    assert core.entry(b"f", a.job.name).state is JobState.PENDING


def test_claim_finding_no_row_retries_before_giving_the_job_up() -> None:
    """No row usually means our own submit is not committed yet: retry, with a
    growing pause; only a row that stays missing means the job is gone."""
    core = Scheduler()
    core.shared = True
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    now = T0
    for attempt in range(MISSING_ROW_TRIES):
        core.tick(now)
        [a] = assigns(core)
        core.claim_failed(w.held[(b"f", a.job.name)], None, now)
        assert w.slots == [1] and core.entry(b"f", b"a") is not None, attempt
        core.tick(now + 0.005)
        assert assigns(core) == []  # not hammered: it waits a little first
        now = core.next_wakeup()
    core.tick(now)
    [a] = assigns(core)
    core.claim_failed(w.held[(b"f", b"a")], None, now)
    assert core.dump() == [] and w.slots == [1]


def test_claim_succeeding_after_a_missing_row_runs_the_job() -> None:
    core = Scheduler()
    core.shared = True
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    core.dispatch(T0)
    assert len(assigns(core)) == 1
    core.claim_failed(w.held[(b"f", b"a")], None, T0)  # the row is not committed yet
    core.tick(core.next_wakeup())
    [again] = assigns(core)
    assert again.job.name == b"a" and again.conn is w


def test_remote_changes_are_mirrored_without_writing_back() -> None:
    from trio_periodic.store.base import RemoteConfig, RemoteDelete, RemoteDropFunc, RemoteJob

    core = Scheduler()
    core.shared = True
    core.remote_apply([RemoteJob(Job(b"f", b"a", b"x"), None)], T0)
    core.remote_apply([RemoteJob(Job(b"f", b"b"), T0 + 10)], T0)
    core.remote_apply([RemoteConfig("timeout", 42), RemoteConfig("bogus", 1)], T0)
    assert core.take_changes() == []
    assert core.status(T0) == b"f,0,2,1,0,%d" % int(T0)
    assert core.config_get("timeout") == 42
    core.remote_apply([RemoteDelete(b"f", b"a")], T0)
    assert [j.name for j in core.dump()] == [b"b"]
    core.remote_apply([RemoteDropFunc(b"f")], T0)
    assert core.dump() == [] and core.status(T0) == b""


def test_shared_mode_writes_hand_backs_and_lease_extensions() -> None:
    from trio_periodic.store.base import ExtendLease

    core = Scheduler()
    core.shared = True
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a", timeout=5), T0)
    core.dispatch(T0)
    assigns(core)
    core.take_changes()
    core.job_assigned(w, 1, T0 + 1)
    assert core.take_changes() == [ExtendLease(b"f", b"a", T0 + 1 + 5 + 5)]
    core.work_fail(w, b"f", b"a", T0 + 2)
    [change] = core.take_changes()
    assert isinstance(change, PutJob) and change.job.name == b"a"  # released for everyone


def test_equal_due_times_go_out_first_come_first_served_and_a_replaced_job_goes_last() -> None:
    core = Scheduler()
    for name in (b"a", b"b", b"c", b"d"):
        core.submit(Job(b"f", name, sched_at=int(T0) + 10), T0)
    core.submit(Job(b"f", b"b", b"again", sched_at=int(T0) + 10), T0)  # replaced: last
    core.remove_job(b"f", b"c")
    worker(core, b"f", slots=4)
    core.tick(T0 + 10)
    assert [(a.job.name, a.job.workload) for a in assigns(core)] == [
        (b"a", b""),
        (b"d", b""),
        (b"b", b"again"),
    ]


def test_values_out_of_the_compact_range_survive() -> None:
    core = Scheduler()
    big = Job(b"f", b"n" * 255, b"w", 2**62, 2**40, 2**35)
    core.submit(big, T0)
    assert [vars_of(j) for j in core.dump()] == [vars_of(big)]
    entry = core.entry(b"f", b"n" * 255)
    assert entry is not None and (entry.sched_at, entry.count, entry.timeout) == (
        2**62,
        2**40,
        2**35,
    )
    assert core.status(T0) == b"f,0,1,0,0,%d" % 2**62


def test_a_clock_at_or_before_the_epoch_still_orders_and_dispatches() -> None:
    core = Scheduler()
    w = worker(core, b"f", slots=3)
    core.submit(Job(b"f", b"late", sched_at=0), 0.0)  # due at 0.0
    core.submit(Job(b"f", b"early", sched_at=-20), -30.0)  # due at -20.0
    core.submit(Job(b"f", b"earliest", sched_at=-100), -100.0)  # due at -100.0
    core.tick(-50.0)
    assert [a.job.name for a in assigns(core)] == [b"earliest"]
    assert core.next_wakeup() == -20.0
    core.tick(0.0)
    assert [a.job.name for a in assigns(core)] == [b"early", b"late"]
    assert w.slots == []


def vars_of(job: Job) -> tuple[object, ...]:
    return (job.func, job.name, job.workload, job.sched_at, job.count, job.timeout)


def test_iter_jobs_makes_each_pending_entry_only_when_reached() -> None:
    """DUMP encodes from this generator: a big server never holds an entry per
    job at once (the entries of pending jobs are made one at a time)."""
    core = Scheduler()
    for i in range(50):
        core.submit(Job(b"iter-f", b"j%d" % i, b"w", 0), 1_000.0)
    core.submit(Job(b"iter-g", b"x"), 1_000.0)
    jobs = core.iter_jobs()
    first = next(jobs)
    gc.collect()
    alive = [o for o in gc.get_objects() if type(o) is JobEntry and o.func.startswith(b"iter-")]
    assert alive == [first]  # only the one handed out
    rest = list(jobs)
    assert sorted(j.name for j in [first, *rest]) == sorted(j.name for j in core.dump())
    assert len(rest) == 50
