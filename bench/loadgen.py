"""Load generator roles, each run in its own process, and the code that runs them together.

A role connects and prepares everything (pre-encoded requests, registered workers) before the
clock starts, waits for the common "go", then measures.  Every role reports its CPU time and
wall time so the report can show that the generator was not the bottleneck.  All loops are
bounded by a job count and a deadline.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import resource
import select
import signal
import socket
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.proto.base import Adapter, JobSpec, Worker, connect
from bench.proto.beanstalk import BeanstalkAdapter
from bench.proto.gearman import GearmanAdapter
from bench.proto.periodic import PeriodicAdapter
from bench.proto.redis import RedisAdapter
from bench.secure import Secure

WORKLOAD = b"0123456789abcdef"
RECV = 1 << 18


def adapter_for(kind: str) -> Adapter:
    adapters: dict[str, Callable[[], Adapter]] = {
        "periodic": PeriodicAdapter,
        "beanstalkd": BeanstalkAdapter,
        "gearmand": GearmanAdapter,
        "redis": RedisAdapter,
    }
    return adapters[kind]()


def job_name(prefix: str, i: int) -> bytes:
    return b"%s%07d" % (prefix.encode(), i)


@dataclass(frozen=True, slots=True)
class Target:
    kind: str
    host: str
    port: int
    #: periodicd's RSA/AES transport (bench/secure.py); None: plain TCP.
    secure: Secure | None = None


@dataclass(slots=True)
class RoleResult:
    role: str
    count: int = 0
    errors: int = 0
    t_start: float = 0.0  # time.monotonic(), comparable across processes
    t_end: float = 0.0
    cpu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def wall(self) -> float:
        return max(self.t_end - self.t_start, 1e-9)

    @property
    def util(self) -> float:
        """CPU seconds per wall second while the role was measuring (1.0 = one core busy)."""
        return self.cpu / max(float(self.extra.get("cpu_wall", self.wall)), 1e-9)


class _Clock:
    """Wall and CPU time of this process from the go signal (CPU: user + system, ns clock)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.c0 = time.process_time()
        self.r0 = resource.getrusage(resource.RUSAGE_SELF)

    def finish(self, res: RoleResult, t_end: float | None = None) -> RoleResult:
        cpu = time.process_time() - self.c0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        res.t_start = self.t0
        res.t_end = time.monotonic() if t_end is None else t_end
        res.cpu = cpu
        res.extra["cpu_user"] = r1.ru_utime - self.r0.ru_utime
        res.extra["cpu_sys"] = r1.ru_stime - self.r0.ru_stime
        res.extra["cpu_wall"] = time.monotonic() - self.t0
        return res


@dataclass
class Sync:
    """Handed to each role: tell the parent when ready, then wait for go."""

    ready: Any
    go: Any
    done: Any  # per-role job counters (multiprocessing.RawArray), used by worker roles

    def wait_go(self, timeout: float = 60.0) -> None:
        self.ready.put(os.getpid())
        if not self.go.wait(timeout):
            raise TimeoutError("no go signal")


# ---------------------------------------------------------------------------- submitters


def role_submit(
    sync: Sync,
    target: Target,
    func: bytes,
    prefix: str,
    n: int,
    window: int,
    deadline_s: float,
    chunk: int = 100,
    due: int = 0,
) -> RoleResult:
    """Submit ``n`` jobs with at most ``window`` unanswered (window 1 = one at a time)."""
    adapter = adapter_for(target.kind)
    sock = connect(target.host, target.port, secure=target.secure)
    adapter.client_handshake(sock)
    reqs = [
        adapter.submit(i + 1, JobSpec(func, job_name(prefix, i), WORKLOAD, due)) for i in range(n)
    ]
    chunk = max(1, min(chunk, window))
    chunks = [b"".join(reqs[i : i + chunk]) for i in range(0, n, chunk)]
    del reqs
    res = RoleResult("submit")
    buf = bytearray()
    sync.wait_go()
    clock = _Clock()
    deadline = clock.t0 + deadline_s
    sock.settimeout(0.25)
    sent = acked = bad = ci = 0
    nchunks = len(chunks)
    while acked + bad < n:
        while ci < nchunks and sent - acked - bad + chunk <= window:
            sock.sendall(chunks[ci])
            sent = min(sent + chunk, n)
            ci += 1
        try:
            data = sock.recv(RECV)
        except TimeoutError:
            data = None
        if data == b"":
            raise ConnectionError("server closed the connection")
        if data:
            buf += data
            ok, err, used = adapter.count_replies(buf)
            acked += ok
            bad += err
            del buf[:used]
        if time.monotonic() > deadline:
            break
    res.count, res.errors = acked, bad
    res.extra["sent"] = sent
    clock.finish(res)
    sock.close()
    return res


# ---------------------------------------------------------------------------- workers


class _WorkerConns:
    """Several worker connections served by one epoll loop (cheaper than ``selectors``)."""

    def __init__(self, target: Target, func: bytes, conns: int, slots: int) -> None:
        adapter = adapter_for(target.kind)
        self.poll = select.epoll()
        self.items: dict[int, tuple[socket.socket, Worker, bytearray]] = {}
        for _ in range(conns):
            sock = connect(target.host, target.port, secure=target.secure)
            worker = adapter.worker(func, slots)
            worker.handshake(sock)
            sock.setblocking(False)
            self.items[sock.fileno()] = (sock, worker, bytearray())
            self.poll.register(sock.fileno(), select.EPOLLIN)

    def start(self) -> None:
        for sock, worker, _ in self.items.values():
            _send_all(sock, worker.start())

    def close(self) -> None:
        for sock, _, _ in self.items.values():
            sock.close()
        self.poll.close()


def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            select.select([], [sock], [], 1.0)
            continue
        view = view[sent:]


def role_workers(
    sync: Sync,
    target: Target,
    func: bytes,
    conns: int,
    slots: int,
    total: int,
    deadline_s: float,
    slot: int = 0,
    record: bool = False,
    stall_s: float = 0.0,
) -> RoleResult:
    """Process jobs on ``conns`` connections until ``total`` jobs are done by all worker roles
    together or the deadline passes.  Each worker role publishes its count in its own
    ``sync.done[slot]`` (single writer, no lock).  t_end = time of the last job done here.
    With ``record`` the name of every job done is returned in ``extra["names"]`` (in order,
    repeats included), so that the caller can count jobs done twice.  With ``stall_s`` > 0 the
    role also stops when no worker role has done a job for that long (jobs lost by the server
    would otherwise keep it waiting until the deadline); ``extra["stalled"]`` says so."""
    ws = _WorkerConns(target, func, conns, slots)
    items = ws.items
    res = RoleResult("workers")
    sync.wait_go()
    clock = _Clock()
    ws.start()
    deadline = clock.t0 + deadline_s
    done = 0
    last = clock.t0
    counts = sync.done
    poll = ws.poll.poll
    monotonic = time.monotonic
    seen: list[bytes] = []
    progress, progress_at = 0, clock.t0
    while True:
        for fd, _ in poll(0.05):
            sock, worker, buf = items[fd]
            data = sock.recv(RECV)
            if not data:
                raise ConnectionError("server closed a worker connection")
            buf += data
            names, out, used = worker.feed(buf)
            del buf[:used]
            if out:
                _send_all(sock, out)
            if names:
                done += len(names)
                last = monotonic()
                counts[slot] = done
                if record:
                    seen += names
        everyone = sum(counts)
        now = monotonic()
        if everyone >= total or now > deadline:
            break
        if stall_s > 0:
            if everyone != progress:
                progress, progress_at = everyone, now
            elif now - progress_at > stall_s:
                res.extra["stalled"] = True
                break
    res.count = done
    if record:
        res.extra["names"] = seen
    clock.finish(res, t_end=last)
    ws.close()
    return res


# ---------------------------------------------------------------------------- latency


def role_timed(
    sync: Sync,
    target: Target,
    func: bytes,
    prefix: str,
    n: int,
    conns: int,
    slots: int,
    deadline_s: float,
    rate: float = 0.0,
    dues: list[int] | None = None,
    start_at: float = 0.0,
    window: int = 1000,
) -> RoleResult:
    """One process: a submitting connection plus ``conns`` idle workers.

    With ``rate`` > 0 jobs are sent one by one at that rate and each job's dispatch latency
    (submit sent → assignment received, monotonic ns) is recorded.  With ``dues`` the jobs are
    sent as fast as the server takes them (``window`` outstanding) from wall time ``start_at``
    with those due times, and each job's send, acknowledgement and receive times (wall ns) are
    recorded, for lateness.  Acknowledgements are matched to jobs in order, which holds for the
    protocols with relative due times (beanstalkd)."""
    adapter = adapter_for(target.kind)
    ws = _WorkerConns(target, func, conns, slots)
    sub = connect(target.host, target.port, secure=target.secure)
    adapter.client_handshake(sub)
    sub.setblocking(False)
    sub_fd = sub.fileno()
    ws.poll.register(sub_fd, select.EPOLLIN)
    names = [job_name(prefix, i) for i in range(n)]
    index = {name: i for i, name in enumerate(names)}
    sent_ns = array("q", [0]) * n
    ack_ns = array("q", [0]) * n
    recv_ns = array("q", [0]) * n
    batches: list[tuple[int, int, bytes]] = []
    if dues is not None:
        step = max(1, min(100, window))
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            reqs = (
                adapter.submit(i + 1, JobSpec(func, names[i], WORKLOAD, dues[i]))
                for i in range(lo, hi)
            )
            batches.append((lo, hi, b"".join(reqs)))
    res = RoleResult("timed")
    sync.wait_go()
    ws.start()
    if dues is not None:
        while time.time() < start_at:
            time.sleep(min(0.01, max(0.0, start_at - time.time())))
    clock = _Clock()
    deadline = clock.t0 + deadline_s
    sub_buf = bytearray()
    acked = got = nsent = 0
    clock_ns = time.monotonic_ns if dues is None else time.time_ns
    interval = 1.0 / rate if rate > 0 else 0.0
    next_send = time.monotonic()
    bi = 0
    while got < n:
        now = time.monotonic()
        if now > deadline:
            break
        if rate > 0 and nsent < n and now >= next_send:
            req = adapter.submit(nsent + 1, JobSpec(func, names[nsent], WORKLOAD, 0))
            sent_ns[nsent] = time.monotonic_ns()
            _send_all(sub, req)
            nsent += 1
            next_send += interval
            if next_send < now - 0.05:  # fell far behind: do not burst to catch up
                next_send = now
        while bi < len(batches) and nsent - acked - res.errors < window:
            lo, hi, data = batches[bi]
            sent_at = clock_ns()
            _send_all(sub, data)
            for i in range(lo, hi):
                sent_ns[i] = sent_at
            nsent = hi
            bi += 1
        if rate > 0 and nsent < n:
            timeout = max(0.0, next_send - time.monotonic())
        else:
            timeout = 0.0 if bi < len(batches) else 0.05
        for fd, _ in ws.poll.poll(timeout):
            if fd == sub_fd:
                data = sub.recv(RECV)
                stamp = clock_ns()
                if not data:
                    raise ConnectionError("server closed the client connection")
                sub_buf += data
                ok, err, used = adapter.count_replies(sub_buf)
                for i in range(acked + res.errors, min(n, acked + res.errors + ok + err)):
                    ack_ns[i] = stamp
                acked += ok
                res.errors += err
                del sub_buf[:used]
                continue
            sock, worker, buf = ws.items[fd]
            data = sock.recv(RECV)
            stamp = clock_ns()
            if not data:
                raise ConnectionError("server closed a worker connection")
            buf += data
            got_names, out, used = worker.feed(buf)
            del buf[:used]
            if out:
                _send_all(sock, out)
            for name in got_names:
                idx = index.get(name)
                if idx is not None and recv_ns[idx] == 0:
                    recv_ns[idx] = stamp
                    got += 1
    res.count = got
    res.extra.update(sent=nsent, acked=acked, sent_ns=sent_ns, ack_ns=ack_ns, recv_ns=recv_ns)
    clock.finish(res)
    sub.close()
    ws.close()
    return res


# ---------------------------------------------------------------------------- orchestration


@dataclass(frozen=True)
class Role:
    fn: Callable[..., RoleResult]
    kwargs: dict[str, Any]


def _child(fn: Callable[..., RoleResult], kwargs: dict[str, Any], sync: Sync, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles ^C and stops us
    try:
        results.put(("ok", fn(sync, **kwargs)))
    except BaseException as exc:  # reported to the parent, which raises
        results.put(("error", f"{fn.__name__}: {type(exc).__name__}: {exc}"))


_CTX: Any = None


def _context() -> Any:
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["bench.loadgen"])
    return _CTX


class RoleError(RuntimeError):
    pass


def run_roles(
    roles: list[Role],
    timeout: float,
    on_go: Callable[[], object] | None = None,
    on_end: Callable[[], object] | None = None,
) -> list[RoleResult]:
    """Start every role in its own process, release them together, collect their results.

    ``on_go`` is called just before the roles are released and ``on_end`` as soon as the last
    result is in, so that the caller can sample the server over the measured window only
    (not the processes' start-up and preparation).  Children are stopped by PID if they are
    still alive when this returns."""
    ctx = _context()
    ready, results = ctx.Queue(), ctx.Queue()
    sync = Sync(ready=ready, go=ctx.Event(), done=ctx.RawArray("q", len(roles)))
    procs = [
        ctx.Process(target=_child, args=(r.fn, r.kwargs, sync, results), daemon=True) for r in roles
    ]
    out: list[RoleResult] = []
    try:
        for p in procs:
            p.start()
        end = time.monotonic() + timeout
        pending = len(procs)
        while pending:
            try:
                ready.get(timeout=0.2)
                pending -= 1
            except Exception:
                if not results.empty():
                    status, value = results.get()
                    if status == "error":
                        raise RoleError(value) from None
                if time.monotonic() > end:
                    raise RoleError("generator processes did not get ready in time") from None
        if on_go is not None:
            on_go()
        sync.go.set()
        while len(out) < len(procs):
            remaining = end - time.monotonic()
            if remaining <= 0:
                raise RoleError("generator processes did not finish in time")
            try:
                status, value = results.get(timeout=min(remaining, 1.0))
            except Exception:
                if all(not p.is_alive() for p in procs) and results.empty():
                    raise RoleError("a generator process died") from None
                continue
            if status == "error":
                raise RoleError(value)
            out.append(value)
        if on_end is not None:
            on_end()
        return out
    finally:
        for p in procs:
            if p.pid is None:  # never started
                continue
            p.join(timeout=2.0)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                p.join(timeout=2.0)
