"""What the scheduler core asks the outside world to do.

The core never touches a socket; it appends these to ``Scheduler.effects`` and
the service routes them to the connections' writers.
"""

from __future__ import annotations

from dataclasses import dataclass

from trio_periodic.protocol.job import Job
from trio_periodic.scheduler.state import ConnState


@dataclass(slots=True)
class Assign:
    """Send JOB_ASSIGN(job) to ``conn`` on grab msgid ``msgid``."""

    conn: ConnState
    msgid: int
    job: Job


@dataclass(slots=True)
class Push:
    """Send DATA(data) to ``conn`` on ``msgid`` (RUN_JOB results, RECV_DATA chunks)."""

    conn: ConnState
    msgid: int
    data: bytes


Effect = Assign | Push

#: What a RUN_JOB waiter hears when the job ends without a result.
RESULT_FAILED = b"failed"
RESULT_REMOVED = b"removed"
RESULT_EXPIRED = b"expired"
