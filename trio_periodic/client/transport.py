"""Server URLs → an open :class:`~trio_periodic.transport.streams.FrameStream`.

Accepted URLs (PROTOCOL.md §1, and what aio_periodic accepts):

* ``tcp://HOST:PORT`` (``tcp://:PORT`` connects to 127.0.0.1, ``tcp://[::1]:PORT``);
* ``unix:///path/to.sock``;
* ``ws://HOST:PORT[/PATH]`` - WebSocket, one binary message per frame;
* ``tls://HOST:PORT`` and ``wss://HOST:PORT[/PATH]`` - the same over TLS;
* a bare ``HOST:PORT`` - TCP.

Any other scheme is an error (the reference took it as a Unix socket path).
"""

from __future__ import annotations

import os

import trio

from trio_periodic.client.errors import ConnectError
from trio_periodic.protocol.constants import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE
from trio_periodic.transport.streams import ByteFrameStream, FrameStream, WebSocketFrameStream
from trio_periodic.transport.urls import PeriodicURL, URLError
from trio_periodic.transport.urls import parse_url as parse_url_syntax

__all__ = ["DEFAULT_URL", "ServerURL", "default_url", "open_frame_stream", "parse_url"]

#: Where the reference tools look for a server when neither -H nor PERIODIC_PORT is set.
DEFAULT_URL = "unix:///tmp/periodic.sock"


def default_url() -> str:
    """``$PERIODIC_PORT`` if set and not empty, else :data:`DEFAULT_URL`."""
    return os.environ.get("PERIODIC_PORT") or DEFAULT_URL


#: A server address (the listeners use the same syntax).
ServerURL = PeriodicURL


def parse_url(url: str) -> ServerURL:
    """Parse a server URL; :class:`ConnectError` if it cannot name a server.
    ``tcp://:PORT`` means this machine."""
    try:
        target = parse_url_syntax(url, bare=True)
    except URLError as exc:
        raise ConnectError(str(exc)) from None
    if target.scheme != "unix" and not target.host:
        target = PeriodicURL(target.scheme, "127.0.0.1", target.port, target.path)
    return target


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
