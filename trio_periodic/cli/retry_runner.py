"""Running ``periodic retry …`` and ``periodic failed …`` (see ``retry_commands.py``)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from trio_periodic.cli.invocation import (
    FailedList,
    FailedPurge,
    FailedRetry,
    RetryClear,
    RetryGet,
    RetrySet,
)
from trio_periodic.client import Client

__all__ = ["RETRY_ACTIONS", "describe_policy"]


def _out(line: str) -> None:
    print(line, flush=True)


def _seconds(value: float) -> str:
    return f"{value:g} s"


def describe_policy(policy: dict[str, Any] | None) -> list[str]:
    """``retry get`` in words: the attempt limit, then the backoff."""
    if policy is None:
        return ["attempts: no limit", "backoff: fixed 1 s (the default: no policy set)"]
    limit = policy["max_attempts"]
    lines = [f"attempts: {limit if limit else 'no limit'}"]
    if policy["backoff"] == "exponential":
        how = f"exponential {_seconds(policy['base'])}·2^(n-1)"
    else:
        how = f"fixed {_seconds(policy['base'])}"
    if policy["cap"]:
        how += f", at most {_seconds(policy['cap'])}"
    if policy["jitter"]:
        how += ", with jitter"
    return [*lines, f"backoff: {how}"]


async def _retry_set(client: Client, cmd: RetrySet) -> int:
    await client.retry_set(
        cmd.func, max_attempts=cmd.max_attempts, backoff=cmd.backoff,
        base=cmd.base, cap=cmd.cap, jitter=cmd.jitter,
    )  # fmt: skip
    return 0


async def _retry_get(client: Client, cmd: RetryGet) -> int:
    policy = await client.retry_get(cmd.func)
    if cmd.json:
        _out(json.dumps({"func": cmd.func, "policy": policy}, indent=2))
        return 0
    for line in describe_policy(policy):
        _out(line)
    return 0


async def _retry_clear(client: Client, cmd: RetryClear) -> int:
    await client.retry_clear(cmd.func)
    return 0


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


async def _failed_list(client: Client, cmd: FailedList) -> int:
    jobs = await client.failed_list(cmd.func)
    if cmd.json:
        _out(json.dumps(jobs, indent=2))
        return 0
    for j in jobs:
        worker = f" by {j['worker']}" if j["worker"] else ""
        _out(
            f"{j['func']}\t{j['name']}\t{j['attempts']} attempts\t"
            f"{j['how']}{worker} at {_when(j['failed_at'])}"
        )
    return 0


async def _failed_retry(client: Client, cmd: FailedRetry) -> int:
    await client.failed_retry(cmd.func, *cmd.names)
    return 0


async def _failed_purge(client: Client, cmd: FailedPurge) -> int:
    gone = await client.failed_purge(cmd.func, *cmd.names)
    _out(f"purged {len(gone)}")
    return 0


RETRY_ACTIONS: dict[type, Callable[[Client, Any], Awaitable[int]]] = {
    RetrySet: _retry_set,
    RetryGet: _retry_get,
    RetryClear: _retry_clear,
    FailedList: _failed_list,
    FailedRetry: _failed_retry,
    FailedPurge: _failed_purge,
}
