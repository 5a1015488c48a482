"""What an operation is: the pieces every feature module of ``ops`` uses.

An *operation* is a command the reference protocol has no code for (explain,
retry policies, schedules, …).  One table of them serves every door: the
binary protocol's EXTENSION command (a JSON request in, a JSON answer out)
and the HTTP routes.  A handler is synchronous, reads or changes the
scheduler core and returns a JSON-able value; the store changes it leaves in
``core.changes`` are made durable by the caller before the answer goes out.

Authorisation follows the auth file's rules: without an auth file everyone
may do everything; an admin identity may do everything; another identity may
use an operation that is not admin-only, on the functions listed for it
(``OpContext.check_func``), and listings show only those
(``OpContext.visible``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trio_periodic.scheduler.core import Scheduler
from trio_periodic.scheduler.state import ConnState
from trio_periodic.server.auth import Identity, visible_funcs

__all__ = ["Op", "OpContext", "OpError", "describe_worker", "name_arg", "text"]


class OpError(Exception):
    """The request cannot be done; ``status`` is the HTTP status that says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(slots=True)
class OpContext:
    core: Scheduler
    #: Epoch seconds.
    now: float
    #: The caller's identity with an auth file, else None.
    identity: Identity | None
    #: A worker connection's peer, for people to read.
    describe: Callable[[ConnState], str]
    #: The binary connection the request came on (None over HTTP).
    conn: ConnState | None = None

    @property
    def visible(self) -> frozenset[bytes] | None:
        """The functions the caller may see, or None for all."""
        return visible_funcs(self.identity)

    def check_func(self, func: bytes) -> None:
        """403 unless the caller may touch ``func``."""
        visible = self.visible
        if visible is not None and func not in visible:
            raise OpError(f"{text(func)} is not among this identity's functions", 403)


@dataclass(frozen=True, slots=True)
class Op:
    handler: Callable[[OpContext, dict[str, Any]], Any]
    #: Only an admin identity may use it (with an auth file).
    admin: bool = False
    #: It changes state: HTTP answers only after the store committed.
    writes: bool = False


def describe_worker(conn: ConnState) -> str:
    """A worker connection's peer address (``tcp:127.0.0.1:40212``), else its number."""
    stream = getattr(conn.sink, "stream", None)
    peer = getattr(stream, "peer", None)
    return str(peer) if peer else f"connection {conn.conn_id}"


def text(value: bytes) -> str:
    """A function or job name for JSON (names are bytes on the wire; bytes
    that are not UTF-8 survive the round trip through :func:`name_arg`)."""
    return value.decode("utf-8", "surrogateescape")


def name_arg(args: dict[str, Any], key: str) -> bytes:
    """The function or job name in ``args[key]``: a non-empty string of at most
    255 bytes (a str8 on the wire)."""
    value = args.get(key)
    if not isinstance(value, str) or not value:
        raise OpError(f"{key} is required (a non-empty string)")
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise OpError(f"{key} is not a valid name") from None
    if len(raw) > 255:
        raise OpError(f"{key} is {len(raw)} bytes long; names are limited to 255")
    return raw
