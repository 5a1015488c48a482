"""Routing, the seed README's curl interface, the periodic-http-bridge routes,
/metrics and the static assets.

``Routes`` is a base class of ``HttpApi`` (``api.py``); ``route`` maps a
request to its handler: fixed paths through ``_static_routes``, the rest by
their first segments (``/periodic/...``, ``/api/...`` in ``api_routes.py``,
then the seed's ``/`` and ``/<func>``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote_to_bytes, urlsplit

import trio

from trio_periodic.protocol.constants import Cmd
from trio_periodic.protocol.frames import decode_body
from trio_periodic.protocol.job import Job
from trio_periodic.protocol.packets import Data
from trio_periodic.server.http.api_routes import ApiRoutes, _schedule_metrics
from trio_periodic.server.http.messages import (
    Caller,
    HttpError,
    Response,
    _json,
    _ok,
    _query_int,
    _text,
)


class Routes(ApiRoutes):
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
        (b"GET", b"/api/overview"): ApiRoutes._api_overview,
        (b"GET", b"/api/funcs"): ApiRoutes._api_funcs,
        (b"GET", b"/api/workers"): ApiRoutes._api_workers,
        (b"GET", b"/api/throughput"): ApiRoutes._api_throughput,
        (b"GET", b"/api/events"): ApiRoutes._api_events,
        (b"GET", b"/dashboard"): _dashboard,
        (b"GET", b"/periodic.js"): _javascript,
        (b"GET", b"/periodic.d.ts"): _typescript,
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
