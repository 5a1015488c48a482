"""Run ``periodic schedule …``: one request each, output for people or scripts."""

from __future__ import annotations

import json
import sys
from typing import Any

from trio_periodic.cli.invocation import ScheduleAdd, ScheduleList, ScheduleRemove
from trio_periodic.client import Client

__all__ = ["ACTIONS", "format_schedules"]

COLUMNS = (
    "FUNC", "NAME", "CRON", "TZ", "NEXT RUN", "LAST RUN", "OVERLAP", "CATCH-UP", "FIRED",
    "SKIPPED",
)  # fmt: skip


def _cells(s: dict[str, Any]) -> tuple[str, ...]:
    return (
        s["func"],
        s["name"],
        s["cron"],
        s["tz"],
        s.get("next_run_local") or "-",
        s.get("last_run_local") or "-",
        s["overlap"] + (f" ({s['queued']} queued)" if s.get("queued") else ""),
        s["catch_up"],
        str(s["fired"]),
        str(s["skipped"]),
    )


def format_schedules(rows: list[dict[str, Any]]) -> str:
    """Left-aligned columns separated by two spaces (for pipes)."""
    table = [COLUMNS, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in table
    )


def _print_rich(rows: list[dict[str, Any]]) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD)
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in ("FIRED", "SKIPPED") else "left")
    for row in rows:
        table.add_row(*_cells(row))
    Console().print(table)


def _workload(spec: str | None) -> bytes:
    """``-w``: literal text, or ``@FILE`` (``@-``: stdin); OSError reads as one line."""
    if spec is None:
        return b""
    if spec == "@-":
        return sys.stdin.buffer.read()
    if spec.startswith("@"):
        try:
            with open(spec[1:], "rb") as f:
                return f.read()
        except OSError as exc:
            raise OSError(f"cannot read workload file {spec[1:]}: {exc.strerror or exc}") from None
    return spec.encode("utf-8", "surrogateescape")


async def _add(client: Client, cmd: ScheduleAdd) -> int:
    workload = _workload(cmd.workload)
    s = await client.schedule_add(
        cmd.func, cmd.name, cmd.cron, tz=cmd.tz, workload=workload, timeout=cmd.timeout,
        overlap=cmd.overlap, catch_up=cmd.catch_up,
    )  # fmt: skip
    if sys.stdout.isatty():
        print(f"{s['func']}/{s['name']}: next run {s['next_run_local']}", flush=True)
    return 0


async def _list(client: Client, cmd: ScheduleList) -> int:
    rows = await client.schedule_list()
    if cmd.json:
        print(json.dumps(rows, indent=2), flush=True)
    elif sys.stdout.isatty():
        _print_rich(rows)
    else:
        print(format_schedules(rows), flush=True)
    return 0


async def _remove(client: Client, cmd: ScheduleRemove) -> int:
    await client.schedule_remove(cmd.func, cmd.name)
    return 0


ACTIONS: dict[type, Any] = {ScheduleAdd: _add, ScheduleList: _list, ScheduleRemove: _remove}
