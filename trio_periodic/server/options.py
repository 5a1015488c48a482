"""The server's settings, declared once for ``periodicd`` and ``periodic serve``.

Both command lines flatten :class:`ServerOptions` into their flags (cyclopts
reads the field annotations and docstrings), so a new setting is one field
here.  ``-H/--host`` is not a field: ``periodic`` shares it with its client
commands as a global option.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from cyclopts import Parameter

from trio_periodic.protocol.constants import DEFAULT_MAX_FRAME_SIZE

DEFAULT_HOSTS = ("unix:///tmp/periodic.sock", "tcp://127.0.0.1:5000")
DEFAULT_HTTP = "127.0.0.1:8080"
DEFAULT_MAX_OUTBOX = 4 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 10_000
DEFAULT_DRAIN_TIMEOUT = 25.0

_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(text: str) -> int:
    """``4MiB``, ``4m``, ``512k``, ``4096`` → bytes (binary units: k = 1024)."""
    m = _SIZE.match(text)
    if m is None or (m.group(3) and not m.group(2) and m.group(3).lower() != "b"):
        raise ValueError(f"not a size: {text!r} (bytes, or with k, m or g, e.g. 4MiB)")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def _size(type_: Any, tokens: Sequence[Any]) -> int:
    return parse_size(tokens[0].value)


def http_off(address: str | None) -> bool:
    return address is None or address.strip().lower() in ("", "off", "none", "no")


@Parameter(name="*")
@dataclass(frozen=True, slots=True)
class ServerOptions:
    path: Annotated[str | None, Parameter(name=["--path", "-p"], env_var="PERIODIC_PATH")] = None
    """Job store: :memory:, file:///PATH (SQLite) or postgresql://... .
    Default: an SQLite file in the user's data directory."""

    log: Annotated[str, Parameter(name="--log", env_var="PERIODIC_LOG")] = "INFO"
    """Log level: DEBUG, INFO, WARNING or ERROR."""

    http: Annotated[str, Parameter(name="--http", env_var="PERIODIC_HTTP")] = DEFAULT_HTTP
    """HTTP API address HOST:PORT (curl interface, /metrics, /dashboard), https://HOST:PORT
    for the same over TLS (needs --tls-cert), or "off"."""

    max_frame_size: Annotated[int, Parameter(name="--max-frame-size")] = DEFAULT_MAX_FRAME_SIZE
    """Largest frame accepted, in bytes; a longer length field closes that connection."""

    auth_file: Annotated[str | None, Parameter(name="--auth-file")] = None
    """The reference auth file: "ROLE NAME TOKEN FUNC,FUNC..." lines; reloaded when it
    changes. With it, every door (binary, WebSocket, HTTP) needs an identity."""

    max_outbox: Annotated[int, Parameter(name="--max-outbox", converter=_size)] = DEFAULT_MAX_OUTBOX
    """Bytes queued for one connection (e.g. 4MiB): past it the server stops reading that
    connection until it drains, and closes it if it stays full longer than its keepalive."""

    max_connections: Annotated[int, Parameter(name="--max-connections")] = DEFAULT_MAX_CONNECTIONS
    """Open connections at most; past it new connections are closed at once."""

    drain_timeout: Annotated[float, Parameter(name="--drain-timeout")] = DEFAULT_DRAIN_TIMEOUT
    """On SIGTERM/SIGINT/SHUTDOWN, seconds running jobs may still report before they are
    handed back (a second signal skips the wait)."""

    tls_cert: Annotated[str | None, Parameter(name="--tls-cert")] = None
    """PEM certificate chain for the tls://, wss:// and https:// listeners (the key may
    be in the same file)."""

    tls_key: Annotated[str | None, Parameter(name="--tls-key")] = None
    """PEM private key of --tls-cert, when it is in a file of its own."""

    tls_client_ca: Annotated[str | None, Parameter(name="--tls-client-ca")] = None
    """PEM CA certificates: TLS listeners then require client certificates signed by them."""

    rsa_private_path: Annotated[str | None, Parameter(name="--rsa-private-path")] = None
    """The server's RSA private key (PKCS#1 PEM, as `periodic keygen` writes): every
    tcp:// and unix:// connection must then complete periodicd's RSA handshake."""

    rsa_public_path: Annotated[str | None, Parameter(name="--rsa-public-path")] = None
    """The authorised client public keys: a PEM file (several keys allowed) or a
    directory of *.pem files, read again for every connection (default public_keys.pem)."""

    rsa_allow_legacy: Annotated[bool, Parameter(name="--rsa-allow-legacy", negative=())] = False
    """Also accept the pre-1.2.8 RSA handshake (aio_periodic 1.0.0). It proves nothing:
    whoever has an authorised *public* key gets in."""
    http_cors: Annotated[tuple[str, ...], Parameter(name="--http-cors")] = ()
    """A web origin (scheme://host[:port]) whose pages may call the HTTP API from a browser
    (CORS); repeat for more, "*" for any. Default: none. The client module /periodic.js
    is always served to any origin."""

    ws_origin: Annotated[tuple[str, ...], Parameter(name="--ws-origin")] = ()
    """Allow browser pages of only this origin on ws:// and wss:// listeners (a disallowed
    Origin gets 403 at the upgrade); repeat for more. Default: any. Clients that send no
    Origin (Node, Python) are not affected."""

    @property
    def http_address(self) -> str | None:
        """The HTTP listener's address, or None when it is off."""
        return None if http_off(self.http) else self.http
