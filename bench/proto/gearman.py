"""gearman's binary protocol.

SUBMIT_JOB_BG, CAN_DO, GRAB_JOB_UNIQ, WORK_COMPLETE, PRE_SLEEP / NOOP."""

from __future__ import annotations

import socket
import struct

from bench.proto.base import JobSpec

REQ = b"\x00REQ"
RES = b"\x00RES"

CAN_DO = 1
PRE_SLEEP = 4
NOOP = 6
JOB_CREATED = 8
NO_JOB = 10
WORK_COMPLETE = 13
SUBMIT_JOB_BG = 18
ERROR = 19
GRAB_JOB_UNIQ = 30
JOB_ASSIGN_UNIQ = 31
SUBMIT_JOB_EPOCH = 36

_HDR = struct.Struct(">4sII")


def packet(ptype: int, *args: bytes) -> bytes:
    data = b"\x00".join(args)
    return _HDR.pack(REQ, ptype, len(data)) + data


def split_packets(buf: bytearray) -> tuple[list[tuple[int, bytes]], int]:
    out: list[tuple[int, bytes]] = []
    i = 0
    n = len(buf)
    while n - i >= 12:
        _, ptype, size = _HDR.unpack_from(buf, i)
        end = i + 12 + size
        if end > n:
            break
        out.append((ptype, bytes(buf[i + 12 : end])))
        i = end
    return out, i


class GearmanAdapter:
    kind = "gearmand"
    supports_due = True
    due_is_absolute = True  # SUBMIT_JOB_EPOCH takes a Unix time

    def client_handshake(self, sock: socket.socket) -> None:
        return None

    def submit(self, msgid: int, job: JobSpec) -> bytes:
        if job.due:
            return packet(SUBMIT_JOB_EPOCH, job.func, job.name, b"%d" % job.due, job.workload)
        return packet(SUBMIT_JOB_BG, job.func, job.name, job.workload)

    def count_replies(self, buf: bytearray) -> tuple[int, int, int]:
        ok = bad = 0
        i = 0
        n = len(buf)
        while n - i >= 12:
            end = i + 12 + int.from_bytes(buf[i + 8 : i + 12], "big")
            if end > n:
                break
            if buf[i + 7] == JOB_CREATED:
                ok += 1
            else:
                bad += 1
            i = end
        return ok, bad, i

    def worker(self, func: bytes, slots: int) -> GearmanWorker:
        return GearmanWorker(func, slots)


class GearmanWorker:
    """CAN_DO, then ``slots`` GRAB_JOB_UNIQ; NO_JOB → PRE_SLEEP once none is outstanding,
    NOOP → grab again.  Each job is answered WORK_COMPLETE plus the grabs that bring the
    outstanding count back to ``slots`` (the one just answered, and any that got NO_JOB
    while the others were still getting jobs), all in one write."""

    def __init__(self, func: bytes, slots: int) -> None:
        self.func = func
        self.slots = slots
        self.pending = 0  # GRAB_JOB_UNIQ sent and not yet answered
        self.sleeping = False
        self._grab = packet(GRAB_JOB_UNIQ)
        self._sleep = packet(PRE_SLEEP)

    def handshake(self, sock: socket.socket) -> None:
        sock.sendall(packet(CAN_DO, self.func))  # no reply in the protocol

    def start(self) -> bytes:
        self.pending = self.slots
        return self._grab * self.slots

    def _top_up(self) -> bytes:
        missing = self.slots - self.pending
        self.pending = self.slots
        return self._grab * missing

    def feed(self, buf: bytearray, complete: bool = True) -> tuple[list[bytes], bytes, int]:
        names: list[bytes] = []
        out: list[bytes] = []
        i = 0
        n = len(buf)
        while n - i >= 12:
            end = i + 12 + int.from_bytes(buf[i + 8 : i + 12], "big")
            if end > n:
                break
            ptype = buf[i + 7]
            if ptype == JOB_ASSIGN_UNIQ:
                handle, _func, unique, _data = bytes(buf[i + 12 : end]).split(b"\x00", 3)
                names.append(unique)
                self.pending -= 1
                if complete:
                    out.append(packet(WORK_COMPLETE, handle, b""))
                out.append(self._top_up())
            elif ptype == NO_JOB:
                self.pending -= 1
                if self.pending == 0 and not self.sleeping:
                    self.sleeping = True
                    out.append(self._sleep)
            elif ptype == NOOP:
                if self.sleeping:
                    self.sleeping = False
                    out.append(self._top_up())
            elif ptype == ERROR:
                raise ConnectionError(f"gearmand error {bytes(buf[i + 12 : end])!r}")
            i = end
        return names, b"".join(out), i
