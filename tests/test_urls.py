"""One URL syntax for listeners and clients."""

from __future__ import annotations

import pytest

from trio_periodic.transport.listeners import ListenError, parse_listen_url
from trio_periodic.transport.urls import PeriodicURL, URLError, parse_url


@pytest.mark.parametrize(
    "url, parsed",
    [
        ("tcp://127.0.0.1:5000", PeriodicURL("tcp", "127.0.0.1", 5000)),
        ("tcp://:5000", PeriodicURL("tcp", "", 5000)),
        ("tcp://[::1]:5000", PeriodicURL("tcp", "::1", 5000)),
        ("unix:///tmp/periodic.sock", PeriodicURL("unix", path="/tmp/periodic.sock")),
        ("other:///tmp/x.sock", PeriodicURL("unix", path="/tmp/x.sock")),  # as the reference
        ("ws://127.0.0.1:5001/periodic", PeriodicURL("ws", "127.0.0.1", 5001, "/periodic")),
    ],
)
def test_parse_and_print(url: str, parsed: PeriodicURL) -> None:
    assert parse_url(url) == parsed
    if url.startswith(("tcp", "unix", "ws")):
        assert str(parsed) == url


@pytest.mark.parametrize(
    "url", ["localhost", "tcp://host", "tcp://h:http", "tcp://h:70000", "unix://"]
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
