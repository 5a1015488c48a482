"""The auth file (--auth-file): parsing, reloading, and C59 over real sockets."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from rawclient import RawConn

from trio_periodic.protocol import packets as p
from trio_periodic.protocol.constants import ClientType
from trio_periodic.protocol.job import Job
from trio_periodic.server.app import Server
from trio_periodic.server.auth import AuthFileError, parse_auth_file
from trio_periodic.store.memory import MemoryStore

RULES = """\
# role   name      token    funcs
client   client-a  token-a  mail,sms
worker   worker-a  token-w  mail
  admin  root      secret   any    # admins need a placeholder func
client   client-a  token-a  mail,sms,push
"""


def test_parse_rules() -> None:
    ids = parse_auth_file(RULES)
    assert set(ids) == {b"client-a", b"worker-a", b"root"}
    assert ids[b"client-a"].funcs == {b"mail", b"sms", b"push"}  # the later line wins
    assert ids[b"root"].is_admin and not ids[b"worker-a"].is_admin


@pytest.mark.parametrize(
    "line, message",
    [
        ("client a t", "expected 4 fields"),
        ("boss a t f", "role must be"),
        ("client a t ,,", "at least one function"),
        ("client a t " + "x" * 256, "255 bytes"),
    ],
)
def test_invalid_line_invalidates_the_file(line: str, message: str) -> None:
    with pytest.raises(AuthFileError, match=message):
        parse_auth_file(RULES + line + "\n", "rules")


@pytest.fixture
async def auth_server(tmp_path: Path) -> AsyncIterator[tuple[Server, tuple[str, int], Path]]:
    path = tmp_path / "auth.txt"
    path.write_text(RULES)
    srv = Server(MemoryStore(), ["tcp://127.0.0.1:0"], auth_file=str(path))
    async with trio.open_nursery() as nursery:
        [url] = await nursery.start(srv.run)
        yield srv, ("127.0.0.1", int(url.rsplit(":", 1)[1])), path
        nursery.cancel_scope.cancel()


async def test_c59_identities_roles_and_functions(auth_server) -> None:  # type: ignore[no-untyped-def]
    srv, address, _ = auth_server
    with trio.fail_after(10):
        anonymous = await RawConn.open(address)
        assert isinstance(await anonymous.request(1, p.Ping()), p.NoWorker)
        wrong = await RawConn.open(address, ClientType.AUTH_CLIENT, b"client-a", b"nope")
        assert isinstance(await wrong.request(1, p.Ping()), p.NoWorker)
        client = await RawConn.open(address, ClientType.AUTH_CLIENT, b"client-a", b"token-a")
        assert isinstance(await client.request(1, p.Ping()), p.Pong)
        assert isinstance(await client.request(2, p.SubmitJob(Job(b"mail", b"m"))), p.Success)
        assert isinstance(await client.request(3, p.SubmitJob(Job(b"other", b"o"))), p.NoWorker)
        assert [j.func for j in srv.core.dump()] == [b"mail"]
        root = await RawConn.open(address, ClientType.AUTH_CLIENT, b"root", b"secret")
        assert isinstance(await root.request(1, p.SubmitJob(Job(b"other", b"o"))), p.Success)
        mine = await client.request(4, p.Status())
        assert isinstance(mine, p.Data) and mine.data.startswith(b"mail,0,1,")
        assert b"other" not in mine.data
        everything = await root.request(2, p.Status())
        assert isinstance(everything, p.Data) and everything.data.count(b"\n") == 1
        # a client identity may not register as a worker; a worker identity may
        as_worker = await RawConn.open(address, ClientType.AUTH_WORKER, b"client-a", b"token-a")
        assert isinstance(await as_worker.request(1, p.Ping()), p.NoWorker)
        worker = await RawConn.open(address, ClientType.AUTH_WORKER, b"worker-a", b"token-w")
        assert isinstance(await worker.request(1, p.CanDo(b"mail")), p.Success)
        assert isinstance(await worker.request(2, p.CanDo(b"sms")), p.NoWorker)
        assert isinstance(await worker.request(4, p.Load([Job(b"sms", b"l")])), p.NoWorker)
        # Stricter than the reference: SHUTDOWN, DUMP, LOAD and CONFIG_SET are admin-only,
        # even for functions the identity lists.
        assert isinstance(await worker.request(3, p.Load([Job(b"mail", b"l")])), p.NoWorker)
        assert isinstance(await client.request(5, p.Dump()), p.NoWorker)
        assert isinstance(await client.request(6, p.ConfigSet(b"timeout", 9)), p.NoWorker)
        assert isinstance(await client.request(7, p.Shutdown()), p.NoWorker)
        assert isinstance(await client.request(8, p.ConfigGet(b"timeout")), p.Config)
        assert isinstance(await root.request(3, p.Load([Job(b"mail", b"l")])), p.Success)
        assert isinstance(await root.request(4, p.Dump()), p.Data)


async def test_rules_reload_and_a_bad_file_keeps_them(auth_server) -> None:  # type: ignore[no-untyped-def]
    _, address, path = auth_server
    with trio.fail_after(10):
        newcomer = await RawConn.open(address, ClientType.AUTH_CLIENT, b"new", b"tok")
        assert isinstance(await newcomer.request(1, p.Ping()), p.NoWorker)
        path.write_text(RULES + "client new tok mail\n")
        os.utime(path, (1, 1))  # a distinct mtime even within one clock tick
        for _ in range(40):
            if isinstance(await newcomer.request(2, p.Ping()), p.Pong):
                break
            await trio.sleep(0.1)
        else:
            pytest.fail("the changed auth file was not picked up")
        path.write_text("this line is not valid\n")
        os.utime(path, (2, 2))
        await trio.sleep(1.5)
        assert isinstance(await newcomer.request(3, p.Ping()), p.Pong)  # old rules kept


def test_invalid_auth_file_stops_the_daemon(tmp_path: Path) -> None:
    bad = tmp_path / "auth.txt"
    bad.write_text("client only-three fields\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "trio_periodic.server.daemon",
            "-p",
            ":memory:",
            "-H",
            "tcp://127.0.0.1:0",
            "--http",
            "off",
            "--auth-file",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1
    assert "expected 4 fields" in proc.stderr and "Traceback" not in proc.stderr
