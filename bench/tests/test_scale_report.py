"""The scale row of the targets table and the duplicate check, on hand-made summaries."""

from __future__ import annotations

from typing import Any

from bench import report
from bench.pg import with_db
from bench.scenarios import SCENARIOS, _split, projected_ceiling
from bench.servers import make_specs
from bench.stats import summarize


def _summary(dups: float) -> dict[str, Any]:
    metrics = {
        "ratio": summarize([1.2, 1.1, 1.3]),
        "duplicates": summarize([0.0, dups, 0.0]),
        "one_duplicates": summarize([0.0, 0.0, 0.0]),
    }
    cell: dict[str, Any] = {"metrics": metrics, "errors": [], "skipped": None}
    return {"results": {"scale": {"periodic-pg": cell}}, "ratios": {}}


def test_scale_target_is_measured() -> None:
    summary = _summary(0)
    row = next(r for r in report._targets(summary) if r["target"].startswith("scale"))
    assert row["status"] == "measured"
    assert row["value"] == 1.2
    assert report.duplicates(summary) == ""


def test_a_duplicate_fails_the_scale_target() -> None:
    summary = _summary(3)
    row = next(r for r in report._targets(summary) if r["target"].startswith("scale"))
    assert "FAILED: 3 jobs done twice" in row["status"]
    assert "up to 3 jobs" in report.duplicates(summary)


def test_scale_applies_to_periodic_pg_only() -> None:
    specs = make_specs(["periodic-memory", "periodic-pg", "redis"], "periodicd", "")
    reasons = {s.name: SCENARIOS["scale"].applies(s) for s in specs}
    assert reasons["periodic-pg"] is None
    assert reasons["periodic-memory"] and reasons["redis"]


def test_split_and_database_url() -> None:
    assert _split(5, 2) == [3, 2]
    assert _split(4, 1) == [4]
    assert with_db("postgresql://u@127.0.0.1:5/postgres", "b_1") == "postgresql://u@127.0.0.1:5/b_1"


def test_the_projection_charges_every_server_for_mirroring_the_others() -> None:
    one = {"srv_us_per_job": 75.5, "db_us_per_job": 28.5}
    two = {"srv_us_per_job": 118.0, "db_us_per_job": 49.0}
    text = projected_ceiling(one, two)
    # 1 server: 1 s / 75.5 µs; 2: 2 s / 118 µs, needing 16,949 × 49 µs of database CPU.
    assert "1: 13,245 (0.4 database cores)" in text
    assert "2: 16,949 (0.8 database cores)" in text
    assert "4: 19,704 (1.8 database cores)" in text
    assert "caps any number near 23,529 jobs/s" in text
    assert projected_ceiling(one, {"srv_us_per_job": float("nan"), "db_us_per_job": 1.0}) == ""


def test_the_report_projects_once_from_the_medians_of_the_runs() -> None:
    metrics = {
        "one_srv_us_per_job": summarize([80.0, 75.5, 70.0]),
        "two_srv_us_per_job": summarize([118.0, 110.0, 130.0]),
        "one_db_us_per_job": summarize([28.5, 30.0, 20.0]),
        "two_db_us_per_job": summarize([49.0, 40.0, 60.0]),
    }
    medians = {"srv_us_per_job": 75.5, "db_us_per_job": 28.5}
    two = {"srv_us_per_job": 118.0, "db_us_per_job": 49.0}
    assert report.scale_projection(metrics) == projected_ceiling(medians, two)
    assert report.scale_projection({}) == ""
