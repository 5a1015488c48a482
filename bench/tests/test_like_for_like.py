"""Like-for-like end-to-end rows, ratios only between runs of the same shape, and the
targets' status, on hand-made results."""

from __future__ import annotations

import math
from typing import Any

from bench import report
from bench.params import Params
from bench.runner import Cell, RawResults
from bench.scenarios import Outcome, per_job_us


def _shape(k: int) -> dict[str, int]:
    return {"jobs": 5000, "conns": 4, "in_flight": k}


def _cell(*runs: tuple[float, float], k: int = 1) -> Cell:
    return Cell(
        runs=[
            Outcome({"jobs_per_s": rate, "cpu_us_per_job": cpu}, shape=_shape(k))
            for rate, cpu in runs
        ]
    )


def _raw(cells: dict[str, dict[str, Cell]]) -> RawResults:
    return RawResults(Params.make(True), list(cells), [], {}, cells, 0.0, 1.0)


def _cells() -> dict[str, dict[str, Cell]]:
    return {
        "e2e": {
            "periodic-memory": _cell((30_000, 40.0), (36_000, 36.0)),
            "beanstalkd": _cell((30_000, 10.0), (40_000, 12.0)),
            "gearmand": _cell((60_000, 20.0), (40_000, 18.0)),
        },
        "e2e-4": {
            "periodic-memory": _cell((80_000, 20.0), k=4),
            "gearmand": _cell((64_000, 10.0), k=4),
        },
    }


def test_rows_for_every_shape_and_server_with_ratios_per_run() -> None:
    rows = report.like_for_like(_raw(_cells()))
    assert [(r["scenario"], r["server"]) for r in rows] == [
        ("e2e", "periodic-memory"),
        ("e2e", "beanstalkd"),
        ("e2e", "gearmand"),
        ("e2e-4", "periodic-memory"),
        ("e2e-4", "gearmand"),
    ]
    mem = rows[0]
    assert mem["shape"] == _shape(1)
    assert mem["jobs_per_s"]["median"] == 33_000
    # per run: 30/60 and 36/40, then the median of the two
    assert math.isclose(mem["vs"]["gearmand"]["jobs_per_s"]["median"], (0.5 + 0.9) / 2)
    assert math.isclose(mem["vs"]["beanstalkd"]["cpu_us_per_job"]["median"], (4.0 + 3.0) / 2)
    assert "gearmand" not in rows[2]["vs"]  # not against itself
    wide = rows[3]
    assert wide["vs"]["gearmand"]["jobs_per_s"]["median"] == 1.25
    assert "beanstalkd" not in wide["vs"]  # beanstalkd did not run that shape


def test_no_ratio_between_runs_of_different_shapes() -> None:
    ours = _cell((30_000, 40.0), k=4)
    peer = _cell((60_000, 20.0), k=1)
    assert report.run_ratios(ours, peer, "jobs_per_s") is None
    raw = _raw({"e2e": {"periodic-memory": ours, "gearmand": peer}})
    (row, _) = report.like_for_like(raw)
    assert row["vs"]["gearmand"] == {"jobs_per_s": None, "cpu_us_per_job": None}
    assert report._ratios(raw) == {}


def test_markdown_table() -> None:
    summary: dict[str, Any] = {"like_for_like": report.like_for_like(_raw(_cells()))}
    lines = report._like_md(summary)
    text = "\n".join(lines)
    assert "| server | shape | jobs/s | server CPU µs/job | jobs/s ÷ gearmand |" in text
    row = next(x for x in lines if x.startswith("| periodic-memory | 4 in flight"))
    assert row == (
        "| periodic-memory | 4 in flight × 4 conns, 5,000 jobs | 80,000 | 20.0 "
        "| 1.25× | – | 2.00× | – |"
    )
    assert report._like_md({"like_for_like": []}) == []


def _summary(e2e: float, sqlite: float, wide: float, rss: float, p99: float) -> dict[str, Any]:
    def r(x: float) -> dict[str, Any]:
        return {"median": x}

    return {
        "results": {
            "memory": {"periodic-memory": {"metrics": {"bytes_per_job": r(rss)}}},
            "latency": {"periodic-memory": {"metrics": {"p99_us": r(p99)}}},
        },
        "ratios": {
            "e2e": {
                "jobs_per_s": {
                    "periodic-memory/gearmand": r(e2e),
                    "periodic-sqlite/gearmand": r(sqlite),
                }
            },
            "e2e-4": {"jobs_per_s": {"periodic-memory/gearmand": r(wide)}},
        },
    }


def test_targets_met_and_not_met() -> None:
    rows = report._targets(_summary(1.02, 0.55, 1.0, 260, 900))
    status = {row["target"]: row["status"] for row in rows}
    assert status == {
        "one job in flight per connection: end to end ≥ 1.0× gearmand (memory)": "met",
        "one job in flight per connection: end to end ≥ 0.6× gearmand (SQLite)": "not met",
        "four jobs in flight per connection: end to end ≥ 1.0× gearmand (memory)": "met",
        "≤ 250 bytes of RSS per pending job (memory)": "not met",
        "dispatch latency p99 ≤ 1 ms (memory)": "met",
        "scale: 2 servers vs 1 on PostgreSQL": "not measured",
    }
    rows = report._targets({"results": {}, "ratios": {}})
    assert {row["status"] for row in rows} == {"not measured"}


def test_per_job_microseconds() -> None:
    assert per_job_us(0.5, 20_000) == 25.0
    assert math.isnan(per_job_us(0.5, 0))
