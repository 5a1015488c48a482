"""``periodic retry …`` and ``periodic failed …``: retry policies and the failed
set (trio_periodic servers only; see ``server/ops/retry.py``)."""

from __future__ import annotations

from typing import Annotated, Literal

import cyclopts
from cyclopts import Parameter

from trio_periodic.cli.app import UsageError, app
from trio_periodic.cli.invocation import (
    FailedList,
    FailedPurge,
    FailedRetry,
    RetryClear,
    RetryGet,
    RetrySet,
)

retry_app = cyclopts.App(
    name="retry", help="Retry policy of a function: attempts and backoff (trio_periodic only)."
)
failed_app = cyclopts.App(
    name="failed", help="Jobs past their function's attempt limit (trio_periodic only)."
)
app.command(retry_app)
app.command(failed_app)


@retry_app.command(name="set")
def retry_set(
    func: str,
    /,
    *,
    max_attempts: Annotated[int, Parameter(name="--max-attempts")] = 0,
    backoff: Literal["fixed", "exponential"] = "fixed",
    base: float = 1.0,
    cap: float = 0.0,
    jitter: bool = False,
) -> RetrySet:
    """Give FUNC a retry policy (replacing any it had).

    Parameters
    ----------
    func
        Function name.
    max_attempts
        Attempts in all, the first included; past them a failing job moves to
        the failed set.  0: no limit.
    backoff
        fixed: wait BASE seconds after each failure; exponential: BASE·2^(n−1)
        seconds after the n-th failure.
    base
        Seconds (default 1).
    cap
        Longest wait in seconds (0: no cap).
    jitter
        Wait a random time between half the backoff and all of it.
    """
    if max_attempts < 0:
        raise UsageError("--max-attempts is 0 (no limit) or more")
    if base < 0 or cap < 0:
        raise UsageError("--base and --cap are seconds, 0 or more")
    return RetrySet(func, max_attempts, backoff, base, cap, jitter)


@retry_app.command(name="get")
def retry_get(func: str, /, *, json: bool = False) -> RetryGet:
    """Show FUNC's retry policy: its attempt limit and backoff.

    Parameters
    ----------
    func
        Function name.
    json
        Print one JSON document (policy null: the default, retry 1 s later forever).
    """
    return RetryGet(func, json=json)


@retry_app.command(name="clear")
def retry_clear(func: str, /) -> RetryClear:
    """Remove FUNC's retry policy: failed jobs retry 1 s later, forever.

    Parameters
    ----------
    func
        Function name.
    """
    return RetryClear(func)


@failed_app.command(name="list")
def failed_list(func: str | None = None, /, *, json: bool = False) -> FailedList:
    """List the failed set (of FUNC, or of every function).

    Parameters
    ----------
    func
        Function name.
    json
        Print one JSON document: a list of objects naming func and name.
    """
    return FailedList(func, json=json)


@failed_app.command(name="retry")
def failed_retry(func: str, /, *names: str) -> FailedRetry:
    """Put failed jobs of FUNC back in the pending set, due now, attempts reset.

    Parameters
    ----------
    func
        Function name.
    names
        Job names (at least one).
    """
    if not names:
        raise UsageError("name at least one job to retry")
    return FailedRetry(func, tuple(names))


@failed_app.command(name="purge")
def failed_purge(func: str, /, *names: str) -> FailedPurge:
    """Delete failed jobs of FUNC: the NAMEs given, or all of them.

    Parameters
    ----------
    func
        Function name.
    names
        Job names (none: every failed job of FUNC).
    """
    return FailedPurge(func, tuple(names))
