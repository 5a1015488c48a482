"""TLS: tls://, wss:// and https:// listeners, client certificates, our client
and the command line over TLS.  Every certificate comes from a throwaway CA
(trustme) made for the test."""

from __future__ import annotations

import logging
import re
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trustme
from conftest import start_daemon

from trio_periodic import Client, Job, Worker
from trio_periodic.client import ConnectError, TlsError, TlsOptions
from trio_periodic.protocol.connection import ClientConnection
from trio_periodic.protocol.constants import MAGIC_RES, ClientType
from trio_periodic.protocol.frames import Registration
from trio_periodic.server.app import Server
from trio_periodic.store.memory import MemoryStore
from trio_periodic.transport.listeners import ListenError
from trio_periodic.transport.tls import after_handshake, server_context, wrap_listeners

LIMIT = 15


@dataclass
class Pki:
    """PEM files: a CA, the server's certificate for 127.0.0.1 and localhost,
    a client certificate from the same CA and one from a stranger CA."""

    ca: str
    server: str  # chain and key in one file
    server_chain: str
    server_key: str
    client: str
    stranger: str

    def context(self, cert: str | None = None) -> ssl.SSLContext:
        return TlsOptions(ca=self.ca, cert=cert).client_context()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, stranger_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(str(d / "server.pem"))
    (d / "chain.pem").write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(d / "server.key"))
    ca.issue_cert("worker-1@example.org").private_key_and_cert_chain_pem.write_to_path(
        str(d / "client.pem")
    )
    stranger_ca.issue_cert("mallory@example.org").private_key_and_cert_chain_pem.write_to_path(
        str(d / "stranger.pem")
    )
    return Pki(
        *(str(d / name) for name in ("ca.pem", "server.pem", "chain.pem", "server.key")),
        str(d / "client.pem"),
        str(d / "stranger.pem"),
    )


@asynccontextmanager
async def tls_server(pki: Pki, *, client_ca: bool = False) -> AsyncIterator[dict[str, str]]:
    """A server with a tls://, a wss:// and an https:// listener; yields scheme → URL."""
    srv = Server(
        MemoryStore(),
        ["tls://127.0.0.1:0", "wss://127.0.0.1:0/periodic"],
        http="https://127.0.0.1:0",
        tls_cert=pki.server,
        tls_client_ca=pki.ca if client_ca else None,
    )
    async with trio.open_nursery() as nursery:
        bound: list[str] = await nursery.start(srv.run)
        yield {url.split("://")[0]: url for url in bound}
        nursery.cancel_scope.cancel()


def port_of(url: str) -> int:
    return int(re.split(r"[:/]", url.split("://")[1])[1])


async def read_to_end(stream: trio.abc.Stream) -> bytes:
    """Everything the peer sends until it closes (a reset counts as closing)."""
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:
        pass
    return data


async def https_get(port: int, path: str, context: ssl.SSLContext) -> tuple[int, bytes]:
    """(status, body); status 0 when the server closed without answering."""
    stream = await trio.open_ssl_over_tcp_stream(
        "127.0.0.1", port, ssl_context=context, https_compatible=True
    )
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    await stream.send_all(request.encode())
    head, _, body = (await read_to_end(stream)).partition(b"\r\n\r\n")
    await stream.aclose()
    return (int(head.split()[1]) if head else 0), body


# ----------------------------------------------------------------- end to end


@pytest.mark.parametrize("scheme", ["tls", "wss"])
async def test_client_and_worker_end_to_end(pki: Pki, scheme: str) -> None:
    queued = trio.Event()

    async def upper(job: Job) -> bytes:
        if job.name == "queued":
            queued.set()
        return job.workload.upper()

    with trio.fail_after(LIMIT):
        async with tls_server(pki) as urls:
            url = urls[scheme]
            worker = Worker(url, ssl_context=pki.context())
            worker.add_func("upper", upper)
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.work, 2)
                async with Client.connect(url, ssl_context=pki.context()) as client:
                    assert await client.run_job("upper", "now", b"hello") == b"HELLO"
                    # Larger than any TLS record or socket buffer: the writes
                    # go through the SSL object in pieces, never the raw socket.
                    big = bytes(range(97, 123)) * 100_000
                    assert await client.run_job("upper", "big", big) == big.upper()
                    await client.submit_job("upper", "queued", b"x")
                    await queued.wait()
                worker.stop()


@pytest.mark.parametrize("scheme", ["tls", "wss"])
async def test_a_server_certificate_from_an_unknown_ca_is_refused(pki: Pki, scheme: str) -> None:
    with trio.fail_after(LIMIT):
        async with tls_server(pki) as urls:
            # Default context: the system's CAs, which do not know ours.
            with pytest.raises(ConnectError, match="TLS handshake failed: certificate verify"):
                async with Client.connect(urls[scheme]):
                    pass  # pragma: no cover


async def test_http_api_over_https_and_on_the_tls_port(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        async with tls_server(pki) as urls:
            assert urls["https"].startswith("https://127.0.0.1:")
            async with Client.connect(urls["tls"], ssl_context=pki.context()) as client:
                await client.submit_job("mail", "a", later=3600)
            for url in (urls["https"], urls["tls"]):
                status, body = await https_get(port_of(url), "/api/status", pki.context())
                assert status == 200, body
                assert b'"mail"' in body


# ---------------------------------------------------------- client certificates


@pytest.mark.parametrize("scheme", ["tls", "wss"])
async def test_client_certificates_required(pki: Pki, scheme: str) -> None:
    with trio.fail_after(LIMIT):
        async with tls_server(pki, client_ca=True) as urls:
            url = urls[scheme]
            for refused in (None, pki.stranger):
                start = trio.current_time()
                with pytest.raises(ConnectError) as info:
                    async with Client.connect(url, ssl_context=pki.context(refused)):
                        pass  # pragma: no cover
                # Refused at once, not left to time out.
                assert "timed out" not in str(info.value)
                assert trio.current_time() - start < 5
            async with Client.connect(url, ssl_context=pki.context(pki.client)) as client:
                assert await client.ping() >= 0


async def test_https_requires_client_certificates_too(pki: Pki) -> None:
    with trio.fail_after(LIMIT):
        async with tls_server(pki, client_ca=True) as urls:
            port = port_of(urls["https"])
            assert await https_get(port, "/api/status", pki.context()) == (0, b"")
            status, _ = await https_get(port, "/api/status", pki.context(pki.client))
            assert status == 200


# ------------------------------------------------------- bad peers on TLS ports


@pytest.mark.parametrize("scheme", ["tls", "wss", "https"])
async def test_a_plain_text_client_is_closed_and_others_are_served(
    pki: Pki, scheme: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_periodic")
    with trio.fail_after(LIMIT):
        async with tls_server(pki) as urls:
            port = port_of(urls[scheme])
            # A peer that never starts a handshake must not hold up the others.
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            plain = await trio.open_tcp_stream("127.0.0.1", port)
            await plain.send_all(ClientConnection(Registration(ClientType.CLIENT)).initiate())
            reply = await read_to_end(plain)
            assert MAGIC_RES not in reply and b"HTTP/" not in reply
            local_port = plain.socket.getsockname()[1]
            lines = [r for r in caplog.records if f"127.0.0.1:{local_port}:" in r.getMessage()]
            assert len(lines) == 1
            assert "TLS handshake failed" in lines[0].getMessage()
            if scheme == "https":
                status, _ = await https_get(port, "/api/status", pki.context())
                assert status == 200
            else:
                async with Client.connect(urls[scheme], ssl_context=pki.context()) as client:
                    assert await client.ping() >= 0
            await silent.aclose()
            await plain.aclose()


async def test_a_silent_peer_is_closed_after_the_handshake_timeout(
    pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    handled: list[trio.SSLStream[trio.SocketStream]] = []

    async def handler(stream: trio.SSLStream[trio.SocketStream]) -> None:
        handled.append(stream)  # pragma: no cover - must not be reached

    listeners = wrap_listeners(
        await trio.open_tcp_listeners(0, host="127.0.0.1"), server_context(pki.server)
    )
    port = listeners[0].transport_listener.socket.getsockname()[1]
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            serve = after_handshake(handler, timeout=0.2)
            nursery.start_soon(trio.serve_listeners, serve, listeners)
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            assert await read_to_end(silent) == b""
            assert "no TLS handshake within 0.2 s" in caplog.text
            assert not handled
            nursery.cancel_scope.cancel()


# --------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    "hosts, http",
    [
        (["tls://127.0.0.1:0"], None),
        (["tcp://127.0.0.1:0", "wss://127.0.0.1:0/p"], None),
        (["tcp://127.0.0.1:0"], "https://127.0.0.1:0"),
    ],
)
def test_a_tls_listener_needs_a_certificate(hosts: list[str], http: str | None) -> None:
    with pytest.raises(ListenError, match="needs a certificate: give --tls-cert FILE"):
        Server(MemoryStore(), hosts, http=http)


def test_plain_listeners_need_no_certificate() -> None:
    srv = Server(MemoryStore(), ["tcp://127.0.0.1:0"], http="http://127.0.0.1:0")
    assert srv.ssl_context is None


def test_unusable_server_files_are_one_line_errors(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    cases = {
        (missing, None, None): f"cannot read TLS certificate {missing}: No such file",
        (pki.server_chain, missing, None): f"cannot read TLS key {missing}: No such file",
        # The chain alone has no key; the client's key does not match the chain.
        (pki.server_chain, None, None): "cannot use TLS certificate",
        (pki.server_chain, pki.client, None): "cannot use TLS certificate",
        (pki.server, None, pki.server_key): "cannot use TLS client CA file",
        (pki.server, None, missing): "cannot read TLS client CA file",
    }
    for (cert, key, client_ca), message in cases.items():
        with pytest.raises(ListenError) as info:
            Server(
                MemoryStore(),
                ["tls://127.0.0.1:0"],
                tls_cert=cert,
                tls_key=key,
                tls_client_ca=client_ca,
            )
        assert message in str(info.value)
        assert "\n" not in str(info.value)
    srv = Server(
        MemoryStore(), ["tls://127.0.0.1:0"], tls_cert=pki.server_chain, tls_key=pki.server_key
    )
    assert srv.ssl_context is not None


def test_unusable_client_files_are_one_line_errors(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(TlsError, match=f"cannot read TLS CA file {missing}: No such file"):
        TlsOptions(ca=missing).client_context()
    with pytest.raises(TlsError, match="cannot use TLS CA file"):
        TlsOptions(ca=pki.server_key).client_context()
    with pytest.raises(TlsError, match=f"cannot read TLS certificate {missing}"):
        TlsOptions(ca=pki.ca, cert=missing).client_context()
    with pytest.raises(TlsError, match="needs its certificate"):
        TlsOptions(key=pki.server_key)


# ---------------------------------------------------- periodicd and periodic


def run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def test_periodicd_with_tls_and_no_certificate_exits_1_with_one_line() -> None:
    daemon = [sys.executable, "-m", "trio_periodic.server.daemon", "-p", ":memory:"]
    result = run(*daemon, "-H", "tls://127.0.0.1:0", "--http", "off")
    assert result.returncode == 1
    assert result.stderr == (
        "periodicd: tls://127.0.0.1:0 needs a certificate: give --tls-cert FILE and "
        "--tls-key FILE\n"
    )
    result = run(*daemon, "-H", "tls://127.0.0.1:0", "--http", "off", "--tls-cert", "/nonexistent")
    assert result.returncode == 1
    assert result.stderr == (
        "periodicd: cannot read TLS certificate /nonexistent: No such file or directory\n"
    )


def test_periodic_cli_over_tls(pki: Pki) -> None:
    d = start_daemon(
        "-p", ":memory:", "-H", "tls://127.0.0.1:0",
        "--tls-cert", pki.server_chain, "--tls-key", pki.server_key,
    )  # fmt: skip
    worker: subprocess.Popen[str] | None = None
    try:
        url = _wait_for_tls_url(d.log)
        cli = [sys.executable, "-m", "trio_periodic", "-H", url]

        ok = run(*cli, "--tls-ca", pki.ca, "ping")
        assert ok.returncode == 0, ok.stderr

        untrusted = run(*cli, "ping")
        assert untrusted.returncode == 1
        assert untrusted.stderr.count("\n") == 1
        assert "certificate verify failed" in untrusted.stderr

        missing = run(*cli, "--tls-ca", "/nonexistent/ca.pem", "ping")
        assert missing.returncode == 1
        assert missing.stderr == (
            "periodic: cannot read TLS CA file /nonexistent/ca.pem: No such file or directory\n"
        )

        worker = subprocess.Popen(
            [*cli, "--tls-ca", pki.ca, "worker", "--work-data", "echo", "--",
             "sh", "-c", 'read input; echo "WORKDONE got:$input"'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert worker.stdout is not None
        assert worker.stdout.readline() == "Worker started.\n"
        result = run(*cli, "--tls-ca", pki.ca, "run", "echo", "x", "-w", "hello\n")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "Result: got:hello\n"
    finally:
        for proc in (worker, d.proc):
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()


def _wait_for_tls_url(log: list[str]) -> str:
    """The daemon announces tcp:// first (start_daemon waits for that), then tls://."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in list(log):
            if match := re.search(r"listening on (tls://127\.0\.0\.1:\d+)", line):
                return match.group(1)
        time.sleep(0.05)
    raise AssertionError("periodicd did not announce its tls:// listener:\n" + "".join(log))
