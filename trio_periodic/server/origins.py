"""Which web origins may use the server from a browser (``--http-cors``, ``--ws-origin``).

A browser names the page a request comes from in its ``Origin`` header
(``scheme://host[:port]``).  Programs (curl, the Python and Node clients)
send none, and could send anything, so an origin list only restricts
browsers: a request without ``Origin`` is always let through to the usual
authentication.  The operator lists origins exactly as a browser sends them;
``*`` allows every origin and ``null`` the opaque origin of ``file://`` pages
and sandboxed frames.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class OriginError(ValueError):
    """A configured origin is not ``scheme://host[:port]``."""


def normalize_origin(origin: str) -> str:
    """``HTTP://Example.com:80/`` → ``http://example.com`` (as browsers send it)."""
    origin = origin.strip()
    if origin in ("*", "null"):
        return origin
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError as exc:
        raise OriginError(f"not an origin: {origin!r} ({exc})") from None
    if not parts.scheme or not parts.hostname:
        raise OriginError(f"not an origin: {origin!r} (expected scheme://host[:port])")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise OriginError(f"not an origin: {origin!r} (no path, query or user part)")
    scheme = parts.scheme.lower()
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _safe_normalize(origin: str) -> str | None:
    try:
        return normalize_origin(origin)
    except OriginError:
        return None


class OriginPolicy:
    """A list of allowed origins; empty means none (``--http-cors``) or, with
    ``empty_allows_all``, any (``--ws-origin``)."""

    def __init__(self, origins: Iterable[str] = (), *, empty_allows_all: bool = False) -> None:
        normalized = {normalize_origin(o) for o in origins}
        self.any = "*" in normalized or (not normalized and empty_allows_all)
        self.origins = frozenset(normalized - {"*"})

    def __bool__(self) -> bool:
        return self.any or bool(self.origins)

    def allows(self, origin: str | bytes | None) -> bool:
        """May a browser page at ``origin`` use this door?  (None: not a browser.)"""
        if origin is None:
            return True
        if self.any:
            return True
        if isinstance(origin, bytes):
            origin = origin.decode("latin-1")
        return _safe_normalize(origin) in self.origins


def same_origin(origin: str | bytes, host: str | bytes | None) -> bool:
    """Is ``origin`` the origin of the server the request was sent to (``Host``)?"""
    if host is None:
        return False
    if isinstance(origin, bytes):
        origin = origin.decode("latin-1")
    if isinstance(host, bytes):
        host = host.decode("latin-1")
    normal = _safe_normalize(origin)
    if normal is None or normal == "null":
        return False
    scheme = normal.split("://", 1)[0]
    served = _safe_normalize(f"{scheme}://{host.strip()}")
    return served is not None and served == normal
