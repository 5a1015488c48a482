"""Browsers across origins: the module for everyone, the API for listed origins
(``--http-cors``), WebSocket listeners for listed origins (``--ws-origin``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from test_http import FORM
from test_http_auth import ALICE, raw_head
from trio_websocket import ConnectionRejected, open_websocket_url

from trio_periodic.server.app import Server
from trio_periodic.server.daemon import app as periodicd_app
from trio_periodic.server.options import ServerOptions
from trio_periodic.server.origins import OriginError, OriginPolicy, normalize_origin, same_origin
from trio_periodic.store.memory import MemoryStore
from trio_periodic.transport.listeners import ListenError

PAGE = "http://127.0.0.1:9999"
OTHER = "http://evil.example"


@asynccontextmanager
async def serving(**kwargs: object) -> AsyncIterator[tuple[Server, list[str]]]:
    srv = Server(MemoryStore(), ["tcp://127.0.0.1:0"], http="127.0.0.1:0", **kwargs)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(srv.run)
        yield srv, bound
        nursery.cancel_scope.cancel()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


async def head_of(port: int, method: str, path: str, headers: dict[str, str]) -> dict[str, str]:
    raw = await raw_head(port, method, path, headers)
    lines = raw.decode("latin-1").split("\r\n")
    out = {"status": lines[0].split()[1]}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        out[key.strip().lower()] = value.strip()
    return out


def test_origins_are_normalized_as_browsers_send_them() -> None:
    assert normalize_origin("HTTP://Example.COM:80/") == "http://example.com"
    assert normalize_origin("https://a.b:8443") == "https://a.b:8443"
    assert normalize_origin("http://[::1]:8080") == "http://[::1]:8080"
    for bad in ("example.com", "http://a/path", "http://a?x=1", "http://u@a", "http://a:x"):
        with pytest.raises(OriginError):
            normalize_origin(bad)
    policy = OriginPolicy(["http://127.0.0.1:9999/"])
    assert policy.allows(b"http://127.0.0.1:9999") and not policy.allows("http://127.0.0.1:9998")
    assert policy.allows(None)  # not a browser: the origin list does not apply
    assert not OriginPolicy().allows("http://x") and OriginPolicy(["*"]).allows("http://x")
    assert OriginPolicy(empty_allows_all=True).allows("http://x")
    assert same_origin(b"http://127.0.0.1:8080", b"127.0.0.1:8080")
    assert same_origin("http://h", "h:80") and not same_origin("http://h:81", "h")
    assert not same_origin("null", "null") and not same_origin("http://h", None)


def test_both_flags_repeat_and_reach_the_options() -> None:
    parsed = periodicd_app.parse_args(
        ["--http-cors", PAGE, "--http-cors", "https://b", "--ws-origin", PAGE]
    )
    options = parsed[1].arguments["options"]
    assert options == ServerOptions(http_cors=(PAGE, "https://b"), ws_origin=(PAGE,))


async def test_bad_origin_is_a_startup_error() -> None:
    with pytest.raises(ListenError, match="not an origin"):
        Server(MemoryStore(), [], http_cors=["example.com"])


async def test_the_module_is_for_every_origin_the_api_for_listed_ones() -> None:
    with trio.fail_after(10):
        async with serving(http_cors=[PAGE]) as (_, bound):
            port = _port(bound[-1])
            for path in ("/periodic.js", "/periodic.d.ts"):
                got = await head_of(port, "GET", path, {"Origin": OTHER})
                assert got["status"] == "200" and got["access-control-allow-origin"] == "*"
            got = await head_of(port, "GET", "/periodic.js", {})
            assert got["x-typescript-types"] == "./periodic.d.ts"

            got = await head_of(port, "GET", "/api/funcs", {"Origin": PAGE})
            assert got["status"] == "200"
            assert got["access-control-allow-origin"] == PAGE
            assert got["access-control-allow-credentials"] == "true"
            assert "origin" in got["vary"].lower()
            got = await head_of(port, "GET", "/api/funcs", {"Origin": OTHER})
            assert got["status"] == "200" and "access-control-allow-origin" not in got

            preflight = {
                "Origin": PAGE,
                "Access-Control-Request-Method": "DELETE",
                "Access-Control-Request-Headers": "authorization",
            }
            got = await head_of(port, "OPTIONS", "/api/funcs/f", preflight)
            assert got["status"] == "204" and got["access-control-allow-origin"] == PAGE
            assert "DELETE" in got["access-control-allow-methods"]
            assert "Authorization" in got["access-control-allow-headers"]
            got = await head_of(port, "OPTIONS", "/api/funcs/f", {**preflight, "Origin": OTHER})
            assert got["status"] == "403" and "access-control-allow-origin" not in got


async def test_without_flag_no_origin_gets_cors_and_foreign_changes_are_refused() -> None:
    with trio.fail_after(10):
        async with serving() as (srv, bound):
            port = _port(bound[-1])
            got = await head_of(port, "GET", "/api/funcs", {"Origin": PAGE})
            assert got["status"] == "200" and "access-control-allow-origin" not in got
            preflight = {"Origin": PAGE, "Access-Control-Request-Method": "POST"}
            assert (await head_of(port, "OPTIONS", "/", preflight))["status"] == "403"
            # A form another site posts (no preflight for a form): refused, nothing stored.
            form = {**FORM, "Origin": OTHER, "Content-Length": "0"}
            assert (await head_of(port, "POST", "/?func=f&name=x", form))["status"] == "403"
            assert srv.core.dump() == []
            # The server's own pages (Origin = the Host it was asked as) may change things,
            # and so may programs that send no Origin.
            own = {**FORM, "Origin": f"http://127.0.0.1:{port}", "Host": f"127.0.0.1:{port}"}
            assert (await head_of(port, "POST", "/?func=f&name=x", own))["status"] == "200"
            assert (await head_of(port, "POST", "/?func=f&name=y", FORM))["status"] == "200"
            assert len(srv.core.dump()) == 2


async def test_cors_answers_carry_auth_errors_readably(tmp_path: Path) -> None:
    rules = tmp_path / "auth.txt"
    rules.write_text("client alice a-token mail\n")
    with trio.fail_after(10):
        async with serving(http_cors=[PAGE], auth_file=str(rules)) as (_, bound):
            port = _port(bound[-1])
            # The preflight has no credentials (browsers never send them there).
            preflight = {"Origin": PAGE, "Access-Control-Request-Method": "GET"}
            assert (await head_of(port, "OPTIONS", "/api/funcs", preflight))["status"] == "204"
            got = await head_of(port, "GET", "/api/funcs", {"Origin": PAGE})
            assert got["status"] == "401" and got["access-control-allow-origin"] == PAGE
            got = await head_of(port, "GET", "/api/funcs", {"Origin": PAGE, **ALICE})
            assert got["status"] == "200"


async def test_ws_origin_restricts_browsers_only() -> None:
    srv = Server(MemoryStore(), ["ws://127.0.0.1:0"], ws_origins=[PAGE])
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            [url] = await nursery.start(srv.run)
            async with open_websocket_url(url, extra_headers=[(b"Origin", PAGE.encode())]):
                pass
            async with open_websocket_url(url):  # Node and Python clients send no Origin
                pass
            with pytest.raises(ConnectionRejected) as rejected:
                async with open_websocket_url(url, extra_headers=[(b"Origin", OTHER.encode())]):
                    pass
            assert rejected.value.status_code == 403
            nursery.cancel_scope.cancel()
