"""Every operation, by name, and the one function every door calls to run one.

The binary protocol's EXTENSION command hands :func:`handle_request` its JSON
body; the HTTP routes call :func:`run_op` with their arguments.  Both check
the caller's rights the same way (``base.py``).
"""

from __future__ import annotations

import json
from typing import Any

from trio_periodic.server.ops import explain, retry, schedules
from trio_periodic.server.ops.base import Op, OpContext, OpError

__all__ = ["OPS", "handle_request", "lookup", "run_op"]

#: Largest JSON request accepted on the binary door (bytes).
MAX_REQUEST = 64 * 1024

OPS: dict[str, Op] = {**explain.OPS, **retry.OPS, **schedules.OPS}


def lookup(ctx: OpContext, name: str) -> Op:
    """The operation ``name``, if the caller may use it (OpError otherwise)."""
    op = OPS.get(name)
    if op is None:
        raise OpError(f"unknown operation {name!r}", 404)
    identity = ctx.identity
    if op.admin and identity is not None and not identity.is_admin:
        raise OpError(f"{name} is for admin identities only", 403)
    return op


def run_op(ctx: OpContext, name: str, args: dict[str, Any]) -> Any:
    """Run operation ``name``: its result, or OpError."""
    return lookup(ctx, name).handler(ctx, args)


def handle_request(ctx: OpContext, body: bytes) -> bytes:
    """An EXTENSION request (``{"op": NAME, ...args}``) → its JSON answer:
    ``{"ok": true, "result": …}`` or ``{"ok": false, "status": N, "error": "…"}``.
    Never raises for anything the peer sent."""
    try:
        if len(body) > MAX_REQUEST:
            raise OpError(f"request of {len(body)} bytes; the limit is {MAX_REQUEST}", 413)
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise OpError(f"the request is not JSON: {exc}") from None
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            raise OpError('the request must be a JSON object with a string "op"')
        name = request.pop("op")
        answer: dict[str, Any] = {"ok": True, "result": run_op(ctx, name, request)}
    except OpError as exc:
        answer = {"ok": False, "status": exc.status, "error": exc.message}
    return json.dumps(answer, separators=(",", ":")).encode()
