"""Cross-check the codec against aio_periodic 1.0.0's own encoder (a real client).

aio_periodic packs integers unsigned, so only non-negative values are compared;
for those the bytes must be identical (PROTOCOL.md §7, "Signedness").
"""

from __future__ import annotations

from typing import Any
from zlib import crc32

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

aio_cmd = pytest.importorskip("aio_periodic.types.command")
aio_job = pytest.importorskip("aio_periodic.types.job")

from trio_periodic.protocol import (  # noqa: E402
    MAGIC_REQ,
    Acquire,
    Broadcast,
    CanDo,
    CantDo,
    DropFunc,
    GrabJob,
    Job,
    JobAssigned,
    Ping,
    Release,
    RemoveJob,
    RunJob,
    SchedLater,
    SubmitJob,
    WorkData,
    WorkDone,
    WorkFail,
    decode_job,
    encode_frame,
    encode_job,
    encode_payload,
)
from trio_periodic.protocol.packets import Packet  # noqa: E402

CHECK = settings(max_examples=60, deadline=None)
b8 = st.binary(max_size=255)
u32 = st.integers(0, 2**32 - 1)
aio_jobs = st.builds(Job, b8, b8, st.binary(max_size=200), st.integers(0, 2**63 - 1), u32, u32)


def handle(func: bytes, name: bytes) -> bytes:
    return bytes([len(func)]) + func + bytes([len(name)]) + name


def ours(packet: Packet) -> bytes:
    return bytes([packet.cmd]) + encode_payload(packet)


@CHECK
@given(job=aio_jobs)
def test_job_bytes_match_aio_periodic(job: Job) -> None:
    theirs = aio_job.Job(
        job.func, job.name, job.workload, job.sched_at, job.count, job.timeout
    ).pack()
    assert encode_job(job) == theirs
    built = aio_job.Job.build(encode_job(job))
    assert (built.func, built.name, built.workload, built.sched_at) == (
        job.func,
        job.name,
        job.workload,
        job.sched_at,
    )
    # aio_periodic reads count/timeout unsigned; ours are signed i32.
    decoded, _ = decode_job(theirs)
    assert decoded.count % 2**32 == job.count
    assert decoded.timeout % 2**32 == job.timeout


@CHECK
@given(
    func=b8,
    name=b8,
    data=st.binary(max_size=100),
    delay=st.integers(0, 2**64 - 1),
    step=st.integers(0, 65535),
    lock=b8,
    job=aio_jobs,
)
def test_commands_match_aio_periodic(
    func: bytes, name: bytes, data: bytes, delay: int, step: int, lock: bytes, job: Job
) -> None:
    hd = handle(func, name)
    aj = aio_job.Job(job.func, job.name, job.workload, job.sched_at, job.count, job.timeout)
    pairs: list[tuple[Any, Packet]] = [
        (aio_cmd.GrabJob(), GrabJob()),
        (aio_cmd.SchedLater(hd, delay, step), SchedLater(func, name, delay, step)),
        (aio_cmd.WorkDone(hd, data), WorkDone(func, name, data)),
        (aio_cmd.WorkFail(hd), WorkFail(func, name)),
        (aio_cmd.CanDo(func), CanDo(func)),
        (aio_cmd.CantDo(func), CantDo(func)),
        (aio_cmd.Broadcast(func), Broadcast(func)),
        (aio_cmd.SubmitJob(aj), SubmitJob(job)),
        (aio_cmd.RunJob(aj), RunJob(job)),
        (aio_cmd.DropFunc(func), DropFunc(func)),
        (aio_cmd.RemoveJob(func, name), RemoveJob(func, name)),
        (aio_cmd.Acquire(lock, step, hd), Acquire(lock, step, func, name)),
        (aio_cmd.Release(lock, hd), Release(lock, func, name)),
        (aio_cmd.WorkData(hd, data), WorkData(func, name, data)),
        (aio_cmd.JobAssigned(), JobAssigned()),
    ]
    for theirs, packet in pairs:
        assert bytes(theirs) == ours(packet), type(packet).__name__


def test_frame_matches_aio_periodic_agent_send() -> None:
    # Agent.send: MAGIC_REQUEST + u32 len + u32 crc32 + msgid + command.
    payload = (1).to_bytes(4, "big") + aio_cmd.PING
    theirs = MAGIC_REQ + len(payload).to_bytes(4, "big") + crc32(payload).to_bytes(4, "big")
    assert encode_frame(1, Ping(), MAGIC_REQ) == theirs + payload
