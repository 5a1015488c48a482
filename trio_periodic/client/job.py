"""The job a worker function receives, and the values it may return.

A worker function gets a :class:`Job` and either reports explicitly
(``await job.done(b"result")``, ``await job.fail()``,
``await job.sched_later(60)``) or just returns:

* ``bytes`` / ``str`` / ``None`` → WORK_DONE with that result (str as UTF-8,
  None as empty); ``dict`` / ``list`` → WORK_DONE with their JSON;
* :class:`Done`, :class:`Fail`, :class:`SchedLater` → that report;
* an exception → WORK_FAIL (logged).

Whatever is reported first wins; later reports for the same job are ignored
locally, so returning after ``await job.done()`` is harmless.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeAlias

from trio_periodic.client.connection import Connection, expect_success
from trio_periodic.client.errors import UnexpectedReply
from trio_periodic.client.extension import call_extension
from trio_periodic.protocol import (
    Acquire,
    Acquired,
    Release,
    WorkData,
    WorkDone,
    WorkFail,
)
from trio_periodic.protocol import Job as WireJob
from trio_periodic.protocol import (
    SchedLater as SchedLaterPacket,
)

__all__ = ["Done", "Fail", "Job", "Result", "SchedLater", "decode_name", "encode_name", "to_bytes"]


@dataclass(frozen=True, slots=True)
class Done:
    """Return this from a worker function to finish the job with ``data``."""

    data: bytes = b""


@dataclass(frozen=True, slots=True)
class Fail:
    """Return this from a worker function to fail the job (the server retries it)."""


@dataclass(frozen=True, slots=True)
class SchedLater:
    """Return this to run the job again in ``delay`` seconds, adding ``step`` to its count."""

    delay: int
    step: int = 0


Result: TypeAlias = Done | Fail | SchedLater


def encode_name(value: str | bytes) -> bytes:
    """Function and job names on the wire: str as UTF-8 (lone surrogates round-trip)."""
    if isinstance(value, bytes):
        return value
    return value.encode("utf-8", "surrogateescape")


def decode_name(value: bytes) -> str:
    """The inverse of :func:`encode_name`; never fails."""
    return value.decode("utf-8", "surrogateescape")


def to_bytes(value: Any) -> bytes:
    """A worker function's return value (or a workload) as bytes."""
    if value is None:
        return b""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict | list):
        return json.dumps(value).encode("utf-8")
    return str(value).encode("utf-8")


class Job:
    """A job assigned to this worker.

    ``func`` and ``name`` are text (UTF-8; undecodable bytes survive as lone
    surrogates); the exact wire values are in :attr:`wire`.
    """

    __slots__ = ("_conn", "_reported", "wire")

    def __init__(self, conn: Connection, wire: WireJob) -> None:
        self._conn = conn
        #: The job exactly as the server sent it.
        self.wire = wire
        self._reported = False

    def __repr__(self) -> str:
        return f"<Job {self.func}/{self.name} timeout={self.timeout}>"

    # ------------------------------------------------------------ fields

    @property
    def func(self) -> str:
        return decode_name(self.wire.func)

    @property
    def name(self) -> str:
        return decode_name(self.wire.name)

    @property
    def workload(self) -> bytes:
        return self.wire.workload

    @property
    def text(self) -> str:
        """The workload decoded as UTF-8 (invalid bytes replaced)."""
        return self.wire.workload.decode("utf-8", "replace")

    def json(self) -> Any:
        """The workload parsed as JSON."""
        return json.loads(self.wire.workload)

    @property
    def sched_at(self) -> int:
        """When the job was due, Unix seconds."""
        return self.wire.sched_at

    @property
    def count(self) -> int:
        """The run counter (changed only by ``sched_later`` with a step)."""
        return self.wire.count

    @property
    def timeout(self) -> int:
        """Seconds the server lets this worker hold the job (0: no limit)."""
        return self.wire.timeout

    @property
    def reported(self) -> bool:
        """True once done / fail / sched_later was sent."""
        return self._reported

    # ----------------------------------------------------------- reports

    def _claim(self) -> bool:
        if self._reported:
            return False
        self._reported = True
        return True

    async def done(self, data: bytes | str | None = b"") -> None:
        """Finish the job (WORK_DONE); ``data`` goes to RUN_JOB callers."""
        if self._claim():
            packet = WorkDone(self.wire.func, self.wire.name, to_bytes(data))
            expect_success(await self._conn.request(packet), "WORK_DONE")

    async def fail(self) -> None:
        """Fail the job (WORK_FAIL): the server retries it (RUN_JOB callers get ``failed``)."""
        if self._claim():
            reply = await self._conn.request(WorkFail(self.wire.func, self.wire.name))
            expect_success(reply, "WORK_FAIL")

    async def sched_later(self, delay: int, step: int = 0) -> None:
        """Run the job again ``delay`` seconds from now; add ``step`` to its count."""
        if self._claim():
            packet = SchedLaterPacket(self.wire.func, self.wire.name, int(delay), int(step))
            expect_success(await self._conn.request(packet), "SCHED_LATER")

    async def data(self, chunk: bytes | str) -> None:
        """Stream ``chunk`` to RECV_DATA subscribers (WORK_DATA)."""
        reply = await self._conn.request(WorkData(self.wire.func, self.wire.name, to_bytes(chunk)))
        expect_success(reply, "WORK_DATA")

    async def heartbeat(self) -> None:
        """Tell the server the job is still being worked on: its timeout starts
        over (a full ``timeout`` from now), so a long job needs no huge
        timeout.  trio_periodic servers only (the reference server closes the
        connection on it).  Any WORK_DATA (:meth:`data`) does the same on a
        trio_periodic server; this one reaches no RECV_DATA subscriber, where
        an empty WORK_DATA would reach them as an empty chunk."""
        await call_extension(self._conn, "heartbeat", {"func": self.func, "name": self.name})

    async def acquire(self, lock: str | bytes, count: int = 1) -> bool:
        """Take a slot of ``lock`` (at most ``count`` holders).

        False means the server parked the job until the lock frees up: stop
        working on it and report nothing.
        """
        reply = await self._conn.request(
            Acquire(encode_name(lock), count, self.wire.func, self.wire.name)
        )
        if not isinstance(reply, Acquired):
            expect_success(reply, "ACQUIRE")
            raise UnexpectedReply("ACQUIRE answered with SUCCESS")
        if not reply.ok:
            self._reported = True  # the job is parked: nothing more may be sent for it
        return reply.ok

    async def release(self, lock: str | bytes) -> None:
        """Give ``lock`` back before the job ends (it is released on done/fail anyway)."""
        reply = await self._conn.request(Release(encode_name(lock), self.wire.func, self.wire.name))
        expect_success(reply, "RELEASE")

    async def report(self, value: Any) -> None:
        """Report a worker function's return value (see the module docstring)."""
        if self._reported:
            return
        if isinstance(value, Fail):
            await self.fail()
        elif isinstance(value, SchedLater):
            await self.sched_later(value.delay, value.step)
        elif isinstance(value, Done):
            await self.done(value.data)
        else:
            await self.done(to_bytes(value))
