"""Bounded socket-level stress: fuzzed connections beside real clients and workers.

``periodicd`` runs as a subprocess (memory store, TCP on 127.0.0.1 only,
HTTP API off, 64 KiB frame limit).  While ``FUZZERS`` concurrent connections
keep opening sessions that send random and mutated frames (flipped bits,
wrong CRCs, wrong and oversized length fields, random commands and payloads,
truncated frames, garbage, HTTP-looking junk, missing or bad registrations,
writes split at random, abortive and half closes), two library workers run
``JOBS`` jobs that two library clients submit.  Afterwards:

* the server process is alive, answers PING and still runs a job;
* every good job ran exactly once and none is left on the server;
* the server's open file descriptors are back at the baseline taken before
  the load, and its RSS grew by less than ``RSS_BOUND``;
* the server logged no traceback and no ERROR line.

Fuzz frames never carry SHUTDOWN or CONFIG_SET with a valid CRC: those are
well-formed commands that affect every client by design (an auth file is
the guard against them), not malformed input.  Fuzz traffic uses its own
function names, so it cannot take the good jobs.

Everything is bounded: sessions per fuzzer, frames per session, the time of
the whole test (``trio.fail_after``).  The figures are printed (``-s``).
"""

from __future__ import annotations

import os
import random
import socket
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import trio
from conftest import DaemonProcess, start_daemon
from rawclient import frame

from trio_periodic import Client, Job, Worker
from trio_periodic.protocol import packets as p
from trio_periodic.protocol.constants import MAGIC_REQ, MAX_GARBAGE, ClientType, Cmd
from trio_periodic.protocol.frames import Registration, encode_frame, encode_registration
from trio_periodic.protocol.job import Job as WireJob

#: The daemon's max_frame_size (bytes).
FRAME_LIMIT = 64 * 1024
#: Allowed growth of the server's resident memory over the load (bytes).
RSS_BOUND = 64 * 1024 * 1024
#: Commands a fuzzer never sends with a valid CRC (see the module docstring).
NEVER = {Cmd.SHUTDOWN, Cmd.CONFIG_SET}
FUZZ_FUNCS = [b"fz%d" % i for i in range(4)]
FUZZ_NAMES = [b"n%d" % i for i in range(40)]
HTTP_JUNK = [b"GET / HTTP/1.1\r\n\r\n", b"GET /status HTTP/1.0\r\n\r\n", b"POST /x HTTP/1.1\r\n"]


@dataclass
class Scale:
    fuzzers: int
    jobs: int
    sessions_per_fuzzer: int
    seconds: float


QUICK = Scale(fuzzers=60, jobs=2000, sessions_per_fuzzer=150, seconds=45)
LONG = Scale(fuzzers=100, jobs=20000, sessions_per_fuzzer=2000, seconds=300)


@dataclass
class Tally:
    sessions: int = 0
    frames: int = 0
    bytes: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    refused: int = 0


# --------------------------------------------------------------------- frames


def valid_packet(rng: random.Random) -> p.Packet:
    """A well-formed request of the fuzzers' own functions."""
    func = rng.choice(FUZZ_FUNCS)
    name = rng.choice(FUZZ_NAMES)
    job = WireJob(func, name, rng.randbytes(rng.randrange(40)), 0, 0, rng.randrange(3))
    return rng.choice(
        [
            p.Ping(),
            p.Noop(),
            p.GrabJob(),
            p.CanDo(func),
            p.CantDo(func),
            p.Broadcast(func),
            p.SubmitJob(job),
            p.RunJob(job),
            p.RecvData(job),
            p.RemoveJob(func, name),
            p.WorkDone(func, name, b"r"),
            p.WorkFail(func, name),
            p.SchedLater(func, name, rng.randrange(3), 0),
            p.WorkData(func, name, b"d"),
            p.JobAssigned(),
            p.JobUnassigned(),
            p.Acquire(b"lock", 1, func, name),
            p.Release(b"lock", func, name),
            p.Status(),
            p.ConfigGet(b"timeout"),
            p.DropFunc(func),
        ]
    )


def fuzz_frame(rng: random.Random) -> tuple[str, bytes]:
    """One fuzz unit: its kind and its bytes."""
    good = encode_frame(rng.randrange(2**32), valid_packet(rng), MAGIC_REQ)
    kind = rng.choice(
        ["valid", "valid", "flip", "crc", "length", "oversized", "random_cmd", "truncated",
         "garbage", "garbage", "empty_body", "big_garbage"]
    )  # fmt: skip
    if kind == "valid":
        return kind, good
    if kind == "flip":
        data = bytearray(good)
        for _ in range(rng.randint(1, 3)):
            bit = rng.randrange(len(data) * 8)
            data[bit // 8] ^= 1 << (bit % 8)
        return kind, bytes(data)
    body = good[12:]
    if kind == "crc":
        return kind, frame(body, crc=zlib.crc32(body) ^ rng.randrange(1, 2**32))
    if kind == "length":
        wrong = max(0, len(body) + rng.choice([-3, -1, 1, 2, 7, rng.randrange(FRAME_LIMIT)]))
        return kind, frame(body, length=wrong)
    if kind == "oversized":
        return kind, frame(body, length=rng.randrange(FRAME_LIMIT + 1, 2**32))
    if kind == "random_cmd":
        cmd = rng.randrange(256)
        while cmd in NEVER:
            cmd = rng.randrange(256)
        payload = rng.randbytes(rng.randrange(64))
        return kind, frame(struct.pack(">IB", rng.randrange(2**32), cmd) + payload)
    if kind == "truncated":
        return kind, good[: rng.randrange(1, len(good))]
    if kind == "empty_body":
        return kind, frame(rng.randbytes(rng.randrange(5)))
    if kind == "big_garbage":
        if rng.random() < 0.1:  # rarely: more than the resync limit
            return kind, rng.randbytes(MAX_GARBAGE + 100)
        kind = "garbage"
    return kind, rng.randbytes(rng.randrange(1, 200))


def opening(rng: random.Random) -> tuple[str, bytes]:
    """What a fuzz session starts with."""
    kind = rng.choice(["client", "worker", "worker", "auth", "bad_reg", "none", "http"])
    if kind == "client":
        return kind, encode_registration(Registration(ClientType.CLIENT))
    if kind == "worker":
        return kind, encode_registration(Registration(ClientType.WORKER))
    if kind == "auth":
        reg = Registration(ClientType.AUTH_WORKER, b"fuzz", rng.randbytes(8))
        return kind, encode_registration(reg)
    if kind == "bad_reg":
        return kind, frame(bytes([rng.randrange(256)]) + rng.randbytes(rng.randrange(12)))
    if kind == "http":
        return kind, rng.choice(HTTP_JUNK) + rng.randbytes(rng.randrange(50))
    return kind, b""


def split(rng: random.Random, data: bytes) -> Iterator[bytes]:
    """Cut a write into random pieces (the server must reassemble frames)."""
    while data:
        n = rng.choice([1, 3, 12, 100, len(data)])
        yield data[:n]
        data = data[n:]


# -------------------------------------------------------------------- fuzzers


async def drain(stream: trio.SocketStream, ended: trio.Event) -> None:
    """Read (and drop) whatever the server sends until it closes."""
    try:
        while await stream.receive_some(65536):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        ended.set()


async def fuzz_session(port: int, rng: random.Random, tally: Tally) -> None:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        tally.refused += 1
        return
    tally.sessions += 1
    how_to_end = rng.choice(["close", "close", "abort", "half", "idle"])
    ended = trio.Event()
    async with trio.open_nursery() as nursery:
        reading = rng.random() < 0.8  # some peers never read their replies
        if reading:
            nursery.start_soon(drain, stream, ended)
        try:
            kind, first = opening(rng)
            tally.kinds["open:" + kind] += 1
            units = [first] if first else []
            for _ in range(rng.randint(1, 20)):
                kind, data = fuzz_frame(rng)
                tally.kinds[kind] += 1
                units.append(data)
            tally.frames += len(units)
            for unit in units:
                for piece in split(rng, unit):
                    await stream.send_all(piece)
                    tally.bytes += len(piece)
                if rng.random() < 0.1:
                    await trio.sleep(0.001)
            if how_to_end == "half":
                await stream.send_eof()
                with trio.move_on_after(0.5):  # the server closes after our EOF
                    await (ended.wait() if reading else drain(stream, ended))
            elif how_to_end == "idle":
                await trio.sleep(rng.random() * 0.2)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the server closed on us: expected for bad input
        finally:
            if how_to_end == "abort":
                # SO_LINGER 0: close with a RST instead of a FIN.
                stream.socket.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()


async def fuzzer(port: int, seed: int, scale: Scale, tally: Tally, stop: trio.Event) -> None:
    rng = random.Random(seed)
    for _ in range(scale.sessions_per_fuzzer):
        if stop.is_set():
            return
        await fuzz_session(port, rng, tally)


# ----------------------------------------------------------------- the server


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")  # pragma: no cover


async def settled_fds(pid: int, target: int, seconds: float) -> int:
    """Poll until the fd count is at most ``target`` (or time runs out)."""
    with trio.move_on_after(seconds):
        while fd_count(pid) > target:
            await trio.sleep(0.05)
    return fd_count(pid)


@pytest.fixture
def fuzz_daemon() -> Iterator[DaemonProcess]:
    d = start_daemon("-p", ":memory:", "--max-frame-size", str(FRAME_LIMIT))
    try:
        yield d
    finally:
        d.proc.terminate()
        try:
            d.proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            d.proc.kill()
            d.proc.wait(10)


async def one_round_trip(url: str, name: str) -> None:
    """PING, then one job through a fresh worker: the server still works."""
    done = trio.Event()

    async def handle(job: Job) -> bytes:
        done.set()
        return b"ok"

    async with Client.connect(url) as client:
        assert await client.ping() >= 0
        worker = Worker(url)
        worker.add_func("check", handle)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.work, 1)
            assert await client.run_job("check", name) == b"ok"
            worker.stop()
        assert done.is_set()


async def run_stress(d: DaemonProcess, scale: Scale) -> None:
    pid = d.proc.pid
    url = d.url
    with trio.fail_after(scale.seconds):
        await one_round_trip(url, "warm-up")  # first-use allocations are not a leak
        await trio.sleep(0.5)  # the warm-up connections are closed by now
        fds_before = fd_count(pid)
        rss_before = rss_bytes(pid)

        ran: Counter[str] = Counter()
        all_done = trio.Event()
        stop = trio.Event()
        tally = Tally()
        peak_fds = fds_before

        async def handle(job: Job) -> bytes:
            ran[job.name] += 1
            if len(ran) == scale.jobs:
                all_done.set()
            return b"ok"

        async def submit(client: Client, names: range) -> None:
            for i in names:
                await client.submit_job("stress", f"j{i:06d}", b"w")

        async def watch_fds() -> None:
            nonlocal peak_fds
            while True:
                peak_fds = max(peak_fds, fd_count(pid))
                await trio.sleep(0.1)

        started = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_fds)
            for i in range(scale.fuzzers):
                nursery.start_soon(fuzzer, d.port, 1000 + i, scale, tally, stop)
            workers = [Worker(url) for _ in range(2)]
            for worker in workers:
                worker.add_func("stress", handle)
                await nursery.start(worker.work, 8)
            async with Client.connect(url) as c1, Client.connect(url) as c2:
                quarter = scale.jobs // 4
                async with trio.open_nursery() as submitters:
                    for k, client in enumerate([c1, c2, c1, c2]):
                        end = scale.jobs if k == 3 else (k + 1) * quarter
                        submitters.start_soon(submit, client, range(k * quarter, end))
                await all_done.wait()
                await trio.sleep(0.5)  # room for a duplicate to show up
                stop.set()
                rows = {row.func: row for row in await c1.status()}
            for worker in workers:
                worker.stop()
            nursery.cancel_scope.cancel()
        elapsed = trio.current_time() - started

        assert d.proc.poll() is None, "the server died"
        await one_round_trip(url, "after")
        fds_after = await settled_fds(pid, fds_before, 10)
        rss_after = rss_bytes(pid)

    mib = 1024 * 1024
    print(
        f"\nstress: {scale.fuzzers} fuzz connections, {tally.sessions} sessions, "
        f"{tally.frames} frames fuzzed ({tally.bytes / mib:.1f} MiB), {scale.jobs} jobs, "
        f"{elapsed:.1f} s; server fds {fds_before} before, {peak_fds} peak, {fds_after} after; "
        f"RSS {rss_before / mib:.1f} MiB before, {rss_after / mib:.1f} MiB after"
    )
    print("stress: kinds", dict(sorted(tally.kinds.items())))
    assert tally.refused == 0, "connections refused: the server stopped accepting"
    assert len(ran) == scale.jobs
    assert [name for name, n in ran.items() if n != 1] == [], "jobs that ran twice"
    stress = rows["stress"]
    assert (stress.jobs, stress.processing) == (0, 0), stress
    assert fds_after <= fds_before, f"fd leak: {fds_before} before, {fds_after} after"
    assert rss_after - rss_before < RSS_BOUND
    log = "".join(d.log)
    assert "Traceback" not in log and " ERROR " not in log, log[-5000:]


async def test_fuzzed_connections_beside_real_jobs(fuzz_daemon: DaemonProcess) -> None:
    await run_stress(fuzz_daemon, QUICK)


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("TRIO_PERIODIC_STRESS_LONG"),
    reason="a five minute run: set TRIO_PERIODIC_STRESS_LONG=1",
)
async def test_fuzzed_connections_beside_real_jobs_long(fuzz_daemon: DaemonProcess) -> None:
    await run_stress(fuzz_daemon, LONG)
