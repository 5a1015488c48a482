"""The HTTP listener's connections: h11 parsing, limits, CORS and auth.

Theory of operation
-------------------
HTTP/1.1 is parsed by h11 (sans-I/O, like our own protocol package).  A
connection serves requests one after another (keep-alive) under an idle
limit; a request must arrive whole within REQUEST_TIMEOUT of its first byte,
its head within MAX_HEAD bytes and its body within ``max_body`` (else 408,
431, 413 and the connection closes).  Before routing, a request that changes
something from a foreign origin is refused, and with an auth file the
caller's Basic credentials become its identity.  Routing and the routes are
in the base classes (``routes.py``, ``api_routes.py``).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import h11
import trio

from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.service import SchedulerService
from trio_periodic.server.auth import AuthFile
from trio_periodic.server.http.messages import (
    AUTH_CHALLENGE,
    CORS_HEADERS,
    CORS_MAX_AGE,
    CORS_METHODS,
    IDLE_TIMEOUT,
    MAX_BODY,
    MAX_HEAD,
    PUBLIC_ROUTES,
    RECEIVE_SIZE,
    REQUEST_TIMEOUT,
    SAFE_METHODS,
    Caller,
    HttpError,
    Response,
    _error,
    _header,
    _is_preflight,
    _raw_response,
    _Refused,
    log,
)
from trio_periodic.server.http.routes import Routes
from trio_periodic.server.origins import OriginPolicy, same_origin
from trio_periodic.store.base import StoreError


class HttpApi(Routes):
    def __init__(
        self,
        service: SchedulerService,
        *,
        auth: AuthFile | None = None,
        max_body: int = MAX_BODY,
        cors: OriginPolicy | None = None,
    ) -> None:
        self.service = service
        self.core: Scheduler = service.core
        #: With an auth file every request but PUBLIC_ROUTES needs Basic credentials.
        self.auth = auth
        self.max_body = max_body
        #: Origins whose pages may call the API from a browser (--http-cors).
        self.cors = cors if cors is not None else OriginPolicy()

    async def serve(self, stream: trio.abc.Stream, initial: bytes = b"", peer: str = "?") -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        if initial:
            conn.receive_data(initial)
        try:
            while True:
                try:
                    request, body = await self._read_request(conn, stream)
                except _Refused as exc:
                    # Written raw: after a bad head h11 has no request to answer.
                    await stream.send_all(_raw_response(exc.response))
                    return
                if request is None:
                    return
                origin = _header(request, b"origin")
                try:
                    self._check_origin(request, origin)
                    if _is_preflight(request, origin):
                        response = self._preflight(request, origin)
                    else:
                        caller = self._authenticate(request, peer)
                        response = await self.route(request.method, request.target, body, caller)
                except HttpError as exc:
                    response = _error(exc.status, str(exc))
                    if exc.status == 401:
                        response.headers.append(AUTH_CHALLENGE)
                except StoreError as exc:
                    log.error("store error in HTTP request: %s", exc)
                    response = _error(503, f"store unavailable: {exc}")
                response.headers += self._cors_headers(request, origin)
                await self._send(conn, stream, response)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("HTTP connection ended: %s", exc)
        finally:
            await trio.aclose_forcefully(stream)

    def _check_origin(self, request: h11.Request, origin: bytes | None) -> None:
        """Refuse a change asked by a page of a foreign, unlisted origin."""
        if origin is None or request.method in SAFE_METHODS:
            return
        if same_origin(origin, _header(request, b"host")) or self.cors.allows(origin):
            return
        raise HttpError(
            403, f"requests from {origin.decode('latin-1')} are not allowed (see --http-cors)"
        )

    def _preflight(self, request: h11.Request, origin: bytes | None) -> Response:
        """Answer a CORS preflight: 204 for a listed origin (headers added by
        _cors_headers), 403 for any other."""
        path = urlsplit(request.target).path
        if path in PUBLIC_ROUTES or (self.cors and self.cors.allows(origin)):
            return Response(204, content_type="text/plain")
        raise HttpError(403, "origin not allowed (see --http-cors)")

    def _cors_headers(self, request: h11.Request, origin: bytes | None) -> list[tuple[str, str]]:
        if urlsplit(request.target).path in PUBLIC_ROUTES:
            headers = [("Access-Control-Allow-Origin", "*")]
            if request.method == b"OPTIONS":
                headers.append(("Access-Control-Allow-Methods", "GET"))
            return headers
        if origin is None or not self.cors or not self.cors.allows(origin):
            return []
        headers = [
            ("Access-Control-Allow-Origin", origin.decode("latin-1")),
            ("Access-Control-Allow-Credentials", "true"),
            ("Vary", "Origin"),
        ]
        if request.method == b"OPTIONS":
            headers += [
                ("Access-Control-Allow-Methods", CORS_METHODS),
                ("Access-Control-Allow-Headers", CORS_HEADERS),
                ("Access-Control-Max-Age", CORS_MAX_AGE),
            ]
        return headers

    def _authenticate(self, request: h11.Request, peer: str) -> Caller:
        if self.auth is None:
            return Caller()
        header = _header(request, b"authorization")
        identity = self.auth.identify_basic(header)
        if identity is not None:
            return Caller(identity)
        if urlsplit(request.target).path in PUBLIC_ROUTES:
            return Caller()
        why = "no credentials" if header is None else "unknown name or wrong token"
        self.auth.failures.note("http", peer, why)
        raise HttpError(401, "authentication required (Basic NAME:TOKEN from the auth file)")

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream
    ) -> tuple[h11.Request | None, bytes]:
        """The next request and its body; (None, b"") when the peer is done or idle.

        The idle wait before a request is IDLE_TIMEOUT; once its first byte is
        in, the whole request has REQUEST_TIMEOUT to arrive (a client trickling
        bytes cannot hold the connection forever).  Raises _Refused with the
        answer for a head or body over the limits or a request too slow."""
        request: h11.Request | None = None
        chunks: list[bytes] = []
        size = 0
        deadline = math.inf
        if conn.trailing_data[0]:
            deadline = trio.current_time() + REQUEST_TIMEOUT
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                raise _Refused(_error(status, f"bad request: {exc}")) from None
            if event is h11.NEED_DATA:
                timeout = IDLE_TIMEOUT if deadline == math.inf else deadline - trio.current_time()
                with trio.move_on_after(max(timeout, 0)):
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if deadline == math.inf:
                        deadline = trio.current_time() + REQUEST_TIMEOUT
                    conn.receive_data(bytes(data))
                    continue
                if deadline == math.inf:
                    return None, b""
                raise _Refused(_error(408, f"request not complete within {REQUEST_TIMEOUT} s"))
            if isinstance(event, h11.Request):
                request = event
                length = _header(event, b"content-length") or b"0"
                if int(length) > self.max_body:
                    raise _Refused(_error(413, f"request body over {self.max_body} bytes"))
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_body:
                    raise _Refused(_error(413, f"request body over {self.max_body} bytes"))
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return request, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _send(
        self, conn: h11.Connection, stream: trio.abc.Stream, response: Response
    ) -> None:
        if response.stream is not None:
            await self._send_stream(conn, stream, response, response.stream)
            return
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Server", "trio-periodic"),
            *response.headers,
        ]
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        data += conn.send(h11.Data(data=response.body)) if response.body else b""
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)

    async def _send_stream(
        self,
        conn: h11.Connection,
        stream: trio.abc.Stream,
        response: Response,
        chunks: Callable[[], AsyncIterator[bytes]],
    ) -> None:
        """A body of unknown length (chunked): each chunk leaves as it comes."""
        headers = [
            ("Content-Type", response.content_type),
            ("Cache-Control", "no-store"),
            ("Server", "trio-periodic"),
            *response.headers,
        ]
        await stream.send_all(conn.send(h11.Response(status_code=response.status, headers=headers)))
        async for chunk in chunks():
            await stream.send_all(conn.send(h11.Data(data=chunk)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
