"""Server URLs → an open :class:`~trio_periodic.transport.streams.FrameStream`.

Accepted URLs (PROTOCOL.md §1, and what aio_periodic accepts):

* ``tcp://HOST:PORT`` (``tcp://:PORT`` connects to 127.0.0.1, ``tcp://[::1]:PORT``);
* ``unix:///path/to.sock``;
* ``ws://HOST:PORT[/PATH]`` - WebSocket, one binary message per frame;
* ``tls://HOST:PORT`` and ``wss://HOST:PORT[/PATH]`` - the same over TLS;
* a bare ``HOST:PORT`` - TCP.

With :class:`~trio_periodic.transport.rsa.RsaOptions`, ``tcp://`` and
``unix://`` connections run periodicd's RSA handshake first (PROTOCOL.md §3)
and the rest of the connection goes through the negotiated mode.

Any other scheme is an error (the reference took it as a Unix socket path).
"""

from __future__ import annotations

import os
import ssl
from typing import TYPE_CHECKING

import trio

from trio_periodic.client.errors import ConnectError
from trio_periodic.protocol.constants import DEFAULT_MAX_FRAME_SIZE, HEADER_SIZE
from trio_periodic.transport.rsa.options import RsaKeyError, RsaOptions, RsaProtocolError
from trio_periodic.transport.streams import ByteFrameStream, FrameStream, WebSocketFrameStream
from trio_periodic.transport.tls import describe
from trio_periodic.transport.urls import TLS_SCHEMES, PeriodicURL, URLError
from trio_periodic.transport.urls import parse_url as parse_url_syntax

if TYPE_CHECKING:
    from trio_periodic.transport.rsa.stream import ClientKeys

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


async def open_frame_stream(
    url: str,
    nursery: trio.Nursery,
    ssl_context: ssl.SSLContext | None = None,
    rsa: RsaOptions | None = None,
) -> FrameStream:
    """Connect to ``url``.  ``nursery`` hosts the WebSocket's background task.

    ``tls://`` and ``wss://`` use ``ssl_context`` (default: the system's CAs,
    no client certificate) and check the server's certificate against the
    URL's host; other schemes ignore it.  ``rsa`` runs the RSA handshake on
    ``tcp://`` and ``unix://`` (the only doors periodicd has); key files
    that cannot be used raise :class:`~trio_periodic.transport.rsa.RsaKeyError`.
    Raises :class:`ConnectError` with the reason (refused, no such socket,
    certificate not trusted, RSA handshake refused, …).
    """
    target = parse_url(url)
    if ssl_context is None and target.scheme in TLS_SCHEMES:
        ssl_context = ssl.create_default_context()
    keys = None
    if rsa is not None:
        if target.scheme not in ("tcp", "unix"):
            raise ConnectError(f"the RSA transport runs over tcp:// and unix:// only, not {target}")
        keys = _client_keys(rsa)  # before connecting: a bad key file is our problem
    try:
        if target.scheme == "tcp":
            stream: trio.abc.Stream = await trio.open_tcp_stream(target.host, target.port)
            return ByteFrameStream(await _rsa(stream, target, keys), str(target))
        if target.scheme == "unix":
            stream = await trio.open_unix_socket(target.path)
            return ByteFrameStream(await _rsa(stream, target, keys), str(target))
        if target.scheme == "tls":
            assert ssl_context is not None
            return ByteFrameStream(await _open_tls(target, ssl_context), str(target))
        return await _open_websocket(target, nursery, ssl_context)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise ConnectError(f"cannot connect to {target}: {reason}") from exc


def _client_keys(options: RsaOptions) -> ClientKeys:
    try:
        from trio_periodic.transport.rsa.stream import ClientKeys
    except ImportError:
        raise RsaKeyError(
            "the RSA transport needs the cryptography package: pip install 'trio-periodic[rsa]'"
        ) from None
    return ClientKeys.load(options)


async def _rsa(
    stream: trio.abc.Stream, target: ServerURL, keys: ClientKeys | None
) -> trio.abc.Stream:
    """``stream`` after the RSA handshake (unchanged without ``keys``)."""
    if keys is None:
        return stream
    from trio_periodic.transport.rsa.stream import client_handshake

    try:
        return await client_handshake(stream, keys)
    except (RsaProtocolError, trio.BrokenResourceError) as exc:
        await trio.aclose_forcefully(stream)
        reason = f"RSA handshake failed: {describe(exc)}"
        raise ConnectError(f"cannot connect to {target}: {reason}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise


async def _open_tls(
    target: ServerURL, context: ssl.SSLContext
) -> trio.SSLStream[trio.SocketStream]:
    tcp = await trio.open_tcp_stream(target.host, target.port)
    stream = trio.SSLStream(tcp, context, server_hostname=target.host, https_compatible=True)
    try:
        # Handshake now rather than on the first send, so that an untrusted
        # certificate is reported as such, not as a lost connection.
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        await trio.aclose_forcefully(stream)
        reason = f"TLS handshake failed: {describe(exc)}"
        raise ConnectError(f"cannot connect to {target}: {reason}") from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return stream


async def _open_websocket(
    target: ServerURL, nursery: trio.Nursery, context: ssl.SSLContext | None
) -> FrameStream:
    from trio_websocket import HandshakeError, WebSocketConnection, wrap_client_stream

    if target.scheme == "wss":
        assert context is not None
        stream: trio.abc.Stream = await _open_tls(target, context)
    else:
        stream = await trio.open_tcp_stream(target.host, target.port)
    watched = _WatchedStream(stream)
    host = f"[{target.host}]" if ":" in target.host else target.host
    outcome: WebSocketConnection | HandshakeError | None = None

    async def handshake() -> None:
        nonlocal outcome
        try:
            outcome = await wrap_client_stream(
                nursery,
                # Annotated as a socket or SSL stream, but any trio stream works
                # (the socket is only read for the peer's address, with a fallback).
                watched,  # type: ignore[arg-type]
                f"{host}:{target.port}",
                target.path or "/",
                max_message_size=DEFAULT_MAX_FRAME_SIZE + HEADER_SIZE,
            )
        except HandshakeError as exc:
            outcome = exc
        race.cancel_scope.cancel()

    async def watch() -> None:
        await watched.ended.wait()
        race.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as race:
            race.start_soon(handshake)
            race.start_soon(watch)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    if isinstance(outcome, WebSocketConnection):
        return WebSocketFrameStream(outcome, str(target))
    await trio.aclose_forcefully(stream)
    if outcome is None:
        reason = f"connection closed during the WebSocket handshake ({watched.reason})"
    else:
        reason = f"WebSocket handshake failed ({outcome})"
    raise ConnectError(f"cannot connect to {target}: {reason}")


class _WatchedStream(trio.abc.Stream):
    """A stream that notes when the server closes or breaks it.

    trio_websocket waits for the upgrade reply for ever if the connection
    ends first (say, a server refusing our client certificate, which TLS 1.3
    reports only after the handshake); :func:`_open_websocket` races the
    upgrade against :attr:`ended` to report that at once.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self.ended = trio.Event()
        self.reason = "closed by the server"

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes)
        except trio.BrokenResourceError as exc:
            self._end(exc)
            raise
        if not data:
            self.ended.set()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except trio.BrokenResourceError as exc:
            self._end(exc)
            raise

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()

    def _end(self, exc: BaseException) -> None:
        self.reason = describe(exc)
        self.ended.set()
