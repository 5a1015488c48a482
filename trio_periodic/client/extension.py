"""An operation beyond the reference over one connection (the EXTENSION command):
JSON request, JSON answer.  Used by ``Client.extension`` and ``Job.heartbeat``."""

from __future__ import annotations

import json
from typing import Any

from trio_periodic.client.connection import Connection, expect_success
from trio_periodic.client.errors import ExtensionError, UnexpectedReply
from trio_periodic.protocol import Extension

__all__ = ["call_extension"]


async def call_extension(conn: Connection, op: str, args: dict[str, Any]) -> Any:
    """Run operation ``op`` on ``conn``; its result, or :class:`ExtensionError`
    when the server refuses it (trio_periodic servers only: the reference
    server closes the connection)."""
    body = json.dumps({"op": op, **args}).encode()
    reply = await conn.request(Extension(body))
    if not isinstance(reply, Extension):
        expect_success(reply, op)
        raise UnexpectedReply(f"{op} answered with SUCCESS")
    try:
        answer = json.loads(reply.body)
    except ValueError:
        raise UnexpectedReply(f"{op}: the answer is not JSON") from None
    if not isinstance(answer, dict):
        raise UnexpectedReply(f"{op}: the answer is not a JSON object")
    if not answer.get("ok"):
        error = str(answer.get("error", "refused"))
        raise ExtensionError(error, int(answer.get("status", 400)))
    return answer.get("result")
