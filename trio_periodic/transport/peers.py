"""Naming a connection's peer for log lines (no I/O beyond getpeername)."""

from __future__ import annotations

import socket

import trio


def peer_name(stream: trio.abc.Stream) -> str:
    """``HOST:PORT`` of a TCP peer, ``unix:PATH`` of a Unix one, found on the
    socket under any TLS or RSA layers; ``?`` when the address is gone (a
    peer that reset before it was served)."""
    while not isinstance(stream, trio.SocketStream):
        inner = getattr(stream, "transport_stream", None)
        if inner is None:
            return "?"
        stream = inner
    sock = stream.socket
    try:
        peer = sock.getpeername()
    except OSError:
        peer = None
    if sock.family == socket.AF_UNIX:
        return f"unix:{peer or 'peer'}"
    if isinstance(peer, tuple):
        host = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
        return f"{host}:{peer[1]}"
    return "?"
