"""Periodic URLs, shared by the listeners and the client (no I/O here).

Syntax (PROTOCOL.md §1): ``tcp://HOST:PORT`` (``tcp://:PORT`` = no host given,
``tcp://[::1]:PORT`` for IPv6), ``unix:///path``, ``ws://HOST:PORT[/PATH]``
for WebSocket, ``tls://HOST:PORT`` and ``wss://HOST:PORT[/PATH]`` for the same
two over TLS, and - where the caller allows it, as aio-periodic does - a bare
``HOST:PORT`` meaning TCP.

The reference took any other ``scheme://rest`` as a Unix socket path, so a
typo such as ``tsl://host:5000`` silently made a socket file named
``host:5000``.  Here an unknown scheme is an error: with TLS in the list, a
misspelt scheme must never quietly fall back to something unencrypted.
"""

from __future__ import annotations

from dataclasses import dataclass


class URLError(ValueError):
    """The string does not name a Periodic endpoint; the message says why."""


#: Schemes spelt HOST:PORT; the WebSocket ones may add a path.
HOST_PORT_SCHEMES = ("tcp", "ws", "tls", "wss")
WEBSOCKET = ("ws", "wss")
#: Schemes whose connections are encrypted.
TLS_SCHEMES = ("tls", "wss")
_EXPECTED = "expected tcp://, unix://, ws://, tls:// or wss://"


@dataclass(frozen=True, slots=True)
class PeriodicURL:
    scheme: str  # "tcp", "unix", "ws", "tls" or "wss"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = self.path if self.scheme in WEBSOCKET and self.path not in ("", "/") else ""
        return f"{self.scheme}://{host}:{self.port}{suffix}"


def parse_url(url: str, *, bare: bool = False, min_port: int = 1) -> PeriodicURL:
    """Parse ``url``; ``bare`` accepts ``HOST:PORT`` as TCP; ``min_port`` is 0
    for listeners (port 0 asks the OS for a free one)."""
    if "://" not in url:
        if not bare:
            raise URLError(f"not a Periodic URL ({_EXPECTED}): {url!r}")
        host, port = _host_port(url, url, min_port)
        return PeriodicURL("tcp", host, port)
    scheme, rest = url.split("://", 1)
    if scheme in HOST_PORT_SCHEMES:
        hostport, _, path = rest.partition("/")
        host, port = _host_port(hostport, url, min_port)
        return PeriodicURL(scheme, host, port, "/" + path if scheme in WEBSOCKET else "")
    if scheme != "unix":
        raise URLError(f"unknown scheme {scheme!r} in {url!r} ({_EXPECTED})")
    if not rest:
        raise URLError(f"empty socket path in {url!r}")
    return PeriodicURL("unix", path=rest)


def _host_port(hostport: str, url: str, min_port: int) -> tuple[str, int]:
    if hostport.startswith("["):
        host, sep, port = hostport[1:].partition("]:")
        if not sep:
            raise URLError(f"bad IPv6 address in {url!r}")
    else:
        host, sep, port = hostport.rpartition(":")
        if not sep:
            raise URLError(f"missing port in {url!r} (expected HOST:PORT)")
    try:
        number = int(port)
    except ValueError:
        raise URLError(f"bad port {port!r} in {url!r}") from None
    if not min_port <= number <= 65535:
        raise URLError(f"port out of range in {url!r}")
    return host, number
