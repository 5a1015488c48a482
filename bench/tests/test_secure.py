"""The bench's RSA/AES client wrapper against a real periodicd: the generator's submit and
worker code runs unchanged over it, in both data modes."""

from __future__ import annotations

import pytest
from conftest import start_daemon  # type: ignore[import-not-found]

from bench import probes
from bench.loadgen import WORKLOAD, adapter_for
from bench.proto.base import JobSpec, connect
from bench.secure import SecureSocket, bench_keys


@pytest.mark.parametrize("mode", ["AES", "RSA"])
def test_submit_and_work_one_job_over_the_rsa_transport(mode: str) -> None:
    keys = bench_keys()
    daemon = start_daemon(
        "-p", ":memory:", "--rsa-private-path", keys.server_private,
        "--rsa-public-path", keys.client_public_dir,
    )  # fmt: skip
    secure = keys.client(mode)
    try:
        # A plain client is not let in; the secure one is.
        assert not probes.ping("periodic", daemon.port, 2.0)
        assert probes.ping("periodic", daemon.port, 5.0, secure)
        adapter = adapter_for("periodic")
        with connect("127.0.0.1", daemon.port, 5.0, secure) as wsock:
            assert isinstance(wsock, SecureSocket)
            worker = adapter.worker(b"sec", 1)
            worker.handshake(wsock)
            with connect("127.0.0.1", daemon.port, 5.0, secure) as csock:
                adapter.client_handshake(csock)
                csock.sendall(adapter.submit(1, JobSpec(b"sec", b"job-1", WORKLOAD)))
                buf = bytearray()
                while True:
                    buf += csock.recv(1 << 16)
                    ok, bad, used = adapter.count_replies(buf)
                    del buf[:used]
                    if ok or bad:
                        break
                assert (ok, bad) == (1, 0)
            wsock.sendall(worker.start())
            got: list[bytes] = []
            buf = bytearray()
            while not got:
                data = wsock.recv(1 << 16)
                assert data, "the server closed the worker connection"
                buf += data
                names, out, used = worker.feed(buf)
                del buf[:used]
                got += names
                if out:
                    wsock.sendall(out)
            assert got == [b"job-1"]
    finally:
        daemon.proc.kill()
        daemon.proc.wait(10)
