"""Retry policies and the failed set as operations (``retry set/get/clear``,
``failed list/retry/purge``); the rules live in ``scheduler/retry.py`` and the core.

Every operation names its function, and a non-admin identity may only touch
functions of its own (``OpContext.check_func``); ``failed_list`` without a
function lists only the caller's.  Times are epoch seconds, with the local
date-time beside them for people.
"""

from __future__ import annotations

import math
from typing import Any

from trio_periodic.scheduler import retry
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.server.dashboard import quoted
from trio_periodic.server.ops.base import Op, OpContext, OpError, name_arg, text
from trio_periodic.server.ops.explain import local_time
from trio_periodic.store.base import BACKOFF_FIXED, FailedJob, RetryPolicy

__all__ = ["OPS", "failed_json", "overview", "policy_json"]


def policy_json(func: bytes, policy: RetryPolicy | None) -> dict[str, Any]:
    """What ``retry get`` answers; ``policy`` null means the reference
    behaviour (retry 1 s later, forever)."""
    return {
        "func": text(func),
        "policy": None if policy is None else retry.describe(policy),
    }


def failed_json(f: FailedJob) -> dict[str, Any]:
    job = f.job
    return {
        "func": text(job.func),
        "name": text(job.name),
        "workload": text(job.workload),
        "attempts": f.attempts,
        "failed_at": f.failed_at,
        "failed_at_local": local_time(f.failed_at),
        "how": f.how,
        "worker": f.peer,
        "last_data": text(f.data),
        "count": job.count,
        "timeout": job.timeout,
        # Percent-encoded, for URLs (the dashboard's buttons).
        "func_quoted": quoted(job.func),
        "name_quoted": quoted(job.name),
    }


def overview(core: Scheduler, visible: frozenset[bytes] | None) -> dict[str, Any]:
    """For the dashboard's overview: failed jobs per function and every
    retry policy, of the functions the caller may see."""
    return {
        "failed": {
            text(func): len(names)
            for func, names in sorted(core.failed.items())
            if visible is None or func in visible
        },
        "policies": {
            text(func): retry.describe(policy)
            for func, policy in sorted(core.policies.items())
            if visible is None or func in visible
        },
    }


def _number(args: dict[str, Any], key: str, default: float) -> float:
    value = args.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OpError(f"{key} must be a number of seconds")
    return float(value)


def _policy_arg(args: dict[str, Any]) -> RetryPolicy:
    attempts = args.get("max_attempts", 0)
    if attempts is None:
        attempts = 0
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        raise OpError("max_attempts must be an integer (0: no limit)")
    backoff = args.get("backoff", BACKOFF_FIXED) or BACKOFF_FIXED
    if not isinstance(backoff, str):
        raise OpError("backoff must be a string")
    jitter = args.get("jitter", False)
    if not isinstance(jitter, bool):
        raise OpError("jitter must be true or false")
    policy = RetryPolicy(
        attempts, backoff, _number(args, "base", 1.0), _number(args, "cap", 0.0), jitter
    )
    why = retry.validate(policy)
    if why is not None:
        raise OpError(why)
    return policy


def _names_arg(args: dict[str, Any], required: bool) -> list[bytes] | None:
    names = args.get("names")
    if names is None and not required:
        return None
    if not isinstance(names, list) or (required and not names):
        raise OpError("names must be a list of job names" + (" (at least one)" if required else ""))
    return [name_arg({"name": n}, "name") for n in names]


def _retry_set(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    func = name_arg(args, "func")
    ctx.check_func(func)
    policy = _policy_arg(args)
    ctx.core.set_policy(func, policy)
    return policy_json(func, policy)


def _retry_get(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    func = name_arg(args, "func")
    ctx.check_func(func)
    return policy_json(func, ctx.core.policies.get(func))


def _retry_clear(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    func = name_arg(args, "func")
    ctx.check_func(func)
    return {"func": text(func), "cleared": ctx.core.clear_policy(func)}


def _failed_list(ctx: OpContext, args: dict[str, Any]) -> list[dict[str, Any]]:
    only = ctx.visible
    if args.get("func") is not None:
        func = name_arg(args, "func")
        ctx.check_func(func)
        only = frozenset({func})
    return [failed_json(f) for f in ctx.core.failed_jobs(only)]


def _failed_retry(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    func = name_arg(args, "func")
    ctx.check_func(func)
    names = _names_arg(args, required=True)
    assert names is not None
    missing = [n for n in names if n not in ctx.core.failed.get(func, {})]
    if missing:
        raise OpError(
            f"not in the failed set: {', '.join(text(func) + '/' + text(n) for n in missing)}",
            404,
        )
    for name in names:
        ctx.core.retry_failed(func, name, ctx.now)
    return {"func": text(func), "retried": [text(n) for n in names]}


def _failed_purge(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    func = name_arg(args, "func")
    ctx.check_func(func)
    names = _names_arg(args, required=False)
    gone = ctx.core.purge_failed(func, names)
    return {"func": text(func), "purged": [text(n) for n in gone]}


def _heartbeat(ctx: OpContext, args: dict[str, Any]) -> dict[str, Any]:
    """A worker holding the job is still at it: its timeout starts over."""
    func = name_arg(args, "func")
    name = name_arg(args, "name")
    ctx.check_func(func)
    if ctx.conn is None or not ctx.core.heartbeat(ctx.conn, func, name, ctx.now):
        raise OpError(f"this connection does not hold {text(func)}/{text(name)}", 409)
    return {"func": text(func), "name": text(name)}


OPS: dict[str, Op] = {
    "heartbeat": Op(_heartbeat, writes=True),
    "retry_set": Op(_retry_set, writes=True),
    "retry_get": Op(_retry_get),
    "retry_clear": Op(_retry_clear, writes=True),
    "failed_list": Op(_failed_list),
    "failed_retry": Op(_failed_retry, writes=True),
    "failed_purge": Op(_failed_purge, writes=True),
}
