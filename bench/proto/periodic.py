"""The Periodic wire protocol (PROTOCOL.md §4–§10): frames, jobs, and the bench adapter."""

from __future__ import annotations

import socket
import struct
import zlib
from dataclasses import dataclass

from bench.proto.base import JobSpec, recv_exact

REQ = b"\x00REQ"
RES = b"\x00RES"

# command codes (PROTOCOL.md §8)
NOOP = 0
GRAB_JOB = 1
WORK_DONE = 3
JOB_ASSIGN = 5
CAN_DO = 7
PING = 9
PONG = 10
SUBMIT_JOB = 13
STATUS = 14
SUCCESS = 16
LOAD = 19
SHUTDOWN = 20
NO_WORKER = 29
DATA = 30
JOB_ASSIGNED = 33

TYPE_CLIENT = 1
TYPE_WORKER = 2

_HDR = struct.Struct(">4sII")  # magic, length, crc
_JOB_TAIL = struct.Struct(">qB")


def registration(client_type: int, magic: bytes = REQ) -> bytes:
    """The registration frame: no msgid, body = one type byte (§4.1)."""
    body = bytes((client_type,))
    return _HDR.pack(magic, len(body), zlib.crc32(body)) + body


def frame(msgid: int, cmd: int, payload: bytes = b"", magic: bytes = REQ) -> bytes:
    """One packet (§5.1): magic, u32 L, u32 CRC-32(msgid+cmd+payload), msgid, cmd, payload."""
    body = struct.pack(">IB", msgid & 0xFFFFFFFF, cmd) + payload
    return _HDR.pack(magic, len(body), zlib.crc32(body)) + body


def str8(value: bytes) -> bytes:
    return bytes((len(value),)) + value


def encode_job(
    func: bytes,
    name: bytes,
    workload: bytes = b"",
    sched_at: int = 0,
    count: int = 0,
    timeout: int = 0,
) -> bytes:
    """A Job (§7); the version byte is computed from count and timeout like the reference."""
    ver = (1 if count > 0 else 0) | (2 if timeout > 0 else 0)
    out = (
        str8(func)
        + str8(name)
        + struct.pack(">I", len(workload))
        + workload
        + _JOB_TAIL.pack(sched_at, ver)
    )
    if ver & 1:
        out += struct.pack(">i", count)
    if ver & 2:
        out += struct.pack(">i", timeout)
    return out


@dataclass(frozen=True, slots=True)
class Job:
    func: bytes
    name: bytes
    workload: bytes
    sched_at: int
    count: int
    timeout: int


def decode_job(payload: bytes | memoryview) -> Job:
    data = bytes(payload)
    i = 0
    flen = data[i]
    func = data[i + 1 : i + 1 + flen]
    i += 1 + flen
    nlen = data[i]
    name = data[i + 1 : i + 1 + nlen]
    i += 1 + nlen
    (wlen,) = struct.unpack_from(">I", data, i)
    workload = data[i + 4 : i + 4 + wlen]
    i += 4 + wlen
    sched_at, ver = _JOB_TAIL.unpack_from(data, i)
    i += 9
    count = timeout = 0
    if ver in (1, 3):
        (count,) = struct.unpack_from(">i", data, i)
        i += 4
    if ver in (2, 3):
        (timeout,) = struct.unpack_from(">i", data, i)
        i += 4
    if i != len(data):
        raise ValueError("trailing bytes after job")
    return Job(func, name, workload, sched_at, count, timeout)


def job_handle(payload: bytes | memoryview) -> bytes:
    """The JobHandle (str8 func + str8 name) at the start of a Job payload."""
    flen = payload[0]
    nlen = payload[1 + flen]
    return bytes(payload[: 2 + flen + nlen])


def split_frames(buf: bytearray) -> tuple[list[tuple[int, int, bytes]], int]:
    """Complete frames at the start of ``buf`` as (msgid, cmd, payload), and bytes consumed."""
    out: list[tuple[int, int, bytes]] = []
    i = 0
    n = len(buf)
    while n - i >= 17:
        length = int.from_bytes(buf[i + 4 : i + 8], "big")
        end = i + 12 + length
        if end > n:
            break
        msgid = int.from_bytes(buf[i + 12 : i + 16], "big")
        out.append((msgid, buf[i + 16], bytes(buf[i + 17 : end])))
        i = end
    return out, i


def handshake(sock: socket.socket, client_type: int) -> int:
    """Register; return the connection id of the 17-byte reply (§4.2)."""
    sock.sendall(registration(client_type))
    reply = recv_exact(sock, 17)
    if reply[:4] != RES or reply[12] != DATA:
        raise ConnectionError(f"bad registration reply {reply!r}")
    return int.from_bytes(reply[13:17], "big")


def ping(sock: socket.socket, msgid: int = 1) -> None:
    sock.sendall(frame(msgid, PING))
    reply = recv_exact(sock, 17)
    if reply[16] != PONG:
        raise ConnectionError(f"expected PONG, got {reply!r}")


def request(sock: socket.socket, msgid: int, cmd: int, payload: bytes = b"") -> tuple[int, bytes]:
    """Send one request and wait for the reply with the same msgid (others are dropped)."""
    sock.sendall(frame(msgid, cmd, payload))
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
        frames, used = split_frames(buf)
        del buf[:used]
        for mid, rcmd, body in frames:
            if mid == msgid:
                return rcmd, body


def status_jobs(sock: socket.socket, func: bytes, msgid: int = 2) -> int:
    """Number of stored jobs of ``func`` according to STATUS (§9.1), 0 when absent."""
    cmd, body = request(sock, msgid, STATUS)
    if cmd != DATA:
        raise ConnectionError(f"STATUS answered with command {cmd}")
    for line in body.split(b"\n"):
        parts = line.split(b",")
        if len(parts) >= 3 and parts[0] == func:
            return int(parts[2])
    return 0


class PeriodicAdapter:
    """Drives a Periodic server for the load generator."""

    kind = "periodic"
    supports_due = True
    due_is_absolute = True

    def client_handshake(self, sock: socket.socket) -> None:
        handshake(sock, TYPE_CLIENT)

    def submit(self, msgid: int, job: JobSpec) -> bytes:
        return frame(msgid, SUBMIT_JOB, encode_job(job.func, job.name, job.workload, job.due))

    def count_replies(self, buf: bytearray) -> tuple[int, int, int]:
        """(successes, other replies, bytes consumed) for pipelined SUBMIT_JOB replies."""
        ok = bad = 0
        i = 0
        n = len(buf)
        while n - i >= 17:
            end = i + 12 + int.from_bytes(buf[i + 4 : i + 8], "big")
            if end > n:
                break
            if buf[i + 16] == SUCCESS:
                ok += 1
            else:
                bad += 1
            i = end
        return ok, bad, i

    def worker(self, func: bytes, slots: int) -> PeriodicWorker:
        return PeriodicWorker(func, slots)


class PeriodicWorker:
    """Worker state machine: CAN_DO, ``slots`` GRAB_JOB msgids; each JOB_ASSIGN is answered
    with JOB_ASSIGNED + WORK_DONE + GRAB_JOB (same msgid) in one write."""

    _GRAB_BASE = 0x10000

    def __init__(self, func: bytes, slots: int) -> None:
        self.func = func
        self.slots = slots
        self._assigned = {m: frame(m, JOB_ASSIGNED) for m in self._slot_ids()}
        self._grab = {m: frame(m, GRAB_JOB) for m in self._slot_ids()}
        self._done_id = 0x100000

    def _slot_ids(self) -> range:
        return range(self._GRAB_BASE, self._GRAB_BASE + self.slots)

    def handshake(self, sock: socket.socket) -> None:
        handshake(sock, TYPE_WORKER)
        cmd, _ = request(sock, 1, CAN_DO, str8(self.func))
        if cmd != SUCCESS:
            raise ConnectionError(f"CAN_DO answered with command {cmd}")

    def start(self) -> bytes:
        return b"".join(self._grab.values())

    def feed(self, buf: bytearray, complete: bool = True) -> tuple[list[bytes], bytes, int]:
        """Consume frames; return (names of jobs received, bytes to send, bytes consumed)."""
        names: list[bytes] = []
        out: list[bytes] = []
        i = 0
        n = len(buf)
        while n - i >= 17:
            end = i + 12 + int.from_bytes(buf[i + 4 : i + 8], "big")
            if end > n:
                break
            if buf[i + 16] == JOB_ASSIGN:
                msgid = int.from_bytes(buf[i + 12 : i + 16], "big")
                flen = buf[i + 17]
                nstart = i + 18 + flen
                nlen = buf[nstart]
                names.append(bytes(buf[nstart + 1 : nstart + 1 + nlen]))
                out.append(self._assigned[msgid])
                if complete:
                    self._done_id = (self._done_id + 1) & 0xFFFFFFF
                    out.append(
                        frame(self._done_id, WORK_DONE, bytes(buf[i + 17 : nstart + 1 + nlen]))
                    )
                out.append(self._grab[msgid])
            i = end
        return names, b"".join(out), i
