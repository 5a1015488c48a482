"""The server: one nursery supervising every listener and connection.

``Server.run`` opens the store, restores the scheduler from it, binds every
listener, reports the bound addresses through ``task_status`` (tests bind
port 0 and read the real port back) and serves until SHUTDOWN, a signal or
cancellation.  On the way out it stops accepting, lets connections hand back
their jobs, closes the store and removes its Unix socket files.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import secrets
from collections.abc import Sequence
from functools import partial

import trio
from trio_websocket import WebSocketRequest, serve_websocket

from trio_periodic.protocol.constants import DEFAULT_MAX_FRAME_SIZE
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.service import Clock, SchedulerService
from trio_periodic.server.auth import AuthFile
from trio_periodic.server.commands import COMMANDS
from trio_periodic.server.connection import ConnectionContext, ServerSideConnection
from trio_periodic.server.http import HTTP_PREFIXES, HttpApi
from trio_periodic.server.options import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_OUTBOX,
)
from trio_periodic.store.base import Store
from trio_periodic.transport.listeners import (
    ListenURL,
    open_tcp,
    open_unix,
    parse_http_address,
    parse_listen_url,
    serve_websocket_stream,
    tls_context,
)
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
        self.core = Scheduler()
        self.service: SchedulerService
        #: Built in run(), once the scheduler service exists.
        self.http: HttpApi
        self._conn_context: ConnectionContext
        #: The addresses actually bound, as URLs (ports filled in), once started.
        self.bound: list[str] = []
        self._shutdown = trio.Event()
        self._unix_paths: list[str] = []

    def new_conn_id(self) -> int:
        return secrets.randbits(32)

    def request_shutdown(self) -> None:
        self._shutdown.set()

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
            self.http = HttpApi(self.service)
            self._conn_context = ConnectionContext(
                service=self.service,
                commands=COMMANDS,
                max_frame_size=self.max_frame_size,
                new_conn_id=self.new_conn_id,
                request_shutdown=self.request_shutdown,
                auth=self.auth,
            )
            log.info("store %s: %d jobs restored", self.store.uri, restored)
            async with trio.open_nursery() as nursery:
                await nursery.start(self.service.run)
                if self.auth is not None:
                    nursery.start_soon(self.auth.watch)
                for url in self.urls:
                    await self._listen(nursery, url)
                if self.http_address:
                    await self._listen_http(nursery, self.http_address)
                task_status.started(list(self.bound))
                await self._shutdown.wait()
                log.info("shutting down")
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                for path in self._unix_paths:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                await self.store.aclose()

    async def _listen(self, nursery: trio.Nursery, url: ListenURL) -> None:
        if url.scheme == "tcp":
            listeners = await open_tcp(url)
            for listener in listeners:
                host, port = listener.socket.getsockname()[:2]
                self._announce(f"tcp://{_fmt_host(host)}:{port}")
            nursery.start_soon(partial(trio.serve_listeners, self._serve_socket, listeners))
        elif url.scheme == "unix":
            listener = await open_unix(url)
            self._unix_paths.append(url.path)
            self._announce(f"unix://{url.path}")
            nursery.start_soon(partial(trio.serve_listeners, self._serve_socket, [listener]))
        elif url.scheme == "tls":
            assert self.ssl_context is not None
            listeners = await open_tcp(url)
            for listener in listeners:
                host, port = listener.socket.getsockname()[:2]
                self._announce(f"tls://{_fmt_host(host)}:{port}")
            # Each connection handshakes in its own task, then is routed as on tcp://.
            serve_tls = after_handshake(self._serve_socket)
            tls_listeners = wrap_listeners(listeners, self.ssl_context)
            nursery.start_soon(partial(trio.serve_listeners, serve_tls, tls_listeners))
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
            nursery.start_soon(
                partial(trio.serve_listeners, after_handshake(serve_ws), wss_listeners)
            )
        else:
            ws_server = await nursery.start(
                partial(
                    serve_websocket,
                    self._serve_websocket,
                    url.host or None,
                    url.port,
                    ssl_context=None,
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
            serve_https = after_handshake(self.http.serve)
            https_listeners = wrap_listeners(listeners, self.ssl_context)
            nursery.start_soon(partial(trio.serve_listeners, serve_https, https_listeners))
        else:
            nursery.start_soon(partial(trio.serve_listeners, self.http.serve, listeners))

    def _announce(self, url: str) -> None:
        self.bound.append(url)
        log.info("listening on %s", url)

    async def _serve_socket(
        self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    ) -> None:
        raw = stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        try:
            peer = raw.socket.getpeername()
        except OSError:
            peer = "?"
        name = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else f"unix:{peer or 'peer'}"
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
            await self.http.serve(stream, first)
        else:
            frames = ByteFrameStream(stream, name, initial=first)
            await ServerSideConnection(self._conn_context, frames).serve()

    async def _serve_websocket(self, request: WebSocketRequest) -> None:
        ws = await request.accept()
        remote = ws.remote
        name = f"ws:{getattr(remote, 'address', remote)}:{getattr(remote, 'port', '')}"
        await ServerSideConnection(self._conn_context, WebSocketFrameStream(ws, name)).serve()


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
