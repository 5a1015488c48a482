"""Plain records the scheduler core keeps: jobs, functions, connections.

They hold no behaviour beyond bookkeeping helpers; the rules live in
``core.py``.  Every time value is a float of seconds since the Unix epoch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from sortedcontainers import SortedList

from trio_periodic.protocol.job import Job

Handle = tuple[bytes, bytes]


class JobState(IntEnum):
    PENDING = 0
    RUNNING = 1
    LOCKED = 2
    #: Claimed by another server sharing the store (PostgreSQL cluster mode).
    ELSEWHERE = 3


# Module-level aliases: attribute access on an Enum class is slow on the hot path.
PENDING = JobState.PENDING
RUNNING = JobState.RUNNING
LOCKED = JobState.LOCKED
ELSEWHERE = JobState.ELSEWHERE


# A shared empty list, never mutated: an entry gets its own on first use.
_NO_ASSIGNMENTS: list[Assignment] = []


class JobEntry(Job):
    """A job that is not pending: a worker holds it, it waits for a lock or
    another server holds it.  A pending job is a packed record instead
    (``record.py``); it becomes an entry when it leaves its queue and a record
    again when it goes back.

    It *is* a ``Job`` (so DUMP encodes it directly).  ``sched_at`` is the
    whole-second value clients see; ``run_at`` is the precise time it became
    due (sub-second precision is kept inside so that a delay of 1 s means
    1 s)."""

    __slots__ = ("assignments", "lease", "run_at", "state")

    def __init__(
        self,
        func: bytes,
        name: bytes,
        workload: bytes,
        sched_at: int,
        count: int,
        timeout: int,
        run_at: float,
    ) -> None:
        self.func = func
        self.name = name
        self.workload = workload
        self.sched_at = sched_at
        self.count = count
        self.timeout = timeout
        self.run_at = run_at
        self.state = PENDING
        # (lease_until, seq, self) while another server holds the job.
        self.lease: tuple[float, int, JobEntry] | None = None
        # The workers holding the job (more than one only for broadcast funcs);
        # a shared empty list until the first assignment.
        self.assignments: list[Assignment] = _NO_ASSIGNMENTS

    def snapshot(self) -> Job:
        """A plain Job with the current fields (for the store's write-ahead log)."""
        return Job(self.func, self.name, self.workload, self.sched_at, self.count, self.timeout)

    def __repr__(self) -> str:
        return f"<JobEntry {self.func!r}/{self.name!r} {self.state.name} at {self.run_at}>"


class Assignment:
    """A job handed to one worker on one grab msgid."""

    # ``last_data`` (the tail of the job's last WORK_DATA) and ``leased`` (the
    # cluster lease this server wrote, epoch s) are set only by WORK_DATA, and
    # read with getattr and a default: nothing more to do per assignment.
    __slots__ = (
        "confirmed",
        "conn",
        "deadline",
        "entry",
        "key",
        "last_data",
        "leased",
        "msgid",
        "started",
    )
    last_data: bytes
    leased: float

    def __init__(self, entry: JobEntry, conn: ConnState, msgid: int, started: float) -> None:
        self.entry = entry
        self.conn = conn
        self.msgid = msgid
        self.started = started
        self.confirmed = False
        self.deadline = 0.0
        # Its entry in Scheduler.deadlines while it has one.
        self.key: list[object] | None = None


#: A stored job: its record (``bytes``) while pending, else its entry.
Stored = bytes | JobEntry


@dataclass(eq=False, slots=True)
class FuncState:
    name: bytes
    # Every stored job of the function, by name.
    jobs: dict[bytes, Stored] = field(default_factory=dict)
    # The records of the pending jobs; as bytes they sort by (run_at, seq):
    # due time first, FIFO among equal run times.
    queue: SortedList = field(default_factory=SortedList)
    workers: list[ConnState] = field(default_factory=list)
    rr: int = 0
    broadcast: bool = False
    # The earliest wake-up already asked for in Scheduler.timers (epoch seconds).
    timer_at: float = float("inf")
    nrunning: int = 0
    nlocked: int = 0


class ConnState:
    """What the scheduler knows of one connection.  ``sink`` belongs to the
    service (it routes effects to the connection's writer); the core never
    looks at it, only drops it on disconnect (see ``Scheduler.disconnect``)."""

    __slots__ = (
        "closed",
        "conn_id",
        "funcs",
        "held",
        "is_worker",
        "open",
        "sink",
        "slot_set",
        "slots",
    )

    def __init__(self, conn_id: int, is_worker: bool, sink: Any = None) -> None:
        self.conn_id = conn_id
        self.is_worker = is_worker
        self.sink = sink
        self.closed = False
        self.funcs: set[bytes] = set()
        # Free grab slots (msgids), used last-in first-out like the reference.
        self.slots: list[int] = []
        self.slot_set: set[int] = set()
        # Assignments pushed on a msgid and not yet confirmed.
        self.open: dict[int, Assignment] = {}
        # Every job this connection holds, confirmed or not.
        self.held: dict[Handle, Assignment] = {}

    def __repr__(self) -> str:
        return f"<ConnState {self.conn_id} {'worker' if self.is_worker else 'client'}>"


@dataclass(eq=False, slots=True)
class Lock:
    capacity: int
    holders: set[Handle] = field(default_factory=set)
    waiters: list[Handle] = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Waiters:
    """RUN_JOB result waiters and RECV_DATA subscribers of one handle."""

    results: list[tuple[ConnState, int]] = field(default_factory=list)
    streams: list[tuple[ConnState, int]] = field(default_factory=list)
    expires_at: float = 0.0
    key: tuple[float, int, Handle] | None = None
