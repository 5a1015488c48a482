"""Stateful model check of the scheduler core (hypothesis).

Random sequences of worker connections, CAN_DO / CANT_DO, GRAB_JOB slots,
submits, JOB_ASSIGNED / JOB_UNASSIGNED, WORK_DONE / WORK_FAIL / SCHED_LATER
(from the holder or from anyone, late reports included), REMOVE_JOB,
DROP_FUNC, disconnects and time steps (``tick``) run against the core and
against a small model that only knows, per job, when it may run next and who
holds it.  The model follows SEMANTICS.md: a held job's timeout counts from
the assignment and again from JOB_ASSIGNED; a failure (WORK_FAIL by the
holder, a timeout, the disconnect of a worker that confirmed it) retries it
one second later; an unconfirmed job goes back at once and unchanged.

Invariants, after every step (each step ends like a server batch: dispatch
and take the effects):

* a job is never held by two worker connections at once: a JOB_ASSIGN for a
  job whose holder's timeout has not run out is an error;
* every JOB_ASSIGN goes to an open worker that registered the function, on a
  msgid it armed with GRAB_JOB, for a job that is due;
* no job is lost or invented: the core holds exactly the model's live jobs,
  each pending (queued) or running (held by exactly the model's holders);
* no job starves: a due, unheld job never waits while a worker for its
  function has a free slot;
* the core's per-function counters agree with its jobs.

Broadcast functions, locks, RUN_JOB waiters and cluster mode are out of this
model's scope (they have their own tests in test_scheduler_core.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from trio_periodic.protocol.job import Job
from trio_periodic.scheduler.core import RETRY_DELAY, Scheduler
from trio_periodic.scheduler.effects import Assign
from trio_periodic.scheduler.state import PENDING, RUNNING, ConnState

T0 = 1_700_000_000.0
#: The server's default job timeout in this test (seconds); short, so that
#: jobs submitted without a timeout expire within an example too.
DEFAULT_TIMEOUT = 5
FUNCS = [b"f", b"g"]
NAMES = [b"a", b"b", b"c"]
MSGIDS = [1, 2, 3]

funcs = st.sampled_from(FUNCS)
names = st.sampled_from(NAMES)
msgids = st.sampled_from(MSGIDS)
#: Which open worker a step is about (taken modulo the number of workers).
picks = st.integers(0, 7)

Handle = tuple[bytes, bytes]


@dataclass
class Holder:
    conn: ConnState
    msgid: int
    timeout: int
    deadline: float
    confirmed: bool = False


@dataclass
class ModelJob:
    #: Earliest time (epoch seconds) the job may be handed out.
    not_before: float
    #: The timeout its assignments carry (its own, or the server default).
    timeout: int
    holders: list[Holder] = field(default_factory=list)


@dataclass
class ModelWorker:
    conn: ConnState
    funcs: set[bytes] = field(default_factory=set)
    armed: set[int] = field(default_factory=set)
    #: Every job it was ever handed (for late, stale reports).
    seen: list[Handle] = field(default_factory=list)


class SchedulerMachine(RuleBasedStateMachine):
    @initialize(workers=st.booleans())
    def start(self, workers: bool) -> None:
        self.core = Scheduler()
        self.core.config["timeout"] = DEFAULT_TIMEOUT
        self.now = T0
        self.jobs: dict[Handle, ModelJob] = {}
        self.workers: list[ModelWorker] = []
        #: Functions the core knows (CAN_DO or a submit created them).
        self.known: set[bytes] = set()
        self.assigned = 0
        # Half the examples start with two workers for both functions, each with
        # a slot armed, so that the steps go to jobs rather than to set-up.
        for _ in range(2 if workers else 0):
            self.connect(set(FUNCS))
            self.grab(len(self.workers) - 1, 1)

    # ------------------------------------------------------------ helpers

    def worker(self, pick: int) -> ModelWorker:
        return self.workers[pick % len(self.workers)]

    def end_batch(self) -> None:
        """What the service does after each batch of core calls."""
        self.core.dispatch(self.now)
        for effect in self.core.take_effects():
            assert isinstance(effect, Assign), effect  # no RUN_JOB / RECV_DATA here
            self.check_assign(effect)
        self.core.take_changes()

    def check_assign(self, effect: Assign) -> None:
        job = effect.job
        handle = (job.func, job.name)
        model = self.jobs.get(handle)
        assert model is not None, f"assigned a job that does not exist: {handle}"
        assert not model.holders, (
            f"{handle} handed to conn {effect.conn.conn_id} while conn "
            f"{model.holders[0].conn.conn_id} holds it with time left "
            f"(deadline {model.holders[0].deadline - T0}, now {self.now - T0})"
        )
        assert self.now >= model.not_before, f"{handle} ran early"
        worker = next((w for w in self.workers if w.conn is effect.conn), None)
        assert worker is not None, "assigned to a closed connection"
        assert job.func in worker.funcs, "assigned a function the worker does not do"
        assert effect.msgid in worker.armed, "assigned on a msgid that was not armed"
        worker.armed.discard(effect.msgid)
        if handle not in worker.seen:
            worker.seen.append(handle)
        assert job.timeout == model.timeout
        model.holders.append(Holder(effect.conn, effect.msgid, job.timeout, self.now + job.timeout))
        self.assigned += 1

    def holder(self, conn: ConnState, handle: Handle) -> Holder | None:
        model = self.jobs.get(handle)
        if model is None:
            return None
        return next((h for h in model.holders if h.conn is conn), None)

    def open_holder(self, conn: ConnState, msgid: int) -> tuple[ModelJob, Holder] | None:
        """The unconfirmed assignment on ``msgid`` of ``conn``, if any."""
        for model in self.jobs.values():
            for h in model.holders:
                if h.conn is conn and h.msgid == msgid and not h.confirmed:
                    return model, h
        return None

    def failed(self, model: ModelJob, delay: float = RETRY_DELAY) -> None:
        """The job goes back to pending, ``delay`` seconds from now."""
        model.not_before = self.now + delay

    # Few rules, each with a "kind": hypothesis switches whole rules off at
    # random per example (swarm testing), and with a dozen small rules most
    # examples lack one link of a job's life (grab, confirm, report...).

    # -------------------------------------------------------- connections

    @precondition(lambda self: len(self.workers) < 4)
    @rule(funcs=st.sets(funcs, min_size=1, max_size=2))
    def connect(self, funcs: set[bytes]) -> None:
        conn = self.core.connect(is_worker=True)
        worker = ModelWorker(conn)
        self.workers.append(worker)
        for func in sorted(funcs):
            self.core.can_do(conn, func)
            worker.funcs.add(func)
            self.known.add(func)
        self.end_batch()

    @precondition(lambda self: self.workers)
    @rule(pick=picks, func=funcs, can=st.booleans())
    def can_do(self, pick: int, func: bytes, can: bool) -> None:
        """CAN_DO or CANT_DO."""
        worker = self.worker(pick)
        if can:
            self.core.can_do(worker.conn, func)
            worker.funcs.add(func)
            self.known.add(func)
        else:
            self.core.cant_do(worker.conn, func)
            worker.funcs.discard(func)
        self.end_batch()

    @precondition(lambda self: self.workers)
    @rule(pick=picks, reconnect=st.booleans())
    def disconnect(self, pick: int, reconnect: bool) -> None:
        worker = self.worker(pick)
        self.workers.remove(worker)
        for model in self.jobs.values():
            for h in list(model.holders):
                if h.conn is worker.conn:
                    model.holders.remove(h)
                    if h.confirmed:
                        self.failed(model)  # it may have run: a failure
                    # unconfirmed: back at once, unchanged
        self.core.disconnect(worker.conn, self.now)
        self.end_batch()
        if reconnect:  # as real workers do: a new connection, one slot armed
            self.connect(set(worker.funcs) or set(FUNCS))
            self.grab(len(self.workers) - 1, 1)

    @precondition(lambda self: self.workers)
    @rule(pick=picks, msgid=msgids)
    def grab(self, pick: int, msgid: int) -> None:
        worker = self.worker(pick)
        free = [m for m in MSGIDS if m not in worker.armed and not self.open_holder(worker.conn, m)]
        if free and pick % 4:  # mostly a msgid that is free; else maybe a busy one
            msgid = free[pick % len(free)]
        wanted = msgid not in worker.armed and self.open_holder(worker.conn, msgid) is None
        assert self.core.grab_wanted(worker.conn, msgid) == wanted
        if wanted:
            self.core.add_slot(worker.conn, msgid)
            worker.armed.add(msgid)
        self.end_batch()

    # ------------------------------------------------------------ clients

    @rule(
        func=funcs,
        name=names,
        later=st.sampled_from([None, 0, 1, 2, 5]),
        timeout=st.sampled_from([0, 1, 2, 3, 8]),
    )
    def submit(self, func: bytes, name: bytes, later: int | None, timeout: int) -> None:
        sched_at = 0 if later is None else int(self.now) + later
        handle = (func, name)
        self.core.submit(Job(func, name, b"w", sched_at, 0, timeout), self.now)
        self.known.add(func)
        model = self.jobs.get(handle)
        if model is None or not model.holders:  # a running job is not replaced
            effective = timeout if timeout > 0 else DEFAULT_TIMEOUT
            self.jobs[handle] = ModelJob(max(float(sched_at), self.now), effective)
        self.end_batch()

    @rule(func=funcs, name=names, drop=st.booleans())
    def remove(self, func: bytes, name: bytes, drop: bool) -> None:
        """REMOVE_JOB, or DROP_FUNC (only done for a function without workers)."""
        if not drop:
            self.core.remove_job(func, name)
            self.jobs.pop((func, name), None)
        else:
            expected = func in self.known and not any(func in w.funcs for w in self.workers)
            assert self.core.drop_func(func) == expected
            if expected:
                self.known.discard(func)
                for handle in [h for h in self.jobs if h[0] == func]:
                    del self.jobs[handle]
        self.end_batch()

    # ------------------------------------------------------------ workers

    def report_target(self, pick: int, func: bytes, name: bytes) -> tuple[ModelWorker, Handle]:
        """Mostly a job and the worker holding it; else a job some worker held
        once (a late report, perhaps after its timeout ran out) or any job."""
        held = [(w, h) for w in self.workers for h in w.seen if self.holder(w.conn, h)]
        if held and pick % 4:
            return held[pick % len(held)]
        worker = self.worker(pick)
        if worker.seen and pick % 2:
            return worker, worker.seen[pick % len(worker.seen)]
        return worker, (func, name)

    @precondition(lambda self: self.workers)
    @rule(pick=picks, msgid=msgids, accept=st.sampled_from([True, True, True, False]))
    def confirm(self, pick: int, msgid: int, accept: bool) -> None:
        """JOB_ASSIGNED (the timeout restarts) or JOB_UNASSIGNED (back at once),
        mostly on a msgid with an assignment not confirmed yet."""
        unconfirmed = [h for m in self.jobs.values() for h in m.holders if not h.confirmed]
        if unconfirmed and pick % 4:
            h = unconfirmed[pick % len(unconfirmed)]
            worker = next(w for w in self.workers if w.conn is h.conn)
            msgid = h.msgid
        else:
            worker = self.worker(pick)
        found = self.open_holder(worker.conn, msgid)
        if accept:
            if found is not None:
                found[1].confirmed = True
                found[1].deadline = self.now + found[1].timeout
            self.core.job_assigned(worker.conn, msgid, self.now)
        else:
            if found is not None:
                found[0].holders.remove(found[1])
            self.core.job_unassigned(worker.conn, msgid, self.now)
        self.end_batch()

    @precondition(lambda self: self.workers)
    @rule(
        pick=picks,
        func=funcs,
        name=names,
        how=st.sampled_from(["done", "fail", "later"]),
        delay=st.integers(0, 4),
        step=st.integers(-1, 1),
        regrab=st.booleans(),
    )
    def report(
        self, pick: int, func: bytes, name: bytes, how: str, delay: int, step: int, regrab: bool
    ) -> None:
        """WORK_DONE (finishes the job, whoever sends it), WORK_FAIL or
        SCHED_LATER (only the holder's count; from anyone else ignored), and
        often a GRAB_JOB on the freed msgid right after, as workers do."""
        worker, handle = self.report_target(pick, func, name)
        h = self.holder(worker.conn, handle)
        if how == "done":
            self.core.work_done(worker.conn, *handle, b"out")
            self.jobs.pop(handle, None)
        else:
            if h is not None:
                model = self.jobs[handle]
                model.holders.remove(h)
                self.failed(model, RETRY_DELAY if how == "fail" else delay)
            if how == "fail":
                self.core.work_fail(worker.conn, *handle, self.now)
            else:
                self.core.sched_later(worker.conn, *handle, delay, step, self.now)
        self.end_batch()
        if regrab and h is not None:
            self.grab(self.workers.index(worker), h.msgid)

    # --------------------------------------------------------------- time

    @rule(dt=st.sampled_from([0.25, 0.5, 0.5, 1.0, 1.0, 1.5, 2.0, 3.0, 6.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        for model in self.jobs.values():
            for h in list(model.holders):
                if h.deadline <= self.now:
                    # Its timeout ran out: a failure, retried a second later.
                    model.holders.remove(h)
                    self.failed(model)
        self.core.tick(self.now)
        self.end_batch()

    # --------------------------------------------------------- invariants

    @invariant()
    def no_job_lost_or_invented(self) -> None:
        if not hasattr(self, "core"):
            return
        core_jobs = {(e.func, e.name): e for e in self.core.dump()}
        assert set(core_jobs) == set(self.jobs)
        for handle, entry in core_jobs.items():
            model = self.jobs[handle]
            holders = {(a.conn.conn_id, a.msgid) for a in entry.assignments}
            assert holders == {(h.conn.conn_id, h.msgid) for h in model.holders}, handle
            if model.holders:
                assert entry.state is RUNNING, (handle, entry.state)
            else:
                assert entry.state is PENDING, (handle, entry.state)
                # A pending job is stored as a packed record, queued by due time.
                fs = self.core.funcs[handle[0]]
                stored = fs.jobs[handle[1]]
                assert isinstance(stored, bytes) and stored in fs.queue

    @invariant()
    def connections_agree(self) -> None:
        for worker in getattr(self, "workers", []):
            conn = worker.conn
            assert set(conn.slots) == worker.armed == conn.slot_set
            assert conn.funcs == worker.funcs
            held = {h for h, m in self.jobs.items() if any(x.conn is conn for x in m.holders)}
            assert set(conn.held) == held

    @invariant()
    def no_job_starves(self) -> None:
        for handle, model in getattr(self, "jobs", {}).items():
            if model.holders or model.not_before > self.now:
                continue
            idle = [w for w in self.workers if handle[0] in w.funcs and w.armed]
            assert not idle, f"{handle} is due but waits while a worker has a free slot"

    @invariant()
    def counters_agree(self) -> None:
        if not hasattr(self, "core"):
            return
        for fs in self.core.funcs.values():
            states = [PENDING if isinstance(e, bytes) else e.state for e in fs.jobs.values()]
            assert fs.nrunning == states.count(RUNNING)
            assert len(fs.queue) == states.count(PENDING)
            assert fs.nlocked == 0


SchedulerMachine.TestCase.settings = settings(
    max_examples=300,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestScheduler = SchedulerMachine.TestCase
