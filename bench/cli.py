"""``python -m bench``: command-line options, then install peers, run, report."""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.params import Params
from bench.pg import Cluster, Databases, ensure_postgres
from bench.scenarios import SCENARIOS
from bench.servers import ALL_SERVERS, OURS, PEERS, make_specs

DEFAULT_SERVERS = ALL_SERVERS
RESULTS = Path(__file__).resolve().parent / "results"


def _csv(choices: tuple[str, ...] | list[str]) -> type:
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(
                f"unknown: {', '.join(bad)} (choose from {', '.join(choices)})"
            )
        return items

    return parse  # type: ignore[return-value]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load tests of trio_periodic side by side with beanstalkd, gearmand and redis.",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and one run (under 2 minutes); default is the full run",
    )
    ap.add_argument(
        "--only",
        type=_csv(list(SCENARIOS)),
        metavar="SCENARIO,...",
        help="scenarios to run: " + ",".join(SCENARIOS),
    )
    ap.add_argument(
        "--servers",
        type=_csv(ALL_SERVERS),
        metavar="SERVER,...",
        help="servers to measure: " + ",".join(ALL_SERVERS) + " (default: all)",
    )
    ap.add_argument(
        "--periodicd",
        metavar="CMD",
        help="how to start our server; '-H tcp://127.0.0.1:PORT -p STORE --http off' is "
        "appended (default: the periodicd script next to this Python)",
    )
    ap.add_argument(
        "--pg-url",
        metavar="URL",
        help="PostgreSQL database for periodic-pg and scale; its periodic_* tables are dropped "
        "before each run (default: a throwaway cluster on 127.0.0.1, a fresh database per run)",
    )
    ap.add_argument("--runs", type=int, help="runs per scenario (default 3, quick 1)")
    ap.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="jobs in the end-to-end scenario (default 20,000, quick 5,000)",
    )
    ap.add_argument(
        "--submit-procs",
        type=int,
        metavar="P",
        help="generator processes (one connection each) for pipelined submit (default 1)",
    )
    ap.add_argument(
        "--worker-procs",
        type=int,
        metavar="P",
        help="generator processes sharing the 4 end-to-end worker connections (default 2)",
    )
    ap.add_argument(
        "--slots",
        type=int,
        metavar="K",
        help="jobs in flight per worker connection in e2e, latency and lateness, the same for "
        "every server: GRAB_JOB msgids / pipelined reserve / GRAB_JOB_UNIQ / BRPOP (default 1)",
    )
    ap.add_argument(
        "--wide-slots",
        type=int,
        metavar="K",
        help="jobs in flight per worker connection in e2e-4 (every server) and in scale "
        "(default 4)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help=f"where latest.json, latest.md and the PNGs go (default {RESULTS})",
    )
    ap.add_argument(
        "--no-install",
        action="store_true",
        help="do not apt-get install missing peers or PostgreSQL",
    )
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    # SIGTERM unwinds like ^C, so that the servers and PostgreSQL are stopped in `finally`s
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))
    from rich.console import Console

    from bench import plots, report
    from bench.procs import ensure_peers
    from bench.runner import run_all

    console = Console()
    params = Params.make(
        args.quick,
        args.runs,
        e2e_n=args.jobs,
        submit_procs=args.submit_procs,
        worker_procs=args.worker_procs,
        slots=args.slots,
        slots_wide=args.wide_slots,
    )
    names = list(args.servers or DEFAULT_SERVERS)
    scenarios = list(args.only or SCENARIOS)
    peers = [n for n in names if n in PEERS]
    missing = {} if args.no_install else ensure_peers(peers, console.print)
    if args.no_install:
        from bench.procs import PEER_PACKAGES, find_binary

        missing = {
            p: "not installed (--no-install)"
            for p in peers
            if find_binary(PEER_PACKAGES[p][0]) is None
        }
    for peer, reason in missing.items():
        console.print(f"[yellow]skipping {peer}[/]: {reason}")
    if "periodic-pg" in names and args.periodicd is None and (why := _psycopg_missing()):
        missing["periodic-pg"] = why
        console.print(f"[yellow]skipping periodic-pg and scale[/]: {why}")
    workdir = Path(tempfile.mkdtemp(prefix="trio-periodic-bench-"))
    t0 = time.monotonic()
    dbs: Databases | None = None
    try:
        if "periodic-pg" in names and "periodic-pg" not in missing:
            dbs, why = _postgres(args, console)
            if dbs is None:
                missing["periodic-pg"] = why
                console.print(f"[yellow]skipping periodic-pg and scale[/]: {why}")
        names = [n for n in names if n not in missing]
        specs = make_specs(names, args.periodicd, dbs.url if dbs else args.pg_url)
        periodicd = next((list(s.periodicd) for s in specs if s.ours), [])
        console.print(
            f"[bold]bench[/]: {'quick' if params.quick else 'full'} mode, {params.runs} run(s); "
            f"servers {', '.join(names)}; scenarios {', '.join(scenarios)}"
        )
        if dbs is not None:
            console.print(f"PostgreSQL: {dbs.describe()}")
        raw = run_all(specs, scenarios, params, workdir, console, dbs)
        for peer, reason in missing.items():
            raw.skipped_servers[peer] = reason
        summary = report.build_summary(raw, argv, periodicd)
        js, md = report.write(summary, args.out)
        made = []
        if not args.no_plots:
            try:
                made = plots.write_all(raw, summary, args.out)
            except ImportError as exc:
                console.print(f"[yellow]no plots[/]: {exc} (install the 'bench' extra)")
    finally:
        if dbs is not None:
            dbs.stop()
        if args.keep:
            console.print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    console.print(
        f"wrote {js}, {md}"
        + "".join(f", {p.name}" for p in made)
        + f" in {time.monotonic() - t0:.0f}s"
    )
    from rich.markdown import Markdown

    console.print(Markdown(report.markdown_targets_text(summary)))
    failed = any(c.errors for cells in raw.cells.values() for c in cells.values())
    dups = report.duplicates(summary)
    if dups:
        console.print(f"[bold red]FAILURE: jobs done twice[/]: {dups}")
    # periodic-pg may be missing for want of PostgreSQL or psycopg: a skip, not a failure
    ours_missing = [n for n in raw.skipped_servers if n in OURS and n not in missing]
    if ours_missing:
        console.print(f"[red]our server did not run[/]: {', '.join(ours_missing)}")
    return 1 if failed or ours_missing else 0


def _postgres(args: argparse.Namespace, console: Any) -> tuple[Databases | None, str]:
    """The user's database, or a throwaway cluster (installed if need be); else why not."""
    if args.pg_url:
        return Databases(args.pg_url), ""
    bindir, why = ensure_postgres(not args.no_install, console.print)
    if bindir is None:
        return None, why
    cluster = Cluster(bindir)
    try:
        cluster.start()
    except Exception as exc:
        cluster.stop()
        return None, f"the throwaway PostgreSQL cluster did not start: {exc}"
    return cluster, ""


def _psycopg_missing() -> str:
    """Why the default periodicd (this Python's) cannot open a PostgreSQL store, or ''."""
    import importlib.util

    if importlib.util.find_spec("psycopg") and importlib.util.find_spec("psycopg_pool"):
        return ""
    return (
        "psycopg is not installed next to periodicd: "
        "pip install -e '.[postgres]' (the 'postgres' extra)"
    )
