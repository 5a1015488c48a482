"""Periodic URLs, shared by the listeners and the client (no I/O here).

Syntax (PROTOCOL.md §1): ``tcp://HOST:PORT`` (``tcp://:PORT`` = no host given,
``tcp://[::1]:PORT`` for IPv6), ``unix:///path`` (and, as in the reference,
any other ``scheme://rest`` is a Unix socket path), ``ws://HOST:PORT[/PATH]``
for WebSocket, and - where the caller allows it, as aio-periodic does - a bare
``HOST:PORT`` meaning TCP.
"""

from __future__ import annotations

from dataclasses import dataclass


class URLError(ValueError):
    """The string does not name a Periodic endpoint; the message says why."""


@dataclass(frozen=True, slots=True)
class PeriodicURL:
    scheme: str  # "tcp", "unix" or "ws"
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = self.path if self.scheme == "ws" and self.path not in ("", "/") else ""
        return f"{self.scheme}://{host}:{self.port}{suffix}"


def parse_url(url: str, *, bare: bool = False, min_port: int = 1) -> PeriodicURL:
    """Parse ``url``; ``bare`` accepts ``HOST:PORT`` as TCP; ``min_port`` is 0
    for listeners (port 0 asks the OS for a free one)."""
    if "://" not in url:
        if not bare:
            raise URLError(f"not a Periodic URL (expected tcp://, unix:// or ws://): {url!r}")
        host, port = _host_port(url, url, min_port)
        return PeriodicURL("tcp", host, port)
    scheme, rest = url.split("://", 1)
    if scheme in ("tcp", "ws"):
        hostport, _, path = rest.partition("/")
        host, port = _host_port(hostport, url, min_port)
        return PeriodicURL(scheme, host, port, "/" + path if scheme == "ws" else "")
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
