"""Runs the scenarios over the servers, run by run, with a progress display."""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import probes
from bench.loadgen import Target
from bench.params import Params
from bench.pg import Databases
from bench.procs import HOST, Server, running
from bench.scenarios import SCENARIOS, Outcome, restart, scale
from bench.servers import ServerSpec

ONCE = ("memory", "restart")  # one fill per server (restart then restarts it restart_reps times)


@dataclass
class Cell:
    """All runs of one scenario on one server."""

    runs: list[Outcome] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: str | None = None

    def to_json(self) -> dict[str, Any]:
        runs = []
        for o in self.runs:
            d = asdict(o)
            d.pop("samples", None)
            runs.append(d)
        return {"runs": runs, "errors": self.errors, "skipped": self.skipped}


@dataclass
class RawResults:
    params: Params
    scenarios: list[str]
    servers: list[str]
    skipped_servers: dict[str, str]
    cells: dict[str, dict[str, Cell]]
    started: float
    finished: float = 0.0
    database: str = ""  # where periodic-pg's databases came from


def _tag(scenario: str, run: int) -> str:
    return f"bench-{scenario}-{run}"


@contextlib.contextmanager
def _database(spec: ServerSpec, dbs: Databases | None, tag: str) -> Iterator[ServerSpec]:
    """``spec`` itself, or for periodic-pg a copy pointing at a fresh database."""
    if spec.name != "periodic-pg":
        yield spec
        return
    if dbs is None:
        raise RuntimeError("periodic-pg without a PostgreSQL database")
    with dbs.fresh(tag) as url:
        yield replace(spec, pg_url=url)


def preflight(
    specs: list[ServerSpec],
    workdir: Path,
    log: Callable[[str], None],
    dbs: Databases | None = None,
) -> dict[str, str]:
    """Start each server once; return {name: reason} for those that do not come up."""
    bad: dict[str, str] = {}
    for spec in specs:
        server: Server | None = None
        try:
            with _database(spec, dbs, "bench-preflight") as s:
                server = s.make(workdir / f"preflight-{spec.name}")
                with running(server, ready_timeout=30.0):
                    probes.wait_ping(spec.kind, server.port, 15.0, server.alive, spec.secure)
        except Exception as exc:
            tail = server.log_tail(3).replace("\n", " | ") if server else ""
            bad[spec.name] = f"does not start: {exc}" + (f" (log: {tail})" if tail else "")
            log(f"[yellow]skipping {spec.name}[/]: {bad[spec.name]}")
    return bad


def _one(
    spec: ServerSpec,
    scenario: str,
    p: Params,
    workdir: Path,
    run: int,
    step: Callable[[str], None],
    dbs: Databases | None = None,
) -> list[Outcome]:
    tag = _tag(scenario, run)
    if scenario == "scale":
        if dbs is None:
            raise RuntimeError("scale needs PostgreSQL")
        return scale(spec, workdir, p, tag, dbs, run=run, on_step=step)
    with _database(spec, dbs, tag) as spec:
        if scenario == "restart":
            return restart(spec, workdir, p, tag, on_step=step)
        sc = SCENARIOS[scenario]
        assert sc.run is not None
        server: Server = spec.make(workdir)
        with running(server):
            probes.wait_ping(spec.kind, server.port, 15.0, server.alive, spec.secure)
            target = Target(spec.kind, HOST, server.port, spec.secure)
            return [sc.run(spec, server, target, p, tag)]


def _log_tail(unit_dir: Path) -> str:
    logs = sorted(unit_dir.rglob("*.log"), key=lambda f: f.stat().st_mtime)
    if not logs:
        return ""
    lines = [x for x in logs[-1].read_text(errors="replace").splitlines() if x.strip()][-2:]
    return f" (server log: {' | '.join(lines)})" if lines else ""


def run_all(
    specs: list[ServerSpec],
    scenarios: list[str],
    p: Params,
    workdir: Path,
    console: Console,
    dbs: Databases | None = None,
) -> RawResults:
    raw = RawResults(p, scenarios, [s.name for s in specs], {}, {}, time.time())
    raw.database = dbs.describe() if dbs is not None else ""
    raw.skipped_servers = preflight(specs, workdir, console.print, dbs)
    live = [s for s in specs if s.name not in raw.skipped_servers]
    for sc in scenarios:
        raw.cells[sc] = {}
        for spec in specs:
            cell = Cell()
            if spec.name in raw.skipped_servers:
                cell.skipped = raw.skipped_servers[spec.name]
            else:
                cell.skipped = SCENARIOS[sc].applies(spec)
            raw.cells[sc][spec.name] = cell
    units = [
        (run, sc, spec)
        for run in range(p.runs)
        for sc in scenarios
        if not (sc in ONCE and run > 0)
        for spec in live
        if raw.cells[sc][spec.name].skipped is None
    ]
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("starting", total=len(units))
        for run, sc, spec in units:
            label = f"run {run + 1}/{p.runs} · {sc} · {spec.name}"
            progress.update(task, description=label)

            def step(msg: str, label: str = label) -> None:
                progress.update(task, description=f"{label} · {msg}")

            cell = raw.cells[sc][spec.name]
            unit_dir = workdir / f"{spec.name}-{sc}-{run}"
            try:
                outs = _one(spec, sc, p, unit_dir, run, step, dbs)
                cell.runs.extend(outs)
                for o in outs:
                    for key, label in (("duplicates", "2 servers"), ("one_duplicates", "1 server")):
                        if o.metrics.get(key):
                            msg = (
                                f"run {run + 1}: FAILURE: {o.metrics[key]:.0f} jobs done twice "
                                f"({label})"
                            )
                            cell.errors.append(msg)
                            progress.console.print(f"[bold red]{sc} on {spec.name}[/]: {msg}")
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                msg = f"run {run + 1}: {type(exc).__name__}: {exc}" + _log_tail(unit_dir)
                cell.errors.append(msg)
                progress.console.print(f"[red]{sc} on {spec.name} failed[/]: {msg}")
                (workdir / "errors.log").open("a").write(f"{label}\n{traceback.format_exc()}\n")
            progress.advance(task)
        progress.update(task, description="done")
    raw.finished = time.time()
    return raw
