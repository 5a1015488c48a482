"""beanstalkd's text protocol: put / reserve / delete on the default tube."""

from __future__ import annotations

import socket

from bench.proto.base import JobSpec

PRIORITY = 1024
TTR = 60


def body(job: JobSpec) -> bytes:
    """Job body: the name (length-prefixed) so a worker can tell jobs apart, then the workload."""
    return bytes((len(job.name),)) + job.name + job.workload


class BeanstalkAdapter:
    kind = "beanstalkd"
    supports_due = True
    due_is_absolute = False  # put takes a delay in whole seconds

    def client_handshake(self, sock: socket.socket) -> None:
        return None

    def submit(self, msgid: int, job: JobSpec) -> bytes:
        data = body(job)
        return b"put %d %d %d %d\r\n%s\r\n" % (PRIORITY, job.due, TTR, len(data), data)

    def count_replies(self, buf: bytearray) -> tuple[int, int, int]:
        end = buf.rfind(b"\r\n")
        if end < 0:
            return 0, 0, 0
        view = bytes(buf[: end + 2])
        total = view.count(b"\r\n")
        ok = view.count(b"INSERTED ")
        return ok, total - ok, end + 2

    def worker(self, func: bytes, slots: int) -> BeanstalkWorker:
        return BeanstalkWorker(slots)


class BeanstalkWorker:
    """``slots`` pipelined ``reserve`` commands; each job is answered ``delete`` + ``reserve``."""

    def __init__(self, slots: int) -> None:
        self.slots = slots

    def handshake(self, sock: socket.socket) -> None:
        return None

    def start(self) -> bytes:
        return b"reserve\r\n" * self.slots

    def feed(self, buf: bytearray, complete: bool = True) -> tuple[list[bytes], bytes, int]:
        names: list[bytes] = []
        out: list[bytes] = []
        i = 0
        n = len(buf)
        while True:
            eol = buf.find(b"\r\n", i)
            if eol < 0:
                break
            if buf.startswith(b"RESERVED ", i):
                _, jid, size = bytes(buf[i:eol]).split()
                start = eol + 2
                end = start + int(size)
                if end + 2 > n:
                    break
                nlen = buf[start]
                names.append(bytes(buf[start + 1 : start + 1 + nlen]))
                out.append(b"delete %s\r\nreserve\r\n" % jid if complete else b"reserve\r\n")
                i = end + 2
            elif buf.startswith(b"DELETED", i):
                i = eol + 2
            else:
                raise ConnectionError(f"beanstalkd said {bytes(buf[i:eol])!r}")
        return names, b"".join(out), i
