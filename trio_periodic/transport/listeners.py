"""Listener URLs → bound listeners (``tcp://``, ``unix://``, ``ws://``).

URL syntax follows the reference (PROTOCOL.md §1): ``tcp://HOST:PORT`` with an
empty host meaning every interface, ``unix:///path``, and any other
``scheme://rest`` taken as a Unix socket path.  ``ws://HOST:PORT[/PATH]``
serves WebSocket clients.
"""

from __future__ import annotations

import errno
import os
import socket as stdlib_socket
import stat
from dataclasses import dataclass

import trio


class ListenError(Exception):
    """A listener could not be opened (address in use, bad URL, ...)."""


@dataclass(frozen=True, slots=True)
class ListenURL:
    scheme: str  # "tcp", "unix" or "ws"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = self.path if self.scheme == "ws" and self.path not in ("", "/") else ""
        return f"{self.scheme}://{host}:{self.port}{suffix}"


def parse_listen_url(url: str) -> ListenURL:
    if "://" not in url:
        raise ListenError(f"not a listener URL (expected tcp://, unix:// or ws://): {url!r}")
    scheme, rest = url.split("://", 1)
    if scheme in ("tcp", "ws"):
        hostport, _, path = rest.partition("/")
        host, port = _split_host_port(hostport, url)
        return ListenURL(scheme, host, port, "/" + path if scheme == "ws" else "")
    if not rest:
        raise ListenError(f"empty socket path in {url!r}")
    return ListenURL("unix", path=rest)


def _split_host_port(hostport: str, url: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, sep, port = hostport[1:].partition("]:")
        if not sep:
            raise ListenError(f"bad IPv6 address in {url!r}")
    else:
        host, sep, port = hostport.rpartition(":")
        if not sep:
            raise ListenError(f"missing port in {url!r}")
    try:
        number = int(port)
    except ValueError:
        raise ListenError(f"bad port {port!r} in {url!r}") from None
    if not 0 <= number <= 65535:
        raise ListenError(f"port out of range in {url!r}")
    return host, number


async def open_tcp(url: ListenURL) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(url.port, host=url.host or None)
    except OSError as exc:
        raise ListenError(f"cannot listen on {url}: {exc.strerror or exc}") from exc


async def open_unix(url: ListenURL) -> trio.SocketListener:
    path = url.path
    await _clear_stale_socket(path)
    sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        sock.listen(stdlib_socket.SOMAXCONN)
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {url}: {exc.strerror or exc}") from exc
    return trio.SocketListener(sock)


async def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse a live one."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"cannot listen on unix://{path}: exists and is not a socket")
    probe = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    try:
        await probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ListenError(f"cannot probe unix://{path}: {exc.strerror}") from exc
        os.unlink(path)
    else:
        raise ListenError(f"cannot listen on unix://{path}: another server is running there")
    finally:
        probe.close()
