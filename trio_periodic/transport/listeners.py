"""Listener URLs → bound listeners (``tcp://``, ``unix://``, ``tls://``).

URL syntax follows the reference (PROTOCOL.md §1): ``tcp://HOST:PORT`` with an
empty host meaning every interface, and ``unix:///path``; unlike the
reference, an unknown scheme is an error rather than a Unix socket path (see
:mod:`.urls`).  ``ws://HOST:PORT[/PATH]`` and ``wss://…`` serve WebSocket
clients: trio_websocket binds ``ws://`` itself; for ``wss://`` the server
handshakes TLS first (see :mod:`.tls`) and then runs the WebSocket over the
decrypted stream with :func:`serve_websocket_stream`.
"""

from __future__ import annotations

import errno
import os
import socket as stdlib_socket
import ssl
import stat
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import trio
from trio_websocket import WebSocketRequest, wrap_server_stream

from trio_periodic.transport.rsa.options import DEFAULT_SERVER_PUBLIC_PATH, RsaKeyError
from trio_periodic.transport.tls import TlsError, server_context
from trio_periodic.transport.urls import PeriodicURL, URLError, parse_url

if TYPE_CHECKING:
    from trio_periodic.transport.rsa.stream import ServerKeys


class ListenError(Exception):
    """A listener could not be opened (address in use, bad URL, ...)."""


#: A listener address (the same syntax as the client's server URLs).
ListenURL = PeriodicURL


def parse_listen_url(url: str) -> ListenURL:
    try:
        return parse_url(url, min_port=0)
    except URLError as exc:
        raise ListenError(str(exc)) from None


def parse_http_address(address: str) -> tuple[ListenURL, bool]:
    """``[http://]HOST:PORT`` or ``https://HOST:PORT`` → (TCP URL, whether TLS)."""
    scheme, sep, rest = address.rpartition("://")
    if sep and scheme not in ("http", "https"):
        raise ListenError(
            f"unknown scheme {scheme!r} in HTTP address {address!r} (expected "
            "HOST:PORT, http:// or https://)"
        )
    url = parse_listen_url(f"tcp://{rest}")
    return url, scheme == "https"


def tls_context(
    secure: Sequence[str], cert: str | None, key: str | None, client_ca: str | None
) -> ssl.SSLContext | None:
    """The one context for the TLS listeners named in ``secure``; None when
    there are none.  :class:`ListenError` when they have no usable certificate."""
    if not secure:
        return None
    if cert is None:
        raise ListenError(
            f"{secure[0]} needs a certificate: give --tls-cert FILE and --tls-key FILE"
        )
    try:
        return server_context(cert, key, client_ca)
    except TlsError as exc:
        raise ListenError(str(exc)) from None


def rsa_keys(
    private_path: str | None, public_path: str | None, allow_legacy: bool = False
) -> ServerKeys | None:
    """The RSA transport's keys (PROTOCOL.md §3), read and checked once; None
    without a private key.  :class:`ListenError` when a key file cannot be used.
    The authorised keys default to ``public_keys.pem``, as periodicd's."""
    if private_path is None:
        if public_path is not None or allow_legacy:
            raise ListenError("--rsa-public-path and --rsa-allow-legacy need --rsa-private-path")
        return None
    try:
        from trio_periodic.transport.rsa.stream import ServerKeys
    except ImportError:
        raise ListenError(
            "--rsa-private-path needs the cryptography package: pip install 'trio-periodic[rsa]'"
        ) from None
    public_path = public_path or DEFAULT_SERVER_PUBLIC_PATH
    try:
        return ServerKeys.load(private_path, public_path, allow_legacy)
    except RsaKeyError as exc:
        raise ListenError(str(exc)) from None


async def open_tcp(url: ListenURL) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(url.port, host=url.host or None)
    except OSError as exc:
        raise ListenError(f"cannot listen on {url}: {exc.strerror or exc}") from exc


#: Seconds a WebSocket client has to send its upgrade request (trio_websocket's default).
WEBSOCKET_CONNECT_TIMEOUT = 60.0


async def serve_websocket_stream(
    handler: Callable[[WebSocketRequest], Awaitable[None]],
    stream: trio.abc.Stream,
    *,
    max_message_size: int,
    connect_timeout: float = WEBSOCKET_CONNECT_TIMEOUT,
) -> None:
    """Serve one WebSocket client over an accepted ``stream``: wait for its
    upgrade request, then run ``handler`` (which accepts and closes it).

    This is what trio_websocket's server does per connection; ``wss://``
    needs it separately because its TLS handshake runs first, in our own
    code: trio_websocket, given the TLS context, keeps a socket whose
    handshake failed open for the whole connect timeout, silently.
    """
    try:
        async with trio.open_nursery() as nursery:
            request: WebSocketRequest | None = None
            with trio.move_on_after(connect_timeout):
                request = await wrap_server_stream(
                    nursery, stream, max_message_size=max_message_size
                )
            if request is not None:
                await handler(request)
            # The reader task ends when the handler closes the WebSocket;
            # without a request (or if the handler left it open) stop it here.
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)


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
