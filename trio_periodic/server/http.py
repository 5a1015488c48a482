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
``GET /api/status``                        JSON list for scripts and the dashboard
``GET /dashboard``                         a small live status page
``GET /periodic.js``                       the browser / Node WebSocket client module
=========================================  ===================================
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

import h11
import trio

from trio_periodic.protocol.frames import decode_body
from trio_periodic.protocol.job import Job
from trio_periodic.protocol.packets import Data
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.service import SchedulerService
from trio_periodic.store.base import StoreError

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024
RECEIVE_SIZE = 64 * 1024
#: How long an idle keep-alive HTTP connection stays open (seconds).
IDLE_TIMEOUT = 60
#: First bytes of a request that mark a connection on the binary port as HTTP.
HTTP_PREFIXES = (b"GET ", b"POST", b"PUT ", b"DELE", b"HEAD", b"OPTI", b"PATC")


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"


def _json(status: int, obj: Any) -> Response:
    return Response(status, json.dumps(obj).encode())


def _error(status: int, message: str) -> Response:
    return _json(status, {"err": message})


def _ok() -> Response:
    return _json(200, {"msg": "SUCCESS"})


def _text(name: bytes) -> str:
    return name.decode("utf-8", errors="backslashreplace")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _int_field(form: dict[bytes, list[bytes]], key: bytes) -> int:
    raw = form.get(key, [b""])[0].strip()
    if not raw:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise HttpError(400, f"{key.decode()} must be an integer, got {_text(raw)!r}") from None


class HttpApi:
    def __init__(self, service: SchedulerService) -> None:
        self.service = service
        self.core: Scheduler = service.core

    # -------------------------------------------------------------- serving

    async def serve(self, stream: trio.abc.Stream, initial: bytes = b"") -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        if initial:
            conn.receive_data(initial)
        try:
            while True:
                request, body = await self._read_request(conn, stream)
                if request is None:
                    return
                try:
                    response = await self.route(request.method, request.target, body)
                except HttpError as exc:
                    response = _error(exc.status, str(exc))
                except StoreError as exc:
                    log.error("store error in HTTP request: %s", exc)
                    response = _error(503, f"store unavailable: {exc}")
                await self._send(conn, stream, response)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("HTTP connection ended: %s", exc)
        finally:
            await trio.aclose_forcefully(stream)

    async def _read_request(
        self, conn: h11.Connection, stream: trio.abc.Stream
    ) -> tuple[h11.Request | None, bytes]:
        request: h11.Request | None = None
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                with trio.move_on_after(IDLE_TIMEOUT):
                    data = await stream.receive_some(RECEIVE_SIZE)
                    conn.receive_data(bytes(data))
                    continue
                return None, b""
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY:
                    await self._send(conn, stream, _error(413, "request body too large"))
                    return None, b""
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return request, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _send(
        self, conn: h11.Connection, stream: trio.abc.Stream, response: Response
    ) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            ("Server", "trio-periodic"),
        ]
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        data += conn.send(h11.Data(data=response.body)) if response.body else b""
        data += conn.send(h11.EndOfMessage())
        await stream.send_all(data)

    # -------------------------------------------------------------- routing

    async def route(self, method: bytes, target: bytes, body: bytes) -> Response:
        url = urlsplit(target)
        path = url.path
        query = parse_qs(url.query, keep_blank_values=True)
        parts = [unquote_to_bytes(p) for p in path.split(b"/")[1:]]
        if parts and parts[-1] == b"":
            parts.pop()
        handler = self._static_routes.get((method, path))
        if handler is not None:
            response: Response = await handler(self, query, body)
            return response
        if parts and parts[0] == b"periodic" and len(parts) >= 2:
            return await self._bridge(method, parts[1:], query, body)
        if len(parts) > 1:
            raise HttpError(404, "no such route")
        func = parts[0] if parts else b""
        if method in (b"GET", b"HEAD"):
            return self._stats(func)
        if method == b"POST":
            form = parse_qs(body, keep_blank_values=True) if body else {}
            for key, values in query.items():
                form.setdefault(key, values)
            return await self._form_post(func, form)
        if method == b"DELETE":
            if not func:
                raise HttpError(400, "func is required")
            return await self._drop(func)
        raise HttpError(405, "method not allowed")

    def _stats(self, func: bytes) -> Response:
        rows = {row.func: row for row in self.core.status_rows(self.service.clock.now())}

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

    async def _form_post(self, path_func: bytes, form: dict[bytes, list[bytes]]) -> Response:
        func = path_func or form.get(b"func", [b""])[0]
        name = form.get(b"name", [b""])[0]
        if not func or not name:
            raise HttpError(400, "job name or func is required")
        if form.get(b"act", [b""])[0].lower() == b"remove":
            if self.core.entry(func, name) is None:
                raise HttpError(404, f"Job {_text(func)}:{_text(name)} not exists.")
            self.core.remove_job(func, name)
            await self._commit()
            return _ok()
        job = Job(
            func,
            name,
            form.get(b"args", [b""])[0],
            sched_at=_int_field(form, b"sched_at"),
            timeout=_int_field(form, b"timeout"),
        )
        self._check_names(job)
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

    async def _commit(self) -> None:
        service = self.service
        effects, changes = service.finish_batch()
        await service.commit(changes)
        await service.publish(effects)

    # --------------------------------------------------- periodic-http-bridge

    async def _bridge(
        self, method: bytes, parts: list[bytes], query: dict[bytes, list[bytes]], body: bytes
    ) -> Response:
        action = parts[0]
        if method == b"GET" and action == b"status" and len(parts) == 1:
            text = self.core.status(self.service.clock.now())
            return Response(200, text, "text/plain; charset=utf-8")
        if method != b"POST":
            raise HttpError(405, "method not allowed")
        if action == b"submit" and len(parts) == 3:
            job = Job(
                parts[1],
                parts[2],
                body,
                _int_field(query, b"sched_at"),
                0,
                _int_field(query, b"timeout"),
            )
            self._check_names(job)
            self.core.submit(job, self.service.clock.now())
            await self._commit()
            return Response(204)
        if action == b"run" and len(parts) == 3:
            job = Job(parts[1], parts[2], body, 0, 0, _int_field(query, b"timeout"))
            self._check_names(job)
            return await self._run(job)
        if action == b"remove" and len(parts) == 3:
            self.core.remove_job(parts[1], parts[2])
            await self._commit()
            return Response(204)
        if action == b"drop" and len(parts) == 2:
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

    async def _metrics(self, query: Any, body: bytes) -> Response:
        core = self.core
        rows = core.status_rows(self.service.clock.now())
        lines = []
        for metric, help_text, field in (
            ("periodic_workers", "Worker connections registered for the function.", "workers"),
            ("periodic_jobs", "Jobs stored for the function, in any state.", "jobs"),
            ("periodic_jobs_processing", "Jobs held by workers.", "processing"),
            ("periodic_jobs_locked", "Jobs parked on a lock.", "locked"),
        ):
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} gauge"]
            for row in rows:
                label = json.dumps(_text(row.func))
                lines.append(f"{metric}{{func={label}}} {getattr(row, field)}")
        for key, value in core.counters.items():
            metric = f"periodic_jobs_{key}_total"
            lines += [f"# TYPE {metric} counter", f"{metric} {value}"]
        return Response(200, ("\n".join(lines) + "\n").encode(), "text/plain; version=0.0.4")

    async def _api_status(self, query: Any, body: bytes) -> Response:
        rows = self.core.status_rows(self.service.clock.now())
        return _json(200, [{**row._asdict(), "func": _text(row.func)} for row in rows])

    async def _asset(self, name: str, content_type: str) -> Response:
        data = resources.files("trio_periodic").joinpath("static", name).read_bytes()
        return Response(200, data, content_type)

    async def _dashboard(self, query: Any, body: bytes) -> Response:
        return await self._asset("dashboard.html", "text/html; charset=utf-8")

    async def _javascript(self, query: Any, body: bytes) -> Response:
        return await self._asset("periodic.js", "text/javascript; charset=utf-8")

    _static_routes: dict[tuple[bytes, bytes], Callable[..., Any]] = {
        (b"GET", b"/metrics"): _metrics,
        (b"GET", b"/api/status"): _api_status,
        (b"GET", b"/dashboard"): _dashboard,
        (b"GET", b"/periodic.js"): _javascript,
    }


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
