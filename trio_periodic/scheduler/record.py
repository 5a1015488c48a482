"""A pending job packed into one ``bytes`` object.

Theory of operation
-------------------
With a million jobs waiting, every Python object per job costs: an object
with slots carries 32 bytes of headers before its first field, a tuple key
another 64, an int 32.  So a *pending* job is a single ``bytes`` record (a
job a worker holds is a ``JobEntry`` again, see ``core.py``)::

    offset size
    0      1    1 if run_at >= 0 else 0                      ┐
    1      8    run_at, IEEE double, big-endian              │ sort key
                (all bits inverted when negative)            │
    9      8    seq, unsigned, big-endian                    ┘
    17     1    layout: 0 compact, 1 wide
    compact: 18 i64 sched_at, 26 i32 count, 30 i32 timeout, 34 u8 len(name),
             35 name, then the workload up to the end
    wide (a value out of those ranges): 18 u32 len(name), 22 u32 len(text),
             26 text = b"sched_at count timeout" in decimal, then name, workload

Records compare as bytes in (run_at, seq) order: a function's ``SortedList``
of records hands out jobs by due time, first come first served among equal
times, with comparisons done in C; and since ``seq`` makes each record
unique, a record is found again by bisection to be removed.  Records never
change: a job that moves gets a new record.
"""

from __future__ import annotations

import struct

from trio_periodic.protocol.job import Job

__all__ = ["due_bound", "fields", "pack", "run_at_of", "sched_at_of", "unpack"]

# sign, run_at, seq, layout 0, sched_at, count, timeout, len(name)
_COMPACT = struct.Struct(">BdQBqiiB")
# The tail of the same, past run_at and seq (fewer objects to make).
_COMPACT_READ = struct.Struct(">17xBqiiB")
# sign, inverted run_at bits, seq, layout, sched_at, count, timeout, len(name)
_COMPACT_NEG = struct.Struct(">BQQBqiiB")
# sign, run_at bits, seq, layout 1, len(name), len(text)
_WIDE = struct.Struct(">BQQBII")
_SIGN_RUN_AT = struct.Struct(">Bd")
_RUN_AT_BITS = struct.Struct(">Q")
_DOUBLE = struct.Struct(">d")
_BODY = _COMPACT.size  # 35
_WIDE_BODY = _WIDE.size  # 26
_U64 = 0xFFFF_FFFF_FFFF_FFFF


def _key_bits(run_at: float) -> tuple[int, int]:
    """(sign byte, u64) whose big-endian bytes sort like ``run_at``."""
    (bits,) = _RUN_AT_BITS.unpack(_DOUBLE.pack(run_at + 0.0))  # + 0.0: -0.0 is 0.0
    if run_at >= 0:
        return 1, bits
    return 0, bits ^ _U64


def pack(job: Job, run_at: float, seq: int) -> bytes:
    """The record of ``job`` (its name, workload, sched_at, count and timeout;
    its func is the queue's) due at ``run_at`` (epoch seconds), queued ``seq``-th."""
    name = job.name
    try:
        if run_at > 0:
            head = _COMPACT.pack(1, run_at, seq, 0, job.sched_at, job.count, job.timeout, len(name))
        else:  # zero (either sign) or negative: rare
            sign, bits = _key_bits(run_at)
            head = _COMPACT_NEG.pack(
                sign, bits, seq, 0, job.sched_at, job.count, job.timeout, len(name)
            )
    except struct.error:  # a value out of the compact layout's range
        return _pack_wide(job, run_at, seq)
    return b"".join((head, name, job.workload))


def _pack_wide(job: Job, run_at: float, seq: int) -> bytes:
    sign, bits = _key_bits(run_at)
    name = job.name
    text = b"%d %d %d" % (job.sched_at, job.count, job.timeout)
    head = _WIDE.pack(sign, bits, seq, 1, len(name), len(text))
    return b"".join((head, text, name, job.workload))


_BOUND = struct.Struct(">BQQB")


def due_bound(now: float) -> bytes:
    """A key that sorts after every record due at or before ``now`` and before
    every record due later: ``queue.bisect_left(due_bound(now))`` counts the due."""
    sign, bits = _key_bits(now)
    return _BOUND.pack(sign, bits, _U64, 0xFF)


def run_at_of(record: bytes) -> float:
    """When the job is due (epoch seconds)."""
    sign, run_at = _SIGN_RUN_AT.unpack_from(record)
    if not sign:
        (bits,) = _RUN_AT_BITS.unpack_from(record, 1)
        (run_at,) = _DOUBLE.unpack(_RUN_AT_BITS.pack(bits ^ _U64))
    return run_at  # type: ignore[no-any-return]


def unpack(record: bytes) -> tuple[float, bytes, bytes, int, int, int]:
    """``(run_at, name, workload, sched_at, count, timeout)``."""
    return (run_at_of(record), *fields(record))


def fields(record: bytes) -> tuple[bytes, bytes, int, int, int]:
    """``(name, workload, sched_at, count, timeout)``: all but run_at."""
    if record[17] == 0:
        _, sched_at, count, timeout, ln = _COMPACT_READ.unpack_from(record)
        end = _BODY + ln
        return record[_BODY:end], record[end:], sched_at, count, timeout
    _, _, _, _, ln, lt = _WIDE.unpack_from(record)
    start = _WIDE_BODY + lt
    end = start + ln
    sched_at, count, timeout = (int(x) for x in record[_WIDE_BODY:start].split())
    return record[start:end], record[end:], sched_at, count, timeout


def sched_at_of(record: bytes) -> int:
    """The job's sched_at (whole epoch seconds, as clients see it)."""
    return fields(record)[2]
