"""What the load generator needs from a protocol: an adapter and a worker state machine."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bench.secure import Secure


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job as the scenarios describe it; each adapter maps it onto its protocol.

    ``due`` is an absolute Unix second for protocols with absolute due times (Periodic's
    ``sched_at``, gearman's SUBMIT_JOB_EPOCH) and a delay in seconds for beanstalkd; 0 = now.
    """

    func: bytes
    name: bytes
    workload: bytes
    due: int = 0


class Worker(Protocol):
    def handshake(self, sock: socket.socket) -> None:
        """Blocking: register as a worker for the function (before the clock starts)."""

    def start(self) -> bytes:
        """Bytes that arm the worker (grab / reserve requests)."""

    def feed(self, buf: bytearray, complete: bool = True) -> tuple[list[bytes], bytes, int]:
        """Consume replies: (names of jobs received, bytes to send back, bytes consumed)."""


class Adapter(Protocol):
    kind: str
    supports_due: bool
    due_is_absolute: bool

    def client_handshake(self, sock: socket.socket) -> None: ...

    def submit(self, msgid: int, job: JobSpec) -> bytes:
        """The bytes of one submit request."""

    def count_replies(self, buf: bytearray) -> tuple[int, int, int]:
        """Parse submit replies: (accepted, rejected, bytes consumed)."""

    def worker(self, func: bytes, slots: int) -> Worker: ...


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    return bytes(buf)


def recv_until(sock: socket.socket, marker: bytes, buf: bytearray) -> bytes:
    """Read until ``marker``; return the bytes up to it and leave the rest in ``buf``."""
    while True:
        idx = buf.find(marker)
        if idx >= 0:
            line = bytes(buf[:idx])
            del buf[: idx + len(marker)]
            return line
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk


def connect(
    host: str, port: int, timeout: float = 5.0, secure: Secure | None = None
) -> socket.socket:
    """A connected socket; with ``secure``, one speaking the RSA/AES transport
    (same methods, see bench/secure.py)."""
    if secure is not None:
        from bench.secure import connect_secure

        return connect_secure(host, port, secure, timeout)  # type: ignore[return-value]
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
