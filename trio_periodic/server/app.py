"""The server: one nursery supervising every listener and connection.

``Server.run`` opens the store, restores the scheduler from it, binds every
listener, reports the bound addresses through ``task_status`` (tests bind
port 0 and read the real port back) and serves until SHUTDOWN, a signal or
cancellation.

Listeners accept in one nursery and connections live in another, so that a
shutdown can stop accepting while connections go on.  A shutdown drains:
accepting and assigning stop at once, connections that hold no job close,
workers that hold jobs may still report them for ``drain_timeout`` seconds (a
second shutdown request skips the wait); then the remaining connections
close and hand their jobs back, the store is flushed and closed and the Unix
socket files are removed.

Every door counts against ``max_connections``: past it a new connection is
closed at once (logged at most once per second, with a count).
"""

from __future__ import annotations

import gc
import logging
import math
import os
import secrets
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import trio
from trio_websocket import WebSocketRequest, serve_websocket

from trio_periodic.protocol.constants import DEFAULT_MAX_FRAME_SIZE
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.service import Clock, SchedulerService
from trio_periodic.server.auth import AuthFile
from trio_periodic.server.commands import COMMANDS
from trio_periodic.server.connection import ConnectionContext, ServerSideConnection, watch_idle
from trio_periodic.server.http import HTTP_PREFIXES, HttpApi
from trio_periodic.server.ops.base import describe_worker
from trio_periodic.server.options import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_OUTBOX,
)
from trio_periodic.server.origins import OriginError, OriginPolicy
from trio_periodic.store.base import Store
from trio_periodic.transport.listeners import (
    ListenError,
    ListenURL,
    open_tcp,
    open_unix,
    parse_http_address,
    parse_listen_url,
    rsa_keys,
    serve_websocket_stream,
    tls_context,
)
from trio_periodic.transport.peers import peer_name
from trio_periodic.transport.streams import RECEIVE_SIZE, ByteFrameStream, WebSocketFrameStream
from trio_periodic.transport.tls import after_handshake, wrap_listeners
from trio_periodic.transport.urls import TLS_SCHEMES

log = logging.getLogger(__name__)


class Server:
    def __init__(
        self,
        store: Store,
        hosts: Sequence[str],
        *,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        http: str | None = None,
        auth_file: str | None = None,
        max_outbox: int = DEFAULT_MAX_OUTBOX,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_client_ca: str | None = None,
        rsa_private_path: str | None = None,
        rsa_public_path: str | None = None,
        rsa_allow_legacy: bool = False,
        http_cors: Sequence[str] = (),
        ws_origins: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.urls = [parse_listen_url(h) for h in hosts]
        self.max_frame_size = max_frame_size
        #: Bytes queued for one connection before it is read no further.
        self.max_outbox = max_outbox
        #: Open connections (every door) before new ones are turned away.
        self.max_connections = max_connections
        #: Seconds running jobs may still report after a shutdown request.
        self.drain_timeout = drain_timeout
        self.http_address = http
        #: The auth file's rules, or None (raises AuthFileError when invalid).
        self.auth = AuthFile(auth_file) if auth_file else None
        secure = [str(url) for url in self.urls if url.scheme in TLS_SCHEMES]
        if http and parse_http_address(http)[1]:
            secure.append(http)
        #: The TLS listeners' one context, or None without them (raises ListenError
        #: when they have no usable certificate).
        self.ssl_context = tls_context(secure, tls_cert, tls_key, tls_client_ca)
        #: The RSA transport's keys, or None: with them every tcp:// and unix://
        #: connection handshakes first (raises ListenError for unusable key files).
        self.rsa = rsa_keys(rsa_private_path, rsa_public_path, rsa_allow_legacy)
        try:
            #: Browser origins allowed on the HTTP API (CORS) and on WebSocket listeners.
            self.http_cors = OriginPolicy(http_cors)
            self.ws_origins = OriginPolicy(ws_origins, empty_allows_all=True)
        except OriginError as exc:
            raise ListenError(str(exc)) from None
        self.core = Scheduler()
        self.core.describe = describe_worker  # names the worker in the failed set
        self.service: SchedulerService
        #: Built in run(), once the scheduler service exists.
        self.http: HttpApi
        self._conn_context: ConnectionContext
        #: The addresses actually bound, as URLs (ports filled in), once started.
        self.bound: list[str] = []
        self._shutdown = trio.Event()
        #: A second shutdown request: skip the drain.
        self._shutdown_now = trio.Event()
        #: Set (and replaced) when a connection ends or shutdown is asked again.
        self._changed = trio.Event()
        #: Connections open on every door, and refusals not logged yet.
        self._open = 0
        self._refused = 0
        self._refused_logged_at = -math.inf
        #: The nursery connections run in (outlives the accepting listeners).
        self._conns: trio.Nursery
        self._unix_paths: list[str] = []

    def new_conn_id(self) -> int:
        return secrets.randbits(32)

    def request_shutdown(self) -> None:
        """Drain and stop; a second request skips the rest of the drain."""
        if self._shutdown.is_set():
            self._shutdown_now.set()
            self._notify()
        self._shutdown.set()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def run(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        state = await self.store.open()
        try:
            clock = Clock()
            self.core.restore(state, clock.now())
            restored = len(state.jobs)
            del state
            # The restored jobs live as long as they are stored: keep the
            # collector from rescanning them again and again.
            gc.collect()
            gc.freeze()
            self.service = SchedulerService(self.core, self.store, clock)
            self.http = HttpApi(
                self.service, auth=self.auth, max_body=self.max_frame_size, cors=self.http_cors
            )
            self._conn_context = ConnectionContext(
                service=self.service,
                commands=COMMANDS,
                max_frame_size=self.max_frame_size,
                new_conn_id=self.new_conn_id,
                request_shutdown=self.request_shutdown,
                auth=self.auth,
                max_outbox=self.max_outbox,
            )
            log.info("store %s: %d jobs restored", self.store.uri, restored)
            async with trio.open_nursery() as nursery:
                await nursery.start(self.service.run)
                if self.auth is not None:
                    nursery.start_soon(self.auth.watch)
                async with trio.open_nursery() as self._conns:
                    self._conns.start_soon(watch_idle, self._conn_context)
                    async with trio.open_nursery() as accepting:
                        for url in self.urls:
                            await self._listen(accepting, url)
                        if self.http_address:
                            await self._listen_http(accepting, self.http_address)
                        task_status.started(list(self.bound))
                        await self._shutdown.wait()
                        accepting.cancel_scope.cancel()
                    await self._drain()
                    self._conns.cancel_scope.cancel()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for path in self._unix_paths:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                await self.store.aclose()

    async def _drain(self) -> None:
        """Let the workers that hold jobs report them, for up to drain_timeout."""
        context = self._conn_context
        context.draining = True
        self.core.draining = True
        for conn in list(context.connections):
            conn.drain()
        running = sum(1 for conn in context.connections if conn.holds_jobs)
        log.info(
            "shutting down: %d connections hold jobs; waiting up to %g s for them",
            running,
            self.drain_timeout,
        )
        with trio.move_on_after(self.drain_timeout) as waited:
            while context.connections and not self._shutdown_now.is_set():
                await self._changed.wait()
        left = sum(1 for conn in context.connections if conn.holds_jobs)
        if left:
            why = "drain timeout" if waited.cancelled_caught else "second shutdown request"
            log.info("%s: handing back the jobs of %d connections", why, left)

    async def _listen(self, nursery: trio.Nursery, url: ListenURL) -> None:
        if url.scheme == "tcp":
            listeners = await open_tcp(url)
            for listener in listeners:
                host, port = listener.socket.getsockname()[:2]
                self._announce(f"tcp://{_fmt_host(host)}:{port}")
            nursery.start_soon(self._serve_listeners, self._socket_handler(), listeners)
        elif url.scheme == "unix":
            listener = await open_unix(url)
            self._unix_paths.append(url.path)
            self._announce(f"unix://{url.path}")
            nursery.start_soon(self._serve_listeners, self._socket_handler(), [listener])
        elif url.scheme == "tls":
            assert self.ssl_context is not None
            listeners = await open_tcp(url)
            for listener in listeners:
                host, port = listener.socket.getsockname()[:2]
                self._announce(f"tls://{_fmt_host(host)}:{port}")
            # Each connection handshakes in its own task, then is routed as on tcp://.
            serve_tls = after_handshake(self._serve_socket)
            tls_listeners = wrap_listeners(listeners, self.ssl_context)
            nursery.start_soon(self._serve_listeners, serve_tls, tls_listeners)
        elif url.scheme == "wss":
            assert self.ssl_context is not None
            listeners = await open_tcp(url)
            path = url.path if url.path != "/" else ""
            for listener in listeners:
                host, port = listener.socket.getsockname()[:2]
                self._announce(f"wss://{_fmt_host(host)}:{port}{path}")
            # TLS first, in the connection's task (as tls://), then the WebSocket.
            serve_ws = partial(
                serve_websocket_stream,
                self._serve_websocket,
                max_message_size=self.max_frame_size + 16,
            )
            wss_listeners = wrap_listeners(listeners, self.ssl_context)
            nursery.start_soon(self._serve_listeners, after_handshake(serve_ws), wss_listeners)
        else:
            ws_server = await nursery.start(
                partial(
                    serve_websocket,
                    self._serve_ws_request,
                    url.host or None,
                    url.port,
                    ssl_context=None,
                    handler_nursery=self._conns,
                    max_message_size=self.max_frame_size + 16,
                )
            )
            path = url.path if url.path != "/" else ""
            for endpoint in ws_server.listeners:
                if not isinstance(endpoint, str):
                    self._announce(f"ws://{_fmt_host(str(endpoint.address))}:{endpoint.port}{path}")

    async def _listen_http(self, nursery: trio.Nursery, address: str) -> None:
        url, secure = parse_http_address(address)
        listeners = await open_tcp(url)
        for listener in listeners:
            host, port = listener.socket.getsockname()[:2]
            self._announce(f"{'https' if secure else 'http'}://{_fmt_host(host)}:{port}")
        if secure:
            assert self.ssl_context is not None
            serve_https = after_handshake(self._serve_http)
            https_listeners = wrap_listeners(listeners, self.ssl_context)
            nursery.start_soon(self._serve_listeners, serve_https, https_listeners)
        else:
            nursery.start_soon(self._serve_listeners, self._serve_http, listeners)

    def _socket_handler(self) -> Callable[[Any], Awaitable[None]]:
        """tcp:// and unix:// connections: behind the RSA handshake (run in the
        connection's own task) when the server has RSA keys, as periodicd."""
        if self.rsa is None:
            return self._serve_socket
        from trio_periodic.transport.rsa.stream import after_rsa_handshake

        return after_rsa_handshake(self._serve_socket, self.rsa, peer_name)

    def _announce(self, url: str) -> None:
        self.bound.append(url)
        log.info("listening on %s", url)

    async def _serve_listeners(
        self,
        handler: Callable[[Any], Awaitable[None]],
        listeners: Sequence[trio.abc.Listener[Any]],
    ) -> None:
        """Accept on ``listeners``; each connection runs in the connections' nursery."""

        async def admitted(stream: trio.abc.Stream) -> None:
            await self._admit(handler, stream)

        await trio.serve_listeners(admitted, list(listeners), handler_nursery=self._conns)

    async def _admit(
        self, handler: Callable[[Any], Awaitable[None]], stream: trio.abc.Stream
    ) -> None:
        with self._counted() as admitted:
            if admitted:
                await handler(stream)
                return
        await trio.aclose_forcefully(stream)

    @contextmanager
    def _counted(self) -> Iterator[bool]:
        """Count a connection in for as long as it lives; yields False (counting
        nothing) past max_connections."""
        if not self._may_open():
            yield False
            return
        try:
            yield True
        finally:
            self._open -= 1
            self._notify()

    def _may_open(self) -> bool:
        if self._open < self.max_connections:
            self._open += 1
            return True
        self._refused += 1
        now = trio.current_time()
        if now - self._refused_logged_at >= 1:
            log.warning(
                "refused %d connections: %d open (--max-connections)",
                self._refused,
                self._open,
            )
            self._refused, self._refused_logged_at = 0, now
        return False

    async def _serve_http(self, stream: trio.abc.Stream) -> None:
        await self.http.serve(stream, peer=peer_name(stream))

    async def _serve_socket(self, stream: trio.abc.Stream) -> None:
        """A tcp:// or unix:// connection (under TLS or RSA, maybe): HTTP or Periodic."""
        name = peer_name(stream)
        # The seed served its curl interface on the protocol port: a first
        # read that starts like an HTTP request goes to the HTTP API.
        first = b""
        with trio.move_on_after(self.core.config["keepalive"] or math.inf):
            try:
                first = bytes(await stream.receive_some(RECEIVE_SIZE))
            except (trio.BrokenResourceError, OSError):
                pass
        if not first:
            await trio.aclose_forcefully(stream)
        elif first.startswith(HTTP_PREFIXES):
            await self.http.serve(stream, first, peer=name)
        else:
            frames = ByteFrameStream(stream, name, initial=first)
            await ServerSideConnection(self._conn_context, frames).serve()

    async def _serve_ws_request(self, request: WebSocketRequest) -> None:
        """ws:// (trio_websocket accepts): count the connection, then serve it."""
        with self._counted() as admitted:
            if admitted:
                await self._serve_websocket(request)
                return
        await request.reject(503, body=b"too many connections")

    async def _serve_websocket(self, request: WebSocketRequest) -> None:
        origin = next((v for k, v in request.headers if k.lower() == b"origin"), None)
        if not self.ws_origins.allows(origin):
            log.info("WebSocket from origin %r refused (--ws-origin)", origin)
            await request.reject(403, body=b"origin not allowed")
            return
        ws = await request.accept()
        remote = ws.remote
        name = f"ws:{getattr(remote, 'address', remote)}:{getattr(remote, 'port', '')}"
        await ServerSideConnection(self._conn_context, WebSocketFrameStream(ws, name)).serve()


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
