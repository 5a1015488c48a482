"""Jobs in flight per worker connection: the gearman worker keeps ``slots`` grabs outstanding,
and every server hands one connection as many jobs as it has requests outstanding."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bench import probes
from bench.loadgen import WORKLOAD, adapter_for, job_name
from bench.procs import HOST, find_binary, running
from bench.proto import gearman as gm
from bench.proto.base import JobSpec, connect
from bench.servers import make_specs


def _res(ptype: int, *args: bytes) -> bytes:
    data = b"\x00".join(args)
    return b"\x00RES" + ptype.to_bytes(4, "big") + len(data).to_bytes(4, "big") + data


def _assign(n: int) -> bytes:
    return _res(gm.JOB_ASSIGN_UNIQ, b"H:x%d" % n, b"f", b"u%d" % n, b"w")


def test_gearman_grabs_again_after_no_job_once_jobs_flow() -> None:
    worker = gm.GearmanAdapter().worker(b"f", 4)
    assert worker.start() == gm.packet(gm.GRAB_JOB_UNIQ) * 4
    # two grabs find the queue empty while the other two get jobs
    names, out, _ = worker.feed(bytearray(_res(gm.NO_JOB) * 2 + _assign(1)))
    assert names == [b"u1"]
    # the job is answered, and the two grabs lost to NO_JOB are sent again with its own
    complete = gm.packet(gm.WORK_COMPLETE, b"H:x1", b"")
    assert out == complete + gm.packet(gm.GRAB_JOB_UNIQ) * 3
    assert worker.pending == 4


def test_gearman_sleeps_only_when_no_grab_is_outstanding() -> None:
    worker = gm.GearmanAdapter().worker(b"f", 4)
    worker.start()
    _, out, _ = worker.feed(bytearray(_res(gm.NO_JOB) * 3))
    assert out == b""
    _, out, _ = worker.feed(bytearray(_res(gm.NO_JOB)))
    assert out == gm.packet(gm.PRE_SLEEP)
    _, out, _ = worker.feed(bytearray(_res(gm.NOOP)))
    assert out == gm.packet(gm.GRAB_JOB_UNIQ) * 4
    _, out, _ = worker.feed(bytearray(_res(gm.NOOP)))  # a second NOOP: already awake
    assert out == b""


SERVERS = ("periodic-memory", "beanstalkd", "gearmand", "redis")
BINARIES = {"beanstalkd": "beanstalkd", "gearmand": "gearmand", "redis": "redis-server"}


@pytest.mark.parametrize("name", SERVERS)
def test_one_connection_gets_as_many_jobs_as_requests(name: str, tmp_path: Path) -> None:
    """With 10 jobs queued, K pipelined requests that are never answered get exactly K jobs:
    the server does not wait for one job's answer before serving the next request."""
    binary = BINARIES.get(name)
    if binary and find_binary(binary) is None:
        pytest.skip(f"{binary} is not installed")
    (spec,) = make_specs([name], None, None)
    server = spec.make(tmp_path)
    adapter = adapter_for(spec.kind)
    with running(server, ready_timeout=15):
        probes.wait_ping(spec.kind, server.port, 10.0, server.alive)
        got = {}
        for slots in (1, 4):
            func = b"f%d" % slots
            with connect(HOST, server.port) as sock:
                adapter.client_handshake(sock)
                jobs = [JobSpec(func, job_name("x", i), WORKLOAD) for i in range(10)]
                sock.sendall(b"".join(adapter.submit(i + 1, j) for i, j in enumerate(jobs)))
                end = time.monotonic() + 5
                while probes.stored_jobs(spec.kind, server.port, func) < 10:
                    assert time.monotonic() < end, "the jobs were not stored"
                    time.sleep(0.01)
            got[slots] = probes.jobs_in_flight(spec.kind, server.port, func, slots, settle=0.3)
    assert got == {1: 1, 4: 4}
