"""Key files, fingerprints and RSA-OAEP, as the reference uses them (PROTOCOL.md §3.1).

Key files are PEM.  Like the reference, what counts is the DER inside a
block, not its label: a private key is the first block of its file (PKCS#1
``RSA PRIVATE KEY`` as the reference and ``periodic keygen`` write it; PKCS#8
is accepted too), a public key file holds one or more blocks (PKCS#1 ``RSA
PUBLIC KEY``, or ``PUBLIC KEY``), and a directory stands for every ``*.pem``
file in it.  A key's fingerprint is SHA-256 over its DER PKCS#1
``RSAPublicKey``, the same bytes whatever the file's encoding.

Every handshake message is one OAEP block (SHA-256, MGF1-SHA-256, no label)
of exactly the recipient's modulus length; it carries at most that length
less :data:`OAEP_OVERHEAD` bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from trio_periodic.transport.rsa.options import RsaKeyError

__all__ = [
    "FINGERPRINT_SIZE",
    "OAEP_OVERHEAD",
    "RSAPrivateKey",
    "RSAPublicKey",
    "block_size",
    "find_key",
    "fingerprint",
    "load_private_key",
    "load_public_keys",
    "max_plaintext",
    "oaep_decrypt",
    "oaep_encrypt",
    "parse_pem",
    "short",
]

#: Bytes of OAEP padding with SHA-256: 2 * 32 + 2.
OAEP_OVERHEAD = 66
FINGERPRINT_SIZE = 32

_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_PEM = re.compile(rb"-----BEGIN ([^\r\n-]+)-----\r?\n(.*?)-----END \1-----", re.DOTALL)


def block_size(key: RSAPrivateKey | RSAPublicKey) -> int:
    """Bytes of every OAEP block to or from ``key``: its modulus length."""
    return (key.key_size + 7) // 8


def max_plaintext(key: RSAPublicKey) -> int:
    """The most bytes one OAEP block to ``key`` carries."""
    return block_size(key) - OAEP_OVERHEAD


def oaep_encrypt(key: RSAPublicKey, data: bytes) -> bytes:
    return key.encrypt(data, _OAEP)


def oaep_decrypt(key: RSAPrivateKey, block: bytes) -> bytes:
    """Decrypt one block; ValueError when it is not an OAEP block to ``key``."""
    return key.decrypt(block, _OAEP)


def fingerprint(key: RSAPublicKey) -> bytes:
    """SHA-256 of the key's DER PKCS#1 ``RSAPublicKey`` (32 bytes)."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return hashlib.sha256(der).digest()


def short(fp: bytes) -> str:
    """A fingerprint for log lines: its first 8 bytes in hex."""
    return fp[:8].hex()


def find_key(fp: bytes, keys: Sequence[RSAPublicKey]) -> RSAPublicKey | None:
    for key in keys:
        if fingerprint(key) == fp:
            return key
    return None


def parse_pem(data: bytes) -> list[tuple[str, bytes]]:
    """Every PEM block of ``data`` as (label, DER); ValueError for none or bad base64."""
    blocks = []
    for match in _PEM.finditer(data):
        try:
            der = base64.b64decode(b"".join(match.group(2).split()), validate=True)
        except binascii.Error:
            raise ValueError(f"bad base64 in its {match.group(1).decode()} block") from None
        blocks.append((match.group(1).decode("ascii", "replace"), der))
    if not blocks:
        raise ValueError("no PEM data found")
    return blocks


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise RsaKeyError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def load_private_key(path: str) -> RSAPrivateKey:
    """The RSA private key in the first PEM block of ``path``."""
    data = _read(path, "RSA private key")
    try:
        label, der = parse_pem(data)[0]
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError) as exc:
        # TypeError: an encrypted key (it would need a password).
        raise RsaKeyError(
            f"cannot use RSA private key {path}: {_reason(exc, _NOT_PRIVATE)}"
        ) from None
    if not isinstance(key, RSAPrivateKey):
        raise RsaKeyError(f"cannot use RSA private key {path}: not an RSA key ({label})")
    if block_size(key) - OAEP_OVERHEAD < 48:
        # The hello (32-byte fingerprint + 16-byte nonce) must fit one block.
        raise RsaKeyError(f"cannot use RSA private key {path}: {key.key_size} bits is too small")
    return key


def _public_keys_of(path: str) -> list[RSAPublicKey]:
    data = _read(path, "RSA public key file")
    keys = []
    try:
        for label, der in parse_pem(data):
            key = serialization.load_der_public_key(der)
            if not isinstance(key, RSAPublicKey):
                raise ValueError(f"not an RSA key ({label})")
            keys.append(key)
    except ValueError as exc:
        raise RsaKeyError(
            f"cannot use RSA public key file {path}: {_reason(exc, _NOT_PUBLIC)}"
        ) from None
    return keys


def load_public_keys(path: str) -> list[RSAPublicKey]:
    """The keys in file ``path``, or in every ``*.pem`` file of directory ``path``
    (sorted by name).  An empty directory gives no keys."""
    if not os.path.isdir(path):
        return _public_keys_of(path)
    try:
        names = sorted(os.listdir(path))
    except OSError as exc:
        raise RsaKeyError(f"cannot read RSA public key directory {path}: {exc.strerror}") from None
    keys = []
    for name in names:
        if name.endswith(".pem"):
            keys.extend(_public_keys_of(os.path.join(path, name)))
    return keys


_NOT_PRIVATE = "not an RSA private key (PKCS#1 or PKCS#8)"
_NOT_PUBLIC = "not an RSA public key (PKCS#1 or SubjectPublicKeyInfo)"


def _reason(exc: Exception, unparsable: str) -> str:
    text = str(exc).split("\n")[0]
    if isinstance(exc, TypeError) and "password" in text.lower():
        return "it is encrypted (a key without a passphrase is needed)"
    if "Could not deserialize" in text or "Valid PEM but no BEGIN" in text:
        return unparsable
    return text or type(exc).__name__
