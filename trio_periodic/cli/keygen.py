"""``periodic keygen``: RSA key pairs in the reference's format.

The reference writes ``FILE_private_key.pem`` (PKCS#1 ``RSA PRIVATE KEY``) and
``FILE_public_key.pem`` (PKCS#1 ``RSA PUBLIC KEY``); its ``-s`` size is in
*bytes* (256 = a 2048-bit key).  Keys are for servers and clients that use the
RSA transport (``--rsa-private-path`` / ``--rsa-public-path``, PROTOCOL.md §3).
Needs the ``cryptography`` package (``pip install 'trio-periodic[rsa]'``).
"""

from __future__ import annotations

import os
from pathlib import Path


class KeygenError(Exception):
    pass


def generate_key_files(base: str, size_bytes: int = 256) -> tuple[Path, Path]:
    """Write the pair and return (private path, public path)."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
    except ImportError:
        raise KeygenError(
            "keygen needs the cryptography package: pip install 'trio-periodic[rsa]'"
        ) from None
    if not 128 <= size_bytes <= 2048:
        raise KeygenError(f"key size must be 128-2048 bytes (1024-16384 bits), got {size_bytes}")
    key = rsa.generate_private_key(public_exponent=65537, key_size=size_bytes * 8)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
    )
    private_path = Path(f"{base}_private_key.pem")
    public_path = Path(f"{base}_public_key.pem")
    # The private key is readable by its owner only, from the moment it exists.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(public_pem)
    return private_path, public_path
