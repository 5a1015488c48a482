"""Packed records of pending jobs: exact round trips, and bytes order = (run_at, seq)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from trio_periodic.protocol.job import Job
from trio_periodic.scheduler import record

run_ats = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [0.0, -0.0, 1_700_000_000.0, 1_700_000_000.25, -1.5, 5e-324, -5e-324]
)
seqs = st.integers(0, 2**64 - 1)
names = st.binary(max_size=300)
# Mostly values of the compact layout, sometimes far out of it.
ints = st.integers(-(2**31), 2**31 - 1) | st.integers(-(2**70), 2**70)


@given(run_ats, seqs, names, st.binary(max_size=64), ints, ints, ints)
def test_round_trip(
    run_at: float, seq: int, name: bytes, workload: bytes, sched_at: int, count: int, timeout: int
) -> None:
    rec = record.pack(Job(b"f", name, workload, sched_at, count, timeout), run_at, seq)
    assert isinstance(rec, bytes)
    assert record.unpack(rec) == (run_at, name, workload, sched_at, count, timeout)
    assert record.run_at_of(rec) == run_at
    assert record.sched_at_of(rec) == sched_at


@given(run_ats, run_ats, seqs, seqs, names, names, ints, ints)
def test_bytes_order_is_run_at_then_seq(
    a: float, b: float, sa: int, sb: int, na: bytes, nb: bytes, ia: int, ib: int
) -> None:
    ra = record.pack(Job(b"f", na, b"", ia, 0, 0), a, sa)
    rb = record.pack(Job(b"f", nb, b"x", 0, ib, 0), b, sb)
    if (a, sa) != (b, sb):
        assert (ra < rb) == ((a, sa) < (b, sb))


def test_equal_times_keep_arrival_order() -> None:
    recs = [record.pack(Job(b"f", b"%d" % (9 - seq), b"", 10), 10.0, seq) for seq in range(10)]
    assert sorted(reversed(recs)) == recs


def test_compact_layout_size() -> None:
    # 35 bytes of header, then the name and the workload: a typical pending job
    # (8-byte name, 16-byte workload) fits pymalloc's 96-byte size class.
    job = Job(b"f", b"m0000001", b"0123456789abcdef", 1_700_000_000)
    rec = record.pack(job, 1_700_000_000.5, 123_456)
    assert len(rec) == 35 + 8 + 16
