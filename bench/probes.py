"""Small blocking conversations used around the measurements: is the server up, is it
serving (first job handed to a worker), how many jobs it holds, and redis SAVE."""

from __future__ import annotations

import time
from collections.abc import Callable

from bench.procs import HOST
from bench.proto import periodic as pp
from bench.proto.base import connect, recv_until
from bench.proto.gearman import (
    CAN_DO,
    GRAB_JOB_UNIQ,
    JOB_ASSIGN_UNIQ,
    NO_JOB,
    NOOP,
    PRE_SLEEP,
    split_packets,
)
from bench.proto.gearman import packet as gpacket
from bench.proto.redis import command
from bench.secure import Secure


def ping(kind: str, port: int, timeout: float = 2.0, secure: Secure | None = None) -> bool:
    """One application-level round trip that proves the server answers requests."""
    try:
        with connect(HOST, port, timeout, secure) as sock:
            if kind == "periodic":
                pp.handshake(sock, pp.TYPE_CLIENT)
                pp.ping(sock)
            elif kind == "beanstalkd":
                sock.sendall(b"list-tubes\r\n")
                return recv_until(sock, b"\r\n", bytearray()).startswith(b"OK")
            elif kind == "gearmand":
                sock.sendall(b"version\n")
                return recv_until(sock, b"\n", bytearray()).startswith(b"OK")
            elif kind == "redis":
                sock.sendall(command(b"PING"))
                return recv_until(sock, b"\r\n", bytearray()) == b"+PONG"
            return True
    except (OSError, ConnectionError):
        return False


def wait_ping(
    kind: str,
    port: int,
    timeout: float,
    alive: Callable[[], bool] | None = None,
    secure: Secure | None = None,
) -> float:
    """Poll ``ping`` until it succeeds; return the monotonic time it did."""
    end = time.monotonic() + timeout
    while True:
        if ping(kind, port, max(0.5, min(5.0, end - time.monotonic())), secure):
            return time.monotonic()
        if time.monotonic() > end:
            raise TimeoutError(f"no answer from {kind} on port {port} after {timeout:.0f}s")
        if alive is not None and not alive():
            raise RuntimeError(f"{kind} exited while starting")
        time.sleep(0.005)


def first_job(kind: str, port: int, func: bytes, timeout: float) -> float:
    """Connect a worker and wait for the first job; return the monotonic time it arrived.

    The job is handed back where the protocol allows it (Periodic: JOB_UNASSIGNED, beanstalkd:
    release) so the stored count is unchanged."""
    with connect(HOST, port, timeout) as sock:
        sock.settimeout(timeout)
        buf = bytearray()
        if kind == "periodic":
            pp.handshake(sock, pp.TYPE_WORKER)
            sock.sendall(pp.frame(1, pp.CAN_DO, pp.str8(func)) + pp.frame(2, pp.GRAB_JOB))
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("server closed the worker connection")
                buf += chunk
                frames, used = pp.split_frames(buf)
                del buf[:used]
                for msgid, cmd, _ in frames:
                    if cmd == pp.JOB_ASSIGN:
                        stamp = time.monotonic()
                        sock.sendall(pp.frame(msgid, 34))  # JOB_UNASSIGNED
                        return stamp
        if kind == "beanstalkd":
            sock.sendall(b"reserve\r\n")
            line = recv_until(sock, b"\r\n", buf)
            stamp = time.monotonic()
            if not line.startswith(b"RESERVED"):
                raise ConnectionError(f"beanstalkd said {line!r}")
            sock.sendall(b"release %s 1024 0\r\n" % line.split()[1])
            return stamp
        if kind == "redis":
            sock.sendall(command(b"BRPOPLPUSH", func, func, b"0"))
            line = recv_until(sock, b"\r\n", buf)
            if not line.startswith(b"$"):
                raise ConnectionError(f"redis said {line!r}")
            return time.monotonic()
        if kind == "gearmand":
            sock.sendall(gpacket(CAN_DO, func) + gpacket(GRAB_JOB_UNIQ))
            while True:
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise ConnectionError("gearmand closed the worker connection")
                buf += chunk
                packets, used = split_packets(buf)
                del buf[:used]
                for ptype, _ in packets:
                    if ptype == JOB_ASSIGN_UNIQ:
                        return time.monotonic()
                    if ptype == NO_JOB:
                        sock.sendall(gpacket(PRE_SLEEP))
                    elif ptype == NOOP:
                        sock.sendall(gpacket(GRAB_JOB_UNIQ))
    raise ValueError(kind)


def stored_jobs(kind: str, port: int, func: bytes, timeout: float = 30.0) -> int:
    """How many jobs of ``func`` the server holds, by its own account."""
    with connect(HOST, port, timeout) as sock:
        sock.settimeout(timeout)
        buf = bytearray()
        if kind == "periodic":
            pp.handshake(sock, pp.TYPE_CLIENT)
            return pp.status_jobs(sock, func)
        if kind == "beanstalkd":
            sock.sendall(b"stats\r\n")
            header = recv_until(sock, b"\r\n", buf)
            size = int(header.split()[1])
            while len(buf) < size + 2:
                buf += sock.recv(1 << 16)
            stats = dict(
                line.split(": ", 1)
                for line in bytes(buf[:size]).decode().splitlines()
                if ": " in line
            )
            return int(stats["current-jobs-ready"]) + int(stats["current-jobs-delayed"])
        if kind == "redis":
            sock.sendall(command(b"LLEN", func))
            return int(recv_until(sock, b"\r\n", buf)[1:])
        if kind == "gearmand":
            sock.sendall(b"status\n")
            text = b""
            while not text.endswith(b".\n"):
                text += sock.recv(1 << 16)
            for line in text.decode().splitlines():
                parts = line.split("\t")
                if parts[0] == func.decode() and len(parts) >= 2:
                    return int(parts[1])
            return 0
    raise ValueError(kind)


def redis_save(port: int) -> None:
    with connect(HOST, port, 600) as sock:
        sock.settimeout(600)
        sock.sendall(command(b"SAVE"))
        line = recv_until(sock, b"\r\n", bytearray())
        if line != b"+OK":
            raise ConnectionError(f"redis SAVE said {line!r}")


def jobs_in_flight(kind: str, port: int, func: bytes, slots: int, settle: float = 0.5) -> int:
    """How many jobs one worker connection receives when it sends ``slots`` grab / reserve /
    BRPOP requests at once and answers none of them, with more jobs than that queued.

    It checks that the server really lets that many jobs be in flight on one connection
    (pipelined requests are not all served after one another's answer).  Call it on a server
    that already holds at least ``slots + 1`` jobs of ``func``."""
    from bench.loadgen import adapter_for

    worker = adapter_for(kind).worker(func, slots)
    with connect(HOST, port, 5.0) as sock:
        worker.handshake(sock)
        sock.sendall(worker.start())
        buf = bytearray()
        got = 0
        end = time.monotonic() + settle
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError:
                break
            if not chunk:
                raise ConnectionError(f"{kind} closed the worker connection")
            buf += chunk
            names, _answers, used = worker.feed(buf, complete=False)  # answers are not sent
            del buf[:used]
            got += len(names)
    return got
