"""With an auth file, the HTTP API asks for an identity on both doors (real sockets)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from test_http import FORM, http

from trio_periodic.protocol.job import Job
from trio_periodic.server.app import Server
from trio_periodic.server.auth import FailureLog
from trio_periodic.store.memory import MemoryStore

RULES = """\
client  alice  a-token  mail,sms
worker  bob    b-token  mail
admin   root   r-token  any
"""


def basic(name: str, token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{name}:{token}".encode()).decode()}


ALICE = basic("alice", "a-token")
ROOT = basic("root", "r-token")


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[Server, int, int]]:
    """A server with an auth file: (server, protocol port, --http port)."""
    rules = tmp_path / "auth.txt"
    rules.write_text(RULES)
    srv = Server(MemoryStore(), ["tcp://127.0.0.1:0"], http="127.0.0.1:0", auth_file=str(rules))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(srv.run)
        ports = [int(url.rsplit(":", 1)[1]) for url in bound]
        yield srv, ports[0], ports[-1]
        nursery.cancel_scope.cancel()


async def raw_head(port: int, method: str, path: str, headers: dict[str, str]) -> bytes:
    hdrs = {"Host": "x", "Connection": "close", "Content-Length": "0", **headers}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(head.encode() + b"\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[0]


@pytest.mark.parametrize("door", ["http", "protocol"])
async def test_no_or_wrong_credentials_change_nothing(
    guarded: tuple[Server, int, int], door: str
) -> None:
    srv, tcp_port, http_port = guarded
    port = http_port if door == "http" else tcp_port
    srv.core.submit(Job(b"mail", b"keep"), 0)
    attempts = [
        ("POST", "/", b"func=evil&name=x", FORM),
        ("GET", "/", b"", {}),
        ("DELETE", "/mail", b"", {}),
        ("GET", "/metrics", b"", {}),
        ("GET", "/dashboard", b"", {}),
        ("GET", "/api/status", b"", {}),
        ("POST", "/periodic/submit/evil/x/", b"", {}),
        ("POST", "/periodic/drop/mail/", b"", {}),
    ]
    for method, path, body, headers in attempts:
        for creds in ({}, basic("alice", "wrong"), basic("mallory", "a-token")):
            status, reply = await http(port, method, path, body, {**headers, **creds})
            assert status == 401, (method, path, creds, reply)
    head = await raw_head(port, "GET", "/", {})
    assert b'WWW-Authenticate: Basic realm="periodic"' in head
    assert [(j.func, j.name) for j in srv.core.dump()] == [(b"mail", b"keep")]


async def test_rights_follow_the_binary_rules(guarded: tuple[Server, int, int]) -> None:
    srv, _, port = guarded
    # A listed function: allowed; another: 403 and nothing stored.
    assert (await http(port, "POST", "/", b"func=mail&name=a", {**FORM, **ALICE}))[0] == 200
    assert (await http(port, "POST", "/", b"func=evil&name=b", {**FORM, **ALICE}))[0] == 403
    assert (await http(port, "POST", "/periodic/submit/evil/c/", b"", ALICE))[0] == 403
    assert (await http(port, "POST", "/periodic/submit/sms/c/", b"w", ALICE))[0] == 204
    assert sorted(j.name for j in srv.core.dump()) == [b"a", b"c"]
    # Status shows only the identity's functions.
    assert (await http(port, "POST", "/", b"func=other&name=o", {**FORM, **ROOT}))[0] == 200
    status, body = await http(port, "GET", "/", headers=ALICE)
    assert status == 200 and set(json.loads(body)) == {"mail", "sms"}
    status, body = await http(port, "GET", "/", headers=ROOT)
    assert set(json.loads(body)) == {"mail", "sms", "other"}
    assert (await http(port, "GET", "/other", headers=ALICE))[0] == 403
    status, body = await http(port, "GET", "/api/status", headers=ALICE)
    assert {row["func"] for row in json.loads(body)} == {"mail", "sms"}
    status, body = await http(port, "GET", "/metrics", headers=ALICE)
    assert status == 200 and b"other" not in body and b'func="mail"' in body
    status, text = await http(port, "GET", "/periodic/status/", headers=ALICE)
    assert status == 200 and b"other" not in text and b"mail" in text
    # Drop and remove need the function listed.
    assert (await http(port, "DELETE", "/other", headers=ALICE))[0] == 403
    assert (await http(port, "POST", "/periodic/remove/other/o/", headers=ALICE))[0] == 403
    assert (await http(port, "POST", "/", b"func=other&name=o&act=remove", {**FORM, **ALICE}))[
        0
    ] == 403
    assert b"o" in {j.name for j in srv.core.dump()}
    assert (await http(port, "POST", "/", b"func=other&name=o&act=remove", {**FORM, **ROOT}))[
        0
    ] == 200
    # The dashboard needs an identity, any identity.
    assert (await http(port, "GET", "/dashboard", headers=ALICE))[0] == 200


async def test_the_client_library_code_is_public(guarded: tuple[Server, int, int]) -> None:
    _, tcp_port, http_port = guarded
    for port in (http_port, tcp_port):
        status, body = await http(port, "GET", "/periodic.js")
        assert status == 200 and b"export" in body


async def test_failed_attempts_do_not_flood_the_log(caplog: pytest.LogCaptureFixture) -> None:
    failures = FailureLog(interval=3600)
    for i in range(500):
        failures.note("http", f"10.0.0.{i % 250}", "no credentials")
    lines = [r for r in caplog.records if "authentication failed" in r.getMessage()]
    assert len(lines) == 1
