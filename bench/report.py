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
from bench.runner import RawResults
from bench.scenarios import SCENARIOS, describe
from bench.servers import OURS, PEERS
from bench.stats import percentile, ratio, summarize

# issue 5's targets: (label, scenario, server, metric, comparison, bound or (peer, factor))
TARGETS: list[tuple[str, str, str, str, str, Any]] = [
    (
        "end to end ≥ 1.0× gearmand (memory)",
        "e2e",
        "periodic-memory",
        "jobs_per_s",
        "ratio",
        ("gearmand", 1.0),
    ),
    (
        "end to end ≥ 0.8× beanstalkd (memory)",
        "e2e",
        "periodic-memory",
        "jobs_per_s",
        "ratio",
        ("beanstalkd", 0.8),
    ),
    (
        "end to end ≥ 0.6× gearmand (SQLite)",
        "e2e",
        "periodic-sqlite",
        "jobs_per_s",
        "ratio",
        ("gearmand", 0.6),
    ),
    (
        "pipelined submit ≥ 150,000 jobs/s (memory)",
        "submit-pipelined",
        "periodic-memory",
        "jobs_per_s",
        ">=",
        150_000,
    ),
    (
        "pipelined submit ≥ 50,000 jobs/s (SQLite)",
        "submit-pipelined",
        "periodic-sqlite",
        "jobs_per_s",
        ">=",
        50_000,
    ),
    ("dispatch latency p50 ≤ 150 µs (memory)", "latency", "periodic-memory", "p50_us", "<=", 150),
    ("dispatch latency p99 ≤ 1 ms (memory)", "latency", "periodic-memory", "p99_us", "<=", 1000),
    ("due-time lateness p99 ≤ 5 ms (memory)", "lateness", "periodic-memory", "p99_ms", "<=", 5),
    (
        "≤ 250 bytes of RSS per pending job (memory)",
        "memory",
        "periodic-memory",
        "bytes_per_job",
        "<=",
        250,
    ),
    (
        "restart with the jobs stored ≤ 10 s (SQLite)",
        "restart",
        "periodic-sqlite",
        "serve_s",
        "<=",
        10,
    ),
    # no numeric target: the ratio two servers / one server, shown as measured
    ("scale: 2 servers vs 1 on PostgreSQL", "scale", "periodic-pg", "ratio", "measured", None),
]

BUSY = 0.85  # generator CPU/wall above which a figure is flagged
LAT_POINTS = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 100)


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
    out["targets"] = _targets(out)
    return out


def _ratios(raw: RawResults) -> dict[str, Any]:
    """ours/peer per headline metric: the median of per-run ratios (same run, same machine)."""
    ratios: dict[str, Any] = {}
    for sc, cells in raw.cells.items():
        for metric in SCENARIOS[sc].headline:
            for ours in OURS:
                for peer in PEERS:
                    a, b = cells.get(ours), cells.get(peer)
                    if not a or not b or not a.runs or not b.runs:
                        continue
                    per_run = [
                        ratio(x.metrics[metric], y.metrics[metric])
                        for x, y in zip(a.runs, b.runs, strict=False)
                    ]
                    per_run = [r for r in per_run if not math.isnan(r)]
                    if per_run:
                        ratios.setdefault(sc, {}).setdefault(metric, {})[f"{ours}/{peer}"] = (
                            summarize(per_run)
                        )
    return ratios


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
        "Ratios are ours / peer computed within each run, then the median taken. "
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
    lines += _targets_md(summary) + _ratios_md(summary)
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
    out = ["## Targets (issue 5)", "", "| target | measured | status |", "|---|---:|---|"]
    for row in summary["targets"]:
        unit = "×" if row["unit"] in ("× peer", "×") and fmt(row["value"]) != "–" else ""
        out.append(f"| {row['target']} | {fmt(row['value'])}{unit} | {row['status']} |")
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
    """The targets and ratios tables, for the console at the end of a run."""
    return "\n".join(_targets_md(summary) + _ratios_md(summary))
