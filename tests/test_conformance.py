"""SEMANTICS.md §16, C1–C61, over real sockets against the in-process server.

Every test is bounded by ``trio.fail_after``.  The reference allows "a few
seconds" of slack; our server is precise (timeouts and delays are enforced by
cancel scopes, not sweeps), so the windows asserted here are tight and the
time-heavy items use short equivalents (noted in each docstring).

Where trio_periodic deliberately differs from periodicd the test checks *our*
behaviour and says so (C18, C20, C30, C31, C34, C38, C39, C11); see the
README's "Differences from periodicd".
"""

from __future__ import annotations

import itertools
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
import trio
from conftest import RunningServer, start_daemon
from rawclient import RawConn

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.connection import RegistrationReply
from trio_periodic.protocol.constants import MAGIC_REQ, MAGIC_RES, ClientType, Cmd
from trio_periodic.protocol.frames import encode_frame
from trio_periodic.protocol.job import Job, decode_job_list

# --------------------------------------------------------------------------- helpers

_ids = itertools.count(1000)


def mid() -> int:
    """A fresh request msgid (grab slots use small fixed msgids instead)."""
    return next(_ids)


class Conn(RawConn):
    """RawConn that also keeps every byte the server sent (for byte-level checks)."""

    raw: bytearray

    async def _fill(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            raise EOFError("server closed the connection")
        if not hasattr(self, "raw"):
            self.raw = bytearray()
        self.raw += data
        self.proto.receive_data(data)
        for event in self.proto.next_events():
            if isinstance(event, RegistrationReply):
                self.conn_id = event.conn_id
            else:
                self._pending.append(event)


async def client(server: RunningServer) -> Conn:
    return await Conn.open(server.tcp)


async def worker(
    server: RunningServer,
    *funcs: bytes,
    grabs: tuple[int, ...] = (1,),
    broadcast: bool = False,
    unix: bool = False,
) -> Conn:
    w = await Conn.open(server.unix if unix else server.tcp, ClientType.WORKER)
    for func in funcs:
        reg: p.Packet = p.Broadcast(func) if broadcast else p.CanDo(func)
        assert isinstance(await w.request(mid(), reg), p.Success)
    for g in grabs:
        await grab(w, g)
    return w


async def grab(w: Conn, msgid: int) -> None:
    assert isinstance(await w.request(msgid, p.GrabJob()), p.Success)


async def next_assign(w: Conn, msgid: int, timeout: float = 3.0) -> Job:
    """The next JOB_ASSIGN on ``msgid`` (SUCCESS replies to GRAB_JOB are skipped)."""
    with trio.fail_after(timeout):
        while True:
            r = await w.recv_for(msgid, timeout + 1)
            if isinstance(r.packet, p.JobAssign):
                return r.packet.job
            assert isinstance(r.packet, p.Success), r


async def any_assign(w: Conn, timeout: float = 3.0) -> tuple[int, Job]:
    """The next JOB_ASSIGN on any msgid."""
    with trio.fail_after(timeout):
        while True:
            r = await w.recv(timeout + 1)
            if isinstance(r.packet, p.JobAssign):
                return r.msgid, r.packet.job
            assert isinstance(r.packet, p.Success), r


async def submit(c: Conn, job: Job) -> None:
    assert isinstance(await c.request(mid(), p.SubmitJob(job)), p.Success)


async def status(c: Conn) -> dict[bytes, tuple[int, int, int, int, int]]:
    """STATUS as {func: (workers, jobs, processing, locked, schedat)}."""
    reply = await c.request(mid(), p.Status())
    assert isinstance(reply, p.Data)
    out = {}
    if reply.data:
        for line in reply.data.split(b"\n"):
            fields = line.split(b",")
            assert len(fields) == 6, line
            w, j, pr, lk, sa = (int(x) for x in fields[1:])
            out[fields[0]] = (w, j, pr, lk, sa)
    return out


async def dump(c: Conn) -> list[Job]:
    reply = await c.request(mid(), p.Dump())
    assert isinstance(reply, p.Data)
    return decode_job_list(reply.data)


async def dump_names(c: Conn) -> set[tuple[bytes, bytes]]:
    return {(j.func, j.name) for j in await dump(c)}


async def config_set(c: Conn, key: bytes, value: int) -> None:
    assert isinstance(await c.request(mid(), p.ConfigSet(key, value)), p.Success)


async def config_get(c: Conn, key: bytes) -> int:
    reply = await c.request(mid(), p.ConfigGet(key))
    assert isinstance(reply, p.Config)
    return reply.value


async def ok(conn: Conn, packet: p.Packet) -> None:
    assert isinstance(await conn.request(mid(), packet), p.Success)


async def acquire(w: Conn, lock: bytes, count: int, func: bytes, name: bytes) -> bool:
    reply = await w.request(mid(), p.Acquire(lock, count, func, name))
    assert isinstance(reply, p.Acquired)
    return reply.ok


def frame(body: bytes, *, crc: int | None = None, magic: bytes = MAGIC_REQ) -> bytes:
    """A raw frame around ``body`` (optionally with a wrong CRC)."""
    return magic + struct.pack(">II", len(body), zlib.crc32(body) if crc is None else crc) + body


def packet_frame(msgid: int, cmd: int, payload: bytes = b"", **kw: object) -> bytes:
    return frame(struct.pack(">IB", msgid, cmd) + payload, **kw)  # type: ignore[arg-type]


REG_CLIENT = bytes.fromhex("00524551 00000001 a505df1b 01")
REG_WORKER = bytes.fromhex("00524551 00000001 3c0c8ea1 02")


async def read_exactly(stream: trio.abc.ReceiveStream, n: int, timeout: float = 3) -> bytes:
    buf = bytearray()
    with trio.fail_after(timeout):
        while len(buf) < n:
            data = await stream.receive_some(n - len(buf))
            assert data, f"closed after {len(buf)} of {n} bytes"
            buf += data
    return bytes(buf)


async def read_until_closed(stream: trio.abc.ReceiveStream, timeout: float = 3) -> bytes:
    """Everything the server sends until it closes; fails if it does not close."""
    buf = bytearray()
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, ConnectionResetError):
                break
            if not data:
                break
            buf += data
    return bytes(buf)


async def raw_registered(server: RunningServer, reg: bytes = REG_CLIENT) -> trio.SocketStream:
    """A raw TCP stream that has registered and read the 17-byte reply."""
    s = await trio.open_tcp_stream(*server.tcp)
    await s.send_all(reg)
    reply = await read_exactly(s, 17)
    assert reply[:4] == MAGIC_RES
    return s


def now() -> float:
    return time.time()


# ------------------------------------------------------------------ connection & framing


async def test_c01_client_registration_reply(server: RunningServer) -> None:
    """C1: body 01 → a \\0RES frame of length 5: 1E + 4-byte id, no msgid."""
    with trio.fail_after(5):
        s = await trio.open_tcp_stream(*server.tcp)
        await s.send_all(REG_CLIENT)
        reply = await read_exactly(s, 17)
        assert reply[:4] == MAGIC_RES
        length, crc = struct.unpack(">II", reply[4:12])
        assert length == 5
        body = reply[12:]
        assert crc == zlib.crc32(body)
        assert body[0] == 0x1E
        # Nothing else follows the reply.
        with trio.move_on_after(0.2):
            extra = await s.receive_some(100)
            pytest.fail(f"unexpected bytes after the reply: {extra!r}")
        await s.aclose()


@pytest.mark.parametrize(
    ("body", "replied"),
    [(b"\x02", True), (b"\x05", False), (b"\x01\x00", False), (b"\x02\x00", False)],
    ids=["worker", "unknown-type", "client-trailing-byte", "worker-trailing-byte"],
)
async def test_c02_registration_types(server: RunningServer, body: bytes, replied: bool) -> None:
    """C2: body 02 gets the same reply; 05 or 01 00 → closed without a reply."""
    with trio.fail_after(5):
        s = await trio.open_tcp_stream(*server.tcp)
        await s.send_all(frame(body))
        if replied:
            reply = await read_exactly(s, 17)
            assert reply[:12] == MAGIC_RES + struct.pack(">II", 5, zlib.crc32(reply[12:]))
            assert reply[12] == 0x1E
        else:
            assert await read_until_closed(s) == b""


@pytest.mark.parametrize("kind", [ClientType.CLIENT, ClientType.WORKER])
@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_c03_ping_pong(server: RunningServer, kind: ClientType, transport: str) -> None:
    """C3: PING msgid M → PONG msgid M, for client and worker connections."""
    with trio.fail_after(5):
        conn = await Conn.open(server.tcp if transport == "tcp" else server.unix, kind)
        await conn.send(77, p.Ping())
        r = await conn.recv()
        assert r.msgid == 77
        assert isinstance(r.packet, p.Pong)
        # Byte exact (PROTOCOL.md §16).
        assert bytes.fromhex("00524553 00000005 3fec2f42 00000001 0a") == encode_frame(1, p.Pong())


async def test_c04_pipelined_requests_each_get_their_reply(server: RunningServer) -> None:
    """C4: every reply carries its request's msgid; pipelined requests all answered."""
    with trio.fail_after(5):
        c = await client(server)
        await c.send_many(
            [(11, p.Ping()), (12, p.Status()), (13, p.ConfigGet(b"timeout")), (14, p.Ping())]
        )
        got = {}
        for _ in range(4):
            r = await c.recv()
            got[r.msgid] = r.packet
        assert isinstance(got[11], p.Pong)
        assert isinstance(got[12], p.Data)
        assert got[13] == p.Config(600)
        assert isinstance(got[14], p.Pong)


async def test_c05_garbage_before_magic_is_skipped(server: RunningServer) -> None:
    """C5: "xyz" before a valid PING still yields PONG (also garbage that looks like a magic)."""
    with trio.fail_after(5):
        s = await raw_registered(server)
        await s.send_all(b"xyz" + packet_frame(5, Cmd.PING))
        assert await read_exactly(s, 17) == encode_frame(5, p.Pong())
        # Near-magics ("\0RE" followed by something else) are garbage too.
        await s.send_all(b"\x00RE\x00REX\x00RQ" + b"\x00" * 100 + packet_frame(6, Cmd.PING))
        assert await read_exactly(s, 17) == encode_frame(6, p.Pong())
        # A frame split byte by byte also works.
        for b in packet_frame(7, Cmd.PING):
            await s.send_all(bytes([b]))
        assert await read_exactly(s, 17) == encode_frame(7, p.Pong())


async def test_c06_bad_crc_closes_without_reply(server: RunningServer) -> None:
    """C6: a wrong CRC closes the connection; nothing is sent."""
    with trio.fail_after(5):
        s = await raw_registered(server)
        good = packet_frame(5, Cmd.PING)
        bad = packet_frame(5, Cmd.PING, crc=zlib.crc32(good[12:]) ^ 1)
        await s.send_all(bad)
        assert await read_until_closed(s) == b""


async def test_c07_unknown_command_closes(server: RunningServer) -> None:
    """C7: command byte 0x50 closes the connection (any code >= 35 does)."""
    with trio.fail_after(5):
        for cmd in (0x50, 35):
            s = await raw_registered(server)
            await s.send_all(packet_frame(5, cmd))
            assert await read_until_closed(s) == b""


async def test_c08_trailing_payload_byte_closes(server: RunningServer) -> None:
    """C8: PING with one extra payload byte closes the connection."""
    with trio.fail_after(5):
        s = await raw_registered(server)
        await s.send_all(packet_frame(5, Cmd.PING, b"\x00"))
        assert await read_until_closed(s) == b""


async def test_c09_unknown_is_echoed(server: RunningServer) -> None:
    """C9: command 12 (UNKNOWN) is answered with 12 on the same msgid, on both roles."""
    with trio.fail_after(5):
        for conn in (await client(server), await worker(server, grabs=())):
            await conn.send(42, p.Unknown())
            r = await conn.recv()
            assert (r.msgid, type(r.packet)) == (42, p.Unknown)


async def test_c10_server_only_codes_get_no_reply(server: RunningServer) -> None:
    """C10: NOOP / SUCCESS (and other server-only codes) sent by a peer get no reply."""
    with trio.fail_after(5):
        for conn in (await client(server), await worker(server, grabs=())):
            await conn.send_many(
                [
                    (1, p.Noop()),
                    (2, p.Success()),
                    (3, p.Pong()),
                    (4, p.NoWorker()),
                    (5, p.Data(b"x")),
                    (6, p.Config(3)),
                    (7, p.Acquired(True)),
                    (8, p.NoJob()),
                    (9, p.JobAssign(Job(b"f", b"n"))),
                ]
            )
            assert await conn.nothing_for(0.2)
            r = await conn.request(10, p.Ping())
            assert isinstance(r, p.Pong)


async def test_c11_keepalive_closes_silent_connections(server: RunningServer) -> None:
    """C11: CONFIG_SET keepalive N closes a connection silent for N s (N = 1 here).

    Ours is timed per connection (a watch task wakes when the earliest one
    is due), so the window is tight (the reference sweeps every 10 s).  A
    connection that was already silent when the value changed is closed too
    (the value takes effect at once); one that keeps sending PINGs stays
    open."""
    with trio.fail_after(10):
        old_silent = await client(server)
        old_worker = await worker(server, b"f", grabs=(1,))
        c = await client(server)
        await config_set(c, b"keepalive", 1)
        t0 = trio.current_time()
        new_silent = await client(server)
        closed_at: dict[str, float] = {}

        async def watch(name: str, conn: Conn) -> None:
            assert await conn.closed_by_server(timeout=4), name
            closed_at[name] = trio.current_time() - t0

        async def chatty() -> None:
            for _ in range(10):
                assert isinstance(await c.request(mid(), p.Ping()), p.Pong)
                await trio.sleep(0.3)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch, "new", new_silent)
            nursery.start_soon(watch, "old", old_silent)
            nursery.start_soon(watch, "old worker", old_worker)
            nursery.start_soon(chatty)
        assert 0.8 <= closed_at["new"] <= 1.8, closed_at
        assert closed_at["old"] <= 1.8, closed_at
        assert closed_at["old worker"] <= 1.8, closed_at
        # 3 s of pinging every 0.3 s: still open.
        assert isinstance(await c.request(mid(), p.Ping()), p.Pong)
        # keepalive 0 disables it.
        await config_set(c, b"keepalive", 0)
        quiet = await client(server)
        assert not await quiet.closed_by_server(timeout=1.5)


async def test_keepalive_closes_the_first_connection_after_a_quiet_spell(
    server: RunningServer,
) -> None:
    """The keepalive watch sleeps while no connection is open; a new one wakes
    it, so a silent connection opened then is still closed on time."""
    with trio.fail_after(10):
        admin = await client(server)
        await config_set(admin, b"keepalive", 1)
        await admin.aclose()
        await trio.sleep(1.2)  # the watch has seen admin go and sleeps for good
        t0 = trio.current_time()
        silent = await client(server)
        assert await silent.closed_by_server(timeout=4)
        assert 0.8 <= trio.current_time() - t0 <= 1.8
        admin = await client(server)
        await config_set(admin, b"keepalive", 120)


# ------------------------------------------------------------ submitting & scheduling


async def test_c12_submit_then_status(server: RunningServer) -> None:
    """C12: SUBMIT_JOB → SUCCESS; STATUS then has the func with jobs=1, workers=0."""
    with trio.fail_after(5):
        c = await client(server)
        await submit(c, Job(b"f", b"a", b"hi"))
        st = await status(c)
        assert st[b"f"][:4] == (0, 1, 0, 0)


async def test_c13_past_sched_at_is_rewritten_to_now(server: RunningServer) -> None:
    """C13: sched_at 0 or in the past → assigned at once, JOB_ASSIGN carries submission time."""
    with trio.fail_after(5):
        w = await worker(server, b"f", grabs=(1, 2))
        c = await client(server)
        t0 = int(now())
        await submit(c, Job(b"f", b"zero", sched_at=0))
        await submit(c, Job(b"f", b"past", sched_at=1_000_000))
        t1 = now()
        jobs = {}
        with trio.fail_after(1):
            for _ in range(2):
                _, job = await any_assign(w)
                jobs[job.name] = job
        for job in jobs.values():
            assert t0 <= job.sched_at <= int(t1)


async def test_c14_future_job_runs_at_its_time(server: RunningServer) -> None:
    """C14 (fast): a job with sched_at = now+2 is not assigned before then, and promptly at it."""
    with trio.fail_after(6):
        w = await worker(server, b"f")
        c = await client(server)
        due = int(now()) + 2
        await submit(c, Job(b"f", b"a", sched_at=due))
        job = await next_assign(w, 1, timeout=3.5)
        t = now()
        assert due - 0.1 <= t <= due + 0.5, (t, due)
        assert job.sched_at == due


async def test_c15_far_future_jobs_fire_on_time(server: RunningServer) -> None:
    """C15 (fast): we have no 100 s polling horizon, so the check is that jobs stored
    before any worker registered (due +150 s and +2 s) are all tracked: the +2 s
    job is assigned at its time, the +150 s one stays pending with that schedat."""
    with trio.fail_after(6):
        c = await client(server)
        far = int(now()) + 150
        soon = int(now()) + 2
        await submit(c, Job(b"f", b"far", sched_at=far))
        await submit(c, Job(b"f", b"soon", sched_at=soon))
        w = await worker(server, b"f", grabs=(1, 2))
        assert await w.nothing_for(max(0.0, soon - now() - 0.2))
        _, job = await any_assign(w, timeout=1.5)
        assert job.name == b"soon"
        assert now() >= soon - 0.1
        st = await status(c)
        assert st[b"f"] == (1, 2, 1, 0, far)
        assert await w.nothing_for(0.3)


async def test_c16_grab_job_success_then_assign_on_same_msgid(server: RunningServer) -> None:
    """C16: GRAB_JOB → SUCCESS on its msgid; the job later comes as JOB_ASSIGN on it."""
    with trio.fail_after(5):
        w = await worker(server, b"f", grabs=())
        r = await w.request(9, p.GrabJob())
        assert isinstance(r, p.Success)
        assert await w.nothing_for(0.2)  # never NO_JOB
        c = await client(server)
        await submit(c, Job(b"f", b"a", b"payload"))
        r2 = await w.recv()
        assert r2.msgid == 9
        assert isinstance(r2.packet, p.JobAssign)
        assert r2.packet.job.workload == b"payload"
        assert b"\x00\x00\x00\x09\x06" not in bytes(w.raw)  # no NO_JOB on the wire


async def test_c17_effective_timeout_in_job_assign(server: RunningServer) -> None:
    """C17: timeout 0 → v2 with 600; after CONFIG_SET timeout 30 → 30; own timeout 7 → 7."""
    with trio.fail_after(5):
        w = await worker(server, b"f")
        c = await client(server)

        async def run(name: bytes, timeout: int) -> Job:
            await submit(c, Job(b"f", name, timeout=timeout))
            job = await next_assign(w, 1)
            # The exact frame, version byte included (v2: count 0, timeout > 0).
            assert encode_frame(1, p.JobAssign(job)) in bytes(w.raw)
            await w.send_many(
                [(1, p.JobAssigned()), (mid(), p.WorkDone(b"f", name)), (1, p.GrabJob())]
            )
            return job

        j = await run(b"a", 0)
        assert (j.timeout, j.count) == (600, 0)
        await config_set(c, b"timeout", 30)
        assert (await run(b"b", 0)).timeout == 30
        assert (await run(b"c", 7)).timeout == 7


async def test_c18_unconfirmed_job_goes_to_another_worker_after_its_timeout(
    server: RunningServer,
) -> None:
    """C18 (differs): a worker that never answers JOB_ASSIGN is NOT disconnected after
    assign-wait; the job stays with it until its timeout (counted from the
    assignment) runs out.  Running out is a failure (SEMANTICS.md §7 → §6.2),
    so the job is offered to another worker RETRY_DELAY (1 s) later: 2 + 1 s."""
    with trio.fail_after(8):
        w1 = await worker(server, b"f")
        c = await client(server)
        await submit(c, Job(b"f", b"a", timeout=2))
        await next_assign(w1, 1)
        t0 = trio.current_time()
        w2 = await worker(server, b"f", grabs=(5,))
        # Past assign-wait (2 s) and up to the timeout: w1 keeps the job.
        assert (await status(c))[b"f"][:3] == (2, 1, 1)
        job = await next_assign(w2, 5, timeout=4)
        elapsed = trio.current_time() - t0
        assert 2.9 <= elapsed <= 3.4, elapsed
        assert job.name == b"a"
        # w1 was never cut off and got nothing else.
        assert isinstance(await w1.request(mid(), p.Ping()), p.Pong)
        # Its late JOB_ASSIGNED does not take the job back from w2.
        await w1.send(1, p.JobAssigned())
        await w2.send_many([(5, p.JobAssigned()), (mid(), p.WorkDone(b"f", b"a"))])
        assert await w1.nothing_for(0.2)
        assert await dump(c) == []


async def test_c18_late_confirmation_keeps_the_job_and_restarts_its_timeout(
    server: RunningServer,
) -> None:
    """C18 (differs): JOB_ASSIGNED after assign-wait is accepted (the worker is slow,
    not broken), and the job's timeout restarts at the confirmation: with
    timeout 2 and a confirmation at +1.3 s the job comes back at 1.3 + 2 + 1 s,
    not at 2 + 1 s."""
    with trio.fail_after(9):
        c = await client(server)
        await config_set(c, b"assign-wait", 1)
        w1 = await worker(server, b"f")
        await submit(c, Job(b"f", b"a", timeout=2))
        await next_assign(w1, 1)
        t0 = trio.current_time()
        w2 = await worker(server, b"f", grabs=(5,))
        await trio.sleep(1.3)  # past assign-wait (1 s), within the timeout (2 s)
        await w1.send(1, p.JobAssigned())
        assert await w2.nothing_for(4.0 - (trio.current_time() - t0))
        await next_assign(w2, 5, timeout=1.0)
        elapsed = trio.current_time() - t0
        assert 4.2 <= elapsed <= 4.7, elapsed
        assert isinstance(await w1.request(mid(), p.Ping()), p.Pong)


async def test_c18_late_confirmed_job_finishes_normally(server: RunningServer) -> None:
    """C18 (differs): a late-confirming worker finishes its job; nobody else gets it."""
    with trio.fail_after(5):
        c = await client(server)
        await config_set(c, b"assign-wait", 1)
        w1 = await worker(server, b"f")
        await submit(c, Job(b"f", b"a", timeout=5))
        await next_assign(w1, 1)
        w2 = await worker(server, b"f", grabs=(5,))
        await trio.sleep(1.3)
        await w1.send(1, p.JobAssigned())
        await ok(w1, p.WorkDone(b"f", b"a", b"r"))
        assert await w2.nothing_for(0.3)
        assert await dump(c) == []


async def test_c19_job_unassigned_reoffers_the_job(server: RunningServer) -> None:
    """C19: JOB_UNASSIGNED → no reply, connection stays, job offered again."""
    with trio.fail_after(5):
        w = await worker(server, b"f")
        c = await client(server)
        await submit(c, Job(b"f", b"a", b"w", count=2))
        first = await next_assign(w, 1)
        await w.send(1, p.JobUnassigned())
        assert await w.nothing_for(0.2)
        await grab(w, 1)
        again = await next_assign(w, 1, timeout=1)
        assert again == first
        st = await status(c)
        assert st[b"f"][:3] == (1, 1, 1)


async def test_c20_one_assignment_per_grab(server: RunningServer) -> None:
    """C20: one GRAB_JOB yields at most one JOB_ASSIGN; GRAB twice on one msgid counts once."""
    with trio.fail_after(5):
        w = await worker(server, b"f", grabs=(1,))
        await grab(w, 1)  # duplicate: still one slot
        c = await client(server)
        await submit(c, Job(b"f", b"a"))
        await submit(c, Job(b"f", b"b"))
        first = await next_assign(w, 1)
        assert await w.nothing_for(0.3)
        await w.send_many([(1, p.JobAssigned()), (1, p.GrabJob())])
        second = await next_assign(w, 1)
        assert {first.name, second.name} == {b"a", b"b"}


async def test_c20_grab_on_busy_msgid_does_not_arm_a_second_job(server: RunningServer) -> None:
    """C20 (differs): a GRAB_JOB arriving while an unconfirmed assignment is open on
    the same msgid gets SUCCESS but no second job on that msgid; after
    JOB_ASSIGNED a GRAB_JOB re-arms it (even in the same write)."""
    with trio.fail_after(5):
        w = await worker(server, b"f")
        c = await client(server)
        await submit(c, Job(b"f", b"a"))
        await submit(c, Job(b"f", b"b"))
        await next_assign(w, 1)
        r = await w.request(1, p.GrabJob())
        assert isinstance(r, p.Success)
        assert await w.nothing_for(0.3)
        # Confirm + re-arm in one write (SEMANTICS.md §17, first item).
        await w.send_many([(1, p.JobAssigned()), (1, p.GrabJob())])
        await next_assign(w, 1, timeout=1)


async def test_c21_n_slots_n_concurrent_jobs(server: RunningServer) -> None:
    """C21: N distinct GRAB_JOB msgids → up to N jobs at once, none finished."""
    with trio.fail_after(5):
        w = await worker(server, b"f", grabs=(1, 2, 3, 4))
        c = await client(server)
        for i in range(6):
            await submit(c, Job(b"f", b"j%d" % i))
        got = {}
        for _ in range(4):
            msgid, job = await any_assign(w)
            assert msgid not in got
            got[msgid] = job.name
        assert set(got) == {1, 2, 3, 4}
        assert await w.nothing_for(0.3)
        assert (await status(c))[b"f"][:3] == (1, 6, 4)


async def test_c22_jobs_only_go_to_workers_of_the_func(server: RunningServer) -> None:
    """C22: a worker with slots but another func receives nothing."""
    with trio.fail_after(5):
        other = await worker(server, b"g", grabs=(1, 2))
        c = await client(server)
        await submit(c, Job(b"f", b"a"))
        assert await other.nothing_for(0.3)
        right = await worker(server, b"f")
        await next_assign(right, 1)
        assert await other.nothing_for(0.1)


async def test_c23_round_robin_across_workers(server: RunningServer) -> None:
    """C23: due jobs are spread across two workers with free slots."""
    with trio.fail_after(5):
        w1 = await worker(server, b"f", grabs=(1, 2, 3, 4))
        w2 = await worker(server, b"f", grabs=(1, 2, 3, 4))
        c = await client(server)
        await c.send_many([(mid(), p.SubmitJob(Job(b"f", b"j%d" % i))) for i in range(4)])
        counts = [0, 0]

        async def take(i: int, w: Conn) -> None:
            with trio.move_on_after(0.5):
                while True:
                    await any_assign(w, timeout=5)
                    counts[i] += 1

        async with trio.open_nursery() as n:
            n.start_soon(take, 0, w1)
            n.start_soon(take, 1, w2)
        assert counts == [2, 2]


async def test_c24_job_waits_for_a_worker(server: RunningServer) -> None:
    """C24: a job without workers stays (jobs=1) and goes out right after CAN_DO + GRAB."""
    with trio.fail_after(5):
        c = await client(server)
        await submit(c, Job(b"f", b"a"))
        await trio.sleep(0.2)
        assert (await status(c))[b"f"][:2] == (0, 1)
        t0 = trio.current_time()
        w = await worker(server, b"f")
        await next_assign(w, 1, timeout=1)
        assert trio.current_time() - t0 < 0.5


async def test_c24_grab_before_can_do(server: RunningServer) -> None:
    """C24: the order GRAB_JOB then CAN_DO works too."""
    with trio.fail_after(5):
        c = await client(server)
        await submit(c, Job(b"f", b"a"))
        w = await Conn.open(server.tcp, ClientType.WORKER)
        await grab(w, 3)
        await ok(w, p.CanDo(b"f"))
        await next_assign(w, 3, timeout=1)


async def test_c25_earlier_due_job_first(server: RunningServer) -> None:
    """C25 (fast): with one slot, A due now+3 then B due now+2 → B first (~now+2), then A."""
    with trio.fail_after(7):
        w = await worker(server, b"f")
        c = await client(server)
        t = int(now())
        await submit(c, Job(b"f", b"A", sched_at=t + 3))
        await submit(c, Job(b"f", b"B", sched_at=t + 2))
        first = await next_assign(w, 1, timeout=4)
        assert first.name == b"B"
        assert now() >= t + 2 - 0.1
        await w.send_many([(1, p.JobAssigned()), (mid(), p.WorkDone(b"f", b"B")), (1, p.GrabJob())])
        second = await next_assign(w, 1, timeout=3)
        assert second.name == b"A"
        assert now() >= t + 3 - 0.1


# ------------------------------------------------------------ identity & re-submission


async def test_c26_resubmit_pending_replaces(server: RunningServer) -> None:
    """C26: submitting a pending func/name again keeps one job with the latest workload
    (also when both submissions arrive in one write: applied in arrival order)."""
    with trio.fail_after(5):
        c = await client(server)
        await submit(c, Job(b"f", b"a", b"first", count=5))
        await trio.sleep(0.1)
        await submit(c, Job(b"f", b"a", b"second"))
        await c.send_many(
            [
                (101, p.SubmitJob(Job(b"f", b"b", b"one"))),
                (102, p.SubmitJob(Job(b"f", b"b", b"two"))),
            ]
        )
        for m in (101, 102):
            assert isinstance((await c.recv_for(m)).packet, p.Success)
        assert (await status(c))[b"f"][1] == 2
        jobs = {j.name: j for j in await dump(c)}
        assert len(jobs) == 2
        assert (jobs[b"a"].workload, jobs[b"a"].count) == (b"second", 0)
        assert jobs[b"b"].workload == b"two"
        # The worker gets the latest version.
        w = await worker(server, b"f", grabs=(1, 2))
        got = {}
        for _ in range(2):
            _, job = await any_assign(w)
            got[job.name] = job.workload
        assert got == {b"a": b"second", b"b": b"two"}


async def test_c27_resubmit_running_is_ignored(server: RunningServer) -> None:
    """C27: submitting a running job → SUCCESS, no new job; after WORK_DONE it is gone."""
    with trio.fail_after(5):
        w = await worker(server, b"f", grabs=(1, 2))
        c = await client(server)
        await submit(c, Job(b"f", b"a", b"v1"))
        msgid, job = await any_assign(w)
        assert job.workload == b"v1"
        await w.send(msgid, p.JobAssigned())
        await submit(c, Job(b"f", b"a", b"v2"))
        dumped = await dump(c)
        assert [(j.name, j.workload) for j in dumped] == [(b"a", b"v1")]
        await ok(w, p.WorkDone(b"f", b"a"))
        assert await dump(c) == []
        assert await w.nothing_for(0.5)


async def test_c28_same_name_two_funcs(server: RunningServer) -> None:
    """C28: one name under two funcs is two jobs."""
    with trio.fail_after(5):
        c = await client(server)
        await submit(c, Job(b"f", b"x"))
        await submit(c, Job(b"g", b"x"))
        assert await dump_names(c) == {(b"f", b"x"), (b"g", b"x")}
        st = await status(c)
        assert st[b"f"][1] == st[b"g"][1] == 1


# ------------------------------------------------------------------------- results


async def test_c29_work_done_deletes(server: RunningServer) -> None:
    """C29: WORK_DONE → SUCCESS; the job leaves DUMP and the jobs count."""
    with trio.fail_after(5):
        w = await worker(server, b"f")
        c = await client(server)
        await submit(c, Job(b"f", b"a"))
        await next_assign(w, 1)
        await w.send(1, p.JobAssigned())
        await ok(w, p.WorkDone(b"f", b"a", b"result"))
        assert await dump(c) == []
        assert (await status(c))[b"f"][:3] == (1, 0, 0)


async def test_c30_work_fail_retries_one_second_later(server: RunningServer) -> None:
    """C30 (precise): WORK_FAIL → SUCCESS; re-assigned 1 s later (sub-second precision),
    count unchanged, again and again."""
    with trio.fail_after(8):
        w = await worker(server, b"f")
        c = await client(server)
        await submit(c, Job(b"f", b"a", count=3))
        job = await next_assign(w, 1)
        for _ in range(3):
            assert job.count == 3
            await w.send(1, p.JobAssigned())
            await ok(w, p.WorkFail(b"f", b"a"))
            t0 = trio.current_time()
            await grab(w, 1)
            job = await next_assign(w, 1, timeout=2)
            elapsed = trio.current_time() - t0
            assert 0.9 <= elapsed <= 1.3, elapsed
        assert job.count == 3


async def test_c30_report_from_a_non_holder_is_ignored(server: RunningServer) -> None:
    """C30/C31 (differs): WORK_FAIL / SCHED_LATER from a connection that does not hold
    the job are answered SUCCESS and ignored while another worker holds it."""
    with trio.fail_after(5):
        holder = await worker(server, b"f")
        c = await client(server)
        await submit(c, Job(b"f", b"a"))
        await next_assign(holder, 1)
        await holder.send(1, p.JobAssigned())
        other = await worker(server, b"f", grabs=(7,))
        await ok(other, p.WorkFail(b"f", b"a"))
        await ok(other, p.SchedLater(b"f", b"a", 0, 1))
        assert await other.nothing_for(1.3)
        assert (await status(c))[b"f"][:3] == (2, 1, 1)
        await ok(holder, p.WorkDone(b"f", b"a"))
        assert await dump(c) == []


async def test_c31_sched_later_delay_and_step(server: RunningServer) -> None:
    """C31 (fast, precise): SCHED_LATER(2, step 2) → re-assigned 2 s later with count 2
    (version 3 on the wire); SCHED_LATER(0) → at once."""
    with trio.fail_after(6):
        w = await worker(server, b"f")
        c = await client(server)
        await submit(c, Job(b"f", b"a"))
        await next_assign(w, 1)
        await w.send(1, p.JobAssigned())
        await ok(w, p.SchedLater(b"f", b"a", 2, 2))
        t0 = trio.current_time()
        st = await status(c)
        assert st[b"f"][1:4] == (1, 0, 0)
        await grab(w, 1)
        job = await next_assign(w, 1, timeout=3)
        elapsed = trio.current_time() - t0
        assert 1.95 <= elapsed <= 2.3, elapsed
        assert job.count == 2
        assert encode_frame(1, p.JobAssign(job)) in bytes(w.raw)
        assert encode_frame(1, p.JobAssign(job))[-9] == 3  # version byte
        await w.send(1, p.JobAssigned())
        await ok(w, p.SchedLater(b"f", b"a", 0, -1))
        t0 = trio.current_time()
        await grab(w, 1)
        job = await next_assign(w, 1, timeout=1)
        assert trio.current_time() - t0 < 0.3
        assert job.count == 1


async def test_c32_reports_for_unknown_handles(server: RunningServer) -> None:
    """C32: WORK_DONE / WORK_FAIL / SCHED_LATER for a missing handle → SUCCESS."""
    with trio.fail_after(5):
        w = await worker(server, grabs=())
        await ok(w, p.WorkDone(b"nope", b"x", b"d"))
        await ok(w, p.WorkFail(b"nope", b"x"))
        await ok(w, p.SchedLater(b"nope", b"x", 5, 1))
        c = await client(server)
        assert await dump(c) == []


async def test_c33_disconnected_workers_job_goes_elsewhere(server: RunningServer) -> None:
    """C33: a worker that confirmed a job and disconnects → job re-assigned to another
    worker within ~1 s; STATUS workers drops by one."""
    with trio.fail_after(5):
        w1 = await worker(server, b"f")
        c = await client(server)
        await submit(c, Job(b"f", b"a"))
        await next_assign(w1, 1)
        await w1.send(1, p.JobAssigned())
        w2 = await worker(server, b"f", grabs=(5,))
        assert (await status(c))[b"f"][0] == 2
        await w1.aclose()
        t0 = trio.current_time()
        job = await next_assign(w2, 5, timeout=2)
        assert job.name == b"a"
        assert trio.current_time() - t0 <= 1.5
        assert (await status(c))[b"f"][0] == 1


async def test_c33_unconfirmed_job_of_a_vanished_worker_goes_elsewhere_at_once(
    server: RunningServer,
) -> None:
    """C33: a job assigned but not confirmed comes back at once when its worker leaves."""
    with trio.fail_after(5):
        w1 = await worker(server, b"f")
        c = await client(server)
        await submit(c, Job(b"f", b"a"))
        await next_assign(w1, 1)
        w2 = await worker(server, b"f", grabs=(5,))
        await w1.aclose()
        t0 = trio.current_time()
        await next_assign(w2, 5, timeout=1)
        assert trio.current_time() - t0 < 0.5


async def test_c34_confirmed_job_reassigned_after_its_timeout(server: RunningServer) -> None:
    """C34 (fast, precise): timeout 2, worker silent → the job fails at confirmation
    + 2 s and is re-assigned RETRY_DELAY (1 s) later, i.e. ~3 s (the reference's
    10 s sweep gives 8–10 s); the silent worker is not disconnected."""
    with trio.fail_after(7):
        w1 = await worker(server, b"f")
        c = await client(server)
        await submit(c, Job(b"f", b"a", timeout=2))
        await next_assign(w1, 1)
        await w1.send(1, p.JobAssigned())
        t0 = trio.current_time()
        w2 = await worker(server, b"f", grabs=(5,))
        await trio.sleep(2.2)
        # Expired: pending again (the retry is 1 s away), no longer processing.
        assert (await status(c))[b"f"][:3] == (2, 1, 0)
        job = await next_assign(w2, 5, timeout=2)
        elapsed = trio.current_time() - t0
        assert 2.9 <= elapsed <= 3.4, elapsed
        assert job.name == b"a"
        assert isinstance(await w1.request(mid(), p.Ping()), p.Pong)
        # A late WORK_FAIL from w1 does not take the job from w2 (C30, differs).
        await ok(w1, p.WorkFail(b"f", b"a"))
        assert (await status(c))[b"f"][:3] == (2, 1, 1)


# ------------------------------------------------ STATUS / registration / drop / remove


async def test_c35_status_format(server: RunningServer) -> None:
    """C35: six fields per line, sorted by func, \\n separated, no trailing newline."""
    with trio.fail_after(5):
        c = await client(server)
        assert (await c.request(mid(), p.Status())) == p.Data(b"")
        far = int(now()) + 500
        await submit(c, Job(b"zeta", b"a", sched_at=far))
        await submit(c, Job(b"alpha", b"a", sched_at=far + 5))
        w = await worker(server, b"mid", grabs=())
        reply = await c.request(mid(), p.Status())
        assert isinstance(reply, p.Data)
        assert not reply.data.endswith(b"\n")
        lines = reply.data.split(b"\n")
        assert [ln.split(b",")[0] for ln in lines] == [b"alpha", b"mid", b"zeta"]
        assert all(len(ln.split(b",")) == 6 for ln in lines)
        st = await status(c)
        assert st[b"alpha"] == (0, 1, 0, 0, far + 5)
        assert st[b"zeta"] == (0, 1, 0, 0, far)
        assert abs(st[b"mid"][4] - now()) <= 2
        assert st[b"mid"][:4] == (1, 0, 0, 0)
        await w.aclose()


async def test_c36_worker_counts(server: RunningServer) -> None:
    """C36: CAN_DO twice on one conn = 1; two conns = 2; CANT_DO back down; CANT_DO of an
    unregistered func → SUCCESS, no change."""
    with trio.fail_after(5):
        c = await client(server)
        w1 = await worker(server, b"f", b"f", grabs=())
        assert (await status(c))[b"f"][0] == 1
        w2 = await worker(server, b"f", grabs=())
        assert (await status(c))[b"f"][0] == 2
        await ok(w1, p.CantDo(b"f"))
        assert (await status(c))[b"f"][0] == 1
        await ok(w1, p.CantDo(b"f"))
        await ok(w1, p.CantDo(b"other"))
        assert (await status(c))[b"f"][0] == 1
        assert b"other" not in await status(c)
        await ok(w2, p.CantDo(b"f"))
        assert (await status(c))[b"f"][0] == 0


async def test_c37_drop_func_with_worker_does_nothing(server: RunningServer) -> None:
    """C37: DROP_FUNC of a func with a registered worker → SUCCESS, nothing changes."""
    with trio.fail_after(5):
        w = await worker(server, b"f", grabs=())
        c = await client(server)
        await submit(c, Job(b"f", b"a", sched_at=int(now()) + 100))
        await ok(c, p.DropFunc(b"f"))
        assert (await status(c))[b"f"][:2] == (1, 1)
        assert await dump_names(c) == {(b"f", b"a")}
        await w.aclose()


async def test_c38_drop_func_after_last_worker_left(server: RunningServer) -> None:
    """C38: after the last worker disconnects, DROP_FUNC removes the func and its jobs."""
    with trio.fail_after(5):
        w = await worker(server, b"f", grabs=())
        c = await client(server)
        await submit(c, Job(b"f", b"a"))
        await submit(c, Job(b"f", b"b", sched_at=int(now()) + 100))
        await submit(c, Job(b"g", b"keep"))
        await w.aclose()
        with trio.fail_after(2):
            while (await status(c))[b"f"][0] != 0:
                await trio.sleep(0.02)
        await ok(c, p.DropFunc(b"f"))
        assert b"f" not in await status(c)
        assert await dump_names(c) == {(b"g", b"keep")}


async def test_c38_drop_func_of_a_submit_only_func(server: RunningServer) -> None:
    """C38 (differs): DROP_FUNC works for a func that only ever had submitted jobs,
    without a STATUS first."""
    with trio.fail_after(5):
        c = await client(server)
        await submit(c, Job(b"f", b"a"))
        await ok(c, p.DropFunc(b"f"))
        assert await dump(c) == []
        assert await status(c) == {}
        await ok(c, p.DropFunc(b"never-seen"))


async def test_c39_remove_job(server: RunningServer) -> None:
    """C39: REMOVE_JOB → SUCCESS (existing or not); the pending job is gone and never assigned."""
    with trio.fail_after(5):
        c = await client(server)
        await submit(c, Job(b"f", b"a", sched_at=int(now()) + 1))
        await ok(c, p.RemoveJob(b"f", b"a"))
        await ok(c, p.RemoveJob(b"f", b"missing"))
        assert await dump(c) == []
        w = await worker(server, b"f")
        assert await w.nothing_for(1.3)


async def test_c39_remove_job_releases_its_locks(server: RunningServer) -> None:
    """C39 (differs): REMOVE_JOB of a lock holder releases the lock; the parked job runs."""
    with trio.fail_after(5):
        w = await worker(server, b"f", grabs=(1, 2))
        c = await client(server)
        await submit(c, Job(b"f", b"A"))
        await submit(c, Job(b"f", b"B"))
        got = dict([await any_assign(w), await any_assign(w)])
        by_name = {job.name: m for m, job in got.items()}
        await w.send_many([(m, p.JobAssigned()) for m in got])
        assert await acquire(w, b"lk", 1, b"f", b"A")
        assert not await acquire(w, b"lk", 1, b"f", b"B")
        await grab(w, by_name[b"B"])
        await ok(c, p.RemoveJob(b"f", b"A"))
        job = await next_assign(w, by_name[b"B"], timeout=1)
        assert job.name == b"B"
        assert await acquire(w, b"lk", 1, b"f", b"B")


async def test_c40_remove_job_answers_run_job_with_removed(server: RunningServer) -> None:
    """C40: REMOVE_JOB on a job awaited by RUN_JOB → the caller gets DATA "removed"."""
    with trio.fail_after(5):
        w = await worker(server, b"f", grabs=())
        c = await client(server)
        await c.send(50, p.RunJob(Job(b"f", b"a")))
        assert await c.nothing_for(0.2)
        await ok(c, p.RemoveJob(b"f", b"a"))
        r = await c.recv_for(50)
        assert r.packet == p.Data(b"removed")
        assert await dump(c) == []
        await w.aclose()


# ----------------------------------------------------------------- RUN_JOB / RECV_DATA


async def test_c41_run_job_without_worker(server: RunningServer) -> None:
    """C41: RUN_JOB for a func with no worker → NO_WORKER at once, nothing stored."""
    with trio.fail_after(5):
        c = await client(server)
        assert isinstance(await c.request(60, p.RunJob(Job(b"f", b"a"))), p.NoWorker)
        assert await dump(c) == []


async def test_c42_run_job_result(server: RunningServer) -> None:
    """C42: RUN_JOB gets no immediate reply; WORK_DONE(data) → DATA data on its msgid."""
    with trio.fail_after(5):
        w = await worker(server, b"f")
        c = await client(server)
        await c.send(61, p.RunJob(Job(b"f", b"a", b"in")))
        job = await next_assign(w, 1)
        assert job.workload == b"in"
        assert await c.nothing_for(0.1)
        await w.send(1, p.JobAssigned())
        await ok(w, p.WorkDone(b"f", b"a", b"\x00result\xff"))
        r = await c.recv_for(61)
        assert r.packet == p.Data(b"\x00result\xff")
        assert await dump(c) == []
        # An empty result is an empty DATA.
        await c.send(62, p.RunJob(Job(b"f", b"b")))
        await grab(w, 1)
        await next_assign(w, 1)
        await ok(w, p.WorkDone(b"f", b"b"))
        assert (await c.recv_for(62)).packet == p.Data(b"")


@pytest.mark.parametrize("report", ["fail", "sched_later"])
async def test_c43_run_job_failure(server: RunningServer, report: str) -> None:
    """C43: RUN_JOB + WORK_FAIL (or SCHED_LATER) → DATA "failed", job deleted, not retried."""
    with trio.fail_after(5):
        w = await worker(server, b"f", grabs=(1, 2))
        c = await client(server)
        await c.send(63, p.RunJob(Job(b"f", b"a")))
        msgid, _ = await any_assign(w)
        await w.send(msgid, p.JobAssigned())
        pkt: p.Packet = (
            p.WorkFail(b"f", b"a") if report == "fail" else p.SchedLater(b"f", b"a", 0, 1)
        )
        await ok(w, pkt)
        assert (await c.recv_for(63)).packet == p.Data(b"failed")
        assert await dump(c) == []
        assert await w.nothing_for(1.3)


async def test_c44_run_job_expires(server: RunningServer) -> None:
    """C44 (fast): RUN_JOB timeout 1, worker with CAN_DO but no slot → DATA "expired"
    after 1 s (ours is precise), job deleted."""
    with trio.fail_after(5):
        w = await worker(server, b"f", grabs=())
        c = await client(server)
        t0 = trio.current_time()
        await c.send(64, p.RunJob(Job(b"f", b"a", timeout=1)))
        r = await c.recv_for(64, timeout=3)
        elapsed = trio.current_time() - t0
        assert r.packet == p.Data(b"expired")
        assert 0.9 <= elapsed <= 1.5, elapsed
        assert await dump(c) == []
        await w.aclose()


async def test_c45_recv_data_stream(server: RunningServer) -> None:
    """C45: RECV_DATA → SUCCESS; each WORK_DATA arrives as DATA on its msgid, then "EOF"
    at WORK_DONE; without a worker → NO_WORKER."""
    with trio.fail_after(5):
        c = await client(server)
        assert isinstance(await c.request(70, p.RecvData(Job(b"f", b"a"))), p.NoWorker)
        w = await worker(server, b"f")
        assert isinstance(await c.request(71, p.RecvData(Job(b"f", b"a"))), p.Success)
        await c.send(72, p.RunJob(Job(b"f", b"a")))
        await next_assign(w, 1)
        await w.send(1, p.JobAssigned())
        for chunk in (b"one", b"two", b""):
            await ok(w, p.WorkData(b"f", b"a", chunk))
        await ok(w, p.WorkDone(b"f", b"a", b"res"))
        chunks = [(await c.recv_for(71)).packet for _ in range(4)]
        assert chunks == [p.Data(b"one"), p.Data(b"two"), p.Data(b""), p.Data(b"EOF")]
        assert (await c.recv_for(72)).packet == p.Data(b"res")


async def test_c46_work_data_without_subscriber(server: RunningServer) -> None:
    """C46: WORK_DATA → SUCCESS even with no subscriber (and for unknown handles)."""
    with trio.fail_after(5):
        w = await worker(server, b"f")
        await ok(w, p.WorkData(b"f", b"nobody", b"chunk"))


# ---------------------------------------------------------------------------- locks


async def _two_running(
    server: RunningServer, names: tuple[bytes, ...]
) -> tuple[Conn, Conn, dict[bytes, int]]:
    """A worker holding (confirmed) one job per name; returns (worker, client, name→msgid)."""
    w = await worker(server, b"f", grabs=tuple(range(1, len(names) + 1)))
    c = await client(server)
    for name in names:
        await submit(c, Job(b"f", name))
    slots = {}
    for _ in names:
        msgid, job = await any_assign(w)
        slots[job.name] = msgid
    await w.send_many([(m, p.JobAssigned()) for m in slots.values()])
    return w, c, slots


async def test_c47_acquire_and_park(server: RunningServer) -> None:
    """C47: ACQUIRE(1) by a running job → 1; a second running job → 0 and locked = 1."""
    with trio.fail_after(5):
        w, c, _ = await _two_running(server, (b"A", b"B"))
        assert await acquire(w, b"lk", 1, b"f", b"A")
        assert await acquire(w, b"lk", 1, b"f", b"A")  # a holder asking again: 1
        assert not await acquire(w, b"lk", 1, b"f", b"B")
        assert (await status(c))[b"f"][1:4] == (2, 1, 1)
        # B is parked now, not running: asking again is answered 1 and changes nothing.
        assert await acquire(w, b"lk", 1, b"f", b"B")
        assert (await status(c))[b"f"][1:4] == (2, 1, 1)


async def test_c48_release_promotes_the_parked_job(server: RunningServer) -> None:
    """C48: RELEASE by the holder → SUCCESS; the parked job is re-assigned and acquires."""
    with trio.fail_after(5):
        w, c, slots = await _two_running(server, (b"A", b"B"))
        assert await acquire(w, b"lk", 1, b"f", b"A")
        assert not await acquire(w, b"lk", 1, b"f", b"B")
        await grab(w, slots[b"B"])
        assert await w.nothing_for(0.2)
        await ok(w, p.Release(b"lk", b"f", b"A"))
        job = await next_assign(w, slots[b"B"], timeout=1)
        assert job.name == b"B"
        await w.send(slots[b"B"], p.JobAssigned())
        assert await acquire(w, b"lk", 1, b"f", b"B")
        assert (await status(c))[b"f"][1:4] == (2, 2, 0)


async def test_c49_work_done_releases_implicitly(server: RunningServer) -> None:
    """C49: WORK_DONE of the holder promotes the parked job."""
    with trio.fail_after(5):
        w, _, slots = await _two_running(server, (b"A", b"B"))
        assert await acquire(w, b"lk", 1, b"f", b"A")
        assert not await acquire(w, b"lk", 1, b"f", b"B")
        await grab(w, slots[b"B"])
        await ok(w, p.WorkDone(b"f", b"A"))
        job = await next_assign(w, slots[b"B"], timeout=1)
        assert job.name == b"B"
        await w.send(slots[b"B"], p.JobAssigned())
        assert await acquire(w, b"lk", 1, b"f", b"B")


async def test_c50_acquire_for_a_job_not_running(server: RunningServer) -> None:
    """C50: ACQUIRE for a handle that is not running (unknown, or pending) → 1."""
    with trio.fail_after(5):
        w = await worker(server, grabs=())
        c = await client(server)
        assert await acquire(w, b"lk", 1, b"nope", b"x")
        assert await acquire(w, b"lk", 1, b"nope", b"y")
        await submit(c, Job(b"g", b"pending"))
        assert await acquire(w, b"lk", 1, b"g", b"pending")


async def test_c51_lock_capacity_two(server: RunningServer) -> None:
    """C51: with count 2, two running jobs acquire, the third gets 0."""
    with trio.fail_after(5):
        w, c, _ = await _two_running(server, (b"A", b"B", b"C"))
        assert await acquire(w, b"lk", 2, b"f", b"A")
        assert await acquire(w, b"lk", 2, b"f", b"B")
        assert not await acquire(w, b"lk", 2, b"f", b"C")
        assert (await status(c))[b"f"][3] == 1


# ------------------------------------------------- broadcast, sleep, config, dump, roles


async def test_c52_broadcast(server: RunningServer) -> None:
    """C52: a BROADCAST func's job goes to every worker with a slot; first WORK_DONE ends it."""
    with trio.fail_after(5):
        w1 = await worker(server, b"b", broadcast=True)
        w2 = await worker(server, b"b", broadcast=True)
        c = await client(server)
        await submit(c, Job(b"b", b"all", b"hello"))
        j1 = await next_assign(w1, 1)
        j2 = await next_assign(w2, 1)
        assert j1 == j2
        await w1.send(1, p.JobAssigned())
        await w2.send(1, p.JobAssigned())
        await ok(w1, p.WorkDone(b"b", b"all"))
        assert await dump(c) == []
        await ok(w2, p.WorkDone(b"b", b"all"))
        assert await dump(c) == []


async def test_c53_sleep_noop(server: RunningServer) -> None:
    """C53: SLEEP → NOOP on the same msgid, immediately."""
    with trio.fail_after(5):
        w = await worker(server, grabs=())
        r = await w.request(33, p.Sleep())
        assert isinstance(r, p.Noop)


async def test_c54_config_defaults(server: RunningServer) -> None:
    """C54: CONFIG_GET defaults; an unknown key reads 0."""
    with trio.fail_after(5):
        c = await client(server)
        expected = {
            b"timeout": 600,
            b"lock-timeout": 300,
            b"assign-wait": 2,
            b"keepalive": 120,
            b"max-batch-size": 500,
            b"max-pool-size": 2,
            b"run-job-aggressive": 0,
            b"poll-interval": 0,
            b"no-such-key": 0,
        }
        for key, value in expected.items():
            assert await config_get(c, key) == value, key


async def test_c55_config_set(server: RunningServer) -> None:
    """C55: CONFIG_SET timeout 30 → later GET 30; SET of an unknown key → SUCCESS, ignored."""
    with trio.fail_after(5):
        c = await client(server)
        await config_set(c, b"timeout", 30)
        assert await config_get(c, b"timeout") == 30
        other = await client(server)
        assert await config_get(other, b"timeout") == 30
        await config_set(c, b"no-such-key", 5)
        assert await config_get(c, b"no-such-key") == 0


async def test_c56_dump_and_load(server: RunningServer) -> None:
    """C56: DUMP = i64 count + jobs; LOAD of that payload restores the jobs."""
    with trio.fail_after(5):
        c = await client(server)
        later = int(now()) + 300
        jobs = [
            Job(b"f", b"a", b"w1", later),
            Job(b"f", b"b", b"", later + 1, count=4, timeout=9),
            Job(b"g", b"a", b"\x00\xff", later + 2, timeout=3),
        ]
        for job in jobs:
            await submit(c, job)
        reply = await c.request(mid(), p.Dump())
        assert isinstance(reply, p.Data)
        assert struct.unpack(">q", reply.data[:8])[0] == 3
        for job in jobs:
            await ok(c, p.RemoveJob(job.func, job.name))
        assert await dump(c) == []
        # LOAD the DUMP bytes as they came (a raw frame: payload = the DATA body).
        s = await raw_registered(server)
        await s.send_all(packet_frame(9, Cmd.LOAD, reply.data))
        assert await read_exactly(s, 17) == encode_frame(9, p.Success())
        restored = sorted(await dump(c), key=lambda j: (j.func, j.name))
        assert restored == sorted(jobs, key=lambda j: (j.func, j.name))


async def test_c57_dump_version_bytes(server: RunningServer) -> None:
    """C57: count 0 / timeout 0 → version byte 0 in DUMP; timeout 9 → version 2."""
    with trio.fail_after(5):
        c = await client(server)
        later = int(now()) + 300
        for name, timeout in ((b"v0", 0), (b"v2", 9)):
            await ok(c, p.RemoveJob(b"f", b"v0"))
            await ok(c, p.RemoveJob(b"f", b"v2"))
            await submit(c, Job(b"f", name, b"wl", later, timeout=timeout))
            reply = await c.request(mid(), p.Dump())
            assert isinstance(reply, p.Data)
            data = reply.data
            assert struct.unpack(">q", data[:8])[0] == 1
            pos = 8
            pos += 1 + data[pos]  # func
            pos += 1 + data[pos]  # name
            (wl,) = struct.unpack(">I", data[pos : pos + 4])
            pos += 4 + wl + 8  # workload, sched_at
            ver = data[pos]
            tail = data[pos + 1 :]
            if timeout:
                assert (ver, tail) == (2, struct.pack(">i", 9))
            else:
                assert (ver, tail) == (0, b"")


async def test_c58_client_role_cannot_use_worker_commands(server: RunningServer) -> None:
    """C58: a type-1 connection sending GRAB_JOB, CAN_DO or WORK_DONE gets NO_WORKER,
    and the command has no effect."""
    with trio.fail_after(5):
        c = await client(server)
        for pkt in (
            p.CanDo(b"f"),
            p.Broadcast(b"f"),
            p.GrabJob(),
            p.WorkDone(b"f", b"a"),
            p.WorkFail(b"f", b"a"),
            p.Acquire(b"lk", 1, b"f", b"a"),
            p.Sleep(),
        ):
            assert isinstance(await c.request(mid(), pkt), p.NoWorker), pkt
        await submit(c, Job(b"f", b"a"))
        assert await c.nothing_for(0.3)  # its GRAB_JOB armed nothing
        assert (await status(c))[b"f"][:2] == (0, 1)  # its CAN_DO counted nothing
        assert await dump_names(c) == {(b"f", b"a")}  # its WORK_DONE deleted nothing
        assert isinstance(await c.request(mid(), p.RunJob(Job(b"f", b"x"))), p.NoWorker)


# C59 (the auth file) is tested in tests/test_auth.py.


async def test_c60_shutdown_in_process(server: RunningServer) -> None:
    """C60: SHUTDOWN gets no reply; the server drops connections and stops listening."""
    with trio.fail_after(5):
        c = await client(server)
        other = await worker(server, b"f", grabs=())
        await c.send(80, p.Shutdown())
        assert await c.closed_by_server(timeout=3)
        assert not [e for e in c._pending if e.msgid == 80]
        assert await other.closed_by_server(timeout=3)
        with pytest.raises(OSError):
            await trio.open_tcp_stream(*server.tcp)


def test_c60_shutdown_exits_the_daemon() -> None:
    """C60: SHUTDOWN makes periodicd close its socket and exit (status 0)."""
    d = start_daemon("-p", ":memory:")
    try:

        async def go() -> None:
            with trio.fail_after(5):
                c = await Conn.open(("127.0.0.1", d.port))
                await c.send(1, p.Shutdown())
                assert await c.closed_by_server(timeout=4)
                assert not c._pending

        trio.run(go)
        assert d.proc.wait(10) == 0
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


def _sqlite_works(tmp: Path) -> bool:
    try:
        from trio_periodic.store.from_uri import open_store

        open_store(f"file://{tmp / 'probe.db'}")
    except Exception:
        return False
    return True


def test_c61_sqlite_restart(tmp_path: Path) -> None:
    """C61: on SQLite a job that was running when the server was killed is pending after
    restart and is assigned again; a CONFIG_SET value survives the restart."""
    if not _sqlite_works(tmp_path):
        pytest.skip("C61: the file:// (SQLite) store is not available yet")
    db = f"file://{tmp_path / 'p.db'}"
    first = start_daemon("-p", db)
    try:

        async def before() -> None:
            with trio.fail_after(10):
                addr = ("127.0.0.1", first.port)
                w = await Conn.open(addr, ClientType.WORKER)
                c = await Conn.open(addr)
                await ok(w, p.CanDo(b"f"))
                await grab(w, 1)
                await config_set(c, b"timeout", 77)
                await submit(c, Job(b"f", b"running", b"r"))
                await submit(c, Job(b"f", b"later", b"l", int(now()) + 3600))
                await next_assign(w, 1)
                await w.send(1, p.JobAssigned())
                assert (await status(c))[b"f"][1:3] == (2, 1)

        trio.run(before)
    finally:
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)

    second = start_daemon("-p", db)
    try:

        async def after() -> None:
            with trio.fail_after(10):
                addr = ("127.0.0.1", second.port)
                c = await Conn.open(addr)
                assert await config_get(c, b"timeout") == 77
                st = await status(c)
                assert st[b"f"][:3] == (0, 2, 0)
                w = await Conn.open(addr, ClientType.WORKER)
                await ok(w, p.CanDo(b"f"))
                await grab(w, 1)
                job = await next_assign(w, 1)
                assert (job.name, job.workload, job.timeout) == (b"running", b"r", 77)
                assert await w.nothing_for(0.3)

        trio.run(after)
    finally:
        second.proc.terminate()
        try:
            second.proc.wait(10)
        except subprocess.TimeoutExpired:
            second.proc.kill()
