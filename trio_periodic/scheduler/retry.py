"""Retry policies: how long a failed job waits, and when it stops being retried.

Theory of operation
-------------------
Without a policy a function keeps the reference behaviour: a failed job runs
again ``RETRY_DELAY`` (1 s) later, forever.  A function with a policy
(``RetryPolicy``, kept in ``Scheduler.policies``) counts the failures of each
of its jobs in ``Scheduler.attempts``, a dict handle → failures so far that
holds only jobs that failed at least once: the many pending jobs that never
failed cost nothing, and the hot path (submit → assign → done) only checks
whether that dict is empty.  The count is durable (``SetAttempts``), so a
restart does not give a job its attempts back.

When a job of such a function fails for the n-th time:

* ``max_attempts`` (every attempt, the first included; 0: no limit) reached:
  the job leaves the pending set for the failed set (``FailedJob``: the job,
  n, when, how, the worker's peer and the tail of its last WORK_DATA).
* else it waits ``delay(policy, n)`` seconds from the failure report:
  ``base`` (fixed) or ``base * 2**(n-1)`` (exponential), at most ``cap``
  (when not 0); with ``jitter`` a uniform draw between half of that and all
  of it, from ``Scheduler.random`` (seed it for deterministic tests).

What counts as a failure: WORK_FAIL and a timeout (the worker held the job
past its deadline).  A worker that disconnects while holding a job does not
count (the job is retried after RETRY_DELAY, as the reference does); neither
does SCHED_LATER.  The count ends (``SetAttempts(..., 0)``) with WORK_DONE,
REMOVE_JOB, an expired RUN_JOB wait, a resubmission and a move to the failed
set.
"""

from __future__ import annotations

import random
from typing import Final

from trio_periodic.store.base import BACKOFF_EXPONENTIAL, BACKOFF_FIXED, RetryPolicy

__all__ = ["BACKOFFS", "HOW_DISCONNECT", "LAST_DATA", "delay", "validate"]

BACKOFFS: Final = (BACKOFF_FIXED, BACKOFF_EXPONENTIAL)
#: A worker vanished while holding the job: not an attempt.
HOW_DISCONNECT: Final = "disconnect"
#: Bytes of a job's last WORK_DATA kept for the failed set (its tail).
LAST_DATA: Final = 1024
#: Doubling stops there: 2**60 seconds is far past any cap that makes sense.
_MAX_DOUBLINGS: Final = 60
#: Longest wait a policy may ask for (seconds): about 31 years, whole seconds
#: of sched_at still fit every store.
MAX_SECONDS: Final = 1e9


def delay(policy: RetryPolicy, failures: int, rng: random.Random) -> float:
    """Seconds to wait after the ``failures``-th failure (``failures`` >= 1)."""
    wait = policy.base
    if policy.backoff == BACKOFF_EXPONENTIAL:
        wait = policy.base * 2.0 ** min(max(failures - 1, 0), _MAX_DOUBLINGS)
    if policy.cap > 0:
        wait = min(wait, policy.cap)
    wait = min(wait, MAX_SECONDS)
    if policy.jitter:
        wait = rng.uniform(wait / 2, wait)
    return wait


def validate(policy: RetryPolicy) -> str | None:
    """Why ``policy`` is unusable, or None."""
    if policy.backoff not in BACKOFFS:
        return f"backoff must be one of {', '.join(BACKOFFS)}, not {policy.backoff!r}"
    if not 0 <= policy.max_attempts <= 0xFFFF_FFFF:
        return "max_attempts must be between 0 (no limit) and 4294967295"
    for name, value in (("base", policy.base), ("cap", policy.cap)):
        if not 0 <= value <= MAX_SECONDS:  # also refuses NaN
            return f"{name} must be between 0 and {MAX_SECONDS:g} seconds"
    return None


def describe(policy: RetryPolicy) -> dict[str, object]:
    """The policy as JSON-ready fields (what ``retry get`` shows)."""
    return {
        "max_attempts": policy.max_attempts,
        "backoff": policy.backoff,
        "base": policy.base,
        "cap": policy.cap,
        "jitter": policy.jitter,
    }
