"""Turns raw results into the summary (JSON) and the tables (Markdown)."""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.procs import find_binary
from bench.runner import Cell, RawResults
from bench.scenarios import E2E_SHAPES, SCENARIOS, describe, projected_ceiling
from bench.servers import OURS, PEERS
from bench.stats import percentile, ratio, summarize

# (label, scenario, server, metric, comparison, bound or (peer, factor)).  The e2e ratios
# compare runs of the same shape: the same jobs, connections and jobs in flight per connection.
TARGETS: list[tuple[str, str, str, str, str, Any]] = [
    (
        "one job in flight per connection: end to end ≥ 1.0× gearmand (memory)",
        "e2e",
        "periodic-memory",
        "jobs_per_s",
        "ratio",
        ("gearmand", 1.0),
    ),
    (
        "one job in flight per connection: end to end ≥ 0.6× gearmand (SQLite)",
        "e2e",
        "periodic-sqlite",
        "jobs_per_s",
        "ratio",
        ("gearmand", 0.6),
    ),
    (
        "four jobs in flight per connection: end to end ≥ 1.0× gearmand (memory)",
        "e2e-4",
        "periodic-memory",
        "jobs_per_s",
        "ratio",
        ("gearmand", 1.0),
    ),
    (
        "≤ 250 bytes of RSS per pending job (memory)",
        "memory",
        "periodic-memory",
        "bytes_per_job",
        "<=",
        250,
    ),
    ("dispatch latency p99 ≤ 1 ms (memory)", "latency", "periodic-memory", "p99_us", "<=", 1000),
    # no numeric target: the ratio two servers / one server, shown as measured
    ("scale: 2 servers vs 1 on PostgreSQL", "scale", "periodic-pg", "ratio", "measured", None),
]
# the like-for-like table's reference peers
LIKE_PEERS = ("gearmand", "beanstalkd")
LIKE_METRICS = ("jobs_per_s", "cpu_us_per_job")

BUSY = 0.85  # generator CPU/wall above which a figure is flagged
LAT_POINTS = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 100)


#: The per-job costs of each half of the scale scenario that the projection uses.
_PER_JOB = ("srv_us_per_job", "db_us_per_job")


def scale_projection(metrics: dict[str, Any]) -> str:
    """The scale scenario's projection (``projected_ceiling``) from the runs'
    medians: one line, not one per run."""
    halves = [
        {k: metrics.get(f"{label}_{k}", {}).get("median", math.nan) for k in _PER_JOB}
        for label in ("one", "two")
    ]
    return projected_ceiling(*halves)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0] if text else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine() -> dict[str, Any]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str] = {}
    for name, argv in (
        ("beanstalkd", ["beanstalkd", "-v"]),
        ("gearmand", ["gearmand", "--version"]),
        ("redis", ["redis-server", "--version"]),
    ):
        binary = find_binary(argv[0])
        if binary:
            versions[name] = _version([binary, *argv[1:]])
    try:
        from importlib.metadata import version

        versions["trio_periodic"] = version("trio-periodic")
    except Exception:
        versions["trio_periodic"] = "?"
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "versions": versions,
    }


def _runs_values(runs: list[dict[str, Any]], key: str) -> list[float]:
    return [float(r["metrics"][key]) for r in runs if key in r["metrics"]]


def build_summary(raw: RawResults, argv: list[str], periodicd: list[str]) -> dict[str, Any]:
    """Everything the report needs, JSON-serialisable."""
    out: dict[str, Any] = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", shlex.join(argv)]).strip(),
        "periodicd": shlex.join(periodicd),
        "mode": "quick" if raw.params.quick else "full",
        "duration_s": round(raw.finished - raw.started, 1),
        "params": asdict(raw.params),
        "scenario_setup": describe(raw.params),
        "machine": machine(),
        "skipped_servers": raw.skipped_servers,
        "database": raw.database,
        "results": {},
        "distributions": {},
        "ratios": {},
        "targets": [],
    }
    for sc, cells in raw.cells.items():
        res: dict[str, Any] = {}
        dist: dict[str, Any] = {}
        for server, cell in cells.items():
            runs = cell.to_json()["runs"]
            entry: dict[str, Any] = {
                "skipped": cell.skipped,
                "errors": cell.errors,
                "notes": sorted({n for r in runs for n in r["notes"]}),
            }
            if runs:
                keys = runs[0]["metrics"].keys()
                entry["metrics"] = {k: summarize(_runs_values(runs, k)) for k in keys}
                if sc == "scale" and (ceiling := scale_projection(entry["metrics"])):
                    entry["notes"].append(ceiling)
                utils = [float(g["util"]) for r in runs for g in r["gen"]]
                entry["generator_util_max"] = max(utils) if utils else None
                if utils and max(utils) > BUSY:
                    entry["notes"].append(
                        f"a generator process was busy ({max(utils):.2f} CPU/wall): "
                        "this figure may be limited by the load generator"
                    )
                entry["generator"] = [r["gen"] for r in runs]
                srv = [r["server_util"] for r in runs if not math.isnan(r["server_util"])]
                entry["server_util_median"] = statistics.median(srv) if srv else None
                shapes = [r.get("shape") or {} for r in runs]
                if any(shapes):
                    entry["shape"] = shapes[0] if all(x == shapes[0] for x in shapes) else None
            res[server] = entry
            for key in ("latency_us", "lateness_ms"):
                pooled = sorted(x for o in cell.runs for x in o.samples.get(key, []))
                if pooled:
                    dist[server] = {
                        "unit": key.split("_")[1],
                        "n": len(pooled),
                        "percentiles": {str(q): percentile(pooled, q) for q in LAT_POINTS},
                    }
        out["results"][sc] = res
        if dist:
            out["distributions"][sc] = dist
    out["ratios"] = _ratios(raw)
    out["like_for_like"] = like_for_like(raw)
    out["targets"] = _targets(out)
    return out


def run_ratios(a: Cell, b: Cell, metric: str) -> dict[str, Any] | None:
    """``metric`` of a / of b, per run (run k of a with run k of b: same run, same machine),
    summarized; None when no pair of runs had the same shape and both figures."""
    per_run = [
        ratio(x.metrics[metric], y.metrics[metric])
        for x, y in zip(a.runs, b.runs, strict=False)
        if x.shape == y.shape and metric in x.metrics and metric in y.metrics
    ]
    per_run = [r for r in per_run if not math.isnan(r)]
    return summarize(per_run) if per_run else None


def _ratios(raw: RawResults) -> dict[str, Any]:
    """ours/peer per headline metric: the median of per-run ratios (same run, same machine)."""
    ratios: dict[str, Any] = {}
    for sc, cells in raw.cells.items():
        for metric in SCENARIOS[sc].headline:
            for ours in OURS:
                for peer in PEERS:
                    a, b = cells.get(ours), cells.get(peer)
                    if not a or not b:
                        continue
                    r = run_ratios(a, b, metric)
                    if r is not None:
                        ratios.setdefault(sc, {}).setdefault(metric, {})[f"{ours}/{peer}"] = r
    return ratios


def like_for_like(raw: RawResults) -> list[dict[str, Any]]:
    """One row per (end-to-end shape, server that ran it): jobs/s and server CPU µs per job
    (medians over runs), and each figure divided by gearmand's and beanstalkd's from runs of
    the same shape."""
    rows: list[dict[str, Any]] = []
    for sc in E2E_SHAPES:
        cells = raw.cells.get(sc, {})
        for server, cell in cells.items():
            if not cell.runs:
                continue
            row: dict[str, Any] = {
                "scenario": sc,
                "server": server,
                "shape": cell.runs[0].shape,
                "vs": {},
            }
            for metric in LIKE_METRICS:
                row[metric] = summarize([o.metrics.get(metric, math.nan) for o in cell.runs])
            for peer in LIKE_PEERS:
                other = cells.get(peer)
                if peer == server or other is None:
                    continue
                row["vs"][peer] = {m: run_ratios(cell, other, m) for m in LIKE_METRICS}
            rows.append(row)
    return rows


def _targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for label, sc, server, metric, cmp, bound in TARGETS:
        cell = summary["results"].get(sc, {}).get(server, {})
        value = cell.get("metrics", {}).get(metric, {}).get("median", math.nan)
        status, shown = "not measured", math.nan
        if cmp == "measured":
            if not math.isnan(value):
                shown, status = value, "measured"
            dups = cell.get("metrics", {}).get("duplicates", {}).get("max", 0) or 0
            if dups:
                status = f"**FAILED: {dups:.0f} jobs done twice**"
            elif cell.get("errors"):
                status += " (with errors, see below)"
        elif cmp == "ratio":
            peer, factor = bound
            r = summary["ratios"].get(sc, {}).get(metric, {}).get(f"{server}/{peer}")
            if r and not math.isnan(r["median"]):
                shown = r["median"]
                status = "met" if shown >= factor else "not met"
        elif not math.isnan(value):
            shown = value
            ok = value >= bound if cmp == ">=" else value <= bound
            status = "met" if ok else "not met"
        rows.append(
            {
                "target": label,
                "value": shown,
                "status": status,
                "unit": {"ratio": "× peer", "measured": "×"}.get(cmp, metric),
            }
        )
    return rows


# ------------------------------------------------------------------------------ Markdown


def fmt(value: float, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if unit == "jobs":  # counts
        return f"{value:,.0f}"
    if unit in ("jobs/s", "") and abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


def _spread(m: dict[str, Any]) -> str:
    """Half the min–max range relative to the median."""
    if m.get("n", 0) < 2 or math.isnan(m.get("spread", math.nan)):
        return ""
    half = m["spread"] * 50
    return " ±>999%" if half > 999 else f" ±{half:.0f}%"


def markdown(summary: dict[str, Any]) -> str:
    mach = summary["machine"]
    lines = [
        "# trio_periodic load test",
        "",
        f"Generated {summary['generated']} by `{summary['command']}` "
        f"({summary['mode']} mode, {summary['params']['runs']} run(s), "
        f"{summary['duration_s']:.0f} s).",
        f"Machine: {mach['cpus']} × {mach['cpu_model']}, Linux {mach['kernel']}, "
        f"Python {mach['python']}. Servers: "
        + ", ".join(f"{k} {v}" for k, v in mach["versions"].items())
        + ".",
        f"Our server: `{summary['periodicd']}`.",
        "",
        "Figures are medians over runs; ±x% is half the min–max range relative to the median. "
        "Ratios are ours / peer computed within each run, then the median taken, and only "
        "between runs of the same shape (jobs, connections, jobs in flight per connection). "
        "*gen* = the busiest load-generator process's CPU time / wall time (1.0 = a saturated "
        "core; well below 1 means the generator was not the bottleneck); *srv* = server CPU / "
        "wall (all threads).",
        "",
    ]
    if summary.get("database"):
        lines += [f"periodic-pg and scale: {summary['database']}.", ""]
    dups = duplicates(summary)
    if dups:
        lines += [f"**FAILURE: jobs done twice: {dups}.**", ""]
    if summary["skipped_servers"]:
        lines += ["Skipped servers:", ""]
        lines += [f"- **{k}**: {v}" for k, v in summary["skipped_servers"].items()]
        lines.append("")
    lines += _targets_md(summary) + _like_md(summary) + _ratios_md(summary)
    for sc, res in summary["results"].items():
        lines += _scenario_md(sc, res, summary)
    return "\n".join(lines) + "\n"


def duplicates(summary: dict[str, Any]) -> str:
    """'' or a description of every run in which a job was done twice (scale)."""
    found = []
    for server, entry in summary["results"].get("scale", {}).items():
        metrics = entry.get("metrics", {})
        for key, label in (("duplicates", "2 servers"), ("one_duplicates", "1 server")):
            worst = (metrics.get(key) or {}).get("max") or 0
            if worst:
                found.append(f"scale on {server}, {label}: up to {worst:.0f} jobs in one run")
    return "; ".join(found)


def _targets_md(summary: dict[str, Any]) -> list[str]:
    out = ["## Targets", "", "| target | measured | status |", "|---|---:|---|"]
    for row in summary["targets"]:
        unit = "×" if row["unit"] in ("× peer", "×") and fmt(row["value"]) != "–" else ""
        out.append(f"| {row['target']} | {fmt(row['value'])}{unit} | {row['status']} |")
    return [*out, ""]


def shape_label(shape: dict[str, int] | None) -> str:
    if not shape:
        return "?"
    k = shape.get("in_flight", 0)
    return f"{k} in flight × {shape.get('conns', 0)} conns, {shape.get('jobs', 0):,} jobs"


def _like_md(summary: dict[str, Any]) -> list[str]:
    rows = summary.get("like_for_like") or []
    if not rows:
        return []
    vs = [p for p in LIKE_PEERS if any(p in r["vs"] or r["server"] == p for r in rows)]
    out = [
        "## Like for like: end to end, the same jobs in flight for every server",
        "",
        "In each shape every server gets the same load: the same jobs, worker connections and "
        "jobs in flight per connection (Periodic GRAB_JOB msgids, beanstalkd pipelined "
        "`reserve`, gearmand GRAB_JOB_UNIQ, redis pipelined BRPOP). *server CPU µs/job* = the "
        "server's CPU time over the measured window (all threads) / jobs done. Each ratio "
        "divides a figure by the peer's from the same run and shape (median over runs): "
        "higher is better for jobs/s, lower is better for CPU/job.",
        "",
        "| server | shape | jobs/s | server CPU µs/job |"
        + "".join(f" jobs/s ÷ {p} |" for p in vs)
        + "".join(f" CPU/job ÷ {p} |" for p in vs),
        "|---|---|---:|---:|" + "---:|" * (2 * len(vs)),
    ]
    for row in rows:
        cells = [
            fmt(row["jobs_per_s"]["median"], "jobs/s") + _spread(row["jobs_per_s"]),
            fmt(row["cpu_us_per_job"]["median"]) + _spread(row["cpu_us_per_job"]),
        ]
        for metric in LIKE_METRICS:
            for peer in vs:
                r = (row["vs"].get(peer) or {}).get(metric)
                cells.append(f"{r['median']:.2f}×" if r else "–")
        out.append(f"| {row['server']} | {shape_label(row['shape'])} | " + " | ".join(cells) + " |")
    return [*out, ""]


def _ratios_md(summary: dict[str, Any]) -> list[str]:
    """One row per (scenario metric, our server); per peer its figure and ours / peer."""
    peers = [p for p in PEERS if any(p in res for res in summary["results"].values())]
    out = [
        "## Ours / peer",
        "",
        "Each peer column shows the peer's figure and the ratio ours / peer from the same runs. "
        "Higher is better for throughput; lower is better for latency, lateness, memory and "
        "restart time.",
        "",
        "| scenario | metric | ours | value |" + "".join(f" {p} |" for p in peers),
        "|---|---|---|---:|" + "---:|" * len(peers),
    ]
    for sc, metrics in summary["ratios"].items():
        for metric, pairs in metrics.items():
            for ours in OURS:
                mine = summary["results"][sc].get(ours, {}).get("metrics", {}).get(metric)
                if not mine:
                    continue
                cells = []
                for peer in peers:
                    theirs = summary["results"][sc].get(peer, {}).get("metrics", {}).get(metric)
                    r = pairs.get(f"{ours}/{peer}")
                    if theirs and r:
                        cells.append(f"{fmt(theirs['median'])} (**{r['median']:.2f}×**)")
                    else:
                        cells.append("–")
                out.append(
                    f"| {sc} | {metric} | {ours} | {fmt(mine['median'])} |"
                    + "".join(f" {c} |" for c in cells)
                )
    return [*out, ""]


def _scenario_md(sc: str, res: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    scen = SCENARIOS[sc]
    out = [f"## {scen.title}", "", summary["scenario_setup"].get(sc, ""), ""]
    head = (
        "| server | "
        + " | ".join(f"{m.label} ({m.unit})" if m.unit else m.label for m in scen.metrics)
        + " | gen | srv | notes |"
    )
    out += [head, "|---|" + "---:|" * (len(scen.metrics) + 2) + "---|"]
    if sc == "scale":  # only periodic-pg has a cluster mode; the others would be noise
        res = {k: v for k, v in res.items() if k == "periodic-pg"}
        if not res:
            why = summary["skipped_servers"].get("periodic-pg", "periodic-pg was not selected")
            out.append(
                "| periodic-pg | " + " | ".join("–" for _ in scen.metrics) + f" | | | {why} |"
            )
    for server, entry in res.items():
        if entry.get("skipped"):
            out.append(
                f"| {server} | "
                + " | ".join("–" for _ in scen.metrics)
                + f" | | | skipped: {entry['skipped']} |"
            )
            continue
        metrics = entry.get("metrics", {})
        cells = []
        for m in scen.metrics:
            v = metrics.get(m.key)
            cells.append(fmt(v["median"], m.unit) + _spread(v) if v else "–")
        gen = entry.get("generator_util_max")
        srv = entry.get("server_util_median")
        notes = "; ".join(entry.get("notes", []) + entry.get("errors", []))
        out.append(
            f"| {server} | "
            + " | ".join(cells)
            + f" | {fmt(gen) if gen is not None else '–'} | {fmt(srv) if srv is not None else '–'}"
            + f" | {notes} |"
        )
    return [*out, ""]


def _clean(value: Any) -> Any:
    """NaN → null, so that the JSON is strict."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write(summary: dict[str, Any], results_dir: Path) -> tuple[Path, Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    js, md = results_dir / "latest.json", results_dir / "latest.md"
    tmp = js.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_clean(summary), indent=1, allow_nan=False) + "\n")
    tmp.replace(js)
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(markdown(summary))
    tmp.replace(md)
    return js, md


def markdown_targets_text(summary: dict[str, Any]) -> str:
    """The targets, like-for-like and ratios tables, for the console at the end of a run."""
    return "\n".join(_targets_md(summary) + _like_md(summary) + _ratios_md(summary))
