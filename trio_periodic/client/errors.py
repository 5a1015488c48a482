"""Exceptions raised by the client and worker library.

Everything derives from :class:`PeriodicError`, so a caller that only wants
"did it work" catches one class.  Transport failures are mapped once, in
:mod:`.connection`, to :class:`ConnectError` (never reached the server) or
:class:`ConnectionLost` (the connection broke afterwards).
"""

from __future__ import annotations

__all__ = [
    "ConnectError",
    "ConnectionLost",
    "ExtensionError",
    "JobFailed",
    "NoWorker",
    "PeriodicError",
    "RequestTimeout",
    "UnexpectedReply",
]


class PeriodicError(Exception):
    """Base class of every error raised by :mod:`trio_periodic.client`."""


class ConnectError(PeriodicError):
    """The server could not be reached or did not accept the registration."""


class ConnectionLost(PeriodicError):
    """The connection broke (closed by the server, network error, no PONG, bad frame)."""


class RequestTimeout(PeriodicError):
    """The server did not answer a request in time."""


class NoWorker(PeriodicError):
    """The server refused the command (NO_WORKER).

    For RUN_JOB / RECV_DATA this means no worker has registered the function;
    for any other command it is the server's generic rejection (wrong role,
    authentication or authorisation).
    """


class ExtensionError(PeriodicError):
    """The server refused an operation beyond the reference protocol (explain,
    retry policies, schedules); the message is the server's one-line reason."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        #: HTTP-like: 400 bad arguments, 403 not allowed, 404 no such thing.
        self.status = status


class UnexpectedReply(PeriodicError):
    """The server answered with a packet that makes no sense for the request."""


class JobFailed(PeriodicError):
    """RUN_JOB ended without a result: the server answered failed, expired or removed."""

    def __init__(self, func: str, name: str, reason: str) -> None:
        super().__init__(f"job {func}/{name} {reason}")
        self.func = func
        self.name = name
        #: ``"failed"`` (WORK_FAIL, SCHED_LATER, timeout), ``"expired"`` (the wait
        #: ran out) or ``"removed"`` (REMOVE_JOB / DROP_FUNC).
        self.reason = reason
