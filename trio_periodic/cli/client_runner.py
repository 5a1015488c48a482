"""Execute the client commands of ``periodic``: one connection, one command, output.

Output follows the reference tool where it has one (``Data: …``,
``Result: …``, the status columns) and adds what a terminal user wants: a
rich table and progress bars on a terminal, plain text when piped, JSON on
request.  Problems are raised as :class:`CliError` or the client's
:class:`~trio_periodic.client.errors.PeriodicError`; :mod:`trio_periodic.cli`
prints them as one line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from trio_periodic.cli.invocation import (
    Command,
    ConfigGet,
    ConfigSet,
    Drop,
    Dump,
    Explain,
    Globals,
    Load,
    Ping,
    Recv,
    Remove,
    RunJob,
    Shutdown,
    Status,
    Submit,
)
from trio_periodic.cli.retry_runner import RETRY_ACTIONS
from trio_periodic.cli.schedule_runner import ACTIONS as SCHEDULE_ACTIONS
from trio_periodic.client import Client, FuncStatus
from trio_periodic.protocol import ProtocolError, decode_job_list
from trio_periodic.protocol.job import Job as WireJob

__all__ = ["CliError", "format_status", "read_workload", "run_client"]

C = TypeVar("C", bound=Command)
Action = Callable[[Client, Any], Awaitable[int]]

COLUMNS = ("FUNCTIONS", "WORKERS", "JOBS", "PROCESSING", "LOCKED", "SCHEDAT")


class CliError(Exception):
    """A problem on our side of the command (a file that cannot be read, …)."""


def show(data: bytes) -> str:
    """Bytes for a terminal: UTF-8, anything else escaped."""
    return data.decode("utf-8", "backslashreplace")


def _out(line: str) -> None:
    print(line, flush=True)


# ------------------------------------------------------------------------------ files


def _read_file(path: str, what: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CliError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def read_workload(spec: str | None) -> bytes:
    """``-w`` values: literal text, or ``@FILE`` (``@-``: stdin)."""
    if spec is None:
        return b""
    if spec.startswith("@"):
        return _read_file(spec[1:], "workload file")
    return spec.encode("utf-8", "surrogateescape")


def read_dump(path: str) -> list[WireJob]:
    """The jobs of a dump file; :class:`CliError` if it is unreadable or malformed."""
    data = _read_file(path, "dump file")
    try:
        return decode_job_list(data)
    except ProtocolError as exc:
        raise CliError(f"{path} is not a Periodic dump file: {exc}") from None


# ---------------------------------------------------------------------------- status


def local_time(epoch: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def _cells(row: FuncStatus) -> tuple[str, ...]:
    return (
        row.func,
        str(row.workers),
        str(row.jobs),
        str(row.processing),
        str(row.locked),
        local_time(row.sched_at),
    )


def format_status(rows: list[FuncStatus]) -> str:
    """The reference layout: left-aligned columns separated by two spaces."""
    table = [COLUMNS, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


def _print_rich_status(rows: list[FuncStatus]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD)
    for i, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if i in (0, 5) else "right")
    for row in rows:
        table.add_row(*_cells(row))
    Console().print(table)


async def _status(client: Client, cmd: Status) -> int:
    rows = await client.status()
    if cmd.json:
        _out(json.dumps([row.as_dict() for row in rows], indent=2))
    elif sys.stdout.isatty():
        _print_rich_status(rows)
    else:
        _out(format_status(rows))
    return 0


# ------------------------------------------------------------------------------- jobs


async def _submit(client: Client, cmd: Submit) -> int:
    if cmd.args is not None:
        workload = cmd.args.encode("utf-8", "surrogateescape")
    else:
        workload = read_workload(cmd.workload)
    later = cmd.later if cmd.later > 0 else None
    await client.submit_job(cmd.func, cmd.name, workload, later=later, timeout=cmd.timeout)
    return 0


async def _run(client: Client, cmd: RunJob) -> int:
    workload = read_workload(cmd.workload)
    result = await client.run_job(
        cmd.func,
        cmd.name,
        workload,
        timeout=cmd.timeout,
        on_data=lambda chunk: _out(f"Data: {show(chunk)}"),
    )
    _out(f"Result: {show(result)}")
    return 0


async def _recv(client: Client, cmd: Recv) -> int:
    async with client.recv_data(cmd.func, cmd.name) as stream:
        async for chunk in stream:
            _out(f"Data: {show(chunk)}")
    return 0


async def _remove(client: Client, cmd: Remove) -> int:
    for name in cmd.names:
        await client.remove_job(cmd.func, name)
    return 0


async def _drop(client: Client, cmd: Drop) -> int:
    for func in cmd.funcs:
        await client.drop_func(func)
    return 0


# ------------------------------------------------------------------------------ admin


async def _config_get(client: Client, cmd: ConfigGet) -> int:
    _out(str(await client.config_get(cmd.key)))
    return 0


async def _config_set(client: Client, cmd: ConfigSet) -> int:
    await client.config_set(cmd.key, cmd.value)
    return 0


async def _dump(client: Client, cmd: Dump) -> int:
    data = await client.dump()
    try:
        if cmd.path == "-":
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            await trio.Path(cmd.path).write_bytes(data)
    except OSError as exc:
        raise CliError(f"cannot write {cmd.path}: {exc.strerror or exc}") from None
    if sys.stderr.isatty() and cmd.path != "-":
        count = int.from_bytes(data[:8], "big", signed=True) if len(data) >= 8 else 0
        print(f"{count} jobs written to {cmd.path}", file=sys.stderr)
    return 0


async def _load(client: Client, jobs: list[WireJob]) -> int:
    if not sys.stderr.isatty():
        await client.load(jobs)
        return 0
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("loading"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
    ) as progress:
        task = progress.add_task("load", total=len(jobs))
        await client.load(jobs, progress=lambda done, total: progress.update(task, completed=done))
    return 0


async def _ping(client: Client, cmd: Ping) -> int:
    rtt = await client.ping()
    if sys.stdout.isatty():
        _out(f"PONG in {rtt * 1000:.1f} ms")
    return 0


async def _explain(client: Client, cmd: Explain) -> int:
    answer = await client.explain(cmd.func, cmd.name)
    if cmd.json:
        _out(json.dumps(answer, indent=2))
        return 0
    _out(f"{answer['func']}/{answer['name']}: {answer['state']}")
    for line in answer.get("text", []):
        _out(f"  {line}")
    return 0


async def _shutdown(client: Client, cmd: Shutdown) -> int:
    await client.shutdown()
    return 0


ACTIONS: dict[type, Action] = {
    Status: _status,
    Submit: _submit,
    RunJob: _run,
    Recv: _recv,
    Remove: _remove,
    Drop: _drop,
    ConfigGet: _config_get,
    ConfigSet: _config_set,
    Dump: _dump,
    Ping: _ping,
    Shutdown: _shutdown,
    Explain: _explain,
    **RETRY_ACTIONS,
    **SCHEDULE_ACTIONS,
}


async def run_client(g: Globals, cmd: Command) -> int:
    """Connect, run ``cmd``, return the exit status."""
    # Local problems (an unreadable dump file) are reported before connecting.
    jobs = read_dump(cmd.path) if isinstance(cmd, Load) else []
    context = g.ssl_context()
    async with Client.connect(
        g.url, name=g.client_name, token=g.client_token, ssl_context=context, rsa=g.rsa
    ) as client:
        if isinstance(cmd, Load):
            return await _load(client, jobs)
        return await ACTIONS[type(cmd)](client, cmd)
