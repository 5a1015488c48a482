"""The RSA transport's sans-I/O parts: key files, both handshakes, the data phase.

The peer in these tests is written here from PROTOCOL.md §3 with the raw
primitives (OAEP, SHA-256, AES-CTR, HMAC), not with the module under test,
so that both sides of every byte rule are checked against the spec.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_periodic.cli.keygen import generate_key_files
from trio_periodic.transport.rsa import RsaKeyError, RsaMode, RsaProtocolError
from trio_periodic.transport.rsa.handshake import ClientHandshake, ServerHandshake
from trio_periodic.transport.rsa.keys import (
    fingerprint,
    load_private_key,
    load_public_keys,
    parse_pem,
)
from trio_periodic.transport.rsa.session import AesSession, PlainSession, RsaSession

OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def new_key(bits: int = 2048) -> RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@pytest.fixture(scope="module")
def server_key() -> RSAPrivateKey:
    return new_key()


@pytest.fixture(scope="module")
def client_key() -> RSAPrivateKey:
    return new_key(1024)  # another size than the server's: blocks differ per direction


def enc(key: RSAPublicKey, data: bytes) -> bytes:
    return key.encrypt(data, OAEP)


def dec(key: RSAPrivateKey, block: bytes) -> bytes:
    return key.decrypt(block, OAEP)


def blocks(data: bytes, size: int) -> list[bytes]:
    assert len(data) % size == 0
    return [data[i : i + size] for i in range(0, len(data), size)]


def der_int(n: int) -> bytes:
    body = n.to_bytes(n.bit_length() // 8 + 1, "big")
    return b"\x02" + der_len(len(body)) + body


def der_len(n: int) -> bytes:
    if n < 128:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def pkcs1_der(key: RSAPublicKey) -> bytes:
    """RSAPublicKey ::= SEQUENCE { n INTEGER, e INTEGER }, by hand."""
    numbers = key.public_numbers()
    body = der_int(numbers.n) + der_int(numbers.e)
    return b"\x30" + der_len(len(body)) + body


def counter(values: list[bytes]) -> Callable[[int], bytes]:
    """A urandom that hands out ``values`` in order (each of the asked length)."""
    it: Iterator[bytes] = iter(values)

    def urandom(n: int) -> bytes:
        value = next(it)
        assert len(value) == n
        return value

    return urandom


# ------------------------------------------------------------------------------ keys


def test_fingerprint_is_sha256_of_the_pkcs1_der(server_key: RSAPrivateKey) -> None:
    public = server_key.public_key()
    assert fingerprint(public) == hashlib.sha256(pkcs1_der(public)).digest()


def test_keygen_files_load(tmp_path: Path) -> None:
    private_path, public_path = generate_key_files(str(tmp_path / "k"), 128)
    assert b"BEGIN RSA PRIVATE KEY" in private_path.read_bytes()
    private = load_private_key(str(private_path))
    (public,) = load_public_keys(str(public_path))
    assert fingerprint(public) == fingerprint(private.public_key())


def test_public_keys_several_blocks_and_a_directory(tmp_path: Path) -> None:
    keys = [new_key(1024).public_key() for _ in range(3)]
    pkcs1 = [
        k.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1) for k in keys
    ]
    spki = keys[2].public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    both = tmp_path / "both.pem"
    both.write_bytes(b"a comment\n" + pkcs1[0] + b"\n" + pkcs1[1])
    assert [fingerprint(k) for k in load_public_keys(str(both))] == [
        fingerprint(keys[0]),
        fingerprint(keys[1]),
    ]
    d = tmp_path / "authorised"
    d.mkdir()
    (d / "a.pem").write_bytes(pkcs1[0] + pkcs1[1])
    (d / "b.pem").write_bytes(spki)
    (d / "notes.txt").write_text("not a key, not read")
    assert {fingerprint(k) for k in load_public_keys(str(d))} == {fingerprint(k) for k in keys}
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load_public_keys(str(empty)) == []


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "no PEM data found"),
        (b"-----BEGIN RSA PUBLIC KEY-----\n!!!!\n-----END RSA PUBLIC KEY-----\n", "base64"),
        (b"-----BEGIN RSA PUBLIC KEY-----\nAAAA\n-----END RSA PUBLIC KEY-----\n", "not an RSA"),
    ],
)
def test_bad_key_files_name_the_file(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    for load in (load_private_key, load_public_keys):
        with pytest.raises(RsaKeyError, match=reason) as info:
            load(str(path))
        assert str(path) in str(info.value)
    d = tmp_path / "dir"
    d.mkdir()
    (d / "x.pem").write_bytes(content)
    with pytest.raises(RsaKeyError, match=r"x\.pem"):
        load_public_keys(str(d))


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(RsaKeyError, match=r"cannot read RSA private key .*No such file"):
        load_private_key(str(tmp_path / "nope.pem"))
    with pytest.raises(RsaKeyError, match="cannot read RSA public key"):
        load_public_keys(str(tmp_path / "nope.pem"))


def test_a_public_key_is_not_a_private_key(tmp_path: Path) -> None:
    _, public = generate_key_files(str(tmp_path / "k"), 128)
    with pytest.raises(RsaKeyError, match="cannot use RSA private key"):
        load_private_key(str(public))


def test_pem_blocks() -> None:
    pem = (
        b"x\n-----BEGIN A B-----\nAAEC\nAw==\n-----END A B-----\n"
        b"-----BEGIN C-----\r\n-----END C-----"
    )
    assert parse_pem(pem) == [("A B", b"\x00\x01\x02\x03"), ("C", b"")]


# --------------------------------------------------------------- v1 handshake, server


def v1_client_messages(
    server: RSAPublicKey, client: RSAPrivateKey, server_out: bytes, nonce: bytes
) -> tuple[bytes, bytes]:
    """Check the server's three blocks; return (server fp, challenge)."""
    size = client.key_size // 8
    fp_block, proof_block, challenge_block = blocks(server_out, size)
    server_fp = dec(client, fp_block)
    assert server_fp == hashlib.sha256(pkcs1_der(server)).digest()
    expected = hashlib.sha256(b"metro-rsa-server-v1" + nonce + server_fp).digest()
    assert dec(client, proof_block) == expected
    challenge = dec(client, challenge_block)
    assert len(challenge) == 16
    return server_fp, challenge


@pytest.mark.parametrize("mode", list(RsaMode))
def test_server_v1_handshake_bytes(
    server_key: RSAPrivateKey, client_key: RSAPrivateKey, mode: RsaMode
) -> None:
    server_pub, client_fp = server_key.public_key(), fingerprint(client_key.public_key())
    other = new_key(1024).public_key()
    side = ServerHandshake(server_key, [other, client_key.public_key()])
    nonce = os.urandom(16)
    out = side.receive_data(enc(server_pub, client_fp + nonce))
    _, challenge = v1_client_messages(server_pub, client_key, out, nonce)
    rest = [
        enc(server_pub, hashlib.sha256(b"metro-rsa-client-v1" + challenge + client_fp).digest()),
        enc(server_pub, bytes([mode])),
    ]
    aes_key = os.urandom(32)
    if mode is RsaMode.AES:
        rest.append(enc(server_pub, aes_key))
    wire = b"".join(rest) + b"first data"
    # Byte by byte at first: a block is only taken once whole.
    for i in range(10):
        assert side.receive_data(wire[i : i + 1]) == b""
    assert not side.done
    assert side.receive_data(wire[10:]) == b""
    assert side.done and side.session.mode is mode and not side.legacy
    assert side.peer_fingerprint == client_fp
    # What came behind the handshake is the data phase's (the stream feeds it on).
    assert side.leftover == b"first data"
    if mode is RsaMode.AES:
        frame = side.session.send(b"ping")
        iv = frame[8:24]
        plain = Cipher(algorithms.AES(aes_key), modes.CTR(iv)).decryptor().update(frame[24:28])
        assert plain == b"ping"


def test_server_takes_a_mode_block_with_trailing_bytes(
    server_key: RSAPrivateKey, client_key: RSAPrivateKey
) -> None:
    # Haskell's Data.Binary decodes the first byte and ignores the rest.
    side, server_pub = (
        ServerHandshake(server_key, [client_key.public_key()]),
        server_key.public_key(),
    )
    client_fp, nonce = fingerprint(client_key.public_key()), os.urandom(16)
    _, challenge = v1_client_messages(
        server_pub, client_key, side.receive_data(enc(server_pub, client_fp + nonce)), nonce
    )
    proof = hashlib.sha256(b"metro-rsa-client-v1" + challenge + client_fp).digest()
    side.receive_data(enc(server_pub, proof) + enc(server_pub, b"\x01junk"))
    assert side.done and side.session.mode is RsaMode.RSA


def refused(side: ServerHandshake, *messages: bytes) -> str:
    with pytest.raises(RsaProtocolError) as info:
        for message in messages:
            side.receive_data(message)
    with pytest.raises(RsaProtocolError):
        side.receive_data(b"more")  # a failed handshake stays failed
    return str(info.value)


def test_server_refusals(server_key: RSAPrivateKey, client_key: RSAPrivateKey) -> None:
    server_pub = server_key.public_key()
    client_fp = fingerprint(client_key.public_key())
    stranger = new_key(1024)

    def side(**kw: bool) -> ServerHandshake:
        return ServerHandshake(server_key, [client_key.public_key()], **kw)

    assert "not authorised" in refused(
        side(), enc(server_pub, fingerprint(stranger.public_key()) + bytes(16))
    )
    assert "does not decrypt" in refused(side(), os.urandom(256))
    assert "does not decrypt" in refused(
        side(), enc(stranger.public_key(), client_fp + bytes(16)) * 2
    )
    assert "hello of 40 bytes" in refused(side(), enc(server_pub, client_fp + bytes(8)))
    assert "legacy" in refused(side(), enc(server_pub, client_fp))

    # A peer that knows an authorised public key but not its private key:
    s = side()
    out = s.receive_data(enc(server_pub, client_fp + bytes(16)))
    assert len(out) == 3 * 128
    assert "wrong proof" in refused(s, enc(server_pub, bytes(32)))

    def up_to_mode() -> ServerHandshake:
        s = side()
        nonce = os.urandom(16)
        _, challenge = v1_client_messages(
            server_pub, client_key, s.receive_data(enc(server_pub, client_fp + nonce)), nonce
        )
        s.receive_data(
            enc(server_pub, hashlib.sha256(b"metro-rsa-client-v1" + challenge + client_fp).digest())
        )
        return s

    assert "unknown mode 03" in refused(up_to_mode(), enc(server_pub, b"\x03"))
    assert "AES key of 16 bytes" in refused(
        up_to_mode(), enc(server_pub, b"\x02"), enc(server_pub, bytes(16))
    )


# ---------------------------------------------------------------- v1 handshake, client


@pytest.mark.parametrize("mode", list(RsaMode))
def test_client_v1_handshake_bytes(
    server_key: RSAPrivateKey, client_key: RSAPrivateKey, mode: RsaMode
) -> None:
    server_pub, client_pub = server_key.public_key(), client_key.public_key()
    nonce, aes_key = os.urandom(16), os.urandom(32)
    side = ClientHandshake(client_key, [server_pub], mode, urandom=counter([nonce, aes_key]))
    hello = dec(server_key, side.initiate())
    assert hello == fingerprint(client_pub) + nonce
    server_fp = hashlib.sha256(pkcs1_der(server_pub)).digest()
    challenge = os.urandom(16)
    reply = b"".join(
        enc(client_pub, m)
        for m in (server_fp, hashlib.sha256(b"metro-rsa-server-v1" + nonce + server_fp).digest())
    )
    assert side.receive_data(reply) == b""
    out = side.receive_data(enc(client_pub, challenge))
    assert side.done and side.session.mode is mode
    sent = [dec(server_key, b) for b in blocks(out, 256)]
    assert (
        sent[0]
        == hashlib.sha256(b"metro-rsa-client-v1" + challenge + fingerprint(client_pub)).digest()
    )
    assert sent[1] == bytes([mode])
    assert sent[2:] == ([aes_key] if mode is RsaMode.AES else [])


def test_client_refuses_an_unknown_server_or_a_bad_proof(
    server_key: RSAPrivateKey, client_key: RSAPrivateKey
) -> None:
    server_pub, client_pub = server_key.public_key(), client_key.public_key()
    side = ClientHandshake(client_key, [server_pub])
    side.initiate()
    with pytest.raises(RsaProtocolError, match="not one of the server keys we trust"):
        side.receive_data(enc(client_pub, bytes(32)))
    side = ClientHandshake(client_key, [server_pub])
    side.initiate()
    with pytest.raises(RsaProtocolError, match="proof does not match"):
        side.receive_data(enc(client_pub, fingerprint(server_pub)) + enc(client_pub, bytes(32)))


# -------------------------------------------------------------------------- legacy


def test_legacy_handshake_both_sides(server_key: RSAPrivateKey, client_key: RSAPrivateKey) -> None:
    server_pub, client_pub = server_key.public_key(), client_key.public_key()
    # The client, against the spec's legacy server:
    aes_key = os.urandom(32)
    side = ClientHandshake(
        client_key, [server_pub], RsaMode.AES, legacy=True, urandom=counter([aes_key])
    )
    assert dec(server_key, side.initiate()) == fingerprint(client_pub)
    out = side.receive_data(enc(client_pub, fingerprint(server_pub)))
    assert [dec(server_key, b) for b in blocks(out, 256)] == [b"\x02", aes_key]
    assert side.done and side.legacy
    # The server, when it accepts legacy clients (as aio_periodic 1.0.0 speaks):
    srv = ServerHandshake(server_key, [client_pub], allow_legacy=True)
    out = srv.receive_data(enc(server_pub, fingerprint(client_pub)))
    assert dec(client_key, out) == fingerprint(server_pub)
    srv.receive_data(enc(server_pub, b"\x02") + enc(server_pub, aes_key))
    assert srv.done and srv.legacy and srv.session.mode is RsaMode.AES
    frame = srv.session.send(b"abc")
    # A legacy AES frame: u64 L = 16 + len(ciphertext), no tag.
    assert struct.unpack(">Q", frame[:8])[0] == 16 + 3 == len(frame) - 8


# ---------------------------------------------------------------------- data phase


def test_aes_v1_frame_layout() -> None:
    key, iv = os.urandom(32), bytes(range(16))
    session = AesSession(key, urandom=counter([iv]))
    frame = session.send(b"hello world")
    (length,) = struct.unpack(">Q", frame[:8])
    assert length == 16 + 11 + 32 == len(frame) - 8
    assert frame[8:24] == iv
    cipher, tag = frame[24:35], frame[35:]
    assert tag == hmac.new(key, iv + cipher, hashlib.sha256).digest()
    assert Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor().update(cipher) == b"hello world"
    assert session.send(b"") == b""


def aes_frame(key: bytes, iv: bytes, plain: bytes, tagged: bool = True) -> bytes:
    cipher = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor().update(plain)
    tag = hmac.new(key, iv + cipher, hashlib.sha256).digest() if tagged else b""
    return struct.pack(">Q", 16 + len(cipher) + len(tag)) + iv + cipher + tag


def test_aes_counter_is_one_128_bit_big_endian_number() -> None:
    key = os.urandom(32)
    iv = bytes(8) + b"\xff" * 8  # the low half wraps after the first block
    plain = os.urandom(40)
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    stream = b"".join(
        ecb.update(((int.from_bytes(iv, "big") + i) % (1 << 128)).to_bytes(16, "big"))
        for i in range(3)
    )
    cipher = bytes(a ^ b for a, b in zip(plain, stream, strict=False))
    tag = hmac.new(key, iv + cipher, hashlib.sha256).digest()
    frame = struct.pack(">Q", 16 + 40 + 32) + iv + cipher + tag
    assert AesSession(key).receive(frame) == plain


def test_aes_sender_draws_again_rather_than_wrap_the_low_half() -> None:
    wrapping = bytes(8) + b"\xff" * 8
    fine = bytes(16)
    session = AesSession(os.urandom(32), urandom=counter([wrapping, fine]))
    assert session.send(b"x" * 17)[8:24] == fine  # 2 blocks: the first IV would wrap
    session = AesSession(os.urandom(32), urandom=counter([wrapping]))
    assert session.send(b"x" * 16)[8:24] == wrapping  # 1 block: it does not


def test_aes_receiver_refusals() -> None:
    key = os.urandom(32)
    good = aes_frame(key, os.urandom(16), b"data")
    bad_tag = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(RsaProtocolError, match="bad authentication tag"):
        AesSession(key).receive(bad_tag)
    with pytest.raises(RsaProtocolError, match="bad authentication tag"):
        AesSession(os.urandom(32)).receive(good)
    for length in (0, 47, 64 * 1024 * 1024 + 1, 2**64 - 1):
        with pytest.raises(RsaProtocolError, match=f"frame of {length} bytes"):
            AesSession(key).receive(struct.pack(">Q", length))
    # Legacy frames: no tag, so 16 is the least.
    legacy = AesSession(key, legacy=True)
    assert legacy.receive(aes_frame(key, os.urandom(16), b"old", tagged=False)) == b"old"
    with pytest.raises(RsaProtocolError, match="frame of 15 bytes"):
        legacy.receive(struct.pack(">Q", 15))


def test_aes_splits_writes_over_the_frame_limit() -> None:
    key = os.urandom(32)
    sender = AesSession(key, max_frame=48 + 10)
    wire = sender.send(b"0123456789abcdefghijXY")
    assert len(wire) == 3 * (8 + 48) + 22
    assert AesSession(key, max_frame=48 + 10).receive(wire) == b"0123456789abcdefghijXY"


def test_rsa_session_blocks(server_key: RSAPrivateKey, client_key: RSAPrivateKey) -> None:
    # The client sends to the server's 2048-bit key: 190 bytes per 256-byte block.
    client = RsaSession(client_key, server_key.public_key())
    wire = client.send(b"y" * 400)
    assert len(wire) == 3 * 256
    assert [len(dec(server_key, b)) for b in blocks(wire, 256)] == [190, 190, 20]
    server = RsaSession(server_key, client_key.public_key())
    assert server.receive(wire[:300]) == b"y" * 190
    assert server.pending == 44
    assert server.receive(wire[300:]) == b"y" * 210
    assert client.send(b"") == b""
    with pytest.raises(RsaProtocolError, match="does not decrypt"):
        server.receive(os.urandom(256))


@pytest.fixture(scope="module")
def small_keys() -> tuple[RSAPrivateKey, RSAPrivateKey]:
    return new_key(1024), new_key(1024)


writes = st.lists(st.binary(max_size=300), max_size=6)


@pytest.mark.parametrize("mode", ["plain", "rsa", "aes", "aes-legacy"])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chunks=writes, cuts=st.lists(st.integers(min_value=0), max_size=8))
def test_data_phase_round_trip(
    small_keys: tuple[RSAPrivateKey, RSAPrivateKey], mode: str, chunks: list[bytes], cuts: list[int]
) -> None:
    """Any writes, received in any pieces, come out as the same byte stream."""
    a, b = small_keys
    key = bytes(range(32))
    if mode == "plain":
        sender, receiver = PlainSession(), PlainSession()
    elif mode == "rsa":
        sender = RsaSession(a, b.public_key())
        receiver = RsaSession(b, a.public_key())
    else:
        sender = AesSession(key, legacy=mode == "aes-legacy")
        receiver = AesSession(key, legacy=mode == "aes-legacy")
    wire = b"".join(sender.send(chunk) for chunk in chunks)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    got = b"".join(receiver.receive(wire[i:j]) for i, j in itertools.pairwise(points))
    assert got == b"".join(chunks)
    assert receiver.pending == 0
