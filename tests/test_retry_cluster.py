"""Two periodicd processes on one PostgreSQL database share retry policies,
attempt counts and the failed set."""

from __future__ import annotations

import subprocess

import pytest
import trio
from conftest import DaemonProcess, start_daemon
from pg_fixture import pg_database_url, postgres_cluster  # noqa: F401  (fixtures)
from test_retry_server import fail_once

from trio_periodic.client import Client

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def stop(*daemons: DaemonProcess) -> None:
    for d in daemons:
        if d.proc.poll() is None:
            d.proc.terminate()
            try:
                d.proc.wait(10)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()


async def eventually(check, what: str, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"{what} not within {timeout} s")


async def scenario(a: str, b: str) -> None:
    with trio.fail_after(60):
        await _scenario(a, b)


async def _scenario(a: str, b: str) -> None:
    async with Client.connect(a) as on_a, Client.connect(b) as on_b:
        await on_a.retry_set("f", max_attempts=2, base=0.05)
        await eventually(lambda: _policy(on_b), "the policy on b")
        await on_a.submit_job("f", "x", b"work")
        await fail_once(b, "f")  # attempt 1, counted on b

        # The count reached a: the next failure, on a, is the last one.
        async def counted_on_a() -> bool:
            return bool((await on_a.explain("f", "x"))["failures"] == 1)

        await eventually(counted_on_a, "the count on a")
        await fail_once(a, "f")

        async def failed_on_b() -> bool:
            return [j["name"] for j in await on_b.failed_list()] == ["x"]

        await eventually(failed_on_b, "the failed job on b")
        [job] = await on_b.failed_list("f")
        assert (job["attempts"], job["how"]) == (2, "fail")
        assert (await on_b.status())[0].jobs == 0
        # Retried on b, it runs (and fails once) on a with a fresh count.
        assert await on_b.failed_retry("f", "x") == ["x"]

        async def pending_on_a() -> bool:
            return [(s.func, s.jobs) for s in await on_a.status()] == [("f", 1)]

        await eventually(pending_on_a, "the retried job on a")
        await on_b.retry_clear("f")
        await eventually(lambda: _no_policy(on_a), "the policy cleared on a")


async def _policy(client: Client) -> bool:
    return await client.retry_get("f") is not None


async def _no_policy(client: Client) -> bool:
    return await client.retry_get("f") is None


def test_policy_counts_and_failed_set_are_shared(pg_database_url: str) -> None:  # noqa: F811
    a = start_daemon("-p", pg_database_url)
    b = start_daemon("-p", pg_database_url)
    try:
        trio.run(scenario, a.url, b.url)
    finally:
        stop(a, b)
