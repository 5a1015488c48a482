"""``periodic worker``: run a program for every job (the reference periodic-run)."""

from __future__ import annotations

from typing import Annotated

from cyclopts import Parameter

from trio_periodic.cli.app import UsageError, app
from trio_periodic.cli.invocation import WorkerCmd


@app.command
def worker(
    func: str,
    /,
    *command: str,
    thread: Annotated[int, Parameter(env_var="THREAD")] = 1,
    timeout: int | None = None,
    broadcast: bool = False,
    lock_name: str | None = None,
    lock_count: int = 1,
    retry_secs: int = 0,
    skip_fail: bool = False,
    data: bool = False,
    work_data: bool = False,
    no_name: bool = False,
    pipe: bool = False,
    ready_timeout: int = 10,
    mem_limit: str = "0",
) -> WorkerCmd:
    """Work for FUNC by running COMMAND for every job (like the reference periodic-run).

    `periodic worker FUNC [OPTIONS] -- COMMAND [ARGS…]`: each job runs
    `COMMAND ARGS… NAME` with the workload on stdin.  Exit status 0 finishes
    the job, anything else fails it.

    With `--pipe`, `--thread` long-lived copies of COMMAND get jobs as lines
    `ID NAME` on stdin and answer `ID WORKDONE text`, `ID WORKDATA text`,
    `ID WORKFAIL` or `ID text` (the reference periodic-run-pipe); each must
    print one line when it is ready.

    Parameters
    ----------
    func
        Function name.
    command
        The program and its arguments.
    thread
        Jobs to run at the same time.
    timeout
        Kill the process after this many seconds (default: the job's timeout; 0: never).
    broadcast
        Register with BROADCAST: every worker gets every job.
    lock_name
        Take this lock before running a job; a job that cannot get it waits on the server.
    lock_count
        How many jobs may hold the lock at once.
    retry_secs
        On failure, run the job again this many seconds later instead of failing it.
    skip_fail
        On failure, finish the job anyway (with an empty result).
    data
        Send the process's whole stdout as the job's result.
    work_data
        Read stdout lines `WORKDATA text` (streamed to `periodic run`/`recv`) and
        `WORKDONE text` (the result).
    no_name
        Do not append the job name to the command (with --pipe: send the workload
        instead of the name).
    pipe
        Keep --thread runner processes alive and feed them jobs over stdin.
    ready_timeout
        With --pipe: seconds a runner has to print its ready line (0: no limit).
    mem_limit
        Kill a job's process (with --pipe: restart the runner) when its resident
        memory goes over this size: bytes, or with k, m or g (e.g. 512m); 0: no limit.
    """
    if not command:
        raise UsageError("worker needs a command: periodic worker FUNC -- COMMAND [ARGS…]")
    if data and work_data:
        raise UsageError("--data and --work-data exclude each other")
    if thread < 1:
        raise UsageError("--thread must be at least 1")
    if timeout is not None and timeout < 0:
        raise UsageError("--timeout must not be negative")
    return WorkerCmd(
        func,
        tuple(command),
        thread=thread,
        timeout=timeout,
        broadcast=broadcast,
        lock_name=lock_name,
        lock_count=lock_count,
        retry_secs=retry_secs,
        skip_fail=skip_fail,
        data=data,
        work_data=work_data,
        no_name=no_name,
        pipe=pipe,
        ready_timeout=ready_timeout,
        mem_limit=_mem_limit(mem_limit),
    )


def _mem_limit(text: str) -> int:
    from trio_periodic.cli.process import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise UsageError(f"--mem-limit: {exc}") from None
