"""The RSA transport over a trio stream: handshake, then plain bytes both ways.

Theory of operation.  :func:`server_handshake` and :func:`client_handshake`
drive the sans-I/O handshakes of :mod:`.handshake` over an open stream and
return an :class:`RsaStream`: a :class:`trio.abc.Stream` whose
``send_all`` encrypts (one AES frame, or RSA blocks, per call) and whose
``receive_some`` returns decrypted bytes, so the connection handlers,
the HTTP API and the client run over it unchanged.  In Plain mode they
return the stream itself: the handshake reads exactly the blocks it needs,
so nothing is left over, and a bare socket keeps the server's fast path
for writes.

The server side (:func:`after_rsa_handshake`) handshakes inside each new
connection's own task, bounded by :data:`HANDSHAKE_TIMEOUT`, with the
authorised keys read afresh for that connection (as periodicd does, so a
key added to or removed from the directory counts from the next
connection).  A peer without RSA, a key that is not authorised, bytes that
do not decrypt or a peer that stalls cost that one connection and one log
line; the accept loop never waits for a handshake.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from trio_periodic.transport.rsa.handshake import ClientHandshake, ServerHandshake
from trio_periodic.transport.rsa.keys import (
    RSAPrivateKey,
    RSAPublicKey,
    load_private_key,
    load_public_keys,
    short,
)
from trio_periodic.transport.rsa.options import (
    RsaError,
    RsaKeyError,
    RsaMode,
    RsaOptions,
    RsaProtocolError,
)
from trio_periodic.transport.rsa.session import PlainSession, Session

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "ClientKeys",
    "RsaStream",
    "ServerKeys",
    "after_rsa_handshake",
    "client_handshake",
    "server_handshake",
]

log = logging.getLogger(__name__)

#: Seconds a peer has, from accept, to complete the RSA handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Bytes asked of the transport at a time (the sessions may ask for less).
RECEIVE_SIZE = 256 * 1024

_PLAIN_HINTS = (
    (b"\x00REQ", "a Periodic client without RSA"),
    (b"GET ", "an HTTP client"),
    (b"POST", "an HTTP client"),
)


class RsaStream(trio.abc.Stream):
    """Plain bytes over ``transport_stream`` through a negotiated :class:`Session`."""

    def __init__(self, transport_stream: trio.abc.Stream, session: Session, leftover: bytes = b""):
        #: The stream underneath (for the peer's address).
        self.transport_stream = transport_stream
        self.session = session
        self._plain = bytearray()
        self._eof = False
        if leftover:
            self._plain += self._open(leftover)
        self._unit = session.receive_unit or RECEIVE_SIZE

    def _open(self, data: bytes) -> bytes:
        try:
            return self.session.receive(data)
        except RsaProtocolError as exc:
            raise trio.BrokenResourceError(f"RSA transport: {exc}") from exc

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self._plain and not self._eof:
            data = await self.transport_stream.receive_some(self._unit)
            if not data:
                self._eof = True
                if self.session.pending:
                    raise trio.BrokenResourceError(
                        f"RSA transport: the peer closed inside a block or frame "
                        f"({self.session.pending} bytes)"
                    )
                break
            self._plain += self._open(bytes(data))
        if not self._plain:
            await trio.lowlevel.checkpoint()
            return b""
        n = len(self._plain) if max_bytes is None else min(max_bytes, len(self._plain))
        out = bytes(self._plain[:n])
        del self._plain[:n]
        return out

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        unit = self.session.send_unit or len(data)
        if not data:
            await trio.lowlevel.checkpoint()
        for i in range(0, len(data), unit):
            await self.transport_stream.send_all(self.session.send(bytes(data[i : i + unit])))

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.transport_stream.aclose()


async def _run(
    stream: trio.abc.Stream,
    side: ServerHandshake | ClientHandshake,
    first: bytes = b"",
    received: bytearray | None = None,
) -> trio.abc.Stream:
    """Feed ``side`` from ``stream`` until done; return the data-phase stream.
    :class:`RsaProtocolError` on a broken handshake or a closed connection.
    The first bytes received are kept in ``received``, to say what a peer
    that never completes sent."""
    if first:
        await stream.send_all(first)
    if received is None:
        received = bytearray()
    while not side.done:
        try:
            data = await stream.receive_some(max(side.wanted, 1))
        except trio.BrokenResourceError as exc:
            raise RsaProtocolError(f"connection lost during the handshake ({exc})") from exc
        if not data:
            raise RsaProtocolError(_closed_early(side, received))
        if len(received) < 4:
            received += data[:4]
        reply = side.receive_data(bytes(data))
        if reply:
            await stream.send_all(reply)
    if isinstance(side.session, PlainSession) and not side.leftover:
        return stream
    return RsaStream(stream, side.session, side.leftover)


def _closed_early(side: ServerHandshake | ClientHandshake, received: bytearray) -> str:
    if isinstance(side, ClientHandshake):
        return (
            "the server closed the connection during the handshake "
            "(is our key authorised there, and does it use RSA?)"
        )
    return "closed during the handshake" + _hint(received)


def _hint(received: bytes | bytearray) -> str:
    for prefix, what in _PLAIN_HINTS:
        if received.startswith(prefix):
            return f" (it looks like {what})"
    return ""


# ------------------------------------------------------------------------------ server


@dataclass(frozen=True, slots=True)
class ServerKeys:
    """The server's key and where its authorised client keys are."""

    private_key: RSAPrivateKey
    public_path: str
    allow_legacy: bool = False

    @classmethod
    def load(cls, private_path: str, public_path: str, allow_legacy: bool = False) -> ServerKeys:
        """Read and check both, once, at startup: :class:`RsaKeyError` if either
        cannot be used."""
        keys = cls(load_private_key(private_path), public_path, allow_legacy)
        authorised = keys.authorised()
        log.info(
            "RSA transport on tcp:// and unix://: %d authorised client keys in %s%s",
            len(authorised),
            public_path,
            "; legacy handshakes accepted (they authenticate nobody)" if allow_legacy else "",
        )
        return keys

    def authorised(self) -> list[RSAPublicKey]:
        return load_public_keys(self.public_path)


async def server_handshake(
    stream: trio.abc.Stream, keys: ServerKeys, received: bytearray | None = None
) -> trio.abc.Stream:
    """Handshake as the server.  :class:`RsaProtocolError` (or :class:`RsaKeyError`
    when the authorised keys can no longer be read)."""
    side = ServerHandshake(keys.private_key, keys.authorised(), allow_legacy=keys.allow_legacy)
    rsa = await _run(stream, side, received=received)
    log.debug(
        "RSA handshake done: client key %s, mode %s%s",
        short(side.peer_fingerprint),
        side.session.mode.label,
        " (legacy)" if side.legacy else "",
    )
    return rsa


def after_rsa_handshake(
    handler: Callable[[trio.abc.Stream], Awaitable[object]],
    keys: ServerKeys,
    peer_name: Callable[[trio.abc.Stream], str],
    timeout: float | None = None,
) -> Callable[[trio.abc.Stream], Awaitable[None]]:
    """A connection handler that completes the RSA handshake, then runs ``handler``.

    A failed or timed-out handshake (``timeout`` seconds, default
    :data:`HANDSHAKE_TIMEOUT` as it is when the connection comes) closes the
    connection with one log line and ``handler`` never runs.
    """

    async def serve(stream: trio.abc.Stream) -> None:
        limit = HANDSHAKE_TIMEOUT if timeout is None else timeout
        received = bytearray()
        rsa: trio.abc.Stream | None = None
        reason = ""
        with trio.move_on_after(limit if limit > 0 else math.inf):
            try:
                rsa = await server_handshake(stream, keys, received)
            except RsaError as exc:
                reason = f"RSA handshake failed: {exc}"
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                reason = f"RSA handshake failed: {str(exc) or type(exc).__name__}"
        if rsa is None:
            if not reason:
                reason = f"no RSA handshake within {limit:g} s{_hint(received)}"
            log.warning("closing %s: %s", peer_name(stream), reason)
            await trio.aclose_forcefully(stream)
            return
        await handler(rsa)

    return serve


# ------------------------------------------------------------------------------ client


@dataclass(frozen=True, slots=True)
class ClientKeys:
    """A client's keys and mode, read from the files an :class:`RsaOptions` names."""

    private_key: RSAPrivateKey
    server_keys: list[RSAPublicKey]
    mode: RsaMode
    legacy: bool = False

    @classmethod
    def load(cls, options: RsaOptions) -> ClientKeys:
        """:class:`RsaKeyError` for a file that cannot be used."""
        private = load_private_key(options.private_path)
        server_keys = load_public_keys(options.public_path)
        if not server_keys:
            raise RsaKeyError(f"no server public key in {options.public_path}")
        return cls(private, server_keys, options.mode, options.legacy)


async def client_handshake(stream: trio.abc.Stream, keys: ClientKeys) -> trio.abc.Stream:
    """Handshake as a client.  :class:`RsaProtocolError` for a refused or
    broken handshake."""
    side = ClientHandshake(keys.private_key, keys.server_keys, keys.mode, legacy=keys.legacy)
    return await _run(stream, side, side.initiate())
