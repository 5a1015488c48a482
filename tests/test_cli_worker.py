"""The command-line workers' job handlers (exec, periodic-run, pipe) against the in-process
server; the scripts are real processes."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import RunningServer

from trio_periodic import Client, Job, Worker
from trio_periodic.cli.exec_worker import ExecOutcome, RunnerPool, exec_job, process_job
from trio_periodic.cli.invocation import WorkerCmd
from trio_periodic.client import Done, Fail, JobFailed, SchedLater

LIMIT = 15


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


@asynccontextmanager
async def serving(
    server: RunningServer, func: str, handler: Callable[[Job], Any], size: int = 2
) -> AsyncIterator[Client]:
    worker = Worker(server.tcp_url)
    worker.add_func(func, handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.work, size)
        async with Client.connect(server.tcp_url) as client:
            yield client
        worker.stop()


# ------------------------------------------------------------------ seed markers


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([], Done()),
        ([b"hello", b"DONE"], Done()),
        ([b"SCHED_LATER 5"], SchedLater(5)),
        ([b"SCHEDLATER 7"], SchedLater(7)),
        ([b"SCHEDLATER 0"], SchedLater(0)),
        ([b"SCHED_LATER 5", b"SCHED_LATER 9"], SchedLater(9)),
        ([b"SCHED_LATER 5", b"DONE"], Done()),
        ([b"FAIL"], Fail()),
        ([b"FAIL", b"SCHED_LATER 5"], Fail()),
        ([b"SCHED_LATER"], Fail()),
        ([b"SCHEDLATER abc"], Fail()),
        ([b"SCHED_LATER -3"], Fail()),
        ([b"  SCHED_LATER   4  "], SchedLater(4)),
    ],
)
def test_exec_markers(lines: list[bytes], expected: object) -> None:
    outcome = ExecOutcome()
    for line in lines:
        outcome.feed(line)
    assert outcome.result() == expected


def test_plain_lines_are_not_markers() -> None:
    outcome = ExecOutcome()
    assert not outcome.feed(b"FAILED to frobnicate")
    assert not outcome.feed(b"total 4")
    assert outcome.feed(b"FAIL because") and outcome.fail


# --------------------------------------------------------------- seed exec worker


async def test_exec_gets_name_and_workload(server: RunningServer, tmp_path: Path) -> None:
    prog = script(tmp_path, "w.sh", f'cat > {tmp_path}/stdin\necho "$1" > {tmp_path}/name\n')
    with trio.fail_after(LIMIT):
        async with serving(server, "e", partial(exec_job, prog.split())) as c:
            assert await c.run_job("e", "job-1", b"the workload") == b""
    assert (tmp_path / "stdin").read_bytes() == b"the workload"
    assert (tmp_path / "name").read_text() == "job-1\n"


async def test_exec_outcomes(
    server: RunningServer,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    prog = script(
        tmp_path,
        "o.sh",
        """case "$1" in
  fail) echo FAIL;;
  nonzero) echo some output; exit 2;;
  nonumber) echo SCHED_LATER;;
  nonewline) printf FAIL;;
  echo) echo first line; printf 'last line';;
esac
""",
    )
    with trio.fail_after(LIMIT):
        async with serving(server, "e", partial(exec_job, [prog])) as c:
            for name in ("fail", "nonzero", "nonumber", "nonewline"):
                with pytest.raises(JobFailed):
                    await c.run_job("e", name)
            assert await c.run_job("e", "echo") == b""
    captured = capfd.readouterr()
    assert "first line\nlast line\n" in captured.out
    assert "some output" in captured.out
    assert "bad marker line 'SCHED_LATER': expected SCHED_LATER N" in caplog.text
    assert "exited with status 2" in caplog.text


async def test_exec_sched_later_zero_runs_again(server: RunningServer, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    prog = script(
        tmp_path,
        "again.sh",
        f"""echo x >> {counter}
if [ $(wc -l < {counter}) -lt 3 ]; then echo "SCHEDLATER 0"; fi
""",
    )
    with trio.fail_after(LIMIT):
        async with serving(server, "e", partial(exec_job, [prog])) as c:
            await c.submit_job("e", "loop")
            while True:
                jobs = {r.func: r.jobs for r in await c.status()}.get("e", 0)
                if jobs == 0:
                    break
                await trio.sleep(0.05)
    assert counter.read_text().count("x") == 3


async def test_exec_hanging_script_is_killed_at_the_job_timeout(
    server: RunningServer, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    prog = script(tmp_path, "hang.sh", f"echo $$ > {pidfile}\nsleep 30 & wait\n")
    with trio.fail_after(LIMIT):
        async with serving(server, "e", partial(exec_job, [prog])) as c:
            start = time.monotonic()
            with pytest.raises(JobFailed):
                await c.run_job("e", "hang", timeout=1)
            assert time.monotonic() - start < 5
            await trio.sleep(0.3)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# ---------------------------------------------------------------- periodic-run


def worker_cmd(*command: str, **opts: Any) -> WorkerCmd:
    return WorkerCmd("p", command, **opts)


async def test_process_job_results(server: RunningServer, tmp_path: Path) -> None:
    prog = script(
        tmp_path,
        "p.sh",
        """read input
case "$1" in
  ok) echo "out:$input";;
  bad) exit 1;;
  partial) echo line1; echo line2;;
  *) echo "noname:$input";;
esac
""",
    )
    cases: list[tuple[WorkerCmd, str, bytes | None]] = [
        (worker_cmd(prog), "ok", b""),
        (worker_cmd(prog, data=True), "ok", b"out:w"),
        (worker_cmd(prog, data=True, no_name=True), "ok", b"noname:w"),
        (worker_cmd(prog, work_data=True), "partial", b"line1\nline2"),
        (worker_cmd(prog), "bad", None),
        (worker_cmd(prog, skip_fail=True), "bad", b""),
        (worker_cmd(str(tmp_path / "missing")), "ok", None),
    ]
    with trio.fail_after(LIMIT):
        for cmd, name, expected in cases:
            async with serving(server, "p", partial(process_job, cmd)) as c:
                if expected is None:
                    with pytest.raises(JobFailed):
                        await c.run_job("p", name, b"w\n")
                else:
                    assert await c.run_job("p", name, b"w\n") == expected, cmd


async def test_process_job_retry_secs(server: RunningServer, tmp_path: Path) -> None:
    counter = tmp_path / "count"
    prog = script(tmp_path, "r.sh", f"echo x >> {counter}\nexit 1\n")
    cmd = worker_cmd(prog, retry_secs=60)
    with trio.fail_after(LIMIT):
        async with serving(server, "p", partial(process_job, cmd)) as c:
            await c.submit_job("p", "retry")
            while not counter.exists():
                await trio.sleep(0.05)
            await trio.sleep(0.2)
            row = {r.func: r for r in await c.status()}["p"]
            assert row.jobs == 1 and row.processing == 0
            assert row.sched_at >= time.time() + 50


async def test_process_job_work_data_and_timeout(server: RunningServer, tmp_path: Path) -> None:
    prog = script(
        tmp_path,
        "wd.sh",
        """case "$1" in
  stream) echo "WORKDATA a"; echo "WORKDATA b"; echo "WORKDONE result"; echo after;;
  hang) exec sleep 30;;
esac
""",
    )
    cmd = worker_cmd(prog, work_data=True, timeout=1)
    with trio.fail_after(LIMIT):
        async with serving(server, "p", partial(process_job, cmd)) as c:
            chunks: list[bytes] = []
            assert await c.run_job("p", "stream", on_data=chunks.append) == b"result"
            assert chunks == [b"a", b"b"]
            start = time.monotonic()
            with pytest.raises(JobFailed):
                await c.run_job("p", "hang", timeout=20)
            assert time.monotonic() - start < 5


# ----------------------------------------------------------------------- pipe


async def test_pipe_runners(server: RunningServer, tmp_path: Path) -> None:
    runner = script(
        tmp_path,
        "runner.sh",
        """echo ready
while read id payload; do
  case "$payload" in
    fail*) echo "$id WORKFAIL";;
    die*) exit 1;;
    plain*) echo "$id just text";;
    *) echo "a log line"; echo "$id WORKDATA d:$payload"; echo "$id WORKDONE got:$payload";;
  esac
done
""",
    )
    cmd = WorkerCmd("pp", (runner,), thread=2, pipe=True)
    pool = RunnerPool(cmd)
    worker = Worker(server.tcp_url)
    worker.add_func("pp", pool.job)
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            await nursery.start(worker.work, 2)
            async with Client.connect(server.tcp_url) as c:
                chunks: list[bytes] = []
                assert await c.run_job("pp", "j1", on_data=chunks.append) == b"got:j1"
                assert chunks == [b"d:j1"]
                assert await c.run_job("pp", "plain") == b"just text"
                with pytest.raises(JobFailed):
                    await c.run_job("pp", "fail")
                with pytest.raises(JobFailed):
                    await c.run_job("pp", "die")
                # The dead runner comes back (after a second); both serve again.
                results = [await c.run_job("pp", f"k{i}") for i in range(4)]
                assert results == [b"got:k0", b"got:k1", b"got:k2", b"got:k3"]
            worker.stop()
            nursery.cancel_scope.cancel()


def test_parse_size() -> None:
    from trio_periodic.cli.process import parse_size

    assert parse_size("1024") == 1024
    assert parse_size("512k") == 512 * 1024
    assert parse_size("2M") == 2 * 1024**2
    assert parse_size("1.5g") == int(1.5 * 1024**3)
    with pytest.raises(ValueError):
        parse_size("lots")


async def test_process_over_its_memory_limit_is_killed(
    server: RunningServer, tmp_path: Path
) -> None:
    # python allocating ~200 MB and holding it; the limit is 50 MB
    hog = script(
        tmp_path,
        "hog.sh",
        f"exec {os.environ.get('PYTHON', 'python3')} -c "
        '"import time; x = bytearray(200 * 1024 * 1024); x[::4096] = b\\"x\\" * len(x[::4096]);'
        ' time.sleep(30)"\n',
    )
    cmd = worker_cmd(hog, mem_limit=50 * 1024 * 1024)
    with trio.fail_after(LIMIT):
        async with serving(server, "hog", partial(process_job, cmd)) as c:
            started = time.monotonic()
            with pytest.raises(JobFailed):
                await c.run_job("hog", "a", b"", timeout=30)
            assert time.monotonic() - started < 8  # killed for memory, not at the time limit
