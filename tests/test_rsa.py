"""The RSA / AES transport end to end: our server with --rsa-* keys, our client
and worker in every mode, bad peers, key directories, the command lines, and
aio_periodic 1.0.0's legacy handshake.  Keys come from ``periodic keygen``
(the reference's PKCS#1 PEM)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from conftest import DaemonProcess, run_asyncio, start_daemon

from trio_periodic import Client, Job, Worker
from trio_periodic.cli import UsageError, parse
from trio_periodic.cli.invocation import Serve, WorkerCmd
from trio_periodic.cli.keygen import generate_key_files
from trio_periodic.client import ConnectError, RsaKeyError, RsaMode, RsaOptions
from trio_periodic.protocol.connection import ClientConnection
from trio_periodic.protocol.constants import ClientType
from trio_periodic.protocol.frames import Registration
from trio_periodic.server.app import Server
from trio_periodic.store.memory import MemoryStore
from trio_periodic.transport.listeners import ListenError
from trio_periodic.transport.rsa import stream as rsa_stream
from trio_periodic.transport.rsa.keys import fingerprint, load_public_keys, oaep_encrypt
from trio_periodic.transport.rsa.session import PlainSession
from trio_periodic.transport.rsa.stream import ClientKeys, RsaStream, client_handshake
from trio_periodic.transport.streams import ByteFrameStream

LIMIT = 30


@dataclass
class Keys:
    """``periodic keygen`` pairs: the server (2048 bits), clients a and b
    (authorised), a stranger (not); ``authorised`` is a directory with a.pem
    and ab.pem (b's key after a's, two PEM blocks in one file)."""

    dir: Path
    server_private: str
    server_public: str
    authorised: str

    def private(self, who: str) -> str:
        return str(self.dir / f"{who}_private_key.pem")

    def public(self, who: str) -> str:
        return str(self.dir / f"{who}_public_key.pem")

    def options(self, who: str, mode: RsaMode = RsaMode.AES, **kw: Any) -> RsaOptions:
        return RsaOptions(self.private(who), self.server_public, mode, **kw)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("rsa")
    server_private, server_public = generate_key_files(str(d / "server"), 256)
    for who in ("a", "b", "stranger"):
        generate_key_files(str(d / who), 128)  # 1024 bits: another block size than the server's
    authorised = d / "authorised"
    authorised.mkdir()
    (authorised / "a.pem").write_bytes((d / "a_public_key.pem").read_bytes())
    (authorised / "ab.pem").write_bytes(
        (d / "a_public_key.pem").read_bytes() + (d / "b_public_key.pem").read_bytes()
    )
    (authorised / "README").write_text("only *.pem files are read")
    return Keys(d, str(server_private), str(server_public), str(authorised))


@asynccontextmanager
async def rsa_server(
    keys: Keys, tmp_path: Path, *, public: str | None = None, allow_legacy: bool = False
) -> AsyncIterator[tuple[str, str]]:
    """A server requiring RSA on tcp:// and unix://; yields (tcp URL, unix URL)."""
    sock = tmp_path / "p.sock"
    srv = Server(
        MemoryStore(),
        ["tcp://127.0.0.1:0", f"unix://{sock}"],
        rsa_private_path=keys.server_private,
        rsa_public_path=public or keys.authorised,
        rsa_allow_legacy=allow_legacy,
    )
    async with trio.open_nursery() as nursery:
        bound: list[str] = await nursery.start(srv.run)
        yield bound[0], bound[1]
        nursery.cancel_scope.cancel()


async def read_to_end(stream: trio.abc.Stream) -> bytes:
    data = b""
    try:
        while chunk := await stream.receive_some(65536):
            data += chunk
    except trio.BrokenResourceError:
        pass
    return data


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def lines_about(caplog: pytest.LogCaptureFixture, stream: trio.SocketStream) -> list[str]:
    """The server's log lines about the peer at ``stream``'s local address."""
    port = stream.socket.getsockname()[1]
    return [r.getMessage() for r in caplog.records if f"127.0.0.1:{port}:" in r.getMessage()]


# ----------------------------------------------------------------- end to end


@pytest.mark.parametrize(
    ("mode", "size"),
    [(RsaMode.PLAIN, 1_000_000), (RsaMode.RSA, 60_000), (RsaMode.AES, 3_000_000)],
)
async def test_client_and_worker_in_every_mode(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: RsaMode, size: int
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_periodic.transport.rsa")
    seen: list[str] = []

    async def upper(job: Job) -> bytes:
        seen.append(job.name)
        return job.workload.upper()

    with trio.fail_after(LIMIT):
        async with rsa_server(keys, tmp_path) as (tcp, unix):
            # The worker on the Unix socket with key a, the client on TCP with b.
            worker = Worker(unix, rsa=keys.options("a", mode))
            worker.add_func("upper", upper)
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.work, 2)
                async with Client.connect(tcp, rsa=keys.options("b", mode)) as client:
                    await client.submit_job("upper", "queued", b"x")
                    assert await client.run_job("upper", "now", b"hello") == b"HELLO"
                    # Many AES frames / RSA blocks each way, and a reply the
                    # server writes in one go.
                    big = bytes(range(97, 123)) * (size // 26)
                    assert await client.run_job("upper", "big", big, timeout=20) == big.upper()
                    assert "queued" in seen
                worker.stop()
    done = [r.getMessage() for r in caplog.records if "RSA handshake done" in r.getMessage()]
    assert len(done) == 2 and all(line.endswith(f"mode {mode.label}") for line in done)


async def test_our_legacy_client_needs_a_server_that_allows_it(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_periodic")
    with trio.fail_after(LIMIT):
        async with rsa_server(keys, tmp_path) as (tcp, _):
            with pytest.raises(ConnectError, match="RSA handshake failed"):
                async with Client.connect(tcp, rsa=keys.options("a", legacy=True)):
                    pass  # pragma: no cover
            assert "legacy" in caplog.text and "does not accept" in caplog.text
        async with rsa_server(keys, tmp_path, allow_legacy=True) as (tcp, _):
            for mode in RsaMode:
                async with Client.connect(tcp, rsa=keys.options("a", mode, legacy=True)) as client:
                    await client.submit_job("f", "j", b"w" * 5000)
                    assert [s.jobs for s in await client.status()] == [1]


# ------------------------------------------------------------------- bad peers


async def test_an_unauthorised_key_is_refused_and_others_go_on(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_periodic")
    with trio.fail_after(LIMIT):
        async with rsa_server(keys, tmp_path) as (tcp, unix):
            async with Client.connect(tcp, rsa=keys.options("a")) as before:
                for url in (tcp, unix):
                    with pytest.raises(ConnectError, match=r"RSA handshake failed.*authorised"):
                        async with Client.connect(url, rsa=keys.options("stranger")):
                            pass  # pragma: no cover
                refusals = [r for r in caplog.records if "not authorised" in r.getMessage()]
                assert len(refusals) == 2 and refusals[0].levelno == logging.WARNING
                assert await before.ping() >= 0
            async with Client.connect(unix, rsa=keys.options("b", RsaMode.RSA)) as after:
                assert await after.ping() >= 0


@pytest.mark.parametrize(
    ("sent", "logged"),
    [
        (os.urandom(256), "RSA handshake failed: the first block does not decrypt"),
        (os.urandom(100), "RSA handshake failed: closed during the handshake"),
        (
            ClientConnection(Registration(ClientType.CLIENT)).initiate(),
            "no RSA handshake within 0.3 s (it looks like a Periodic client without RSA)",
        ),
        (
            b"GET /api/status HTTP/1.1\r\n\r\n",
            "no RSA handshake within 0.3 s (it looks like an HTTP",
        ),
    ],
    ids=["garbage-block", "half-a-block", "plain-periodic", "plain-http"],
)
async def test_bad_handshake_bytes_close_only_that_connection(
    keys: Keys,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    sent: bytes,
    logged: str,
) -> None:
    caplog.set_level(logging.INFO, logger="trio_periodic")
    monkeypatch.setattr(rsa_stream, "HANDSHAKE_TIMEOUT", 0.3)
    with trio.fail_after(LIMIT):
        async with (
            rsa_server(keys, tmp_path) as (tcp, _),
            Client.connect(tcp, rsa=keys.options("a")) as client,
        ):
            peer = await trio.open_tcp_stream("127.0.0.1", port_of(tcp))
            await peer.send_all(sent)
            if len(sent) == 100:
                await peer.send_eof()
            assert await read_to_end(peer) == b""  # closed, nothing said
            lines = lines_about(caplog, peer)
            assert len(lines) == 1 and logged in lines[0], lines
            await peer.aclose()
            assert await client.ping() >= 0


async def test_a_bad_client_proof_is_refused(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Knowing an authorised public key is not enough: the proof needs its private key."""
    caplog.set_level(logging.INFO, logger="trio_periodic")
    (server_pub,) = load_public_keys(keys.server_public)
    (a_pub,) = load_public_keys(keys.public("a"))
    with trio.fail_after(LIMIT):
        async with rsa_server(keys, tmp_path) as (tcp, _):
            peer = await trio.open_tcp_stream("127.0.0.1", port_of(tcp))
            # A hello with a's fingerprint (public knowledge) ...
            await peer.send_all(oaep_encrypt(server_pub, fingerprint(a_pub) + os.urandom(16)))
            # ... and, as we cannot read the challenge sent to a's key, a guessed proof.
            await peer.send_all(oaep_encrypt(server_pub, os.urandom(32)))
            assert len(await read_to_end(peer)) == 3 * 128  # the three blocks to a, then EOF
            lines = lines_about(caplog, peer)
            assert len(lines) == 1 and "wrong proof for client key" in lines[0], lines


# --------------------------------------------------------------- keys on disk


async def test_authorised_keys_are_read_for_every_connection(
    keys: Keys, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_periodic")
    d = tmp_path / "keys"
    d.mkdir()
    pem = {who: Path(keys.public(who)).read_bytes() for who in "ab"}  # noqa: ASYNC240
    (d / "a.pem").write_bytes(pem["a"])

    async def admitted(who: str, url: str) -> bool:
        try:
            async with Client.connect(url, rsa=keys.options(who)) as client:
                await client.ping()
        except ConnectError:
            return False
        return True

    with trio.fail_after(LIMIT):
        async with rsa_server(keys, tmp_path, public=str(d)) as (tcp, _):
            assert await admitted("a", tcp)
            assert not await admitted("b", tcp)
            (d / "b.pem").write_bytes(pem["b"])
            assert await admitted("b", tcp)
            (d / "a.pem").unlink()
            assert not await admitted("a", tcp)
            # A file that became unusable refuses everyone, with the reason logged.
            (d / "broken.pem").write_text("not a key")
            assert not await admitted("b", tcp)
            assert "cannot use RSA public key file" in caplog.text
            (d / "broken.pem").unlink()
            assert await admitted("b", tcp)


async def test_plain_mode_hands_back_the_socket_itself(keys: Keys, tmp_path: Path) -> None:
    """After a Plain handshake nothing is left to decrypt: the socket stream itself
    carries on (and keeps the server's fast path); other modes wrap it.  Either
    way the server routes what follows as on a plain port (here: HTTP)."""
    with trio.fail_after(LIMIT):
        async with rsa_server(keys, tmp_path) as (tcp, _):
            for mode in RsaMode:
                raw = await trio.open_tcp_stream("127.0.0.1", port_of(tcp))
                stream = await client_handshake(raw, ClientKeys.load(keys.options("a", mode)))
                assert (stream is raw) == (mode is RsaMode.PLAIN)
                await stream.send_all(
                    b"GET /api/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                assert (await read_to_end(stream)).startswith(b"HTTP/1.1 200 ")
                await stream.aclose()


async def test_the_raw_socket_fast_path_is_off_over_rsa() -> None:
    """ByteFrameStream.try_send writes to the socket directly: over the RSA
    transport that would put plain bytes on the wire, so it must send nothing."""
    left, _right = trio.testing.memory_stream_pair()
    frames = ByteFrameStream(RsaStream(left, PlainSession()), "peer")
    assert frames.try_send(b"frame") == 0
    a, b = trio.socket.socketpair()
    with a, b:
        sock = ByteFrameStream(trio.SocketStream(a), "peer")
        assert sock.try_send(b"frame") == 5  # the fast path exists for bare sockets


# ------------------------------------------------------------- startup errors


def test_unusable_key_files_stop_the_server(keys: Keys, tmp_path: Path) -> None:
    def server(private: str | None, public: str | None = None, **kw: bool) -> Server:
        return Server(
            MemoryStore(),
            ["tcp://127.0.0.1:0"],
            rsa_private_path=private,
            rsa_public_path=public,
            **kw,
        )

    with pytest.raises(ListenError, match=r"cannot read RSA private key .*missing"):
        server(str(tmp_path / "missing"), keys.authorised)
    with pytest.raises(ListenError, match="cannot use RSA private key"):
        server(keys.server_public, keys.authorised)
    with pytest.raises(ListenError, match=r"cannot read RSA public key file .*missing"):
        server(keys.server_private, str(tmp_path / "missing"))
    with pytest.raises(ListenError, match="need --rsa-private-path"):
        server(None, keys.authorised)
    with pytest.raises(ListenError, match="need --rsa-private-path"):
        server(None, rsa_allow_legacy=True)
    assert server(None).rsa is None


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_periodicd_with_an_unusable_key_exits_1_with_one_line(keys: Keys) -> None:
    result = run(
        sys.executable,
        "-m",
        "trio_periodic.server.daemon",
        "-H",
        "tcp://127.0.0.1:0",
        "-p",
        ":memory:",
        "--http",
        "off",
        "--rsa-private-path",
        keys.server_public,
        "--rsa-public-path",
        keys.authorised,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        f"periodicd: cannot use RSA private key {keys.server_public}:"
    ), result.stderr


def test_our_client_reports_unusable_key_files(keys: Keys, tmp_path: Path) -> None:
    async def connect(url: str, options: RsaOptions) -> None:
        with trio.fail_after(LIMIT):
            async with Client.connect(url, rsa=options):
                pass  # pragma: no cover

    nobody = "tcp://127.0.0.1:1"  # never reached: the keys are read first
    with pytest.raises(RsaKeyError, match="cannot read RSA private key"):
        trio.run(connect, nobody, RsaOptions(str(tmp_path / "missing"), keys.server_public))
    with pytest.raises(RsaKeyError, match=r"cannot read RSA public key file public_key\.pem"):
        trio.run(connect, nobody, RsaOptions(keys.private("a")))
    with pytest.raises(ConnectError, match="tcp:// and unix:// only"):
        trio.run(connect, "ws://127.0.0.1:1", keys.options("a"))


# ------------------------------------------------------------- command lines


def test_rsa_global_options_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    inv = parse(["--rsa-private-path", "me.pem", "ping"])
    assert inv is not None and inv.globals.rsa == RsaOptions(
        "me.pem", "public_key.pem", RsaMode.AES
    )
    inv = parse(
        ["--rsa-mode", "rsa", "--rsa-public-path", "s.pem", "--rsa-private-path", "m", "ping"]
    )
    assert inv is not None and inv.globals.rsa == RsaOptions("m", "s.pem", RsaMode.RSA)
    inv = parse(["ping"])
    assert inv is not None and inv.globals.rsa is None
    with pytest.raises(UsageError, match="need --rsa-private-path"):
        parse(["--rsa-mode", "AES", "ping"])
    with pytest.raises(UsageError, match="unknown RSA mode"):
        parse(["--rsa-mode", "XOR", "--rsa-private-path", "m", "ping"])
    # FUNC is still found after the global options that take a value.
    inv = parse(["--rsa-private-path", "m", "worker", "f", "cmd", "-x"])
    assert inv is not None and isinstance(inv.command, WorkerCmd)
    assert inv.command.command == ("cmd", "-x") and inv.globals.rsa is not None
    monkeypatch.setenv("PERIODIC_RSA_MODE", "Plain")
    monkeypatch.setenv("PERIODIC_RSA_PRIVATE_PATH", "env.pem")
    inv = parse(["status"])
    assert inv is not None and inv.globals.rsa == RsaOptions("env.pem", mode=RsaMode.PLAIN)


def test_server_rsa_flags_parse() -> None:
    inv = parse(
        ["serve", "--rsa-private-path", "k", "--rsa-public-path", "d", "--rsa-allow-legacy"]
    )
    assert inv is not None and isinstance(inv.command, Serve)
    options = inv.command.options
    assert (options.rsa_private_path, options.rsa_public_path) == ("k", "d")
    assert options.rsa_allow_legacy
    # periodic -d: the keys are the server's.
    inv = parse(["-d", "--rsa-private-path", "k", "--rsa-public-path", "d"])
    assert inv is not None and isinstance(inv.command, Serve)
    assert inv.command.options.rsa_private_path == "k"
    assert inv.command.options.rsa_public_path == "d"


@pytest.fixture
def rsa_daemon(keys: Keys) -> Any:
    d = start_daemon(
        "-p",
        ":memory:",
        "--rsa-private-path",
        keys.server_private,
        "--rsa-public-path",
        keys.authorised,
        "--rsa-allow-legacy",
    )
    try:
        yield d
    finally:
        d.proc.terminate()
        d.proc.wait(10)


def periodic(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(sys.executable, "-m", "trio_periodic.cli", *args, env=env)


def test_periodic_cli_against_periodicd_with_keys(keys: Keys, rsa_daemon: DaemonProcess) -> None:
    url = rsa_daemon.url
    ok = periodic(
        "-H",
        url,
        "--rsa-mode",
        "AES",
        "--rsa-public-path",
        keys.server_public,
        "--rsa-private-path",
        keys.private("a"),
        "ping",
    )
    assert ok.returncode == 0, ok.stderr
    env = {
        "PERIODIC_RSA_MODE": "RSA",
        "PERIODIC_RSA_PUBLIC_PATH": keys.server_public,
        "PERIODIC_RSA_PRIVATE_PATH": keys.private("b"),
    }
    submitted = periodic("-H", url, "submit", "f", "j", "-w", "data", env=env)
    assert submitted.returncode == 0, submitted.stderr
    status = periodic("-H", url, "status", env={**env, "PERIODIC_RSA_MODE": "Plain"})
    assert status.returncode == 0 and status.stdout.splitlines()[1].split()[:3] == ["f", "0", "1"]
    refused = periodic(
        "-H",
        url,
        "--rsa-public-path",
        keys.server_public,
        "--rsa-private-path",
        keys.private("stranger"),
        "ping",
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("periodic: cannot connect to") and (
        "RSA handshake failed" in refused.stderr
    )
    assert any("not authorised" in line for line in rsa_daemon.log)
    bad_mode = periodic("--rsa-mode", "DES", "--rsa-private-path", keys.private("a"), "ping")
    assert bad_mode.returncode == 2 and "unknown RSA mode 'DES'" in bad_mode.stderr


# ------------------------------------------------------- aio_periodic (legacy)


def test_aio_periodic_legacy_rsa_transport(keys: Keys, rsa_daemon: DaemonProcess) -> None:
    """aio_periodic 1.0.0 speaks the pre-1.2.8 handshake and tag-less AES frames;
    periodicd --rsa-allow-legacy serves it in every mode, big payloads included."""
    from aio_periodic import Client as AioClient
    from aio_periodic import RSAMode, RSATransport, Transport
    from aio_periodic import Worker as AioWorker

    async def upper(job: Any) -> Any:
        return job.workload.upper()

    async def scenario() -> None:
        conns: list[Any] = []
        try:
            for mode in (RSAMode.Plain, RSAMode.RSA, RSAMode.AES):

                def transport(who: str, mode: RSAMode = mode) -> RSATransport:
                    return RSATransport(
                        Transport(rsa_daemon.address), keys.private(who), keys.server_public, mode
                    )

                worker = AioWorker()
                conns.append(worker)
                assert await worker.connect(transport("a"))
                await worker.add_func(f"up{mode.value}", upper)
                task = asyncio.create_task(worker.work(2))
                client = AioClient()
                conns.append(client)
                assert await client.connect(transport("b"))
                assert await client.ping()
                big = b"abc" * 20_000
                result = await client.run_job(f"up{mode.value}", "x", workload=big)
                assert result == big.upper()
                task.cancel()
        finally:
            for conn in conns:
                conn.start_connect = lambda: None
                conn.close()
            await asyncio.sleep(0)

    run_asyncio(scenario(), LIMIT)
    assert not [line for line in rsa_daemon.log if "Traceback" in line]
