"""``periodic``: the command line client, worker runner and server launcher.

Parsing and executing are separate: :func:`parse` turns argv into an
:class:`~trio_periodic.cli_commands.Invocation` (every command function below
only builds its command object), and :func:`execute` runs it.  Errors of
either kind end as one line on stderr and a non-zero exit status, never a
traceback.

The reference syntax (CLIENTS.md §2) and the seed README's forms (SEED.md §2)
share the command names: ``run FUNC NAME`` runs a job while ``run -f FUNC
--exec SCRIPT`` starts the seed's exec worker; ``submit FUNC NAME`` and
``submit -f FUNC -n NAME`` both submit; ``periodic -d`` runs the server.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Any

import cyclopts
from cyclopts import CycloptsError, Group, Parameter

from trio_periodic import __version__
from trio_periodic.cli_commands import (
    Command,
    ConfigGet,
    ConfigSet,
    Drop,
    Dump,
    ExecWorker,
    Globals,
    Invocation,
    Keygen,
    Load,
    Ping,
    Recv,
    Remove,
    RunJob,
    Serve,
    Shutdown,
    Status,
    Submit,
    WorkerCmd,
)

__all__ = ["UsageError", "app", "execute", "main", "parse", "run_cli"]

PROG = "periodic"


class UsageError(Exception):
    """The command line is wrong (reported like a cyclopts parse error)."""


GLOBAL = Group("Global options", sort_key=0)
SEED = Group("Seed README forms", sort_key=5)
# Bool flags are plain switches (no generated --no-… negatives).
app = cyclopts.App(
    name=PROG,
    help="Talk to a Periodic job server: submit and run jobs, run workers, run the server.",
    version=__version__,
    default_parameter=Parameter(negative=()),
    help_format="markdown",
)
config_app = cyclopts.App(name="config", help="Read or change a server setting.")
app.command(config_app)

FuncOpt = Annotated[str | None, Parameter(name=["-f", "--func"], group=SEED)]
NameOpt = Annotated[str | None, Parameter(name=["-n", "--name"], group=SEED)]
WorkloadOpt = Annotated[str | None, Parameter(name=["-w", "--workload"])]


def _pick(positional: str | None, flag: str | None, what: str, flag_name: str) -> str:
    if positional is not None and flag is not None:
        raise UsageError(f"give {what} either as an argument or with {flag_name}, not both")
    value = positional if positional is not None else flag
    if value is None:
        raise UsageError(f"missing {what} (an argument, or {flag_name})")
    return value


# --------------------------------------------------------------------------- commands


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
        _pick(func, f, "the function", "-f"),
        _pick(name, n, "the job name", "-n"),
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
    return Remove(_pick(func, f, "the function", "-f"), all_names)


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
    return Dump(_pick(file, output, "the dump file", "-o"))


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
    return Load(_pick(file, input_, "the dump file", "-i"))


@app.command
def ping() -> Ping:
    """Check that the server answers (exit status 0 if it does)."""
    return Ping()


@app.command
def shutdown() -> Shutdown:
    """Ask the server to shut down."""
    return Shutdown()


@app.command
def keygen(file: str, /, *, size: Annotated[int, Parameter(name=["--size", "-s"])] = 256) -> Keygen:
    """Write FILE_private_key.pem and FILE_public_key.pem (PKCS#1 RSA, as the reference).

    Parameters
    ----------
    file
        Base name of the two files.
    size
        Key size in BYTES, as in the reference (256 = a 2048-bit key).
    """
    return Keygen(file, size)


@app.command
def serve(
    *,
    path: Annotated[str | None, Parameter(name=["--path", "-p"], env_var="PERIODIC_PATH")] = None,
    log: Annotated[str, Parameter(name="--log", env_var="PERIODIC_LOG")] = "INFO",
    http: Annotated[str | None, Parameter(name="--http", env_var="PERIODIC_HTTP")] = None,
    max_frame_size: Annotated[int | None, Parameter(name="--max-frame-size")] = None,
    auth_file: Annotated[str | None, Parameter(name="--auth-file")] = None,
) -> Serve:
    """Run the server (the same as `periodicd`) on every -H given (default: unix + tcp:5000).

    Parameters
    ----------
    path
        Job store: :memory:, file:///PATH (SQLite) or postgresql://… .
        Default: an SQLite file in the user's data directory.
    log
        Log level: DEBUG, INFO, WARNING or ERROR.
    http
        HTTP API address HOST:PORT (curl interface, /metrics, dashboard), or "off".
        Default: 127.0.0.1:8080.
    max_frame_size
        Largest frame accepted, in bytes.
    auth_file
        The reference auth file: "ROLE NAME TOKEN FUNC,FUNC..." lines; reloaded when it changes.
    """
    return Serve((), path, log, http, max_frame_size, auth_file)


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
    from trio_periodic.cli_process import parse_size

    try:
        return parse_size(text)
    except ValueError as exc:
        raise UsageError(f"--mem-limit: {exc}") from None


# ------------------------------------------------------------------------ global options

_PARSE = {"result_action": "return_value", "exit_on_error": False, "print_error": False}


@app.meta.default
def _periodic(
    *tokens: Annotated[str, Parameter(show=False, allow_leading_hyphen=True)],
    host: Annotated[
        list[str] | None,
        Parameter(name=["--host", "-H"], env_var="PERIODIC_PORT", group=GLOBAL),
    ] = None,
    client_name: Annotated[
        str | None, Parameter(env_var="PERIODIC_CLIENT_NAME", group=GLOBAL)
    ] = None,
    client_token: Annotated[
        str | None, Parameter(env_var="PERIODIC_CLIENT_TOKEN", group=GLOBAL)
    ] = None,
    daemon: Annotated[bool, Parameter(name=["-d", "--daemon"], group=GLOBAL)] = False,
) -> Invocation | None:
    """Global options.

    Parameters
    ----------
    host
        Server URL: unix:///PATH, tcp://HOST:PORT or ws://HOST:PORT/PATH
        (default unix:///tmp/periodic.sock).  With -d or serve: listen here (repeatable).
    client_name
        Identity name, for servers with an auth file (with --client-token).
    client_token
        Identity token (with --client-name).
    daemon
        Run the server (the seed README's `periodic -d`); the same as `periodic serve`.
    """
    if (client_name is None) != (client_token is None):
        raise UsageError("--client-name and --client-token must be provided together")
    g = Globals(tuple(host or ()), client_name, client_token)
    if daemon:
        if tokens:
            raise UsageError(f"-d runs the server and takes no command (got {tokens[0]!r})")
        env = os.environ
        serve = Serve(
            g.hosts,
            env.get("PERIODIC_PATH") or None,
            env.get("PERIODIC_LOG") or "INFO",
            env.get("PERIODIC_HTTP") or None,
        )
        return Invocation(g, serve)
    command: Command | None = app(tokens, **_PARSE)  # type: ignore[arg-type]
    if command is None:  # --help / --version printed, or no command: help printed
        return None
    if isinstance(command, Serve):
        command = replace(command, hosts=g.hosts)
    return Invocation(g, command)


# Options of `worker` that take a value, so that FUNC can be found without `--`.
_WORKER_VALUE_OPTS = frozenset(
    {"--thread", "--timeout", "--lock-name", "--lock-count", "--retry-secs", "--ready-timeout"}
)
_GLOBAL_VALUE_OPTS = frozenset({"-H", "--host", "--client-name", "--client-token"})


def _add_worker_separator(argv: list[str]) -> list[str]:
    """``worker [OPTS] FUNC CMD ARGS…`` → ``worker [OPTS] FUNC -- CMD ARGS…``.

    The reference periodic-run takes the first non-option as FUNC and the
    rest as the command; cyclopts would read the command's own options as
    ours.  With an explicit ``--`` nothing changes.
    """
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in _GLOBAL_VALUE_OPTS else 1
    if i >= len(argv) or argv[i] != "worker" or "--" in argv[i:]:
        return argv
    j = i + 1
    while j < len(argv) and argv[j].startswith("-"):
        j += 2 if argv[j] in _WORKER_VALUE_OPTS or argv[j] in _GLOBAL_VALUE_OPTS else 1
    if j + 1 >= len(argv):
        return argv
    return [*argv[: j + 1], "--", *argv[j + 1 :]]


def parse(argv: Sequence[str]) -> Invocation | None:
    """Parse a command line (without the program name).

    Returns None when help or the version was printed.  Raises
    :class:`cyclopts.CycloptsError` or :class:`UsageError` for a bad command line.
    """
    tokens = _add_worker_separator(list(argv))
    result: Invocation | None = app.meta(tokens, **_PARSE)  # type: ignore[arg-type]
    return result


# ----------------------------------------------------------------------------- running


def _one_line(text: str) -> str:
    return " ".join(text.split())


def error(message: str) -> None:
    """Print ``periodic: message`` on stderr (the only way errors are reported)."""
    print(f"{PROG}: {_one_line(message)}", file=sys.stderr, flush=True)


def execute(inv: Invocation) -> int:
    """Run a parsed command line; return the exit status."""
    from trio_periodic.client.errors import PeriodicError
    from trio_periodic.protocol import ProtocolError

    command = inv.command
    try:
        if isinstance(command, Serve):
            return _serve(command)
        if isinstance(command, Keygen):
            return _keygen(command)
        import trio

        if isinstance(command, ExecWorker | WorkerCmd):
            from trio_periodic.cli_worker import run_worker

            _configure_logging()
            return trio.run(run_worker, inv.globals, command)
        from trio_periodic.cli_client import CliError, run_client

        try:
            return trio.run(run_client, inv.globals, command)
        except CliError as exc:
            error(str(exc))
            return 1
    except BaseException as exc:  # the one place errors become exit statuses
        leaf = _single(exc)
        if isinstance(leaf, KeyboardInterrupt):
            return 130
        if isinstance(leaf, PeriodicError | ProtocolError | ValueError | OSError):
            error(str(leaf) or type(leaf).__name__)
            return 1
        raise


def _keygen(command: Keygen) -> int:
    from trio_periodic.keygen import KeygenError, generate_key_files

    try:
        private, public = generate_key_files(command.file, command.size)
    except (KeygenError, OSError) as exc:
        error(str(exc))
        return 1
    print(f"Keys written to {private} and {public}")
    return 0


def _serve(command: Serve) -> int:
    from trio_periodic.server import daemon

    options: dict[str, Any] = {"log_level": command.log}
    if command.http is not None:
        options["http"] = command.http
    if command.max_frame_size is not None:
        options["max_frame_size"] = command.max_frame_size
    if command.auth_file is not None:
        options["auth_file"] = command.auth_file
    return daemon.run(list(command.hosts) or None, command.path, **options)


def _single(exc: BaseException) -> BaseException:
    """The one exception inside (nested) single-member exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _configure_logging() -> None:
    level = os.environ.get("PERIODIC_LOG", "INFO").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format=f"{PROG}: %(message)s",
        stream=sys.stderr,
    )


def run_cli(argv: Sequence[str]) -> int:
    """Parse and execute; return the exit status."""
    try:
        inv = parse(argv)
    except (CycloptsError, UsageError) as exc:
        error(f"{exc} (see '{PROG} --help')")
        return 2
    if inv is None:
        return 0
    return execute(inv)


def main() -> None:
    """Console script entry point."""
    sys.exit(run_cli(sys.argv[1:]))


if __name__ == "__main__":
    main()
