"""The Job record and its wire codec (PROTOCOL.md §7, job lists §6/§11).

Layout: ``str8 func, str8 name, str32 workload, i64 sched_at, u8 ver, tail``
where the tail is ``i32 count`` (ver 1), ``i32 timeout`` (ver 2) or both
(ver 3). The version is never stored: the encoder computes it from the
values, exactly like periodicd and aio_periodic, so ``count``/``timeout`` that
are 0 or negative are simply not sent and come back as 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from . import _wire as w
from .errors import LocalProtocolError, RemoteProtocolError

__all__ = ["Job", "decode_job", "decode_job_list", "encode_job", "encode_job_list"]

# Smallest possible job: two empty str8, an empty str32, sched_at and ver.
_MIN_JOB_SIZE = 1 + 1 + 4 + 9


@dataclass(slots=True)
class Job:
    """A job as carried on the wire. ``(func, name)`` identifies it on the server."""

    func: bytes
    name: bytes
    workload: bytes = b""
    #: Earliest dispatch time, Unix seconds (signed; 0 means "now" on submit).
    sched_at: int = 0
    #: Run counter; only changed by the server on SCHED_LATER with a step.
    count: int = 0
    #: Seconds a worker may hold the job; 0 = the server's default.
    timeout: int = 0

    @property
    def handle(self) -> tuple[bytes, bytes]:
        """The job handle ``(func, name)``, the job's identity on the server."""
        return (self.func, self.name)


def encode_job(job: Job) -> bytes:
    """Encode ``job``; raises :class:`LocalProtocolError` if a field cannot be represented.

    ``sched_at`` accepts -2**63..2**64-1 and ``count``/``timeout`` (when > 0)
    up to 2**32-1; values above the signed maximum are sent as their unsigned
    bit pattern, like aio_periodic does (they decode as negative numbers).
    """
    func = job.func
    name = job.name
    workload = job.workload
    lf = len(func)
    ln = len(name)
    if lf > 255 or ln > 255:
        raise LocalProtocolError(
            f"job func/name are {lf}/{ln} bytes long; a str8 holds at most 255"
        )
    lw = len(workload)
    if lw > w.U32_MAX:
        raise LocalProtocolError(f"workload of {lw} bytes does not fit a str32")
    sched_at = job.sched_at
    if not w.I64_MIN <= sched_at <= w.U64_MAX:
        raise LocalProtocolError(f"sched_at {sched_at} does not fit in 64 bits")
    count = job.count
    timeout = job.timeout
    if count > 0:
        if count > w.U32_MAX:
            raise LocalProtocolError(f"job count {count} does not fit in 32 bits")
        if timeout > 0:
            if timeout > w.U32_MAX:
                raise LocalProtocolError(f"job timeout {timeout} does not fit in 32 bits")
            ver = 3
            tail = w.U32X2.pack(count, timeout)
        else:
            ver = 1
            tail = w.U32.pack(count)
    elif timeout > 0:
        if timeout > w.U32_MAX:
            raise LocalProtocolError(f"job timeout {timeout} does not fit in 32 bits")
        ver = 2
        tail = w.U32.pack(timeout)
    else:
        ver = 0
        tail = b""
    return b"".join(
        (
            w.LEN8[lf],
            func,
            w.LEN8[ln],
            name,
            w.U32.pack(lw),
            workload,
            w.U64_U8.pack(sched_at & w.U64_MAX, ver),
            tail,
        )
    )


def decode_job_at(buf: bytes | memoryview, pos: int) -> tuple[Job, int]:
    """Decode a job at ``pos`` without translating short-input errors.

    Internal fast path for the packet decoders: raises IndexError or
    struct.error when ``buf`` ends early (see ``_wire``).
    """
    start = pos + 1
    end = start + buf[pos]
    func = buf[start:end]
    start = end + 1
    end = start + buf[end]  # IndexError here if func was truncated
    name = buf[start:end]
    (lw,) = w.U32.unpack_from(buf, end)  # struct.error if name was truncated
    start = end + 4
    end = start + lw
    if end > len(buf):
        raise IndexError("workload runs past the end")
    workload = buf[start:end]
    sched_at, ver = w.I64_U8.unpack_from(buf, end)
    end += 9
    if ver == 2:  # the common case: JOB_ASSIGN always carries a timeout
        count = 0
        (timeout,) = w.I32.unpack_from(buf, end)
        end += 4
    elif ver == 1:
        (count,) = w.I32.unpack_from(buf, end)
        timeout = 0
        end += 4
    elif ver == 3:
        count, timeout = w.I32X2.unpack_from(buf, end)
        end += 8
    else:
        # The reference treats any other version byte as version 0 (no tail);
        # leftover bytes then fail the caller's "exact consumption" check.
        count = timeout = 0
    if type(buf) is not bytes:
        # Never hand out views into a buffer the caller may reuse.
        func = bytes(func)
        name = bytes(name)
        workload = bytes(workload)
    return Job(func, name, workload, sched_at, count, timeout), end  # type: ignore[arg-type]


def decode_job(buf: bytes | memoryview, pos: int = 0) -> tuple[Job, int]:
    """Decode one job starting at ``pos``; returns ``(job, offset after it)``.

    Bytes after the job are left alone (the caller decides whether they are
    allowed). Raises :class:`RemoteProtocolError` if ``buf`` ends early.
    """
    if pos < 0:
        raise LocalProtocolError(f"negative offset {pos}")
    try:
        return decode_job_at(buf, pos)
    except w.SHORT:
        raise RemoteProtocolError(f"truncated job ({max(0, len(buf) - pos)} bytes)") from None


def encode_job_list(jobs: Iterable[Job]) -> bytes:
    """Encode ``i64 n`` followed by ``n`` jobs (LOAD payload, DUMP result).

    ``jobs`` is consumed one at a time into one buffer, so a generator of a
    million jobs never has them all alive at once (a DUMP of a big server)."""
    buf = bytearray(8)
    n = 0
    for job in jobs:
        buf += encode_job(job)
        n += 1
    w.I64.pack_into(buf, 0, n)
    return bytes(buf)


def decode_job_list_at(buf: bytes | memoryview, pos: int) -> tuple[list[Job], int]:
    """Decode a job list at ``pos`` (short input → IndexError/struct.error)."""
    (n,) = w.I64.unpack_from(buf, pos)
    pos += 8
    if n < 0:
        raise RemoteProtocolError(f"negative job count {n}")
    # Refuse absurd counts before looping: every job takes at least 15 bytes.
    if n * _MIN_JOB_SIZE > len(buf) - pos:
        raise RemoteProtocolError(
            f"job list claims {n} jobs but only {len(buf) - pos} bytes follow"
        )
    jobs = []
    for _ in range(n):
        job, pos = decode_job_at(buf, pos)
        jobs.append(job)
    return jobs, pos


def decode_job_list(buf: bytes | memoryview) -> list[Job]:
    """Decode a whole job list; ``buf`` must hold exactly that and nothing more."""
    try:
        jobs, end = decode_job_list_at(buf, 0)
    except w.SHORT:
        raise RemoteProtocolError(f"truncated job list ({len(buf)} bytes)") from None
    if end != len(buf):
        raise RemoteProtocolError(f"{len(buf) - end} trailing bytes after job list")
    return jobs
