"""Retry policies, attempt counting, the failed set and lease extension, on the
pure scheduler core: every call takes an explicit ``now``."""

from __future__ import annotations

import random

import pytest

from trio_periodic.protocol.job import Job
from trio_periodic.scheduler import retry
from trio_periodic.scheduler.core import RETRY_DELAY, Scheduler
from trio_periodic.scheduler.effects import Assign, Push
from trio_periodic.scheduler.state import ConnState, JobState
from trio_periodic.store.base import (
    DeleteFailed,
    DeleteFunc,
    DeleteJob,
    DeletePolicy,
    ExtendLease,
    FailedJob,
    PutFailed,
    PutJob,
    PutPolicy,
    RemoteAttempts,
    RemoteDelete,
    RemoteFailed,
    RemoteJob,
    RemotePolicy,
    RemoteRetryState,
    RetryPolicy,
    SetAttempts,
    StoredState,
)

T0 = 1_700_000_000.0


def worker(core: Scheduler, *funcs: bytes, slots: int = 1) -> ConnState:
    conn = core.connect(is_worker=True)
    for func in funcs:
        core.can_do(conn, func)
    for msgid in range(1, slots + 1):
        core.add_slot(conn, msgid)
    return conn


def assigns(core: Scheduler) -> list[Assign]:
    return [e for e in core.take_effects() if isinstance(e, Assign)]


def run_and_fail(core: Scheduler, w: ConnState, now: float, name: bytes = b"a") -> None:
    """Dispatch at ``now``, the worker takes the job and reports WORK_FAIL."""
    core.tick(now)
    [a] = assigns(core)
    assert a.job.name == name
    core.job_assigned(w, a.msgid, now)
    core.work_fail(w, b"f", name, now)
    core.add_slot(w, a.msgid)


def due_at(core: Scheduler, name: bytes = b"a") -> float:
    entry = core.entry(b"f", name)
    assert entry is not None and entry.state is JobState.PENDING
    return entry.run_at


# ---------------------------------------------------------------- backoff


def test_delay_fixed_exponential_and_cap() -> None:
    rng = random.Random(1)
    fixed = RetryPolicy(backoff="fixed", base=7)
    assert [retry.delay(fixed, n, rng) for n in (1, 2, 5)] == [7, 7, 7]
    exp = RetryPolicy(backoff="exponential", base=2)
    assert [retry.delay(exp, n, rng) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    capped = RetryPolicy(backoff="exponential", base=2, cap=10)
    assert [retry.delay(capped, n, rng) for n in (3, 4, 50)] == [8, 10, 10]
    # A huge n neither overflows nor passes the absolute bound.
    assert retry.delay(RetryPolicy(backoff="exponential", base=1), 5000, rng) == retry.MAX_SECONDS


def test_jitter_stays_between_half_and_all_and_varies() -> None:
    policy = RetryPolicy(backoff="exponential", base=4, jitter=True)
    rng = random.Random(42)
    waits = [retry.delay(policy, 3, rng) for _ in range(200)]  # 16 s without jitter
    assert all(8 <= w <= 16 for w in waits)
    assert len(set(waits)) > 100
    assert min(waits) < 9 and max(waits) > 15
    # Seeded: the same draws again.
    assert waits == [retry.delay(policy, 3, random.Random(42)) for _ in range(1)] + waits[1:]


def test_validate_refuses_bad_policies() -> None:
    assert retry.validate(RetryPolicy(3, "exponential", 1, 60)) is None
    assert retry.validate(RetryPolicy(backoff="linear")) is not None
    assert retry.validate(RetryPolicy(max_attempts=-1)) is not None
    assert retry.validate(RetryPolicy(base=float("nan"))) is not None
    assert retry.validate(RetryPolicy(cap=-1)) is not None


# ------------------------------------------------------- without a policy


def test_no_policy_keeps_reference_retry_and_no_count() -> None:
    core = Scheduler()
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    core.take_changes()
    for i in range(5):
        now = T0 + i * 10
        run_and_fail(core, w, now)
        assert due_at(core) == now + RETRY_DELAY
    assert core.attempts == {}
    assert not any(isinstance(c, SetAttempts) for c in core.take_changes())
    assert core.failed == {}
    assert core.retried == {b"f": 5}


# ---------------------------------------------------------- with a policy


def test_exponential_backoff_timed_from_the_failure_report() -> None:
    core = Scheduler()
    core.set_policy(b"f", RetryPolicy(backoff="exponential", base=2, cap=5))
    assert core.take_changes() == [
        PutPolicy(b"f", RetryPolicy(backoff="exponential", base=2, cap=5))
    ]
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    now = T0
    for n, wait in enumerate([2, 4, 5, 5], start=1):
        now += 0.25  # the report comes a little after the dispatch
        run_and_fail(core, w, now)
        assert due_at(core) == now + wait
        assert core.attempts[(b"f", b"a")] == n
        # Nothing runs before its time.
        core.tick(now + wait - 0.001)
        assert assigns(core) == []
        now += wait


def test_failure_count_is_written_after_the_requeue() -> None:
    core = Scheduler()
    core.shared = True  # the requeue writes a PutJob too
    core.set_policy(b"f", RetryPolicy(max_attempts=5))
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    core.take_changes()
    run_and_fail(core, w, T0)
    changes = [c for c in core.take_changes() if not isinstance(c, ExtendLease)]
    assert [type(c) for c in changes] == [PutJob, SetAttempts]
    assert changes[1] == SetAttempts(b"f", b"a", 1)


def test_max_attempts_moves_to_failed_set_with_what_we_know() -> None:
    core = Scheduler()
    core.describe = lambda conn: f"peer-{conn.conn_id}"
    core.set_policy(b"f", RetryPolicy(max_attempts=3, base=1))
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a", b"payload", timeout=30), T0)
    run_and_fail(core, w, T0)
    run_and_fail(core, w, T0 + 5)
    core.take_changes()
    # The third attempt sends data, then fails: it was the last one.
    core.tick(T0 + 10)
    [a] = assigns(core)
    core.job_assigned(w, a.msgid, T0 + 10)
    core.work_data(b"f", b"a", b"x" * 2000 + b"the end", w, T0 + 11)
    core.work_fail(w, b"f", b"a", T0 + 12)
    assert core.entry(b"f", b"a") is None
    [failed] = core.failed_jobs()
    assert failed.job.name == b"a" and failed.job.workload == b"payload"
    assert failed.job.timeout == 30
    assert failed.attempts == 3
    assert failed.failed_at == T0 + 12
    assert failed.how == "fail"
    assert failed.peer == f"peer-{w.conn_id}"
    assert len(failed.data) == retry.LAST_DATA and failed.data.endswith(b"the end")
    assert core.take_changes() == [
        SetAttempts(b"f", b"a", 0),
        DeleteJob(b"f", b"a"),
        PutFailed(failed),
    ]
    assert core.attempts == {}
    assert core.failed_total == {b"f": 1}
    # Not in STATUS, never assigned again.
    assert core.status(T0 + 20) == b"f,1,0,0,0,%d" % int(T0 + 20)
    core.tick(T0 + 1000)
    assert assigns(core) == []
    assert core.dump() == []


def test_max_attempts_one_means_no_retry() -> None:
    core = Scheduler()
    core.set_policy(b"f", RetryPolicy(max_attempts=1))
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    run_and_fail(core, w, T0)
    assert [f.attempts for f in core.failed_jobs()] == [1]


def test_timeout_counts_as_an_attempt_and_is_recorded() -> None:
    core = Scheduler()
    core.set_policy(b"f", RetryPolicy(max_attempts=2, base=1))
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a", timeout=10), T0)
    core.tick(T0)
    [a] = assigns(core)
    core.job_assigned(w, a.msgid, T0)
    core.tick(T0 + 10)  # timed out
    assert core.attempts == {(b"f", b"a"): 1}
    assert due_at(core) == T0 + 11
    core.add_slot(w, a.msgid)
    core.tick(T0 + 11)
    [a] = assigns(core)
    core.job_assigned(w, a.msgid, T0 + 11)
    core.tick(T0 + 21)
    [failed] = core.failed_jobs()
    assert (failed.attempts, failed.how, failed.failed_at) == (2, "timeout", T0 + 21)


def test_disconnect_does_not_count() -> None:
    core = Scheduler()
    core.set_policy(b"f", RetryPolicy(max_attempts=1, base=50))
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    core.tick(T0)
    [a] = assigns(core)
    core.job_assigned(w, a.msgid, T0)
    core.disconnect(w, T0 + 3)
    assert core.failed == {}
    assert core.attempts == {}
    assert due_at(core) == T0 + 3 + RETRY_DELAY


def test_sched_later_is_not_a_failure_and_keeps_the_count() -> None:
    core = Scheduler()
    core.set_policy(b"f", RetryPolicy(max_attempts=3))
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    run_and_fail(core, w, T0)
    core.tick(T0 + 2)
    [a] = assigns(core)
    core.job_assigned(w, a.msgid, T0 + 2)
    core.sched_later(w, b"f", b"a", 5, 0, T0 + 2)
    assert core.attempts == {(b"f", b"a"): 1}
    assert due_at(core) == T0 + 7


@pytest.mark.parametrize("how", ["done", "remove", "resubmit"])
def test_count_resets(how: str) -> None:
    core = Scheduler()
    core.set_policy(b"f", RetryPolicy(max_attempts=2))
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    run_and_fail(core, w, T0)
    core.take_changes()
    if how == "done":
        core.tick(T0 + 2)
        [a] = assigns(core)
        core.work_done(w, b"f", b"a", b"")
        core.add_slot(w, a.msgid)
    elif how == "remove":
        core.remove_job(b"f", b"a")
    if how != "resubmit":
        assert core.take_changes()[0] == SetAttempts(b"f", b"a", 0)
    core.submit(Job(b"f", b"a"), T0 + 3)
    if how == "resubmit":
        assert core.take_changes()[:2] == [
            SetAttempts(b"f", b"a", 0),
            PutJob(Job(b"f", b"a", sched_at=int(T0 + 3))),
        ]
    assert core.attempts == {}
    # A fresh start: one failure is allowed again before the failed set.
    run_and_fail(core, w, T0 + 3)
    assert core.failed == {}
    run_and_fail(core, w, T0 + 5)
    assert len(core.failed_jobs()) == 1


def test_done_without_any_failure_writes_no_count() -> None:
    core = Scheduler()
    core.set_policy(b"f", RetryPolicy(max_attempts=2))
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    core.tick(T0)
    [_a] = assigns(core)
    core.take_changes()
    core.work_done(w, b"f", b"a", b"")
    assert core.take_changes() == [DeleteJob(b"f", b"a")]


def test_run_job_waiter_still_gets_failed_at_once() -> None:
    core = Scheduler()
    core.set_policy(b"f", RetryPolicy(max_attempts=5))
    w = worker(core, b"f")
    client = core.connect(is_worker=False)
    assert core.run_job(client, 9, Job(b"f", b"a"), T0)
    core.tick(T0)
    [_a] = assigns(core)
    core.work_fail(w, b"f", b"a", T0)
    assert [(e.msgid, e.data) for e in core.take_effects() if isinstance(e, Push)] == [
        (9, b"failed")
    ]
    assert core.entry(b"f", b"a") is None and core.failed == {}


def test_policy_cleared_goes_back_to_reference_and_forgets_count() -> None:
    core = Scheduler()
    core.set_policy(b"f", RetryPolicy(max_attempts=2, base=30))
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a"), T0)
    run_and_fail(core, w, T0)
    assert core.clear_policy(b"f")
    assert not core.clear_policy(b"f")
    assert DeletePolicy(b"f") in core.take_changes()
    run_and_fail(core, w, T0 + 30)
    assert core.failed == {}
    assert core.attempts == {}
    assert SetAttempts(b"f", b"a", 0) in core.take_changes()
    assert due_at(core) == T0 + 30 + RETRY_DELAY


# -------------------------------------------------------------- failed set


def failed_core() -> tuple[Scheduler, ConnState]:
    core = Scheduler()
    core.set_policy(b"f", RetryPolicy(max_attempts=1))
    w = worker(core, b"f")
    for name in (b"a", b"b"):
        core.submit(Job(b"f", name, b"w-" + name), T0)
        run_and_fail(core, w, T0, name)
    core.take_changes()
    return core, w


def test_failed_retry_makes_it_pending_now_with_attempts_reset() -> None:
    core, w = failed_core()
    assert not core.retry_failed(b"f", b"zz", T0 + 100)
    assert core.retry_failed(b"f", b"a", T0 + 100)
    assert core.take_changes() == [
        DeleteFailed(b"f", b"a"),
        PutJob(Job(b"f", b"a", b"w-a", int(T0 + 100))),
    ]
    assert [f.job.name for f in core.failed_jobs()] == [b"b"]
    assert due_at(core) == T0 + 100
    run_and_fail(core, w, T0 + 100)
    assert [f.job.name for f in core.failed_jobs()] == [b"a", b"b"]


def test_submit_replaces_a_failed_job() -> None:
    core, _ = failed_core()
    core.submit(Job(b"f", b"a", b"new"), T0 + 50)
    assert core.take_changes() == [
        DeleteFailed(b"f", b"a"),
        PutJob(Job(b"f", b"a", b"new", int(T0 + 50))),
    ]
    assert [f.job.name for f in core.failed_jobs()] == [b"b"]
    entry = core.entry(b"f", b"a")
    assert entry is not None and entry.workload == b"new"


def test_purge_some_then_all() -> None:
    core, _ = failed_core()
    assert core.purge_failed(b"f", [b"a", b"nope"]) == [b"a"]
    assert core.take_changes() == [DeleteFailed(b"f", b"a")]
    core.submit(Job(b"f", b"c"), T0)
    core.take_changes()
    assert core.purge_failed(b"f") == [b"b"]
    assert core.failed == {}
    assert core.purge_failed(b"g") == []
    assert core.entry(b"f", b"c") is not None  # pending jobs are untouched


def test_drop_func_drops_failed_jobs_and_counts() -> None:
    core, w = failed_core()
    core.disconnect(w, T0)
    core.set_policy(b"f", RetryPolicy(max_attempts=3))
    core.submit(Job(b"f", b"c"), T0)
    core.attempts[(b"f", b"c")] = 1
    core.take_changes()
    assert core.drop_func(b"f")
    assert core.take_changes() == [DeleteFunc(b"f")]
    assert core.failed == {} and core.attempts == {}
    assert core.policies[b"f"].max_attempts == 3  # a policy is configuration: it stays


def test_failed_only_of_some_functions_and_sorted() -> None:
    core, _ = failed_core()
    assert [f.job.name for f in core.failed_jobs([b"f"])] == [b"a", b"b"]
    assert core.failed_jobs([b"g"]) == []


def test_restore_brings_back_policies_counts_and_failed_set() -> None:
    policy = RetryPolicy(4, "exponential", 1.5, 60, True)
    gone = FailedJob(Job(b"h", b"x", b"w"), 4, T0 - 5, "timeout", "1.2.3.4:5", b"data")
    state = StoredState(
        jobs=[Job(b"f", b"a")],
        policies={b"f": policy},
        attempts={(b"f", b"a"): 2, (b"f", b"nojob"): 1},
        failed=[gone],
    )
    core = Scheduler()
    core.restore(state, T0)
    assert core.take_changes() == []
    assert core.policies == {b"f": policy}
    assert core.attempts == {(b"f", b"a"): 2}
    assert core.failed_jobs() == [gone]
    assert b"h" in core.funcs  # DROP_FUNC can still find its failed jobs
    assert core.status(T0).count(b"\n") == 1  # f and h, h with 0 jobs
    w = worker(core, b"f")
    core.random.seed(3)
    run_and_fail(core, w, T0)
    assert core.attempts == {(b"f", b"a"): 3}
    wait = due_at(core) - T0
    assert 3 <= wait <= 6  # 1.5 * 2**2, jittered


# ------------------------------------------------------------- cluster


def test_remote_changes_mirror_policies_counts_and_failed() -> None:
    core = Scheduler()
    core.submit(Job(b"f", b"a"), T0)
    core.take_changes()
    policy = RetryPolicy(max_attempts=2)
    core.remote_apply([RemotePolicy(b"f", policy), RemoteAttempts(b"f", b"a", 1)], T0)
    assert core.policies == {b"f": policy} and core.attempts == {(b"f", b"a"): 1}
    # Another write of the job's row (a claim, a requeue) keeps the count.
    core.remote_apply([RemoteJob(Job(b"f", b"a"), None)], T0)
    assert core.attempts == {(b"f", b"a"): 1}
    failed = FailedJob(Job(b"f", b"a"), 2, T0, "fail", "peer", b"")
    core.remote_apply(
        [RemoteDelete(b"f", b"a"), RemoteAttempts(b"f", b"a", 0), RemoteFailed(b"f", b"a", failed)],
        T0,
    )
    assert core.entry(b"f", b"a") is None
    assert core.attempts == {} and core.failed_jobs() == [failed]
    core.remote_apply([RemoteFailed(b"f", b"a", None), RemotePolicy(b"f", None)], T0)
    assert core.failed == {} and core.policies == {}
    assert core.take_changes() == []
    core.remote_apply([RemoteRetryState({b"g": policy}, {(b"f", b"zz"): 3}, [failed])], T0)
    assert core.policies == {b"g": policy}
    # Its row comes later in the resync (or a RemoteDelete takes the count).
    assert core.attempts == {(b"f", b"zz"): 3}
    core.remote_apply([RemoteDelete(b"f", b"zz")], T0)
    assert core.attempts == {}
    assert core.failed_jobs() == [failed]


# ------------------------------------------------------------ lease extension


def test_work_data_pushes_the_deadline_a_full_timeout_from_now() -> None:
    core = Scheduler()
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a", timeout=10), T0)
    core.tick(T0)
    [a] = assigns(core)
    core.job_assigned(w, a.msgid, T0)
    for t in (8, 16, 24):  # long past the first 10 s
        core.work_data(b"f", b"a", b"", w, T0 + t)
        core.tick(T0 + t + 9.9)
        assert core.entry(b"f", b"a").state is JobState.RUNNING  # type: ignore[union-attr]
    assert core.next_wakeup() == T0 + 34
    core.tick(T0 + 34)
    entry = core.entry(b"f", b"a")
    assert entry is not None and entry.state is JobState.PENDING  # timed out at last


def test_work_data_before_job_assigned_waits_for_the_confirmation() -> None:
    core = Scheduler()
    core.shared = True
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a", timeout=10), T0)
    core.tick(T0)
    [a] = assigns(core)
    core.take_changes()
    core.work_data(b"f", b"a", b"early", w, T0 + 3)
    assert core.next_wakeup() == T0 + 10 and core.take_changes() == []
    core.job_assigned(w, a.msgid, T0 + 4)  # the full timeout from here
    assert core.next_wakeup() == T0 + 14
    assert core.take_changes() == [ExtendLease(b"f", b"a", T0 + 19)]
    core.work_data(b"f", b"a", b"", w, T0 + 6)
    assert core.next_wakeup() == T0 + 16
    assert core.take_changes() == [ExtendLease(b"f", b"a", T0 + 26)]  # 16 + 5 + 10 / 2


def test_work_data_from_another_connection_extends_nothing() -> None:
    core = Scheduler()
    w = worker(core, b"f")
    other = worker(core, b"g")
    core.submit(Job(b"f", b"a", timeout=10), T0)
    core.tick(T0)
    [a] = assigns(core)
    core.job_assigned(w, a.msgid, T0)
    core.work_data(b"f", b"a", b"x", other, T0 + 8)
    assert core.next_wakeup() == T0 + 10


def test_heartbeat_extends_and_reaches_no_subscriber_empty_data_still_does() -> None:
    core = Scheduler()
    w = worker(core, b"f")
    client = core.connect(is_worker=False)
    assert core.recv_data(client, 4, Job(b"f", b"a"), T0)
    core.submit(Job(b"f", b"a", timeout=10), T0)
    core.tick(T0)
    [a] = assigns(core)
    core.job_assigned(w, a.msgid, T0)
    assert core.heartbeat(w, b"f", b"a", T0 + 7)
    assert core.take_effects() == []
    assert core.next_wakeup() == T0 + 17
    assert not core.heartbeat(client, b"f", b"a", T0 + 8)  # not the holder
    assert core.next_wakeup() == T0 + 17
    # WORK_DATA, even empty, reaches the subscribers as in the reference (C45).
    core.work_data(b"f", b"a", b"", w, T0 + 8)
    core.work_data(b"f", b"a", b"chunk", w, T0 + 9)
    assert [(e.msgid, e.data) for e in core.take_effects() if isinstance(e, Push)] == [
        (4, b""),
        (4, b"chunk"),
    ]
    assert core.next_wakeup() == T0 + 19


def test_cluster_lease_extension_is_written_at_most_per_half_timeout() -> None:
    core = Scheduler()
    core.shared = True
    w = worker(core, b"f")
    core.submit(Job(b"f", b"a", timeout=10), T0)
    core.tick(T0)
    [a] = assigns(core)
    core.job_assigned(w, a.msgid, T0)
    core.take_changes()
    leases: list[float] = []
    for step in range(1, 41):  # data every 0.5 s for 20 s
        now = T0 + step * 0.5
        core.work_data(b"f", b"a", b"", w, now)
        leases += [c.until for c in core.take_changes() if isinstance(c, ExtendLease)]
        held = w.held[(b"f", b"a")]
        # The lease always outlasts the deadline by at least the grace.
        lease = leases[-1] if leases else T0 + 10 + 5
        assert lease >= held.deadline + 5
    assert 3 <= len(leases) <= 5  # about one per 5 s, not one per message
