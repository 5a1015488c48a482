"""The reference's RSA/AES transport for the load generator's blocking sockets.

periodicd with ``--rsa-private-path`` speaks Periodic inside an RSA handshake
and then, per connection, Plain, RSA (every write OAEP blocks) or AES
(AES-256-CTR + HMAC frames); PROTOCOL.md §3.  The bench measures what that
costs by running the same load (same roles, same frames) through this wrapper:
``connect_secure`` does the handshake with the project's sans-I/O handshake
and returns a ``SecureSocket`` that seals every write and opens every read,
with the methods the generator calls on a plain socket.

Keys are generated once per bench process (``bench_keys``): a server pair and
a client pair whose public half is the server's authorised key directory.
"""

from __future__ import annotations

import select
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from trio_periodic.cli.keygen import generate_key_files
from trio_periodic.transport.rsa.handshake import ClientHandshake
from trio_periodic.transport.rsa.keys import load_private_key, load_public_keys
from trio_periodic.transport.rsa.options import RsaMode
from trio_periodic.transport.rsa.session import Session

#: Seconds to wait for the rest of a block or frame that arrived in part.
PART_WAIT = 5.0


@dataclass(frozen=True, slots=True)
class Secure:
    """How a client connects: the mode and the client's key files."""

    mode: str  # "AES" or "RSA"
    client_private: str
    server_public: str


@dataclass(frozen=True, slots=True)
class BenchKeys:
    server_private: str
    #: The directory of authorised client public keys.
    client_public_dir: str
    client_private: str
    server_public: str

    def client(self, mode: str) -> Secure:
        return Secure(mode, self.client_private, self.server_public)


_keys: BenchKeys | None = None


def bench_keys() -> BenchKeys:
    """Key files for this bench process, made on first use (2048-bit, as the reference)."""
    global _keys
    if _keys is None:
        root = Path(tempfile.mkdtemp(prefix="bench-rsa-"))
        server_private, server_public = generate_key_files(str(root / "server"))
        client_private, client_public = generate_key_files(str(root / "client"))
        (root / "clients").mkdir()
        client_public.rename(root / "clients" / client_public.name)
        _keys = BenchKeys(
            str(server_private), str(root / "clients"), str(client_private), str(server_public)
        )
    return _keys


class SecureSocket:
    """A connected socket whose bytes go through a transport session."""

    def __init__(self, sock: socket.socket, session: Session, leftover: bytes) -> None:
        self.sock = sock
        self.session = session
        self._plain = bytearray(session.receive(leftover) if leftover else b"")

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, value: float | None) -> None:
        self.sock.settimeout(value)

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> SecureSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        unit = self.session.send_unit or len(data)
        for i in range(0, len(data), max(unit, 1)):
            wire = memoryview(self.session.send(bytes(data[i : i + unit])))
            while wire:
                try:
                    sent = self.sock.send(wire)
                except BlockingIOError:
                    select.select([], [self.sock], [], PART_WAIT)
                    continue
                wire = wire[sent:]

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Everything or an error: a sealed write cannot be cut in two."""
        self.sendall(data)
        return len(data)

    def recv(self, bufsize: int) -> bytes:
        """Plain bytes; b"" only at end of stream.  Raises what the socket raises
        (BlockingIOError, TimeoutError) when nothing at all has arrived."""
        if self._plain:
            return self._take(bufsize)
        first = True
        while True:
            try:
                data = self.sock.recv(max(bufsize, self.session.receive_unit or 0, 1 << 16))
            except (BlockingIOError, TimeoutError):
                if first:
                    raise
                select.select([self.sock], [], [], PART_WAIT)
                continue
            if not data:
                return b""
            first = False
            self._plain += self.session.receive(data)
            if self._plain:
                return self._take(bufsize)
            # A block or frame arrived in part: the rest follows at once.
            select.select([self.sock], [], [], PART_WAIT)

    def _take(self, n: int) -> bytes:
        out = bytes(self._plain[:n])
        del self._plain[:n]
        return out


def connect_secure(host: str, port: int, secure: Secure, timeout: float = 5.0) -> SecureSocket:
    """Connect and complete the handshake (blocking)."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    side = ClientHandshake(
        load_private_key(secure.client_private),
        load_public_keys(secure.server_public),
        RsaMode.parse(secure.mode),
    )
    sock.sendall(side.initiate())
    while not side.done:
        data = sock.recv(max(side.wanted, 1))
        if not data:
            sock.close()
            raise ConnectionError("the server closed the connection during the RSA handshake")
        reply = side.receive_data(data)
        if reply:
            sock.sendall(reply)
    return SecureSocket(sock, side.session, side.leftover)
