"""``python -m bench``: command-line options, then install peers, run, report."""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.params import Params
from bench.scenarios import SCENARIOS
from bench.servers import ALL_SERVERS, OURS, PEERS, make_specs

DEFAULT_SERVERS = ("periodic-memory", "periodic-sqlite", "beanstalkd", "gearmand", "redis")
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
        help="servers to measure: "
        + ",".join(ALL_SERVERS)
        + " (default: all but periodic-pg, which needs --pg-url)",
    )
    ap.add_argument(
        "--periodicd",
        metavar="CMD",
        help="how to start our server; '-H tcp://127.0.0.1:PORT -p STORE --http off' is "
        "appended (default: the periodicd script next to this Python)",
    )
    ap.add_argument("--pg-url", metavar="URL", help="PostgreSQL URL for periodic-pg")
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
        help="GRAB_JOB msgids per Periodic worker connection (default 4)",
    )
    ap.add_argument(
        "--peer-slots",
        type=int,
        metavar="K",
        help="reserve / GRAB_JOB_UNIQ / BRPOP in flight per peer worker connection (default 1)",
    )
    ap.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help=f"where latest.json, latest.md and the PNGs go (default {RESULTS})",
    )
    ap.add_argument(
        "--no-install", action="store_true", help="do not apt-get install missing peers"
    )
    ap.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (server logs)")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
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
        slots_ours=args.slots,
        slots_peer=args.peer_slots,
    )
    names = list(args.servers or DEFAULT_SERVERS)
    if args.pg_url and not args.servers and "periodic-pg" not in names:
        names.insert(2, "periodic-pg")
    if "periodic-pg" in names and not args.pg_url:
        console.print("[yellow]skipping periodic-pg[/]: no --pg-url given")
        names.remove("periodic-pg")
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
    names = [n for n in names if n not in missing]
    specs = make_specs(names, args.periodicd, args.pg_url)
    periodicd = next((list(s.periodicd) for s in specs if s.ours), [])
    console.print(
        f"[bold]bench[/]: {'quick' if params.quick else 'full'} mode, {params.runs} run(s); "
        f"servers {', '.join(names)}; scenarios {', '.join(scenarios)}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="trio-periodic-bench-"))
    t0 = time.monotonic()
    try:
        raw = run_all(specs, scenarios, params, workdir, console)
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
    ours_missing = [name for name in raw.skipped_servers if name in OURS]
    if ours_missing:
        console.print(f"[red]our server did not run[/]: {', '.join(ours_missing)}")
    return 1 if failed or ours_missing else 0
