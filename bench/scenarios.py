"""The scenarios.  Each measures one server that the runner started fresh for it (restart
starts its own) and returns an :class:`Outcome`: metrics, generator and server CPU, samples."""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench import probes
from bench.loadgen import (
    Role,
    RoleResult,
    Target,
    adapter_for,
    role_submit,
    role_timed,
    role_workers,
    run_roles,
)
from bench.nodestyle import role_node_worker
from bench.params import Params
from bench.pg import Databases, db_counters
from bench.procs import (
    HOST,
    CpuSample,
    Server,
    cpu_sample,
    cpu_seconds,
    cpu_used,
    rss_bytes,
    running,
)
from bench.servers import ServerSpec
from bench.stats import percentile

GRACE = 60.0  # on top of a scenario's own deadline before the generator is declared stuck


@dataclass
class Outcome:
    metrics: dict[str, float]
    gen: list[dict[str, float | str]] = field(default_factory=list)
    server_util: float = float("nan")
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # what the load was, where servers are compared: {"jobs", "conns", "in_flight"}; a ratio
    # is only taken between two runs with the same shape
    shape: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    metrics: tuple[Metric, ...]
    headline: tuple[str, ...]  # metric keys that get ours/peer ratios
    run: Callable[..., Outcome] | None  # (spec, server, target, params, tag) -> Outcome
    applies: Callable[[ServerSpec], str | None]  # None, or why it does not apply


def _gen(results: list[RoleResult]) -> list[dict[str, float | str]]:
    return [
        {
            "role": r.role,
            "cpu_s": round(r.cpu, 4),
            "wall_s": round(float(r.extra.get("cpu_wall", r.wall)), 4),
            "util": round(r.util, 3),
        }
        for r in results
    ]


def _measure(
    server: Server, roles: list[Role], timeout: float
) -> tuple[list[RoleResult], float, float]:
    """Run the roles; return their results, the server's CPU use per wall second, and the
    server's CPU seconds, both over the measured window (go to the last result)."""
    samples: dict[str, CpuSample] = {}

    def sample(key: str) -> None:
        samples[key] = cpu_sample(server.pid)

    results = run_roles(roles, timeout, on_go=lambda: sample("go"), on_end=lambda: sample("end"))
    cpu = cpu_used(samples["go"], samples["end"])
    span = max(float(r.extra.get("cpu_wall", r.wall)) for r in results)
    return results, cpu / max(span, 1e-9), cpu


def per_job_us(cpu_s: float, jobs: float) -> float:
    """Server CPU microseconds per job done; nan when no job was done."""
    return cpu_s / jobs * 1e6 if jobs > 0 else float("nan")


# ------------------------------------------------------------------------------ submit


def submit_pipelined(spec: ServerSpec, server: Server, t: Target, p: Params, tag: str) -> Outcome:
    procs = max(1, p.submit_procs)
    roles = [
        Role(
            role_submit,
            dict(
                target=t,
                func=tag.encode(),
                prefix=f"p{k}",
                n=p.submit_n // procs,
                window=p.window,
                deadline_s=p.submit_s,
            ),
        )
        for k in range(procs)
    ]
    results, util, _ = _measure(server, roles, p.submit_s + GRACE)
    count = sum(r.count for r in results)
    errors = sum(r.errors for r in results)
    span = max(r.t_end for r in results) - min(r.t_start for r in results)
    out = Outcome(
        {"jobs_per_s": count / span, "jobs": count, "rejected": errors}, _gen(results), util
    )
    if errors:
        out.notes.append(f"{errors} submits rejected")
    return out


def submit_sync(spec: ServerSpec, server: Server, t: Target, p: Params, tag: str) -> Outcome:
    role = Role(
        role_submit,
        dict(target=t, func=tag.encode(), prefix="s", n=p.sync_n, window=1, deadline_s=p.sync_s),
    )
    (r,), util, _ = _measure(server, [role], p.sync_s + GRACE)
    rate = r.count / r.wall
    return Outcome(
        {"jobs_per_s": rate, "rtt_us": 1e6 / rate if rate else float("nan"), "jobs": r.count},
        _gen([r]),
        util,
    )


# ------------------------------------------------------------------------------ end to end


def _end_to_end(
    spec: ServerSpec, server: Server, t: Target, p: Params, tag: str, slots: int
) -> Outcome:
    func = tag.encode()
    procs = max(1, min(p.worker_procs, p.workers))
    split = [p.workers // procs + (1 if k < p.workers % procs else 0) for k in range(procs)]
    roles = [
        Role(
            role_submit,
            dict(target=t, func=func, prefix="e", n=p.e2e_n, window=p.window, deadline_s=p.e2e_s),
        )
    ]
    roles += [
        Role(
            role_workers,
            dict(
                target=t,
                func=func,
                conns=c,
                slots=slots,
                total=p.e2e_n,
                deadline_s=p.e2e_s,
                slot=k + 1,
                stall_s=p.stall_s,
            ),
        )
        for k, c in enumerate(split)
    ]
    results, util, cpu = _measure(server, roles, p.e2e_s + GRACE)
    sub = next(r for r in results if r.role == "submit")
    workers = [r for r in results if r.role == "workers"]
    done = sum(r.count for r in workers)
    span = max(r.t_end for r in workers) - sub.t_start
    out = Outcome(
        {
            "jobs_per_s": done / span if span > 0 else float("nan"),
            "cpu_us_per_job": per_job_us(cpu, done),
            "jobs": done,
            "seconds": span,
            "srv_cpu_s": cpu,
        },
        _gen(results),
        util,
        shape={"jobs": p.e2e_n, "conns": p.workers, "in_flight": slots},
    )
    if done < p.e2e_n:
        why = (
            f"no job done for {p.stall_s:g}s"
            if any(r.extra.get("stalled") for r in workers)
            else f"deadline {p.e2e_s:g}s"
        )
        out.notes.append(f"only {done} of {p.e2e_n} jobs done ({why})")
    return out


def end_to_end(spec: ServerSpec, server: Server, t: Target, p: Params, tag: str) -> Outcome:
    """``p.slots`` jobs in flight per worker connection (1 by default), every server."""
    return _end_to_end(spec, server, t, p, tag, p.slots)


def end_to_end_wide(spec: ServerSpec, server: Server, t: Target, p: Params, tag: str) -> Outcome:
    """``p.slots_wide`` jobs in flight per worker connection (4 by default), every server."""
    return _end_to_end(spec, server, t, p, tag, p.slots_wide)


# ------------------------------------------------------------------------------ latency


def node_worker(spec: ServerSpec, server: Server, t: Target, p: Params, tag: str) -> Outcome:
    """A node-periodic-style worker (bench/nodestyle.py, work(4), Nagle on) end to end."""
    func = tag.encode()
    n = p.node_n
    roles = [
        Role(
            role_submit,
            dict(target=t, func=func, prefix="n", n=n, window=p.window, deadline_s=p.e2e_s),
        ),
        Role(
            role_node_worker,
            dict(target=t, func=func, total=n, slots=p.slots_wide, deadline_s=p.e2e_s),
        ),
    ]
    results, util, cpu = _measure(server, roles, p.e2e_s + GRACE)
    sub = next(r for r in results if r.role == "submit")
    worker = next(r for r in results if r.role == "workers")
    span = worker.t_end - sub.t_start
    out = Outcome(
        {
            "jobs_per_s": worker.count / span if span > 0 else float("nan"),
            "cpu_us_per_job": per_job_us(cpu, worker.count),
            "jobs": worker.count,
            "twice": float(worker.extra.get("twice", 0)),
        },
        _gen(results),
        util,
    )
    if worker.count < n:
        out.notes.append(f"{n - worker.count} of {n:,} jobs not done within {p.e2e_s:g}s")
    return out


def dispatch_latency(spec: ServerSpec, server: Server, t: Target, p: Params, tag: str) -> Outcome:
    n = int(p.latency_rate * p.latency_s)
    role = Role(
        role_timed,
        dict(
            target=t,
            func=tag.encode(),
            prefix="l",
            n=n,
            conns=p.workers,
            slots=p.slots,
            deadline_s=p.latency_s + p.slack_s,
            rate=p.latency_rate,
        ),
    )
    (r,), util, _ = _measure(server, [role], p.latency_s + p.slack_s + GRACE)
    sent, recv = r.extra["sent_ns"], r.extra["recv_ns"]
    lat = sorted((b - a) / 1000.0 for a, b in zip(sent, recv, strict=True) if a and b)
    lost = r.extra["sent"] - len(lat)
    out = Outcome(
        {
            "p50_us": percentile(lat, 50),
            "p99_us": percentile(lat, 99),
            "p999_us": percentile(lat, 99.9),
            "max_us": lat[-1] if lat else float("nan"),
            "mean_us": sum(lat) / len(lat) if lat else float("nan"),
            "samples": len(lat),
            "lost": lost,
        },
        _gen([r]),
        util,
        samples={"latency_us": lat},
        shape={"jobs": n, "conns": p.workers, "in_flight": p.slots},
    )
    if lost:
        out.notes.append(f"{lost} jobs not dispatched within the deadline")
    return out


# ------------------------------------------------------------------------------ lateness


def due_lateness(spec: ServerSpec, server: Server, t: Target, p: Params, tag: str) -> Outcome:
    absolute = adapter_for(spec.kind).due_is_absolute
    n, spread = p.lateness_n, p.lateness_spread
    base = int(time.time()) + 2  # whole second at which all jobs are sent
    # contiguous groups: a relative-delay protocol (beanstalkd) then gets its jobs of one due
    # second in one tight burst of puts too, like the single due instant of Periodic
    groups = [i * spread // n for i in range(n)]
    dues = [base + 1 + g for g in groups] if absolute else [1 + g for g in groups]
    deadline = 2.0 + spread + p.slack_s
    role = Role(
        role_timed,
        dict(
            target=t,
            func=tag.encode(),
            prefix="d",
            n=n,
            conns=p.workers,
            slots=p.slots,
            deadline_s=deadline,
            dues=dues,
            start_at=base + 0.002,
        ),
    )
    (r,), util, _ = _measure(server, [role], deadline + GRACE)
    sent, acks, recv = r.extra["sent_ns"], r.extra["ack_ns"], r.extra["recv_ns"]
    late: list[float] = []
    per_group: dict[int, list[float]] = {}
    for i in range(n):
        if not recv[i]:
            continue
        # a relative delay starts when the server takes the put, just before it answers
        start = 0 if absolute else (acks[i] or sent[i])
        due_ns = start + dues[i] * 1_000_000_000
        ms = (recv[i] - due_ns) / 1e6
        late.append(ms)
        per_group.setdefault(groups[i], []).append(ms)
    late.sort()
    first = sorted(min(v) for v in per_group.values())
    drain = sorted(max(v) - min(v) for v in per_group.values())
    out = Outcome(
        {
            "p50_ms": percentile(late, 50),
            "p99_ms": percentile(late, 99),
            "max_ms": late[-1] if late else float("nan"),
            "first_ms": percentile(first, 50),
            "drain_ms": percentile(drain, 50),
            "early": sum(1 for x in late if x < 0),
            "jobs": len(late),
            "lost": n - len(late),
        },
        _gen([r]),
        util,
        samples={"lateness_ms": late},
        shape={"jobs": n, "conns": p.workers, "in_flight": p.slots},
    )
    if n - len(late):
        out.notes.append(f"{n - len(late)} jobs never assigned")
    return out


# ------------------------------------------------------------------------------ memory


def _fill(
    server: Server, t: Target, func: bytes, n: int, seconds: float, window: int
) -> RoleResult:
    role = Role(
        role_submit,
        dict(target=t, func=func, prefix="m", n=n, window=window, deadline_s=seconds, chunk=500),
    )
    (r,), _, _ = _measure(server, [role], seconds + GRACE + n / 20_000)
    return r


def memory(spec: ServerSpec, server: Server, t: Target, p: Params, tag: str) -> Outcome:
    probes.wait_ping(spec.kind, server.port, 10.0)
    time.sleep(0.3)
    before = rss_bytes(server.pid)
    r = _fill(server, t, tag.encode(), p.memory_n, p.memory_s, max(p.window, 4000))
    time.sleep(0.5)  # let asynchronous stores settle
    probes.wait_ping(spec.kind, server.port, 30.0)
    after = rss_bytes(server.pid)
    jobs = r.count
    out = Outcome(
        {
            "bytes_per_job": (after - before) / jobs if jobs else float("nan"),
            "rss_before_mb": before / 2**20,
            "rss_after_mb": after / 2**20,
            "jobs": jobs,
            "fill_jobs_per_s": jobs / r.wall,
        },
        _gen([r]),
    )
    if jobs < p.memory_n:
        out.notes.append(f"filled {jobs} of {p.memory_n} jobs in {p.memory_s:.0f}s")
    return out


# ------------------------------------------------------------------------------ restart


def restart(
    spec: ServerSpec,
    workdir: Path,
    p: Params,
    tag: str,
    on_step: Callable[[str], None] | None = None,
) -> list[Outcome]:
    """Fill a durable server, stop it, then start it ``restart_reps`` times and time how long
    until it answers a ping, and until a worker gets a job, with all jobs stored."""
    step = on_step or (lambda _msg: None)
    func = tag.encode()
    server = spec.make(workdir, persistent=True)
    t = Target(spec.kind, HOST, server.port)
    try:
        server.start()
        probes.wait_ping(spec.kind, server.port, 30.0, server.alive)
        step(f"filling {p.restart_n:,} jobs")
        r = _fill(server, t, func, p.restart_n, p.restart_fill_s, max(p.window, 4000))
        fill_rate = r.count / r.wall
        if spec.name == "redis":
            probes.redis_save(server.port)
        stored = probes.stored_jobs(spec.kind, server.port, func)
    finally:
        server.stop(grace=120.0)
    outs: list[Outcome] = []
    for rep in range(p.restart_reps):
        step(f"restart {rep + 1}/{p.restart_reps}")
        fresh = spec.make(workdir, persistent=True, port=server.port)
        assert fresh.argv == server.argv
        try:
            t0 = time.monotonic()
            fresh.spawn()
            t_ping = probes.wait_ping(spec.kind, fresh.port, p.restart_wait_s, fresh.alive)
            t_serve = probes.first_job(spec.kind, fresh.port, func, p.restart_wait_s)
            restored = probes.stored_jobs(spec.kind, fresh.port, func)
            rss = rss_bytes(fresh.pid)
        finally:
            s0 = time.monotonic()
            fresh.stop(grace=120.0)
            stop_s = time.monotonic() - s0
        out = Outcome(
            {
                "ping_s": t_ping - t0,
                "serve_s": t_serve - t0,
                "jobs_restored": restored,
                "jobs_stored": stored,
                "fill_jobs_per_s": fill_rate,
                "stop_s": stop_s,
                "rss_mb": rss / 2**20,
            }
        )
        if r.count < p.restart_n:
            out.notes.append(f"filled {r.count} of {p.restart_n} jobs in {p.restart_fill_s:.0f}s")
        if restored < stored:
            out.notes.append(f"{stored - restored} of {stored} jobs missing after restart")
        outs.append(out)
    return outs


# ------------------------------------------------------------------------------ scale


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def _scale_half(
    spec: ServerSpec, workdir: Path, p: Params, tag: str, count: int, dbs: Databases
) -> dict[str, Any]:
    """End to end on ``count`` periodicd processes sharing one fresh database.

    Always two submitters (``scale_n`` / 2 jobs each, names ``a…`` and ``b…``) and
    ``p.workers`` worker connections in ``p.worker_procs`` processes, so that only the number
    of servers changes: with two servers, submitter k and the worker connections are split
    evenly between them."""
    func = tag.encode()
    n = p.scale_n
    with dbs.fresh(f"{tag}-{count}") as url, contextlib.ExitStack() as stack:
        s = replace(spec, pg_url=url)
        servers = [s.make(workdir / f"{count}-servers-{k}") for k in range(count)]
        for server in servers:  # one after the other: the first one creates the tables
            stack.enter_context(running(server))
            probes.wait_ping(spec.kind, server.port, 30.0, server.alive)
        targets = [Target(spec.kind, HOST, server.port) for server in servers]
        roles = [
            Role(
                role_submit,
                dict(
                    target=targets[k % count],
                    func=func,
                    prefix="ab"[k],
                    n=part,
                    window=p.window,
                    deadline_s=p.scale_s,
                ),
            )
            for k, part in enumerate(_split(n, 2))
        ]
        procs_per_server = max(1, min(p.worker_procs, p.workers) // count)
        for target, conns in zip(targets, _split(p.workers, count), strict=True):
            for c in _split(conns, min(procs_per_server, conns)):
                roles.append(
                    Role(
                        role_workers,
                        dict(
                            target=target,
                            func=func,
                            conns=c,
                            slots=p.slots_wide,
                            total=n,
                            deadline_s=p.scale_s,
                            slot=len(roles),
                            record=True,
                            stall_s=p.stall_s,
                        ),
                    )
                )
        x0 = db_counters(url)
        c0 = [cpu_seconds(server.pid) for server in servers]
        d0 = dbs.db_cpu()
        results = run_roles(roles, p.scale_s + GRACE)
        c1 = [cpu_seconds(server.pid) for server in servers]
        d1 = dbs.db_cpu()
        stack.close()  # stop the servers: their backends report their last counts on exit
        x1 = db_counters(url)
    subs = [r for r in results if r.role == "submit"]
    workers = [r for r in results if r.role == "workers"]
    names = Counter(name for r in workers for name in r.extra["names"])
    done = sum(r.count for r in workers)
    span = max(r.t_end for r in workers) - min(r.t_start for r in subs)
    cpu_span = max(float(r.extra.get("cpu_wall", r.wall)) for r in results)
    return {
        "jobs_per_s": done / span if span > 0 else float("nan"),
        # per job done: PostgreSQL transactions and rows written (pg_stat_database, the
        # servers' start and our two queries included), CPU of the cluster's processes
        # and of the periodicd processes, in µs
        "xact_per_job": (x1[0] - x0[0]) / done if done else float("nan"),
        "rows_per_job": (x1[1] - x0[1]) / done if done else float("nan"),
        "db_us_per_job": per_job_us(d1 - d0, done),
        "srv_us_per_job": per_job_us(sum(b - a for a, b in zip(c0, c1, strict=True)), done),
        "seconds": span,
        "done": done,
        "accepted": sum(r.count for r in subs),
        "duplicates": sum(c - 1 for c in names.values() if c > 1),
        "missing": n - len(names),
        "stalled": any(r.extra.get("stalled") for r in workers),
        "srv_util": sum(b - a for a, b in zip(c0, c1, strict=True)) / max(cpu_span, 1e-9),
        "db_util": (d1 - d0) / max(cpu_span, 1e-9),
        "gen": _gen(results),
    }


def projected_ceiling(one: dict[str, Any], two: dict[str, Any]) -> str:
    """Where K servers top out, on a line through the one- and two-server runs.

    Every server mirrors every other server's jobs, so per job the servers together spend
    s1 + (K-1)·Δs µs of CPU and PostgreSQL d1 + (K-1)·Δd, with Δ = two servers - one.  With
    a core per server, K servers top out at K · 1 s / (s1 + (K-1)·Δs) jobs/s and need that
    rate times the database's µs per job in database cores; the mirroring alone caps any
    number of servers near 1 s / Δs."""
    s1, s2 = one["srv_us_per_job"], two["srv_us_per_job"]
    d1, d2 = one["db_us_per_job"], two["db_us_per_job"]
    if not all(v > 0 and not math.isnan(v) for v in (s1, s2, d1, d2)):
        return ""
    ds, dd = max(s2 - s1, 0.0), max(d2 - d1, 0.0)
    steps = []
    for k in (1, 2, 4, 8):
        rate = k * 1e6 / (s1 + (k - 1) * ds)
        cores = rate * (d1 + (k - 1) * dd) / 1e6
        steps.append(f"{k}: {rate:,.0f} ({cores:.1f} database cores)")
    cap = f"; mirroring caps any number near {1e6 / ds:,.0f} jobs/s" if ds > 0 else ""
    return f"projected with a core per server: servers {', '.join(steps)}{cap}"


def scale(
    spec: ServerSpec,
    workdir: Path,
    p: Params,
    tag: str,
    dbs: Databases,
    run: int = 0,
    on_step: Callable[[str], None] | None = None,
) -> list[Outcome]:
    """End-to-end throughput on one periodicd vs two periodicd on one PostgreSQL database,
    and whether any job was done twice.  The order alternates between runs (1 then 2, 2 then
    1, …) so that drift over the run does not favour either."""
    step = on_step or (lambda _msg: None)
    halves: dict[int, dict[str, Any]] = {}
    for count in (1, 2) if run % 2 == 0 else (2, 1):
        step(f"{count} server{'s' if count > 1 else ''}")
        halves[count] = _scale_half(spec, workdir, p, tag, count, dbs)
    one, two = halves[1], halves[2]
    out = Outcome(
        {
            "one_jobs_per_s": one["jobs_per_s"],
            "two_jobs_per_s": two["jobs_per_s"],
            "ratio": two["jobs_per_s"] / one["jobs_per_s"] if one["jobs_per_s"] else float("nan"),
            "duplicates": two["duplicates"],
            "missing": two["missing"],
            "one_duplicates": one["duplicates"],
            "one_missing": one["missing"],
            "one_seconds": one["seconds"],
            "two_seconds": two["seconds"],
            "one_srv_util": one["srv_util"],
            "two_srv_util": two["srv_util"],
            "one_db_util": one["db_util"],
            "two_db_util": two["db_util"],
            **{
                f"{label}_{key}": half[key]
                for label, half in (("one", one), ("two", two))
                for key in ("xact_per_job", "rows_per_job", "db_us_per_job", "srv_us_per_job")
            },
        },
        one["gen"] + two["gen"],
        two["srv_util"],
    )
    for count, half in sorted(halves.items()):
        label = "1 server" if count == 1 else "2 servers"
        if half["duplicates"]:
            out.notes.append(f"DUPLICATES: {half['duplicates']} jobs done twice ({label})")
        if half["missing"] > 0:
            why = f"no job done for {p.stall_s:g}s" if half["stalled"] else "deadline"
            out.notes.append(
                f"{label}: {half['missing']} of {p.scale_n} jobs never done ({why}; "
                f"{half['accepted']} submits accepted)"
            )
    return [out]


# ------------------------------------------------------------------------------ registry


def _always(_spec: ServerSpec) -> str | None:
    return None


def _plain(applies: Callable[[ServerSpec], str | None]) -> Callable[[ServerSpec], str | None]:
    """``applies``, and not on the RSA/AES transport servers (measured on submits, end to
    end and latency only: what the encryption costs per job)."""

    def check(spec: ServerSpec) -> str | None:
        if spec.secure is not None:
            return "the RSA/AES transport is measured on submits, end to end and latency only"
        return applies(spec)

    return check


def _periodic_only(spec: ServerSpec) -> str | None:
    return None if spec.ours else "a node-periodic-style worker speaks the Periodic protocol only"


def _due(spec: ServerSpec) -> str | None:
    if spec.kind == "gearmand":
        return (
            "gearmand does not wake sleeping workers when a SUBMIT_JOB_EPOCH job falls due "
            "(checked: NOOP comes at submit time, NO_JOB after)"
        )
    if spec.kind == "redis":
        return "redis lists have no delayed jobs"
    return None


def _restartable(spec: ServerSpec) -> str | None:
    if spec.name == "periodic-memory":
        return "the memory store keeps nothing across restarts"
    if spec.kind == "gearmand":
        return "not measured (gearmand needs a persistent queue module such as libsqlite3)"
    return None


def _clustered(spec: ServerSpec) -> str | None:
    if spec.name == "periodic-pg":
        return None
    if spec.ours:
        return "cluster mode needs the PostgreSQL store (periodic-pg)"
    return "no shared-store cluster mode to compare"


def _m(key: str, label: str, unit: str, higher: bool) -> Metric:
    return Metric(key, label, unit, higher)


E2E_METRICS = (
    _m("jobs_per_s", "throughput", "jobs/s", True),
    _m("cpu_us_per_job", "server CPU/job", "µs", False),
    _m("seconds", "time", "s", False),
)
# the end-to-end scenarios: one per shape (jobs in flight per worker connection)
E2E_SHAPES = ("e2e", "e2e-4")

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario(
            "submit-pipelined",
            "Submit throughput, pipelined",
            (_m("jobs_per_s", "throughput", "jobs/s", True),),
            ("jobs_per_s",),
            submit_pipelined,
            _always,
        ),
        Scenario(
            "submit-sync",
            "Submit throughput, one at a time",
            (
                _m("jobs_per_s", "throughput", "jobs/s", True),
                _m("rtt_us", "round trip", "µs", False),
            ),
            ("jobs_per_s",),
            submit_sync,
            _always,
        ),
        Scenario(
            "e2e",
            "End to end (first submit to last done), one job in flight per worker connection",
            E2E_METRICS,
            ("jobs_per_s", "cpu_us_per_job"),
            end_to_end,
            _always,
        ),
        Scenario(
            "e2e-4",
            "End to end (first submit to last done), four jobs in flight per worker connection",
            E2E_METRICS,
            ("jobs_per_s", "cpu_us_per_job"),
            end_to_end_wide,
            _always,
        ),
        Scenario(
            "node-worker",
            "End to end through a node-periodic-style worker (Nagle on, work(4))",
            (
                _m("jobs_per_s", "throughput", "jobs/s", True),
                _m("cpu_us_per_job", "server CPU/job", "µs", False),
                _m("twice", "done twice", "jobs", False),
            ),
            ("jobs_per_s",),
            node_worker,
            _plain(_periodic_only),
        ),
        Scenario(
            "latency",
            "Dispatch latency at a fixed rate, idle workers",
            (
                _m("p50_us", "p50", "µs", False),
                _m("p99_us", "p99", "µs", False),
                _m("p999_us", "p99.9", "µs", False),
                _m("max_us", "max", "µs", False),
            ),
            ("p50_us", "p99_us"),
            dispatch_latency,
            _always,
        ),
        Scenario(
            "lateness",
            "Due-time lateness",
            (
                _m("p50_ms", "p50", "ms", False),
                _m("p99_ms", "p99", "ms", False),
                _m("max_ms", "max", "ms", False),
                _m("first_ms", "first of a second", "ms", False),
                _m("drain_ms", "drain of a second", "ms", False),
            ),
            ("p99_ms",),
            due_lateness,
            _plain(_due),
        ),
        Scenario(
            "memory",
            "Memory with pending jobs",
            (
                _m("bytes_per_job", "bytes/job", "B", False),
                _m("rss_after_mb", "RSS", "MiB", False),
                _m("jobs", "jobs", "", True),
                _m("fill_jobs_per_s", "fill", "jobs/s", True),
            ),
            ("bytes_per_job",),
            memory,
            _plain(_always),
        ),
        Scenario(
            "restart",
            "Restart with jobs stored",
            (
                _m("ping_s", "until ping", "s", False),
                _m("serve_s", "until first job", "s", False),
                _m("jobs_restored", "jobs", "", True),
            ),
            ("serve_s",),
            None,
            _plain(_restartable),
        ),
        Scenario(
            "scale",
            "Scale: two periodicd on one PostgreSQL database vs one",
            (
                _m("one_jobs_per_s", "1 server", "jobs/s", True),
                _m("two_jobs_per_s", "2 servers", "jobs/s", True),
                _m("ratio", "2 / 1", "×", True),
                _m("duplicates", "done twice, 2 servers", "jobs", False),
                _m("missing", "never done, 2 servers", "jobs", False),
                _m("one_missing", "never done, 1 server", "jobs", False),
                _m("one_srv_util", "srv, 1 server", "CPU/wall", False),
                _m("two_srv_util", "srv, 2 servers", "CPU/wall", False),
                _m("one_db_util", "PostgreSQL, 1 server", "CPU/wall", False),
                _m("two_db_util", "PostgreSQL, 2 servers", "CPU/wall", False),
                _m("one_xact_per_job", "PG xact/job, 1 server", "", False),
                _m("two_xact_per_job", "PG xact/job, 2 servers", "", False),
                _m("one_rows_per_job", "PG rows/job, 1 server", "", False),
                _m("two_rows_per_job", "PG rows/job, 2 servers", "", False),
                _m("one_db_us_per_job", "PG CPU/job, 1 server", "µs", False),
                _m("two_db_us_per_job", "PG CPU/job, 2 servers", "µs", False),
                _m("one_srv_us_per_job", "srv CPU/job, 1 server", "µs", False),
                _m("two_srv_us_per_job", "srv CPU/job, 2 servers", "µs", False),
            ),
            (),
            None,
            _plain(_clustered),
        ),
    )
}


def _in_flight(k: int) -> str:
    return f"{k} job{'s' if k != 1 else ''} in flight"


def _describe_e2e(p: Params, slots: int) -> str:
    return (
        f"{p.e2e_n:,} jobs, {p.workers} worker connections in {p.worker_procs} generator "
        f"processes, {_in_flight(slots)} per connection for every server (Periodic "
        f"{slots} GRAB_JOB msgid{'s' if slots != 1 else ''}, beanstalkd {slots} pipelined "
        f"reserve, gearmand {slots} GRAB_JOB_UNIQ, redis {slots} pipelined BRPOP), submitter "
        f"window {p.window}. *server CPU/job* = the server's CPU time (all threads, from go to "
        "the last result) / jobs done"
    )


def describe(p: Params) -> dict[str, Any]:
    """What each scenario did, for the report."""
    return {
        "submit-pipelined": f"{p.submit_n:,} SUBMIT_JOB / put / SUBMIT_JOB_BG / LPUSH, "
        f"window {p.window}, ≤{p.submit_s:g}s, one connection",
        "submit-sync": f"{p.sync_n:,} submits one at a time (≤{p.sync_s:g}s), one connection",
        "e2e": _describe_e2e(p, p.slots),
        "e2e-4": _describe_e2e(p, p.slots_wide),
        "node-worker": f"{p.node_n:,} jobs submitted (window {p.window}) while ONE worker "
        f"connection with node-periodic 1.6.1's wire habits (bench/nodestyle.py: Nagle on, "
        f"work({p.slots_wide}), GRAB_JOB re-sent at once by idle slots, JOB_ASSIGNED at once, "
        "4-character msgids) runs them; goal ≥ 2,000 jobs/s",
        "latency": f"{p.latency_rate:g} jobs/s for {p.latency_s:g}s, {p.workers} idle workers "
        f"({_in_flight(p.slots)} each); submit sent → assignment received",
        "lateness": f"{p.lateness_n:,} jobs due at {p.lateness_spread} whole seconds "
        f"({p.lateness_n // p.lateness_spread:,} per second), {p.workers} workers "
        f"({_in_flight(p.slots)} each); "
        "assignment received − due time",
        "memory": f"RSS before and after {p.memory_n:,} pending jobs (≤{p.memory_s:g}s fill)",
        "restart": f"{p.restart_n:,} jobs stored, stop, start ×{p.restart_reps}: "
        "time to PING and to the first job",
        "scale": f"end to end with {p.scale_n:,} jobs (≤{p.scale_s:g}s) on ONE periodicd on "
        "PostgreSQL, then on TWO periodicd sharing one PostgreSQL database (cluster mode; "
        "the order alternates between runs), each half on a fresh database. Both halves use "
        f"2 submitters ({p.scale_n // 2:,} jobs each, window {p.window}) and {p.workers} "
        f"worker connections in {p.worker_procs} processes ({p.slots_wide} GRAB_JOB slots "
        "each); with two servers submitters and worker connections are split evenly between "
        "them. Workers record every job name: *done twice* counts names received more than "
        "once (must be 0). *srv* sums the periodicd processes",
    }
