"""Exceptions raised by the sans-I/O protocol layer.

The split follows h11/wsproto: a :class:`RemoteProtocolError` means the peer sent
bytes we cannot accept and the connection must be closed (the reference server
closes silently, PROTOCOL.md §14); a :class:`LocalProtocolError` means our own
code misused the API (a bug on this side, not the peer's).
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class of every error raised by :mod:`trio_periodic.protocol`."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something invalid; close the connection (send nothing)."""


class LocalProtocolError(ProtocolError):
    """We misused the API: sending before registration, a value too big for its field…"""
