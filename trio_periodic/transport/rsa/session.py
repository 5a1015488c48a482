"""The data phase after a handshake, sans-I/O (PROTOCOL.md §3.4).

A :class:`Session` turns each write into wire bytes (:meth:`Session.send`)
and received wire bytes into the plain bytes they carry
(:meth:`Session.receive`), buffering a half-arrived block or frame.  Writes
and reads need not line up: the peer is a byte stream either way.

* **Plain** - bytes as they are.
* **RSA** - every write becomes OAEP blocks to the peer's key, each carrying
  at most ``k_peer - 66`` bytes.  periodicd sends one block per write (and
  cannot send more); we split a longer write into several, which periodicd's
  receiver reads as consecutive chunks of the stream, as aio_periodic does.
  A receiver reads ``k_own``-byte blocks.
* **AES** - AES-256-CTR under the client's 32-byte key, one frame per write,
  empty writes send nothing.  v1 frame: ``u64 L``, ``IV[16]``, ciphertext,
  ``tag[32]`` = HMAC-SHA256(key, IV || ciphertext), ``L = 16 + len + 32``;
  the legacy frame (aio_periodic 1.0.0) has no tag.  ``L`` over
  :data:`MAX_AES_FRAME` (the reference's 64 MiB) or under the fixed part is
  refused before anything is buffered; a bad tag closes the connection.

The IV is the whole initial counter block, incremented as one 128-bit
big-endian number (OpenSSL's CTR, as the reference's cryptonite).  A sender
picks a fresh random IV per frame and - so that an implementation that only
increments the low 64 bits would agree - one whose low half does not wrap
inside the frame (a 2^-50 event for a 64 MiB frame; it just draws again).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.hmac import HMAC

from trio_periodic.transport.rsa.keys import (
    RSAPrivateKey,
    RSAPublicKey,
    block_size,
    max_plaintext,
    oaep_decrypt,
    oaep_encrypt,
)
from trio_periodic.transport.rsa.options import RsaMode, RsaProtocolError

__all__ = [
    "AES_IV_SIZE",
    "AES_KEY_SIZE",
    "AES_TAG_SIZE",
    "MAX_AES_FRAME",
    "AesSession",
    "PlainSession",
    "RsaSession",
    "Session",
    "make_session",
]

AES_KEY_SIZE = 32
AES_IV_SIZE = 16
AES_TAG_SIZE = 32
#: The largest AES frame length field accepted (and sent): the reference's 64 MiB.
MAX_AES_FRAME = 64 * 1024 * 1024

_U64 = struct.Struct(">Q")
_LOW_HALF = 1 << 64


class Session:
    """One direction pair of the data phase; subclasses implement a mode."""

    mode: RsaMode
    #: True for the pre-1.2.8 generation (tag-less AES frames).
    legacy: bool = False

    def send(self, data: bytes) -> bytes:
        """The wire bytes that carry ``data`` (b"" for an empty write)."""
        raise NotImplementedError

    def receive(self, data: bytes) -> bytes:
        """Feed received wire bytes; return the plain bytes now complete (maybe b"").
        :class:`RsaProtocolError` for a block or frame that cannot be accepted."""
        raise NotImplementedError

    @property
    def pending(self) -> int:
        """Wire bytes held back (a block or frame not complete yet)."""
        return 0

    @property
    def receive_unit(self) -> int:
        """How many wire bytes a reader should ask for at a time (0: any)."""
        return 0

    @property
    def send_unit(self) -> int:
        """How many plain bytes a writer should encrypt at a time (0: a whole write)."""
        return 0


class PlainSession(Session):
    mode = RsaMode.PLAIN

    def __init__(self, *, legacy: bool = False) -> None:
        self.legacy = legacy

    def send(self, data: bytes) -> bytes:
        return bytes(data)

    def receive(self, data: bytes) -> bytes:
        return bytes(data)


class RsaSession(Session):
    """Every chunk is an OAEP block: to the peer's key out, from our key in."""

    mode = RsaMode.RSA

    def __init__(self, own: RSAPrivateKey, peer: RSAPublicKey, *, legacy: bool = False) -> None:
        self.legacy = legacy
        self._own = own
        self._peer = peer
        self._in_block = block_size(own)
        self._out_chunk = max_plaintext(peer)
        self._buf = bytearray()

    def send(self, data: bytes) -> bytes:
        step = self._out_chunk
        return b"".join(
            oaep_encrypt(self._peer, bytes(data[i : i + step])) for i in range(0, len(data), step)
        )

    def receive(self, data: bytes) -> bytes:
        self._buf += data
        size = self._in_block
        whole = len(self._buf) - len(self._buf) % size
        if not whole:
            return b""
        out = []
        try:
            for i in range(0, whole, size):
                out.append(oaep_decrypt(self._own, bytes(self._buf[i : i + size])))
        except ValueError:
            raise RsaProtocolError("an RSA block that does not decrypt with our key") from None
        del self._buf[:whole]
        return b"".join(out)

    @property
    def pending(self) -> int:
        return len(self._buf)

    @property
    def receive_unit(self) -> int:
        # A private-key operation per block (~0.3 ms at 2048 bits): read a
        # few blocks at a time so that a big transfer does not hold the
        # event loop for long.
        return 16 * self._in_block

    @property
    def send_unit(self) -> int:
        # Public-key operations are cheaper (~30 µs) but a 3 MB reply is still
        # 16,000 of them: encrypt and send it in pieces.
        return 64 * self._out_chunk


class AesSession(Session):
    """AES-256-CTR frames, HMAC-SHA256-tagged (v1) or not (legacy)."""

    mode = RsaMode.AES

    def __init__(
        self,
        key: bytes,
        *,
        legacy: bool = False,
        max_frame: int = MAX_AES_FRAME,
        urandom: Callable[[int], bytes] = os.urandom,
    ) -> None:
        if len(key) != AES_KEY_SIZE:
            raise ValueError(f"an AES-256 key is {AES_KEY_SIZE} bytes, not {len(key)}")
        self.legacy = legacy
        self._aes = algorithms.AES(key)
        # Copied per frame: keying an HMAC costs several times a copy.
        self._hmac = HMAC(key, hashes.SHA256())
        self._tag = 0 if legacy else AES_TAG_SIZE
        self._min = AES_IV_SIZE + self._tag
        self._max = max_frame
        self._urandom = urandom
        self._buf = bytearray()
        #: Length of the frame being received (header consumed), or -1.
        self._need = -1

    # ------------------------------------------------------------------ send

    def send(self, data: bytes) -> bytes:
        step = self._max - self._min
        return b"".join(self._frame(bytes(data[i : i + step])) for i in range(0, len(data), step))

    def _frame(self, plain: bytes) -> bytes:
        iv = self._iv(len(plain))
        encryptor = Cipher(self._aes, modes.CTR(iv)).encryptor()
        cipher = encryptor.update(plain) + encryptor.finalize()
        parts = [_U64.pack(len(iv) + len(cipher) + self._tag), iv, cipher]
        if self._tag:
            parts.append(self._mac(iv, cipher).finalize())
        return b"".join(parts)

    def _iv(self, length: int) -> bytes:
        blocks = (length + 15) // 16
        while True:
            iv = self._urandom(AES_IV_SIZE)
            if int.from_bytes(iv[8:], "big") + blocks <= _LOW_HALF:
                return iv

    def _mac(self, iv: bytes, cipher: bytes | memoryview) -> HMAC:
        mac = self._hmac.copy()
        mac.update(iv)
        mac.update(cipher)
        return mac

    # --------------------------------------------------------------- receive

    def receive(self, data: bytes) -> bytes:
        self._buf += data
        out = []
        while True:
            if self._need < 0:
                if len(self._buf) < _U64.size:
                    break
                (length,) = _U64.unpack_from(self._buf)
                if not self._min <= length <= self._max:
                    raise RsaProtocolError(
                        f"an AES frame of {length} bytes (allowed: {self._min}-{self._max})"
                    )
                del self._buf[: _U64.size]
                self._need = length
            if len(self._buf) < self._need:
                break
            out.append(self._open(self._need))
            del self._buf[: self._need]
            self._need = -1
        return b"".join(out)

    def _open(self, length: int) -> bytes:
        # Views, not copies, of a frame that may be 64 MiB; all released
        # before the buffer is resized.
        with memoryview(self._buf) as whole, whole[:length] as frame:
            iv = bytes(frame[:AES_IV_SIZE])
            with frame[AES_IV_SIZE : length - self._tag] as cipher:
                if self._tag:
                    try:
                        self._mac(iv, cipher).verify(bytes(frame[length - self._tag :]))
                    except InvalidSignature:
                        raise RsaProtocolError(
                            "an AES frame with a bad authentication tag"
                        ) from None
                decryptor = Cipher(self._aes, modes.CTR(iv)).decryptor()
                return decryptor.update(cipher) + decryptor.finalize()

    @property
    def pending(self) -> int:
        return len(self._buf) + (_U64.size if self._need >= 0 else 0)


def make_session(
    mode: RsaMode,
    own: RSAPrivateKey,
    peer: RSAPublicKey,
    aes_key: bytes = b"",
    *,
    legacy: bool = False,
) -> Session:
    """The session for a negotiated ``mode``."""
    if mode is RsaMode.RSA:
        return RsaSession(own, peer, legacy=legacy)
    if mode is RsaMode.AES:
        return AesSession(aes_key, legacy=legacy)
    return PlainSession(legacy=legacy)
