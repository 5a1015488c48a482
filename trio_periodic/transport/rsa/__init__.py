"""The reference's optional RSA / AES transport (PROTOCOL.md §3), both sides.

* :mod:`.options` - modes, the client's settings and the errors; no
  third-party import, so the rest of the package can name them without the
  ``cryptography`` package being installed;
* :mod:`.keys` - PEM key files, fingerprints, RSA-OAEP;
* :mod:`.handshake` - the handshakes as sans-I/O state machines;
* :mod:`.session` - the data phase (Plain, RSA blocks, AES frames), sans-I/O;
* :mod:`.stream` - a :class:`trio.abc.Stream` that runs a handshake and then
  encrypts and decrypts, so everything above it sees plain bytes.

Only :mod:`.options` is imported here; the others need ``cryptography``
(``pip install 'trio-periodic[rsa]'``) and are imported where RSA is in use.
"""

from __future__ import annotations

from trio_periodic.transport.rsa.options import (
    DEFAULT_CLIENT_PUBLIC_PATH,
    DEFAULT_SERVER_PUBLIC_PATH,
    RsaError,
    RsaKeyError,
    RsaMode,
    RsaOptions,
    RsaProtocolError,
)

__all__ = [
    "DEFAULT_CLIENT_PUBLIC_PATH",
    "DEFAULT_SERVER_PUBLIC_PATH",
    "RsaError",
    "RsaKeyError",
    "RsaMode",
    "RsaOptions",
    "RsaProtocolError",
]
