"""TLS for ``tls://``, ``wss://`` and ``https://``: contexts and handshakes.

Theory of operation.  An :class:`ssl.SSLContext` is built once, from PEM
files, before anything listens or connects: the server's from its certificate
chain, key and optional client CA (:func:`server_context`), a client's from
:class:`TlsOptions`.  A file that cannot be read or parsed is a
:class:`TlsError` naming the file, so the command lines can print one line
and exit.

On the server, a TLS listener accepts without handshaking (trio's
:class:`trio.SSLListener` only wraps the socket); :func:`after_handshake`
then runs the handshake inside the new connection's own task, bounded by
:data:`HANDSHAKE_TIMEOUT`.  A plain-text client, a bad or missing client
certificate, or a peer that stalls costs that one connection and one log
line - never the accept loop, which a slow or hostile peer could otherwise
hold up for everyone.

Server streams are wrapped with ``https_compatible=True``: browsers and curl
often close without a TLS close_notify, and every protocol served here
delimits its own messages (Periodic frames carry a length, HTTP a
Content-Length), so a missing close_notify cannot truncate anything unseen.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import trio

from trio_periodic.transport.peers import peer_name

log = logging.getLogger(__name__)

#: Seconds a peer has, from accept, to complete the TLS handshake.
HANDSHAKE_TIMEOUT = 10.0

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "TlsError",
    "TlsOptions",
    "after_handshake",
    "describe",
    "server_context",
    "wrap_listeners",
]


class TlsError(ValueError):
    """A certificate, key or CA file cannot be used; the message says which and why."""


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """A client's TLS settings: which CAs to trust and, optionally, its own certificate.

    ``ca`` is a PEM file of CA certificates (None: the system's CAs);
    ``cert`` a PEM certificate chain and ``key`` its private key (None: the
    key is in ``cert``), for servers that ask for client certificates.
    """

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def __post_init__(self) -> None:
        if self.key is not None and self.cert is None:
            raise TlsError("a TLS client key needs its certificate (--tls-cert)")

    @property
    def given(self) -> bool:
        """True when any setting differs from the defaults."""
        return self.ca is not None or self.cert is not None

    def client_context(self) -> ssl.SSLContext:
        """A context that checks the server's certificate and host name."""
        if self.ca is None:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        else:
            # Only this CA, not the system's too: a private CA names exactly
            # the servers meant, the system's would add the whole web's.
            with _reading("TLS CA file", self.ca):
                context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca)
        if self.cert is not None:
            _load_chain(context, self.cert, self.key)
        return context


def server_context(
    cert: str, key: str | None = None, client_ca: str | None = None
) -> ssl.SSLContext:
    """The listeners' context: ``cert`` (PEM chain, key included when ``key``
    is None) and, with ``client_ca``, client certificates required and
    checked against that CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_chain(context, cert, key)
    if client_ca is not None:
        with _reading("TLS client CA file", client_ca):
            context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _load_chain(context: ssl.SSLContext, cert: str, key: str | None) -> None:
    # Read each file first: OpenSSL's own error does not say which is missing.
    with _reading("TLS certificate", cert):
        open(cert, "rb").close()
    if key is not None:
        with _reading("TLS key", key):
            open(key, "rb").close()
    with _reading("TLS certificate", cert if key is None else f"{cert} with key {key}"):
        context.load_cert_chain(cert, key)


@contextmanager
def _reading(what: str, path: str) -> Iterator[None]:
    """Turn the errors of loading ``path`` into one :class:`TlsError` line."""
    try:
        yield
    except ssl.SSLError as exc:
        raise TlsError(f"cannot use {what} {path}: {_ssl_reason(exc)}") from None
    except OSError as exc:
        raise TlsError(f"cannot read {what} {path}: {_os_reason(exc)}") from None


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


_SSL_LOCATION = re.compile(r"\s*\(_ssl\.c:\d+\)$")


def _ssl_reason(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    text = _SSL_LOCATION.sub("", str(exc.args[1] if len(exc.args) > 1 else exc))
    if text == "[SSL] PEM lib":
        # OpenSSL's word for "no PEM block I could use in this file".
        return "not a PEM certificate chain and private key that belong together"
    return text


def describe(exc: BaseException) -> str:
    """Why a stream broke, in one line: under TLS, the ssl error that trio
    wrapped in ``BrokenResourceError`` (whose own text is empty)."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError):
        return _ssl_reason(cause)
    return str(exc) or (cause is not None and str(cause)) or type(exc).__name__


def wrap_listeners(
    listeners: list[trio.SocketListener], context: ssl.SSLContext
) -> list[trio.SSLListener[trio.SocketStream]]:
    """TLS over ``listeners``; accepting does not handshake (see :func:`after_handshake`)."""
    return [trio.SSLListener(listener, context, https_compatible=True) for listener in listeners]


def after_handshake(
    handler: Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[object]],
    timeout: float = HANDSHAKE_TIMEOUT,
) -> Callable[[trio.SSLStream[trio.SocketStream]], Awaitable[None]]:
    """A connection handler that completes the TLS handshake, then runs ``handler``.

    A failed or timed-out handshake closes the connection with one log line
    and ``handler`` never runs.
    """

    async def serve(stream: trio.SSLStream[trio.SocketStream]) -> None:
        reason = f"no TLS handshake within {timeout:g} s"
        with trio.move_on_after(timeout):
            try:
                await stream.do_handshake()
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                reason = f"TLS handshake failed: {describe(exc)}"
            else:
                reason = ""
        if reason:
            log.warning("closing %s: %s", peer_name(stream), reason)
            await trio.aclose_forcefully(stream)
            return
        await handler(stream)

    return serve
