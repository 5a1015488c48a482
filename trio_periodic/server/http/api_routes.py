"""The JSON routes under ``/api`` that the dashboard and scripts use.

``ApiRoutes`` is a base class of ``HttpApi`` (``api.py``): the overview,
functions, jobs, workers and throughput views (built by ``server/dashboard.py``)
and the routes of the operations beyond the reference (``server/ops``):
explain, retry policies, the failed set, schedules.  Each is a thin call:
rights are checked by ``Caller.require`` or by the operation, and a route
that changes anything answers only once the store committed it (``_commit``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import trio

from trio_periodic.protocol.constants import Cmd
from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.service import SchedulerService
from trio_periodic.server import dashboard
from trio_periodic.server.http.messages import (
    DEFAULT_HISTORY,
    EVENT_INTERVAL,
    Caller,
    HttpError,
    Response,
    _json,
    _ok,
    _query_int,
    _text,
)
from trio_periodic.server.ops import retry as retry_ops
from trio_periodic.server.ops.base import OpContext, OpError, describe_worker
from trio_periodic.server.ops.base import text as op_arg
from trio_periodic.server.ops.table import lookup


class ApiRoutes:
    #: Set by HttpApi.__init__.
    service: SchedulerService
    core: Scheduler

    def _now(self) -> float:
        return self.service.clock.now()

    async def _commit(self) -> None:
        service = self.service
        effects, changes = service.finish_batch()
        await service.commit(changes)
        await service.publish(effects)

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

    async def _drop(self, func: bytes) -> Response:
        if self.core.worker_count(func):
            raise HttpError(409, f"func {_text(func)} has workers; it cannot be dropped")
        self.core.drop_func(func)
        await self._commit()
        return _ok()

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
            return await self._op("explain", {"func": op_arg(func), "name": op_arg(name)}, caller)
        if len(rest) == 3 and rest[2] == b"run" and method == b"POST":
            caller.require(Cmd.SUBMIT_JOB, func)
            if self.core.entry(func, name) is None:
                raise HttpError(404, f"Job {_text(func)}:{_text(name)} not exists.")
            if not self.core.run_now(func, name, self._now()):
                raise HttpError(409, "the job is held by a worker or waits for a lock")
            await self._commit()
            return _ok()
        raise HttpError(405 if len(rest) in (2, 3) else 404, "method not allowed")

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
        return await self._op(name, {**args, "func": op_arg(func)}, caller)

    async def _api_failed(
        self, method: bytes, parts: list[bytes], query: dict[bytes, list[bytes]], caller: Caller
    ) -> Response:
        """``GET /api/failed[?func=F]``, ``POST /api/failed/<func>/<name>/retry``,
        ``DELETE /api/failed/<func>[/<name>]``."""
        if not parts and method == b"GET":
            func = query.get(b"func", [b""])[0]
            args: dict[str, Any] = {"func": op_arg(func)} if func else {}
            return await self._op("failed_list", args, caller)
        if len(parts) == 3 and parts[2] == b"retry" and method == b"POST":
            args = {"func": op_arg(parts[0]), "names": [op_arg(parts[1])]}
            return await self._op("failed_retry", args, caller)
        if len(parts) in (1, 2) and method == b"DELETE":
            args = {"func": op_arg(parts[0])}
            if len(parts) == 2:
                args["names"] = [op_arg(parts[1])]
            return await self._op("failed_purge", args, caller)
        raise HttpError(404, "no such route")

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
        handle = {"func": op_arg(rest[0]), "name": op_arg(rest[1])}
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
