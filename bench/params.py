"""Scenario sizes for the quick and the full run."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Params:
    quick: bool
    runs: int
    window: int = 1000  # outstanding submits in pipelined mode (per connection)
    submit_procs: int = 1  # generator processes (one connection each) for pipelined submit
    submit_n: int = 200_000
    submit_s: float = 5.0  # every loop is bounded by a count and a time
    sync_n: int = 20_000
    sync_s: float = 3.0
    e2e_n: int = 20_000
    e2e_s: float = 20.0
    node_n: int = 10_000  # jobs through the node-periodic-style worker
    workers: int = 4  # worker connections
    worker_procs: int = 2  # generator processes sharing those connections
    # jobs in flight per worker connection, the same for every server: GRAB_JOB msgids
    # (Periodic), pipelined reserve (beanstalkd), GRAB_JOB_UNIQ (gearmand), BRPOP (redis)
    slots: int = 1  # e2e, latency, lateness
    slots_wide: int = 4  # e2e-4, and scale (periodicd only)
    latency_rate: float = 1000.0  # jobs/s
    latency_s: float = 6.0
    lateness_n: int = 10_000
    lateness_spread: int = 5  # due over this many whole seconds
    slack_s: float = 5.0  # extra time for the last timed jobs to arrive before giving up
    memory_n: int = 1_000_000
    memory_s: float = 60.0
    restart_n: int = 1_000_000
    restart_fill_s: float = 90.0
    restart_reps: int = 3
    restart_wait_s: float = 120.0
    scale_n: int = 20_000  # end-to-end jobs in each half of ``scale`` (PostgreSQL)
    scale_s: float = 30.0
    stall_s: float = 3.0  # end to end gives up when no job was done for this long

    @staticmethod
    def make(quick: bool, runs: int | None = None, **overrides: int | None) -> Params:
        if quick:
            p = Params(
                quick=True,
                runs=runs or 1,
                submit_n=50_000,
                submit_s=1.5,
                sync_n=5_000,
                sync_s=0.75,
                e2e_n=5_000,
                node_n=3_000,
                e2e_s=6.0,
                latency_s=1.5,
                lateness_spread=2,
                memory_n=100_000,
                memory_s=12.0,
                restart_n=100_000,
                restart_fill_s=12.0,
                restart_reps=1,
                restart_wait_s=30.0,
                slack_s=2.0,
                scale_n=5_000,
                scale_s=10.0,
            )
        else:
            p = Params(quick=False, runs=runs or 3)
        given: dict[str, Any] = {k: v for k, v in overrides.items() if v is not None}
        return replace(p, **given) if given else p
