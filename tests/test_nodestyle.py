"""A worker with node-periodic's wire habits (Nagle on, GRAB_JOB re-sent at once,
4-character msgids) runs every job exactly once over real TCP.  Its speed is
the bench's business (``bench/nodestyle.py``), not a timed test's."""

from __future__ import annotations

import trio
from conftest import RunningServer

from bench.nodestyle import run_node_worker
from trio_periodic import Client


async def test_node_style_worker_runs_every_job_once(server: RunningServer) -> None:
    host, port = server.tcp
    n = 500
    with trio.fail_after(60):
        async with Client.connect(server.tcp_url) as client:
            for i in range(n):
                await client.submit_job("node", f"job-{i}")
        result = await trio.to_thread.run_sync(run_node_worker, host, port, b"node", n, 4, 50.0)
    assert (result.done, result.twice, result.unknown) == (n, 0, 0)
