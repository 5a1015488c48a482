"""redis as a reference queue: LPUSH to submit, BRPOP to take (RESP2)."""

from __future__ import annotations

import socket

from bench.proto.base import JobSpec


def command(*args: bytes) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def value(job: JobSpec) -> bytes:
    return bytes((len(job.name),)) + job.name + job.workload


class RedisAdapter:
    kind = "redis"
    supports_due = False
    due_is_absolute = False

    def client_handshake(self, sock: socket.socket) -> None:
        return None

    def submit(self, msgid: int, job: JobSpec) -> bytes:
        return command(b"LPUSH", job.func, value(job))

    def count_replies(self, buf: bytearray) -> tuple[int, int, int]:
        end = buf.rfind(b"\r\n")
        if end < 0:
            return 0, 0, 0
        view = bytes(buf[: end + 2])
        total = view.count(b"\r\n")
        ok = total - view.count(b"-")
        return ok, total - ok, end + 2

    def worker(self, func: bytes, slots: int) -> RedisWorker:
        return RedisWorker(func, slots)


class RedisWorker:
    """``slots`` pipelined ``BRPOP func 0``; each reply is followed by another BRPOP."""

    def __init__(self, func: bytes, slots: int) -> None:
        self.slots = slots
        self._pop = command(b"BRPOP", func, b"0")

    def handshake(self, sock: socket.socket) -> None:
        return None

    def start(self) -> bytes:
        return self._pop * self.slots

    def feed(self, buf: bytearray, complete: bool = True) -> tuple[list[bytes], bytes, int]:
        names: list[bytes] = []
        i = 0
        n = len(buf)
        while i < n:
            if buf[i] != 0x2A:  # '*'
                raise ConnectionError(f"redis said {bytes(buf[i : i + 80])!r}")
            # *2\r\n$<klen>\r\n<key>\r\n$<vlen>\r\n<value>\r\n
            eol = buf.find(b"\r\n", i)
            if eol < 0:
                break
            pos = eol + 2
            fields: list[bytes] = []
            for _ in range(2):
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                size = int(buf[pos + 1 : eol])
                start = eol + 2
                if start + size + 2 > n:
                    break
                fields.append(bytes(buf[start : start + size]))
                pos = start + size + 2
            if len(fields) < 2:
                break
            val = fields[1]
            names.append(val[1 : 1 + val[0]])
            i = pos
        return names, self._pop * len(names), i
