"""The client commands of ``periodic``: one request to a server each.

The reference syntax (CLIENTS.md §2) and the seed README's forms (SEED.md §2)
share the command names: ``run FUNC NAME`` runs a job while ``run -f FUNC
--exec SCRIPT`` starts the seed's exec worker; ``submit FUNC NAME`` and
``submit -f FUNC -n NAME`` both submit.
"""

from __future__ import annotations

from typing import Annotated

from cyclopts import Parameter

from trio_periodic.cli.app import (
    SEED,
    FuncOpt,
    NameOpt,
    UsageError,
    WorkloadOpt,
    app,
    config_app,
    pick,
)
from trio_periodic.cli.invocation import (
    ConfigGet,
    ConfigSet,
    Drop,
    Dump,
    ExecWorker,
    Explain,
    Load,
    Ping,
    Recv,
    Remove,
    RunJob,
    Shutdown,
    Status,
    Submit,
)


@app.command
def status(*, json: bool = False) -> Status:
    """Show every function: workers, jobs, running, locked and the next run time.

    A table on a terminal, aligned plain text when piped.

    Parameters
    ----------
    json
        Print a JSON list of objects instead (for scripts); sched_at in Unix seconds.
    """
    return Status(json=json)


@app.command
def submit(
    func: str | None = None,
    name: str | None = None,
    /,
    *,
    workload: WorkloadOpt = None,
    later: Annotated[int, Parameter(name=["--later", "--sched_later", "--sched-later"])] = 0,
    timeout: Annotated[int, Parameter(name=["--timeout", "-t"])] = 0,
    f: FuncOpt = None,
    n: NameOpt = None,
    args: Annotated[str | None, Parameter(name="--args", group=SEED)] = None,
) -> Submit:
    """Submit a job (or replace the pending job of that name).

    `periodic submit FUNC NAME`, or as in the seed README
    `periodic submit -f FUNC -n NAME [--args A] [-t TIMEOUT] [--sched_later N]`.

    Parameters
    ----------
    func
        Function name.
    name
        Job name (unique per function).
    workload
        Workload: the text itself, or @FILE for a file's contents (@- for stdin).
    later
        Run it this many seconds from now (default: now).
    timeout
        Seconds a worker may hold the job (0: the server's default).
    f
        Function name (seed form).
    n
        Job name (seed form).
    args
        Workload text, taken literally (seed form).
    """
    if workload is not None and args is not None:
        raise UsageError("give the workload with -w or with --args, not both")
    return Submit(
        pick(func, f, "the function", "-f"),
        pick(name, n, "the job name", "-n"),
        workload=workload,
        args=args,
        later=later,
        timeout=timeout,
    )


@app.command
def run(
    func: str | None = None,
    name: str | None = None,
    /,
    *,
    workload: WorkloadOpt = None,
    timeout: Annotated[int, Parameter(name=["--timeout", "-t"])] = 10,
    f: FuncOpt = None,
    exec_: Annotated[str | None, Parameter(name="--exec", group=SEED)] = None,
    thread: Annotated[int, Parameter(name=["--thread", "-n"], group=SEED)] = 1,
) -> RunJob | ExecWorker:
    """Run a job and print its data and result; or (seed form) run a script as a worker.

    `periodic run FUNC NAME [-w DATA|@FILE] [--timeout N]` runs the job now,
    prints each data chunk as `Data: …`, then `Result: …`.

    `periodic run -f FUNC --exec SCRIPT` is the seed README's worker: for
    each job it runs SCRIPT (split on spaces) with the job name as the last
    argument and the workload on stdin.  Output lines `SCHED_LATER N` (or
    `SCHEDLATER N`) run the job again in N seconds, `FAIL` fails it, `DONE`
    or no marker finishes it; other lines are echoed.  A non-zero exit fails
    the job; a script still running at the job's timeout is killed.

    Parameters
    ----------
    func
        Function name.
    name
        Job name.
    workload
        Workload: the text itself, or @FILE for a file's contents (@- for stdin).
    timeout
        Job timeout in seconds; also how long the server waits for the result.
    f
        Function to work for (seed exec worker).
    exec_
        The script to run per job (seed exec worker).
    thread
        Jobs to run at the same time (seed exec worker).
    """
    if f is not None or exec_ is not None:
        if func is not None or name is not None:
            raise UsageError("run -f FUNC --exec SCRIPT takes no other arguments")
        if f is None or exec_ is None:
            raise UsageError("the exec worker needs both -f FUNC and --exec SCRIPT")
        if not exec_.split():
            raise UsageError("--exec needs a command")
        if thread < 1:
            raise UsageError("--thread must be at least 1")
        return ExecWorker(f, exec_, thread)
    if func is None or name is None:
        raise UsageError("run needs FUNC and NAME (or -f FUNC --exec SCRIPT)")
    return RunJob(func, name, workload=workload, timeout=timeout)


@app.command
def recv(func: str, name: str, /) -> Recv:
    """Print the data a running job streams, as `Data: …` lines, until it ends.

    Parameters
    ----------
    func
        Function name.
    name
        Job name.
    """
    return Recv(func, name)


@app.command
def remove(func: str | None = None, /, *names: str, f: FuncOpt = None, n: NameOpt = None) -> Remove:
    """Remove jobs.

    Parameters
    ----------
    func
        Function name.
    names
        Job names.
    f
        Function name (seed form).
    n
        Job name (seed form).
    """
    if func is not None and f is not None:
        # `remove -f F NAME` reads NAME as the first positional.
        names = (func, *names)
        func = None
    all_names = (*names, *([n] if n is not None else []))
    if not all_names:
        raise UsageError("remove needs at least one job name")
    return Remove(pick(func, f, "the function", "-f"), all_names)


@app.command
def drop(*funcs: str, f: FuncOpt = None) -> Drop:
    """Drop functions and their jobs (the server ignores a function that has workers).

    Parameters
    ----------
    funcs
        Function names.
    f
        Function name (seed form).
    """
    all_funcs = (*funcs, *([f] if f is not None else []))
    if not all_funcs:
        raise UsageError("drop needs at least one function")
    return Drop(all_funcs)


@config_app.command(name="get")
def config_get(key: str, /) -> ConfigGet:
    """Print a server setting.

    Parameters
    ----------
    key
        timeout, lock-timeout, assign-wait, keepalive, max-batch-size, max-pool-size
        or run-job-aggressive.
    """
    return ConfigGet(key)


@config_app.command(name="set")
def config_set(key: str, value: int, /) -> ConfigSet:
    """Change a server setting.

    Parameters
    ----------
    key
        The setting (see `periodic config get --help`).
    value
        The new value (an integer).
    """
    if not 0 <= value <= 0xFFFFFFFF:
        raise UsageError(f"config values are 0..{0xFFFFFFFF}, not {value}")
    return ConfigSet(key, value)


@app.command
def dump(
    file: str | None = None,
    /,
    *,
    output: Annotated[str | None, Parameter(name=["-o", "--output"], group=SEED)] = None,
) -> Dump:
    """Write every job of the server to FILE (`-` for stdout); `periodic load` reads it back.

    Parameters
    ----------
    file
        Where to write.
    output
        Where to write (seed form).
    """
    return Dump(pick(file, output, "the dump file", "-o"))


@app.command
def load(
    file: str | None = None,
    /,
    *,
    input_: Annotated[str | None, Parameter(name=["-i", "--input"], group=SEED)] = None,
) -> Load:
    """Submit every job of a file written by `periodic dump` (`-` for stdin).

    Parameters
    ----------
    file
        The dump file.
    input_
        The dump file (seed form).
    """
    return Load(pick(file, input_, "the dump file", "-i"))


@app.command
def ping() -> Ping:
    """Check that the server answers (exit status 0 if it does)."""
    return Ping()


@app.command
def shutdown() -> Shutdown:
    """Ask the server to shut down."""
    return Shutdown()


@app.command
def explain(func: str, name: str, /, *, json: bool = False) -> Explain:
    """Say why job FUNC/NAME has not run (trio_periodic servers only).

    Its state and the reason it waits: not due yet, no worker registered,
    every worker busy, held by a worker (since when, timeout at), waiting for
    a lock.  An unknown job exits 1.

    Parameters
    ----------
    func
        Function name.
    name
        Job name.
    json
        Print the server's answer as one JSON document (times in Unix seconds).
    """
    return Explain(func, name, json=json)
