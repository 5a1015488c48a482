"""Modes, a client's RSA settings and the errors of the RSA transport.

Nothing here needs ``cryptography``: command lines and the client's
signatures use these names whether or not RSA is in use.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "DEFAULT_CLIENT_PUBLIC_PATH",
    "DEFAULT_SERVER_PUBLIC_PATH",
    "RsaError",
    "RsaKeyError",
    "RsaMode",
    "RsaOptions",
    "RsaProtocolError",
]

#: Where the reference client tools look for the server's public key.
DEFAULT_CLIENT_PUBLIC_PATH = "public_key.pem"
#: Where periodicd looks for the authorised client keys.
DEFAULT_SERVER_PUBLIC_PATH = "public_keys.pem"


class RsaError(Exception):
    """Base class of the RSA transport's errors."""


class RsaKeyError(RsaError, ValueError):
    """A key file cannot be read or used; the message names the file and why."""


class RsaProtocolError(RsaError):
    """The peer broke the handshake or sent a bad block or frame: close the connection."""


class RsaMode(IntEnum):
    """The data-phase mode, as the byte the client sends (Haskell ``RSAMode``)."""

    PLAIN = 0
    RSA = 1
    AES = 2

    @property
    def label(self) -> str:
        """The reference's spelling: ``Plain``, ``RSA``, ``AES``."""
        return _LABELS[self]

    @classmethod
    def parse(cls, text: str) -> RsaMode:
        """``Plain``, ``RSA`` or ``AES`` (any case); ValueError otherwise."""
        for mode, label in _LABELS.items():
            if text.strip().lower() == label.lower():
                return mode
        raise ValueError(f"unknown RSA mode {text!r} (expected Plain, RSA or AES)")


_LABELS = {RsaMode.PLAIN: "Plain", RsaMode.RSA: "RSA", RsaMode.AES: "AES"}


@dataclass(frozen=True, slots=True)
class RsaOptions:
    """A client's RSA transport settings (files are read at each connect).

    ``private_path`` is the client's own key (PKCS#1 PEM, as ``periodic
    keygen`` writes it); ``public_path`` the server's public key (the hello
    is encrypted to the first key of the file; the server's reply must
    come from one of them); ``mode`` the data phase.  ``legacy`` speaks the
    pre-1.2.8 handshake and tag-less AES frames (periodicd 1.2.4.0-1.2.7.0,
    aio_periodic 1.0.0) - it authenticates neither side, use it only to
    reach such servers.
    """

    private_path: str
    public_path: str = DEFAULT_CLIENT_PUBLIC_PATH
    mode: RsaMode = RsaMode.AES
    legacy: bool = False
