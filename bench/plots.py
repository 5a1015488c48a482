"""PNG plots: throughput bars and latency / lateness distributions (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.runner import RawResults

COLORS = {
    "periodic-memory": "#1f77b4",
    "periodic-sqlite": "#17becf",
    "periodic-pg": "#9467bd",
    "beanstalkd": "#ff7f0e",
    "gearmand": "#2ca02c",
    "redis": "#d62728",
}
THROUGHPUT = (
    ("submit-pipelined", "submit, pipelined"),
    ("submit-sync", "submit, one at a time"),
    ("e2e", "end to end, 1 in flight per conn."),
    ("e2e-4", "end to end, 4 in flight per conn."),
)


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def throughput(summary: dict[str, Any], path: Path) -> Path | None:
    plt = _plt()
    groups = [(sc, label) for sc, label in THROUGHPUT if sc in summary["results"]]
    if not groups:
        return None
    servers = [
        s
        for s in COLORS
        if any(summary["results"][sc].get(s, {}).get("metrics") for sc, _ in groups)
    ]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 4.2), squeeze=False)
    for ax, (sc, label) in zip(axes[0], groups, strict=True):
        names, vals, lo, hi = [], [], [], []
        for s in servers:
            m = summary["results"][sc].get(s, {}).get("metrics", {}).get("jobs_per_s")
            if not m or m["n"] == 0:
                continue
            names.append(s)
            vals.append(m["median"])
            lo.append(m["median"] - m["min"])
            hi.append(m["max"] - m["median"])
        ax.bar(range(len(names)), vals, yerr=[lo, hi], capsize=3, color=[COLORS[n] for n in names])
        ax.set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
        ax.set_title(label)
        ax.set_ylabel("jobs/s")
        for i, v in enumerate(vals):
            ax.annotate(f"{v:,.0f}", (i, v), ha="center", va="bottom", fontsize=7)
    fig.suptitle(f"Throughput (median of {summary['params']['runs']} run(s), bars = min–max)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def distribution(
    raw: RawResults, scenario: str, key: str, unit: str, title: str, path: Path, log_x: bool = True
) -> Path | None:
    """Pooled samples of every server: the distribution (left) and its tail (right, log-log
    fraction of jobs slower than x, where p99 and p99.9 can be read off)."""
    plt = _plt()
    cells = raw.cells.get(scenario, {})
    fig, (ax, tail) = plt.subplots(1, 2, figsize=(12, 4.5))
    drawn = False
    for server, cell in cells.items():
        values = sorted(x for o in cell.runs for x in o.samples.get(key, []))
        if not values:
            continue
        xs = [max(v, 1e-3) for v in values] if log_x else values
        n = len(xs)
        label = f"{server} (n={n:,})"
        ax.plot(xs, [(i + 1) / n for i in range(n)], label=label, color=COLORS.get(server))
        tail.plot(xs, [1 - i / n for i in range(n)], label=label, color=COLORS.get(server))
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    for a in (ax, tail):
        if log_x:
            a.set_xscale("log")
        a.set_xlabel(unit)
        a.grid(True, which="both", lw=0.3)
    ax.set_ylabel("fraction of jobs ≤ x")
    for q in (0.5, 0.99):
        ax.axhline(q, color="grey", lw=0.5, ls=":")
    tail.set_yscale("log")
    tail.set_ylabel("fraction of jobs > x")
    for q in (1e-2, 1e-3):
        tail.axhline(q, color="grey", lw=0.5, ls=":")
    ax.legend(fontsize=8)
    ax.set_title(title)
    tail.set_title("tail (p99 at 10⁻², p99.9 at 10⁻³)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(raw: RawResults, summary: dict[str, Any], results_dir: Path) -> list[Path]:
    results_dir.mkdir(parents=True, exist_ok=True)
    made = [
        throughput(summary, results_dir / "throughput.png"),
        distribution(
            raw,
            "latency",
            "latency_us",
            "µs (submit sent → assignment received)",
            "Dispatch latency, idle workers",
            results_dir / "latency.png",
        ),
        distribution(
            raw,
            "lateness",
            "lateness_ms",
            "ms after the due time",
            "Due-time lateness",
            results_dir / "lateness.png",
            log_x=False,
        ),
    ]
    return [p for p in made if p is not None]
