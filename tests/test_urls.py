"""One URL syntax for listeners and clients."""

from __future__ import annotations

import pytest

from trio_periodic.transport.listeners import ListenError, parse_http_address, parse_listen_url
from trio_periodic.transport.urls import PeriodicURL, URLError, parse_url


@pytest.mark.parametrize(
    "url, parsed",
    [
        ("tcp://127.0.0.1:5000", PeriodicURL("tcp", "127.0.0.1", 5000)),
        ("tcp://:5000", PeriodicURL("tcp", "", 5000)),
        ("tcp://[::1]:5000", PeriodicURL("tcp", "::1", 5000)),
        ("unix:///tmp/periodic.sock", PeriodicURL("unix", path="/tmp/periodic.sock")),
        ("ws://127.0.0.1:5001/periodic", PeriodicURL("ws", "127.0.0.1", 5001, "/periodic")),
        ("tls://127.0.0.1:5443", PeriodicURL("tls", "127.0.0.1", 5443)),
        ("tls://[::1]:5443", PeriodicURL("tls", "::1", 5443)),
        ("wss://example.org:443/periodic", PeriodicURL("wss", "example.org", 443, "/periodic")),
    ],
)
def test_parse_and_print(url: str, parsed: PeriodicURL) -> None:
    assert parse_url(url) == parsed
    assert str(parsed) == url


def test_wss_without_a_path_prints_without_one() -> None:
    assert parse_url("wss://h:443") == PeriodicURL("wss", "h", 443, "/")
    assert str(parse_url("wss://h:443")) == "wss://h:443"


@pytest.mark.parametrize("url", ["foo://bar", "other:///tmp/x.sock", "tsl://h:5000", "https://h:1"])
def test_unknown_schemes_are_errors_not_socket_paths(url: str) -> None:
    # The reference took any other scheme://PATH as a Unix socket path; a
    # misspelt tls:// must not quietly become a plain socket file instead.
    scheme = url.split("://")[0]
    expected = (
        f"unknown scheme '{scheme}' in '{url}' (expected tcp://, unix://, ws://, tls:// or wss://)"
    )
    with pytest.raises(URLError) as info:
        parse_url(url)
    assert str(info.value) == expected
    with pytest.raises(ListenError) as listen_info:
        parse_listen_url(url)
    assert str(listen_info.value) == expected


@pytest.mark.parametrize(
    "url",
    ["localhost", "tcp://host", "tcp://h:http", "tcp://h:70000", "unix://", "tls://h", "wss://h/p"],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(URLError):
        parse_url(url)


def test_listeners_may_ask_for_port_zero_and_clients_may_not() -> None:
    assert parse_listen_url("tcp://127.0.0.1:0").port == 0
    with pytest.raises(URLError):
        parse_url("tcp://127.0.0.1:0")
    with pytest.raises(ListenError, match="missing port"):
        parse_listen_url("tcp://127.0.0.1")
    assert parse_url("127.0.0.1:5000", bare=True) == PeriodicURL("tcp", "127.0.0.1", 5000)


def test_http_addresses() -> None:
    assert parse_http_address("127.0.0.1:8080") == (PeriodicURL("tcp", "127.0.0.1", 8080), False)
    assert parse_http_address("http://:8080") == (PeriodicURL("tcp", "", 8080), False)
    assert parse_http_address("https://[::1]:0") == (PeriodicURL("tcp", "::1", 0), True)
    with pytest.raises(ListenError, match="unknown scheme 'ftp' in HTTP address"):
        parse_http_address("ftp://h:21")


def test_clients_fill_in_the_host_for_tls_too() -> None:
    from trio_periodic.client import parse_url as client_parse_url

    assert client_parse_url("tls://:5443") == PeriodicURL("tls", "127.0.0.1", 5443)
    assert client_parse_url("wss://:443/p") == PeriodicURL("wss", "127.0.0.1", 443, "/p")
