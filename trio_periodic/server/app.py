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
    parse_listen_url,
)
from trio_periodic.transport.streams import RECEIVE_SIZE, ByteFrameStream, WebSocketFrameStream

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
        url = parse_listen_url(f"tcp://{address}" if "://" not in address else address)
        listeners = await open_tcp(ListenURL("tcp", url.host, url.port))
        for listener in listeners:
            host, port = listener.socket.getsockname()[:2]
            self._announce(f"http://{_fmt_host(host)}:{port}")
        nursery.start_soon(partial(trio.serve_listeners, self.http.serve, listeners))

    def _announce(self, url: str) -> None:
        self.bound.append(url)
        log.info("listening on %s", url)

    async def _serve_socket(self, stream: trio.SocketStream) -> None:
        try:
            peer = stream.socket.getpeername()
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
