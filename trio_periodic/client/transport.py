"""Server URLs → an open :class:`~trio_periodic.transport.streams.FrameStream`.

Accepted URLs (PROTOCOL.md §1, and what aio_periodic accepts):

* ``tcp://HOST:PORT`` (``tcp://:PORT`` connects to 127.0.0.1, ``tcp://[::1]:PORT``);
* ``unix:///path/to.sock`` (any other ``scheme://PATH`` is a Unix socket path too);
* ``ws://HOST:PORT[/PATH]`` - WebSocket, one binary message per frame;
* a bare ``HOST:PORT`` - TCP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import trio

from trio_periodic.client.errors import ConnectError
from trio_periodic.protocol.constants import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE
from trio_periodic.transport.streams import ByteFrameStream, FrameStream, WebSocketFrameStream

__all__ = ["DEFAULT_URL", "ServerURL", "default_url", "open_frame_stream", "parse_url"]

#: Where the reference tools look for a server when neither -H nor PERIODIC_PORT is set.
DEFAULT_URL = "unix:///tmp/periodic.sock"


def default_url() -> str:
    """``$PERIODIC_PORT`` if set and not empty, else :data:`DEFAULT_URL`."""
    return os.environ.get("PERIODIC_PORT") or DEFAULT_URL


@dataclass(frozen=True, slots=True)
class ServerURL:
    scheme: str  # "tcp", "unix" or "ws"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path if self.scheme == 'ws' else ''}"


def parse_url(url: str) -> ServerURL:
    """Parse a server URL; :class:`ConnectError` if it cannot name a server."""
    if "://" not in url:
        host, port = _host_port(url, url)
        return ServerURL("tcp", host, port)
    scheme, rest = url.split("://", 1)
    if scheme in ("tcp", "ws"):
        hostport, _, path = rest.partition("/")
        host, port = _host_port(hostport, url)
        return ServerURL(scheme, host, port, "/" + path if scheme == "ws" else "")
    if not rest:
        raise ConnectError(f"no socket path in {url!r}")
    return ServerURL("unix", path=rest)


def _host_port(hostport: str, url: str) -> tuple[str, int]:
    if hostport.startswith("["):
        host, sep, port = hostport[1:].partition("]:")
    else:
        host, sep, port = hostport.rpartition(":")
    if not sep:
        raise ConnectError(f"bad server address {url!r} (expected tcp://HOST:PORT or unix:///PATH)")
    try:
        number = int(port)
    except ValueError:
        raise ConnectError(f"bad port {port!r} in {url!r}") from None
    if not 0 < number <= 65535:
        raise ConnectError(f"port out of range in {url!r}")
    return host or "127.0.0.1", number


async def open_frame_stream(url: str, nursery: trio.Nursery) -> FrameStream:
    """Connect to ``url``.  ``nursery`` hosts the WebSocket's background task.

    Raises :class:`ConnectError` with the reason (refused, no such socket, …).
    """
    target = parse_url(url)
    try:
        if target.scheme == "tcp":
            stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
            return ByteFrameStream(stream, str(target))
        if target.scheme == "unix":
            stream = await trio.open_unix_socket(target.path)
            return ByteFrameStream(stream, str(target))
        return await _open_websocket(target, nursery)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConnectError(f"cannot connect to {target}: {reason}") from exc


async def _open_websocket(target: ServerURL, nursery: trio.Nursery) -> FrameStream:
    from trio_websocket import HandshakeError, connect_websocket

    try:
        ws = await connect_websocket(
            nursery,
            target.host,
            target.port,
            target.path or "/",
            use_ssl=False,
            max_message_size=DEFAULT_MAX_FRAME_SIZE + HEADER_SIZE,
        )
    except HandshakeError as exc:
        reason = f"WebSocket handshake failed ({exc})"
        raise ConnectError(f"cannot connect to {target}: {reason}") from exc
    return WebSocketFrameStream(ws, str(target))
