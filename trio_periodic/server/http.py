"""The HTTP API: the seed README's curl interface, the bridge routes, metrics.

Theory of operation
-------------------
HTTP/1.1 is parsed by h11 (sans-I/O, like our own protocol package); this
module only routes.  Every route is a thin call into the scheduler core,
followed by the same commit-before-reply rule as the binary protocol: a
submit answers 200 only once the job is durable in the store.

Routes (paths are percent-decoded; a query string is never part of a name):

=========================================  ===================================
``GET /``                                  stats of every function (JSON)
``GET /<func>``                            stats of one function, ``{}`` if unknown
``POST /`` or ``POST /<func>``             submit (form ``func,name,args,timeout,sched_at``),
                                           or remove with ``act=remove``
``DELETE /<func>``                         drop a function that has no worker
``GET /periodic/status/``                  raw STATUS text (periodic-http-bridge)
``POST /periodic/submit/<func>/<name>/``   body = workload; ``?sched_at=&timeout=``
``POST /periodic/run/<func>/<name>/``      run and wait for the result
``POST /periodic/remove/<func>/<name>/``   remove
``POST /periodic/drop/<func>/``            drop
``GET /metrics``                           Prometheus text format
``GET /api/status``                        JSON list for scripts
``GET /api/overview``                      functions, workers, totals and rates (JSON)
``GET /api/funcs``                         one row per function (JSON)
``GET /api/funcs/<func>``                  one function's row (JSON)
``GET /api/funcs/<func>/jobs``             a page of a function's jobs (JSON)
``GET /api/workers``                       the worker connections (JSON)
``GET /api/throughput``                    events per second over the last minutes
``GET /api/events``                        the overview once a second (server-sent events)
``POST /api/funcs/<func>/jobs/<name>/run`` make a pending job due now
``DELETE /api/funcs/<func>/jobs/<name>``   remove a job
``DELETE /api/funcs/<func>``               drop a function that has no worker
``GET /api/schedules``                     the schedules kept by the server (JSON)
``PUT /api/schedules/<func>/<name>``       add or replace a schedule (JSON body)
``DELETE /api/schedules/<func>/<name>``    remove a schedule
``GET /dashboard``                         the live dashboard (one page, no assets)
``GET /periodic.js``, ``/periodic.d.ts``   the browser / Node client module and its types
=========================================  ===================================

Browsers: the client module is public and cross-origin (``*``).  The rest
answers CORS, preflights included, only for the origins in ``cors``
(``--http-cors``); a request that changes something and carries an
``Origin`` that is neither the server's own nor listed is refused (403)
before anything else, so that no other web page can make a visitor's
browser submit or delete jobs.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

import h11
import trio

from trio_periodic.protocol.constants import Cmd
from trio_periodic.protocol.frames import decode_body
from trio_periodic.protocol.job import Job
from trio_periodic.protocol.packets import Data
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.service import SchedulerService
from trio_periodic.server import dashboard
from trio_periodic.server.auth import AuthFile, Identity, permits
from trio_periodic.server.ops import retry as retry_ops
from trio_periodic.server.ops.base import OpContext, OpError, describe_worker
from trio_periodic.server.ops.table import lookup
from trio_periodic.server.origins import OriginPolicy, same_origin
from trio_periodic.store.base import StoreError

log = logging.getLogger(__name__)

#: Largest request body accepted (bytes); the server passes its frame limit.
MAX_BODY = 64 * 1024 * 1024
#: Largest request line + headers (bytes); longer answers 431.
MAX_HEAD = 64 * 1024
RECEIVE_SIZE = 64 * 1024
#: How long an idle keep-alive HTTP connection stays open (seconds).
IDLE_TIMEOUT = 60
#: Seconds a request may take to arrive once its first byte has (slowloris guard).
REQUEST_TIMEOUT = 30
#: The challenge sent with 401 when an auth file is in force.
AUTH_CHALLENGE = ("WWW-Authenticate", 'Basic realm="periodic"')
#: Routes anyone may fetch, from any origin, auth file or not: the client
#: library's code and its types, no data.
PUBLIC_ROUTES = frozenset({b"/periodic.js", b"/periodic.d.ts"})
#: Methods that change nothing (no cross-origin check).
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
#: What a listed origin may send (answer to a CORS preflight).
CORS_METHODS = "GET, POST, PUT, DELETE"
CORS_HEADERS = "Authorization, Content-Type, Last-Event-ID"
#: Seconds a browser may cache a preflight answer.
CORS_MAX_AGE = "600"
#: Seconds between two server-sent events of /api/events.
EVENT_INTERVAL = 1.0
#: Seconds of throughput history the overview carries unless asked otherwise.
DEFAULT_HISTORY = 300
#: First bytes of a request that mark a connection on the binary port as HTTP.
HTTP_PREFIXES = (b"GET ", b"POST", b"PUT ", b"DELE", b"HEAD", b"OPTI", b"PATC")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: A streamed body (server-sent events): its chunks are sent as they come.
    stream: Callable[[], AsyncIterator[bytes]] | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: with an auth file, the identity of its Basic credentials."""

    #: None when no auth file is in force (every caller is trusted, as before).
    identity: Identity | None = None

    @property
    def visible(self) -> frozenset[bytes] | None:
        """The functions this caller may see, or None for all."""
        identity = self.identity
        return None if identity is None or identity.is_admin else identity.funcs

    def require(self, cmd: Cmd, *funcs: bytes) -> None:
        """Raise 403 unless the caller may do ``cmd`` on ``funcs`` (binary rules)."""
        if self.identity is not None and not permits(self.identity, cmd, set(funcs)):
            what = ", ".join(_text(f) for f in funcs) or "this"
            raise HttpError(403, f"{_text(self.identity.name)} may not {cmd.name} {what}")


def _json(status: int, obj: Any) -> Response:
    return Response(status, json.dumps(obj).encode())


def _error(status: int, message: str) -> Response:
    return _json(status, {"err": message})


def _ok() -> Response:
    return _json(200, {"msg": "SUCCESS"})


def _text(name: bytes) -> str:
    return name.decode("utf-8", errors="backslashreplace")


def _text_arg(name: bytes) -> str:
    """A name from the URL as an operation's argument (bytes survive the trip)."""
    return name.decode("utf-8", "surrogateescape")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _raw_response(response: Response) -> bytes:
    """A whole response that closes the connection, without h11's state machine."""
    reason = _REASONS.get(response.status, "Error")
    head = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + response.body


_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
}


class _Refused(Exception):
    """A request refused before it was read whole: answer, then close."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


def _header(request: h11.Request, name: bytes) -> bytes | None:
    return next((value for key, value in request.headers if key == name), None)


def _is_preflight(request: h11.Request, origin: bytes | None) -> bool:
    return (
        request.method == b"OPTIONS"
        and origin is not None
        and _header(request, b"access-control-request-method") is not None
    )


def _query_int(query: dict[bytes, list[bytes]], key: bytes, default: int = 0) -> int:
    """An integer from a query string or form (``default`` when absent or blank)."""
    raw = query.get(key, [b""])[0].strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise HttpError(400, f"{key.decode()} must be an integer, got {_text(raw)!r}") from None


class HttpApi:
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

    # -------------------------------------------------------------- serving

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
                        response = await self.route(
                            request.method, request.target, body, caller
                        )
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

    # ----------------------------------------------------------------- CORS

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

    # ----------------------------------------------------------------- auth

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

    # -------------------------------------------------------------- routing

    async def route(
        self, method: bytes, target: bytes, body: bytes, caller: Caller | None = None
    ) -> Response:
        caller = caller or Caller()
        url = urlsplit(target)
        path = url.path
        query = parse_qs(url.query, keep_blank_values=True)
        parts = [unquote_to_bytes(p) for p in path.split(b"/")[1:]]
        if parts and parts[-1] == b"":
            parts.pop()
        handler = self._static_routes.get((method, path))
        if handler is not None:
            response: Response = await handler(self, query, body, caller)
            return response
        if parts and parts[0] == b"periodic" and len(parts) >= 2:
            return await self._bridge(method, parts[1:], query, body, caller)
        if len(parts) >= 3 and parts[0] == b"api" and parts[1] == b"funcs":
            return await self._api_func(method, parts[2:], query, body, caller)
        if len(parts) >= 2 and parts[0] == b"api" and parts[1] == b"failed":
            return await self._api_failed(method, parts[2:], query, caller)
        if len(parts) >= 2 and parts[0] == b"api" and parts[1] == b"schedules":
            return await self._api_schedules(method, parts[2:], body, caller)
        if len(parts) > 1:
            raise HttpError(404, "no such route")
        func = parts[0] if parts else b""
        if method in (b"GET", b"HEAD"):
            return self._stats(func, caller)
        if method == b"POST":
            form = parse_qs(body, keep_blank_values=True) if body else {}
            for key, values in query.items():
                form.setdefault(key, values)
            return await self._form_post(func, form, caller)
        if method == b"DELETE":
            if not func:
                raise HttpError(400, "func is required")
            caller.require(Cmd.DROP_FUNC, func)
            return await self._drop(func)
        raise HttpError(405, "method not allowed")

    def _stats(self, func: bytes, caller: Caller) -> Response:
        visible = caller.visible
        if func and visible is not None and func not in visible:
            raise HttpError(403, f"{_text(func)} is not among this identity's functions")
        rows = {
            row.func: row
            for row in self.core.status_rows(self.service.clock.now())
            if visible is None or row.func in visible
        }

        def one(row: Any) -> dict[str, Any]:
            return {
                "func_name": _text(row.func),
                "total_worker": row.workers,
                "total_job": row.jobs,
                "processing": row.processing,
                "locked": row.locked,
                "sched_at": row.sched_at,
            }

        if func:
            return _json(200, one(rows[func]) if func in rows else {})
        return _json(200, {_text(name): one(row) for name, row in rows.items()})

    async def _form_post(
        self, path_func: bytes, form: dict[bytes, list[bytes]], caller: Caller
    ) -> Response:
        func = path_func or form.get(b"func", [b""])[0]
        name = form.get(b"name", [b""])[0]
        if not func or not name:
            raise HttpError(400, "job name or func is required")
        if form.get(b"act", [b""])[0].lower() == b"remove":
            caller.require(Cmd.REMOVE_JOB, func)
            if self.core.entry(func, name) is None:
                raise HttpError(404, f"Job {_text(func)}:{_text(name)} not exists.")
            self.core.remove_job(func, name)
            await self._commit()
            return _ok()
        job = Job(
            func,
            name,
            form.get(b"args", [b""])[0],
            sched_at=_query_int(form, b"sched_at"),
            timeout=_query_int(form, b"timeout"),
        )
        self._check_names(job)
        caller.require(Cmd.SUBMIT_JOB, func)
        self.core.submit(job, self.service.clock.now())
        await self._commit()
        return _ok()

    def _check_names(self, job: Job) -> None:
        if len(job.func) > 255 or len(job.name) > 255:
            raise HttpError(400, "func and name are limited to 255 bytes")

    async def _drop(self, func: bytes) -> Response:
        if self.core.worker_count(func):
            raise HttpError(409, f"func {_text(func)} has workers; it cannot be dropped")
        self.core.drop_func(func)
        await self._commit()
        return _ok()

    async def _op(self, name: str, args: dict[str, Any], caller: Caller) -> Response:
        """Run operation ``name`` of ``server/ops`` for ``caller``; its result as
        JSON, committed to the store first when it changes anything."""
        ctx = OpContext(self.core, self._now(), caller.identity, describe_worker)
        try:
            op = lookup(ctx, name)
            result = op.handler(ctx, args)
        except OpError as exc:
            raise HttpError(exc.status, exc.message) from None
        if op.writes:
            await self._commit()
        return _json(200, result)

    async def _commit(self) -> None:
        service = self.service
        effects, changes = service.finish_batch()
        await service.commit(changes)
        await service.publish(effects)

    # --------------------------------------------------- periodic-http-bridge

    async def _bridge(
        self,
        method: bytes,
        parts: list[bytes],
        query: dict[bytes, list[bytes]],
        body: bytes,
        caller: Caller,
    ) -> Response:
        action = parts[0]
        if method == b"GET" and action == b"status" and len(parts) == 1:
            text = self.core.status(self.service.clock.now(), caller.visible)
            return Response(200, text, "text/plain; charset=utf-8")
        if method != b"POST":
            raise HttpError(405, "method not allowed")
        if action == b"submit" and len(parts) == 3:
            job = Job(
                parts[1],
                parts[2],
                body,
                _query_int(query, b"sched_at"),
                0,
                _query_int(query, b"timeout"),
            )
            self._check_names(job)
            caller.require(Cmd.SUBMIT_JOB, job.func)
            self.core.submit(job, self.service.clock.now())
            await self._commit()
            return Response(204)
        if action == b"run" and len(parts) == 3:
            job = Job(parts[1], parts[2], body, 0, 0, _query_int(query, b"timeout"))
            self._check_names(job)
            caller.require(Cmd.RUN_JOB, job.func)
            return await self._run(job)
        if action == b"remove" and len(parts) == 3:
            caller.require(Cmd.REMOVE_JOB, parts[1])
            self.core.remove_job(parts[1], parts[2])
            await self._commit()
            return Response(204)
        if action == b"drop" and len(parts) == 2:
            caller.require(Cmd.DROP_FUNC, parts[1])
            self.core.drop_func(parts[1])
            await self._commit()
            return Response(204)
        raise HttpError(404, "no such route")

    async def _run(self, job: Job) -> Response:
        send, receive = trio.open_memory_channel[bytes](1)
        sink = _ResultSink(send.send_nowait)
        waiter = self.core.connect(is_worker=False, sink=sink)
        try:
            if not self.core.run_job(waiter, 1, job, self.service.clock.now()):
                return Response(500, b"Error: no worker for this function", "text/plain")
            await self._commit()
            with trio.move_on_after((job.timeout or 60) + 5):
                result = await receive.receive()
                return Response(200, result, "application/octet-stream")
            return Response(504, b"Error: timed out waiting for the result", "text/plain")
        finally:
            waiter.closed = True

    # ------------------------------------------------------ metrics, UI, JS

    def _visible_rows(self, caller: Caller) -> list[Any]:
        rows = self.core.status_rows(self.service.clock.now())
        visible = caller.visible
        return rows if visible is None else [row for row in rows if row.func in visible]

    async def _metrics(self, query: Any, body: bytes, caller: Caller) -> Response:
        core = self.core
        rows = self._visible_rows(caller)
        lines = []
        for metric, help_text, attr in (
            ("periodic_workers", "Worker connections registered for the function.", "workers"),
            ("periodic_jobs", "Jobs stored for the function, in any state.", "jobs"),
            ("periodic_jobs_processing", "Jobs held by workers.", "processing"),
            ("periodic_jobs_locked", "Jobs parked on a lock.", "locked"),
        ):
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
            for row in rows:
                label = json.dumps(_text(row.func))
                lines.append(f"{metric}{{func={label}}} {getattr(row, attr)}")
        for key, value in core.counters.items():
            metric = f"periodic_jobs_{key}_total"
            lines += [f"# TYPE {metric} counter", f"{metric} {value}"]
        visible = caller.visible
        for metric, help_text, totals in (
            ("periodic_retries_total", "Failed jobs scheduled to run again.", core.retried),
            ("periodic_failed_total", "Jobs moved to the failed set.", core.failed_total),
        ):
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
            for func in sorted(totals):
                if visible is None or func in visible:
                    lines.append(f"{metric}{{func={json.dumps(_text(func))}}} {totals[func]}")
        if core.schedules.entries:
            lines += _schedule_metrics(core, visible)
        return Response(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")

    async def _api_status(self, query: Any, body: bytes, caller: Caller) -> Response:
        rows = self._visible_rows(caller)
        return _json(200, [{**row._asdict(), "func": _text(row.func)} for row in rows])

    # ------------------------------------------------------------ dashboard

    def _now(self) -> float:
        return self.service.clock.now()

    def _overview(self, caller: Caller, seconds: int) -> dict[str, Any]:
        now = self._now()
        visible = caller.visible
        series = self.service.throughput.series(seconds, dashboard.CHART_KINDS)
        return {
            "now": now,
            "draining": self.core.draining,
            "funcs": dashboard.funcs_view(self.core, now, visible),
            "workers": dashboard.workers_view(self.core, now, describe_worker, visible),
            "totals": dict(self.core.counters),
            "throughput": series.as_json(),
            "retry": retry_ops.overview(self.core, visible),
        }

    async def _api_overview(self, query: Any, body: bytes, caller: Caller) -> Response:
        return _json(200, self._overview(caller, _query_int(query, b"seconds", DEFAULT_HISTORY)))

    async def _api_funcs(self, query: Any, body: bytes, caller: Caller) -> Response:
        return _json(200, dashboard.funcs_view(self.core, self._now(), caller.visible))

    async def _api_workers(self, query: Any, body: bytes, caller: Caller) -> Response:
        now = self._now()
        return _json(200, dashboard.workers_view(self.core, now, describe_worker, caller.visible))

    async def _api_throughput(self, query: Any, body: bytes, caller: Caller) -> Response:
        seconds = _query_int(query, b"seconds", DEFAULT_HISTORY)
        kinds = [k.decode() for k in query.get(b"kind", [])] or None
        return _json(200, self.service.throughput.series(seconds, kinds).as_json())

    async def _api_events(self, query: Any, body: bytes, caller: Caller) -> Response:
        """The overview as server-sent events, once a second, until the client leaves."""
        seconds = _query_int(query, b"seconds", DEFAULT_HISTORY)

        async def events() -> AsyncIterator[bytes]:
            yield b"retry: 2000\n\n"
            while True:
                data = json.dumps(self._overview(caller, seconds))
                yield f"event: overview\ndata: {data}\n\n".encode()
                await trio.sleep(EVENT_INTERVAL)

        return Response(200, content_type="text/event-stream; charset=utf-8", stream=events)

    async def _api_func(
        self,
        method: bytes,
        parts: list[bytes],
        query: dict[bytes, list[bytes]],
        body: bytes,
        caller: Caller,
    ) -> Response:
        """``/api/funcs/<func>[/jobs[/<name>[/run|/explain]]|/retry]``."""
        func, rest = parts[0], parts[1:]
        if rest == [b"retry"]:
            return await self._api_retry(method, func, body, caller)
        if method == b"DELETE" and not rest:
            caller.require(Cmd.DROP_FUNC, func)
            if func not in self.core.funcs:
                raise HttpError(404, f"no function {_text(func)}")
            return await self._drop(func)
        visible = caller.visible
        if method == b"GET" and not rest:
            if visible is not None and func not in visible:
                raise HttpError(403, f"{_text(func)} is not among this identity's functions")
            fs = self.core.funcs.get(func)
            if fs is None:
                raise HttpError(404, f"no function {_text(func)}")
            return _json(200, dashboard.func_row(fs, self._now()))
        if not rest or rest[0] != b"jobs" or len(rest) > 3:
            raise HttpError(404, "no such route")
        if len(rest) == 1:
            if method != b"GET":
                raise HttpError(405, "method not allowed")
            if visible is not None and func not in visible:
                raise HttpError(403, f"{_text(func)} is not among this identity's functions")
            state = query.get(b"state", [b""])[0].decode("latin-1") or None
            if state not in (None, *dashboard.JOB_STATES):
                raise HttpError(400, f"state must be one of {', '.join(dashboard.JOB_STATES)}")
            page = dashboard.jobs_view(
                self.core,
                func,
                self._now(),
                describe_worker,
                offset=_query_int(query, b"offset", 0),
                limit=_query_int(query, b"limit", 50),
                state=state,
            )
            if page is None:
                raise HttpError(404, f"no function {_text(func)}")
            return _json(200, page)
        name = rest[1]
        if len(rest) == 2 and method == b"DELETE":
            caller.require(Cmd.REMOVE_JOB, func)
            if self.core.entry(func, name) is None:
                raise HttpError(404, f"Job {_text(func)}:{_text(name)} not exists.")
            self.core.remove_job(func, name)
            await self._commit()
            return _ok()
        if len(rest) == 3 and rest[2] == b"explain" and method == b"GET":
            return await self._op("explain", {"func": _text(func), "name": _text(name)}, caller)
        if len(rest) == 3 and rest[2] == b"run" and method == b"POST":
            caller.require(Cmd.SUBMIT_JOB, func)
            if self.core.entry(func, name) is None:
                raise HttpError(404, f"Job {_text(func)}:{_text(name)} not exists.")
            if not self.core.run_now(func, name, self._now()):
                raise HttpError(409, "the job is held by a worker or waits for a lock")
            await self._commit()
            return _ok()
        raise HttpError(405 if len(rest) in (2, 3) else 404, "method not allowed")

    # ------------------------------------------- retry policies, failed set

    async def _api_retry(self, method: bytes, func: bytes, body: bytes, caller: Caller) -> Response:
        """``GET|PUT|DELETE /api/funcs/<func>/retry``: the function's retry policy
        (PUT: a JSON object of max_attempts, backoff, base, cap, jitter)."""
        name = {b"GET": "retry_get", b"PUT": "retry_set", b"DELETE": "retry_clear"}.get(method)
        if name is None:
            raise HttpError(405, "method not allowed")
        args: dict[str, Any] = {}
        if method == b"PUT" and body.strip():
            try:
                args = json.loads(body)
            except ValueError:
                raise HttpError(400, "the body is not JSON") from None
            if not isinstance(args, dict):
                raise HttpError(400, "the body must be a JSON object")
        return await self._op(name, {**args, "func": _text_arg(func)}, caller)

    async def _api_failed(
        self, method: bytes, parts: list[bytes], query: dict[bytes, list[bytes]], caller: Caller
    ) -> Response:
        """``GET /api/failed[?func=F]``, ``POST /api/failed/<func>/<name>/retry``,
        ``DELETE /api/failed/<func>[/<name>]``."""
        if not parts and method == b"GET":
            func = query.get(b"func", [b""])[0]
            args: dict[str, Any] = {"func": _text_arg(func)} if func else {}
            return await self._op("failed_list", args, caller)
        if len(parts) == 3 and parts[2] == b"retry" and method == b"POST":
            args = {"func": _text_arg(parts[0]), "names": [_text_arg(parts[1])]}
            return await self._op("failed_retry", args, caller)
        if len(parts) in (1, 2) and method == b"DELETE":
            args = {"func": _text_arg(parts[0])}
            if len(parts) == 2:
                args["names"] = [_text_arg(parts[1])]
            return await self._op("failed_purge", args, caller)
        raise HttpError(404, "no such route")

    # ------------------------------------------------------------ schedules

    async def _api_schedules(
        self, method: bytes, rest: list[bytes], body: bytes, caller: Caller
    ) -> Response:
        """``/api/schedules[/<func>/<name>]``: the ``schedule_*`` operations."""
        if not rest:
            if method != b"GET":
                raise HttpError(405, "method not allowed")
            return await self._op("schedule_list", {}, caller)
        if len(rest) != 2:
            raise HttpError(404, "no such route")
        handle = {"func": _text_arg(rest[0]), "name": _text_arg(rest[1])}
        if method == b"DELETE":
            return await self._op("schedule_remove", handle, caller)
        if method != b"PUT":
            raise HttpError(405, "method not allowed")
        try:
            args = json.loads(body or b"{}")
        except ValueError:
            raise HttpError(400, "the body must be a JSON object") from None
        if not isinstance(args, dict):
            raise HttpError(400, "the body must be a JSON object")
        return await self._op("schedule_add", {**args, **handle}, caller)

    # ------------------------------------------------------------ assets

    async def _asset(
        self, name: str, content_type: str, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        data = resources.files("trio_periodic").joinpath("static", name).read_bytes()
        return Response(200, data, content_type, headers or [])

    async def _dashboard(self, query: Any, body: bytes, caller: Caller) -> Response:
        return await self._asset("dashboard.html", "text/html; charset=utf-8")

    async def _javascript(self, query: Any, body: bytes, caller: Caller) -> Response:
        # Deno (and editors that honour it) find the types through this header.
        types = [("X-TypeScript-Types", "./periodic.d.ts")]
        return await self._asset("periodic.js", "text/javascript; charset=utf-8", types)

    async def _typescript(self, query: Any, body: bytes, caller: Caller) -> Response:
        return await self._asset("periodic.d.ts", "application/typescript; charset=utf-8")

    _static_routes: dict[tuple[bytes, bytes], Callable[..., Any]] = {
        (b"GET", b"/metrics"): _metrics,
        (b"GET", b"/api/status"): _api_status,
        (b"GET", b"/api/overview"): _api_overview,
        (b"GET", b"/api/funcs"): _api_funcs,
        (b"GET", b"/api/workers"): _api_workers,
        (b"GET", b"/api/throughput"): _api_throughput,
        (b"GET", b"/api/events"): _api_events,
        (b"GET", b"/dashboard"): _dashboard,
        (b"GET", b"/periodic.js"): _javascript,
        (b"GET", b"/periodic.d.ts"): _typescript,
    }


def _schedule_metrics(core: Scheduler, visible: frozenset[bytes] | None) -> list[str]:
    """Per schedule, the ticks this server fired and skipped (each server
    counts its own: sum them over a cluster)."""
    entries = core.schedules.rows(visible)
    lines: list[str] = []
    for metric, help_text, attr in (
        ("periodic_schedule_fires_total", "Jobs this server submitted for the schedule.",
         "local_fired"),
        ("periodic_schedule_skipped_total", "Ticks this server skipped (the job was still"
         " pending or running).", "local_skipped"),
    ):  # fmt: skip
        lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
        for e in entries:
            labels = f"func={json.dumps(_text(e.row.func))},name={json.dumps(_text(e.row.name))}"
            lines.append(f"{metric}{{{labels}}} {getattr(e, attr)}")
    return lines


class _ResultSink:
    """Receives the RUN_JOB result frame for an HTTP waiter."""

    def __init__(self, deliver: Callable[[bytes], None]) -> None:
        self._deliver = deliver

    def flush_eagerly(self) -> bool:
        return False

    def push_frame(self, frame: bytes) -> None:
        _, packet = decode_body(frame[12:])
        if isinstance(packet, Data):
            try:
                self._deliver(packet.data)
            except trio.WouldBlock:
                pass
