"""What every part of the HTTP API shares: limits, responses, errors, callers.

Helpers are private to this package by name (``_json``, ``_text``...): the
transport (``api.py``) and the routes (``routes.py``, ``api_routes.py``)
build and refuse requests the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from trio_periodic.protocol.constants import Cmd
from trio_periodic.server.auth import Identity, permits, visible_funcs

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
        return visible_funcs(self.identity)

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
