"""The RSA handshakes, both sides, sans-I/O (PROTOCOL.md §3.2 and §3.3).

v1, "hardened" (periodicd >= 1.2.8.0); every line is one OAEP block to the
recipient's key, ``H`` is SHA-256 over the concatenation::

    C -> S  client_fp[32] || nonce[16]
    S -> C  server_fp[32]
    S -> C  H("metro-rsa-server-v1", nonce, server_fp)
    S -> C  challenge[16]
    C -> S  H("metro-rsa-client-v1", challenge, client_fp)
    C -> S  mode[1]
    C -> S  aes_key[32]                     (AES mode only)

Legacy (periodicd 1.2.4.0-1.2.7.0, aio_periodic 1.0.0): the client sends
only ``client_fp[32]``, the server answers ``server_fp``, then mode and key
follow; no nonce, no proofs.  Knowing an authorised client's *public* key is
enough to pass it, so a server accepts it only when told to
(``allow_legacy``).  The two are told apart by the first block's plaintext:
48 bytes is v1, 32 bytes legacy.

Usage: a side feeds everything it receives to ``receive_data``, which
returns the bytes to send now (the client starts with :meth:`initiate`).
Once ``done``, ``session`` is the data phase and ``leftover`` the bytes that
arrived behind the handshake (already data-phase bytes).  A peer that breaks
the rules raises :class:`RsaProtocolError`, whose message is the log line.
Neither side ever waits for the other once it has what it needs: the client
may send its first data right behind the mode (and key).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from enum import Enum, auto

from trio_periodic.transport.rsa.keys import (
    FINGERPRINT_SIZE,
    RSAPrivateKey,
    RSAPublicKey,
    block_size,
    find_key,
    fingerprint,
    oaep_decrypt,
    oaep_encrypt,
    short,
)
from trio_periodic.transport.rsa.options import RsaMode, RsaProtocolError
from trio_periodic.transport.rsa.session import AES_KEY_SIZE, Session, make_session

__all__ = [
    "CLIENT_LABEL",
    "LEGACY_HELLO_SIZE",
    "NONCE_SIZE",
    "SERVER_LABEL",
    "V1_HELLO_SIZE",
    "ClientHandshake",
    "ServerHandshake",
    "proof",
]

NONCE_SIZE = 16
V1_HELLO_SIZE = FINGERPRINT_SIZE + NONCE_SIZE
LEGACY_HELLO_SIZE = FINGERPRINT_SIZE
SERVER_LABEL = b"metro-rsa-server-v1"
CLIENT_LABEL = b"metro-rsa-client-v1"

Random = Callable[[int], bytes]


def proof(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


class _State(Enum):
    HELLO = auto()  # server: waiting for the client's hello
    CLIENT_PROOF = auto()
    SERVER_FP = auto()  # client: waiting for the server's fingerprint
    SERVER_PROOF = auto()
    CHALLENGE = auto()
    MODE = auto()
    AES_KEY = auto()
    DONE = auto()
    FAILED = auto()


class _Side:
    """What both sides share: a buffer cut into blocks of our key's size."""

    def __init__(self, private_key: RSAPrivateKey, state: _State, urandom: Random) -> None:
        self._key = private_key
        self._fp = fingerprint(private_key.public_key())
        self._block = block_size(private_key)
        self._buf = bytearray()
        self._state = state
        self._urandom = urandom
        self._session: Session | None = None
        #: The peer's key, once known.
        self.peer: RSAPublicKey | None = None
        #: True when the peer speaks the legacy handshake.
        self.legacy = False
        #: The data-phase bytes that arrived right behind the handshake.
        self.leftover = b""

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    @property
    def session(self) -> Session:
        if self._session is None:
            raise RuntimeError("the handshake is not done")
        return self._session

    @property
    def peer_fingerprint(self) -> bytes:
        return b"" if self.peer is None else fingerprint(self.peer)

    @property
    def wanted(self) -> int:
        """Bytes still missing for the next block (0 when done)."""
        if self._state in (_State.DONE, _State.FAILED):
            return 0
        return self._block - len(self._buf)

    def receive_data(self, data: bytes) -> bytes:
        """Feed received bytes; return what to send now."""
        if self._state is _State.FAILED:
            raise RsaProtocolError("the handshake already failed")
        if self._state is _State.DONE:
            raise RuntimeError("the handshake is done: feed data to the session")
        self._buf += data
        out: list[bytes] = []
        try:
            while not self.done and len(self._buf) >= self._block:
                block = bytes(self._buf[: self._block])
                del self._buf[: self._block]
                out.extend(self._on_block(self._decrypt(block)))
        except RsaProtocolError:
            self._state = _State.FAILED
            raise
        if self.done:
            self.leftover = bytes(self._buf)
            self._buf.clear()
        return b"".join(out)

    def _decrypt(self, block: bytes) -> bytes:
        try:
            return oaep_decrypt(self._key, block)
        except ValueError:
            raise RsaProtocolError(self._undecryptable()) from None

    def _undecryptable(self) -> str:
        return "a handshake block that does not decrypt with our key"

    def _on_block(self, plain: bytes) -> list[bytes]:
        raise NotImplementedError

    def _to_peer(self, data: bytes) -> bytes:
        assert self.peer is not None
        try:
            return oaep_encrypt(self.peer, data)
        except ValueError:
            raise RsaProtocolError(
                f"the peer's key ({self.peer.key_size} bits) is too small for the handshake"
            ) from None


class ServerHandshake(_Side):
    """The server side: authorise the client's key, prove ours, get the mode.

    ``authorised`` are the client keys allowed in (the reference re-reads
    them for every connection).  All three modes are accepted, as periodicd
    (``configServerUnsafePlain``).
    """

    def __init__(
        self,
        private_key: RSAPrivateKey,
        authorised: Sequence[RSAPublicKey],
        *,
        allow_legacy: bool = False,
        urandom: Random = os.urandom,
    ) -> None:
        super().__init__(private_key, _State.HELLO, urandom)
        self._authorised = list(authorised)
        self._allow_legacy = allow_legacy
        self._challenge = b""
        self._mode = RsaMode.PLAIN

    def _undecryptable(self) -> str:
        if self._state is _State.HELLO:
            return "the first block does not decrypt with our key (not an RSA client, or not ours)"
        return super()._undecryptable()

    def _on_block(self, plain: bytes) -> list[bytes]:
        if self._state is _State.HELLO:
            return self._on_hello(plain)
        if self._state is _State.CLIENT_PROOF:
            expected = proof(CLIENT_LABEL, self._challenge, self.peer_fingerprint)
            if plain != expected:
                raise RsaProtocolError(
                    f"wrong proof for client key {short(self.peer_fingerprint)} "
                    "(the peer does not hold its private key)"
                )
            self._state = _State.MODE
            return []
        if self._state is _State.MODE:
            # Haskell's Data.Binary decoding of RSAMode: the first byte is
            # the constructor, anything after it is ignored.
            if not plain or plain[0] > RsaMode.AES:
                raise RsaProtocolError(f"unknown mode {plain[:1].hex() or 'empty'}")
            self._mode = RsaMode(plain[0])
            if self._mode is RsaMode.AES:
                self._state = _State.AES_KEY
            else:
                self._finish(b"")
            return []
        assert self._state is _State.AES_KEY
        if len(plain) != AES_KEY_SIZE:
            raise RsaProtocolError(f"an AES key of {len(plain)} bytes (expected {AES_KEY_SIZE})")
        self._finish(plain)
        return []

    def _on_hello(self, plain: bytes) -> list[bytes]:
        if len(plain) == LEGACY_HELLO_SIZE:
            if not self._allow_legacy:
                raise RsaProtocolError(
                    "a legacy (periodicd < 1.2.8, aio_periodic 1.0.0) RSA handshake, "
                    "which this server does not accept"
                )
            self.legacy = True
        elif len(plain) != V1_HELLO_SIZE:
            raise RsaProtocolError(f"a client hello of {len(plain)} bytes (expected 48)")
        client_fp, nonce = plain[:FINGERPRINT_SIZE], plain[FINGERPRINT_SIZE:]
        self.peer = find_key(client_fp, self._authorised)
        if self.peer is None:
            raise RsaProtocolError(f"client key {short(client_fp)} is not authorised")
        if self.legacy:
            self._state = _State.MODE
            return [self._to_peer(self._fp)]
        self._challenge = self._urandom(NONCE_SIZE)
        self._state = _State.CLIENT_PROOF
        return [
            self._to_peer(self._fp),
            self._to_peer(proof(SERVER_LABEL, nonce, self._fp)),
            self._to_peer(self._challenge),
        ]

    def _finish(self, aes_key: bytes) -> None:
        assert self.peer is not None
        self._session = make_session(self._mode, self._key, self.peer, aes_key, legacy=self.legacy)
        self._state = _State.DONE


class ClientHandshake(_Side):
    """The client side: say who we are, check the server, choose the mode.

    ``server_keys`` are the server public keys we trust; the hello is
    encrypted to the first, as the reference client does.  With ``legacy``
    the pre-1.2.8 handshake is spoken instead.
    """

    def __init__(
        self,
        private_key: RSAPrivateKey,
        server_keys: Sequence[RSAPublicKey],
        mode: RsaMode = RsaMode.AES,
        *,
        legacy: bool = False,
        urandom: Random = os.urandom,
    ) -> None:
        if not server_keys:
            raise ValueError("no server public key to encrypt the hello to")
        super().__init__(private_key, _State.SERVER_FP, urandom)
        self._server_keys = list(server_keys)
        self._mode = RsaMode(mode)
        self.legacy = legacy
        self._nonce = b""
        self._initiated = False

    def initiate(self) -> bytes:
        """The hello, to send first."""
        if self._initiated:
            raise RuntimeError("initiate() is called once")
        self._initiated = True
        self.peer = self._server_keys[0]
        hello = self._fp
        if not self.legacy:
            self._nonce = self._urandom(NONCE_SIZE)
            hello += self._nonce
        return self._to_peer(hello)

    def _on_block(self, plain: bytes) -> list[bytes]:
        if not self._initiated:
            raise RuntimeError("initiate() first")
        if self._state is _State.SERVER_FP:
            server = find_key(plain, self._server_keys)
            if server is None:
                raise RsaProtocolError(
                    f"the server's key {short(plain)} is not one of the server keys we trust"
                )
            self.peer = server
            if self.legacy:
                return self._finish()
            self._state = _State.SERVER_PROOF
            return []
        if self._state is _State.SERVER_PROOF:
            if plain != proof(SERVER_LABEL, self._nonce, self.peer_fingerprint):
                raise RsaProtocolError("the server's proof does not match (not the key's holder)")
            self._state = _State.CHALLENGE
            return []
        assert self._state is _State.CHALLENGE
        return [self._to_peer(proof(CLIENT_LABEL, plain, self._fp)), *self._finish()]

    def _finish(self) -> list[bytes]:
        assert self.peer is not None
        out = [self._to_peer(bytes([self._mode]))]
        aes_key = b""
        if self._mode is RsaMode.AES:
            aes_key = self._urandom(AES_KEY_SIZE)
            out.append(self._to_peer(aes_key))
        self._session = make_session(self._mode, self._key, self.peer, aes_key, legacy=self.legacy)
        self._state = _State.DONE
        return out
