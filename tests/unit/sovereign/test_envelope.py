"""Envelope encryption against a tiny in-memory secret store that wraps data keys with AES-GCM,
in Vault's ``vault:v<N>:<base64>`` format, bound to the context it is given."""

from __future__ import annotations

import base64
import os
import random
import re
import uuid
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sovereign import envelope
from sovereign.domain.keys import KeyRef, WrappedSecret
from sovereign.domain.labels import LabelScheme
from sovereign.envelope import EnvelopeError, Sealed
from sovereign.errors import InvalidInputError, NotFoundError, SovereignError

SCHEME = LabelScheme()
SECRET_NATO = SCHEME.label("SECRET", ["NATO"])
SECRET_EU = SCHEME.label("SECRET", ["EU"])
ENCLAVE = uuid.UUID("6f1c2a3e-58a5-4a51-9a6b-6f0c1f9b2d11")
OTHER_ENCLAVE = uuid.UUID("0b7e4f2a-1c3d-4e5f-8a9b-0c1d2e3f4a5b")
KEY = KeyRef("sovereign-civilian", f"enclave-{ENCLAVE}")
# Vault checks the prefix and version of what it is asked to decrypt; so does the fake.
WRAPPED = re.compile(r"vault:v([1-9][0-9]*):([A-Za-z0-9+/]+=*)")


class FakeSecretStore:
    """Transit in miniature: versioned AES-256 keys in memory that wrap data keys."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], list[bytes]] = {}
        self.calls: list[str] = []

    def create_key(self, mount: str, name: str) -> KeyRef:
        self.keys.setdefault((mount, name), [os.urandom(32)])
        return KeyRef(mount, name, len(self.keys[mount, name]))

    def _versions(self, key: KeyRef) -> list[bytes]:
        try:
            return self.keys[key.mount, key.name]
        except KeyError:
            raise NotFoundError(kind="key", ident=f"{key.mount}/{key.name}") from None

    def _wrap(self, key: KeyRef, secret: bytes, context: bytes) -> WrappedSecret:
        versions = self._versions(key)
        nonce = os.urandom(12)
        sealed = AESGCM(versions[-1]).encrypt(nonce, secret, context)
        text = f"vault:v{len(versions)}:" + base64.b64encode(nonce + sealed).decode()
        return WrappedSecret(KeyRef(key.mount, key.name, len(versions)), text)

    def data_key(self, key: KeyRef, context: bytes) -> tuple[bytes, WrappedSecret]:
        self.calls.append("data_key")
        secret = os.urandom(32)
        return secret, self._wrap(key, secret, context)

    def unwrap(self, wrapped: WrappedSecret, context: bytes) -> bytes:
        self.calls.append("unwrap")
        versions = self._versions(wrapped.key)
        match = WRAPPED.fullmatch(wrapped.ciphertext)
        if match is None or int(match.group(1)) > len(versions):
            raise InvalidInputError(reason="invalid ciphertext")
        raw = base64.b64decode(match.group(2), validate=True)
        try:
            return AESGCM(versions[int(match.group(1)) - 1]).decrypt(raw[:12], raw[12:], context)
        except InvalidTag:
            raise InvalidInputError(reason="cannot unwrap") from None

    def rotate(self, key: KeyRef) -> KeyRef:
        self._versions(key).append(os.urandom(32))
        return KeyRef(key.mount, key.name, len(self._versions(key)))

    def rewrap(self, wrapped: WrappedSecret, context: bytes) -> WrappedSecret:
        return self._wrap(wrapped.key, self.unwrap(wrapped, context), context)

    def destroy_key(self, key: KeyRef) -> dict[str, Any]:
        self.keys.pop((key.mount, key.name), None)
        return {"status": 204}

    def ping(self) -> None:
        return None


@pytest.fixture
def store() -> FakeSecretStore:
    fake = FakeSecretStore()
    fake.create_key(KEY.mount, KEY.name)
    return fake


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.one_of(st.integers(0, 64), st.integers(0, 1_100_000)),
    seed=st.integers(0, 2**32),
)
# Hypothesis favours small integers; pin the 1 MiB end explicitly.
@example(size=2**20, seed=0)
@example(size=2**20 + 15, seed=1)
def test_round_trip_through_bytes(size: int, seed: int) -> None:
    fake = FakeSecretStore()
    fake.create_key(KEY.mount, KEY.name)
    data = payload(size, seed)
    sealed = envelope.seal(fake, KEY, ENCLAVE, SECRET_NATO, data)
    assert len(sealed.ciphertext) == size + envelope.TAG_SIZE
    assert Sealed.from_bytes(sealed.to_bytes()) == sealed
    assert (
        envelope.open_sealed(fake, Sealed.from_bytes(sealed.to_bytes()), ENCLAVE, SECRET_NATO)
        == data
    )


def test_sealed_names_the_store_key_and_holds_no_plaintext(store: FakeSecretStore) -> None:
    secret = b"job input: coordinates of the thing" * 4
    sealed = envelope.seal(store, KEY, ENCLAVE, SECRET_NATO, secret)
    assert (sealed.mount, sealed.name, sealed.version) == (KEY.mount, KEY.name, 1)
    assert sealed.key_ref == KEY
    assert sealed.wrapped_key.startswith("vault:v1:")
    assert secret not in sealed.to_bytes()
    assert "ciphertext=" in repr(sealed) and "vault:v1" not in repr(sealed)


@pytest.mark.parametrize(
    ("enclave", "label"),
    [(OTHER_ENCLAVE, SECRET_NATO), (ENCLAVE, SECRET_EU), (ENCLAVE, SCHEME.label("SECRET"))],
)
def test_other_enclave_or_label_does_not_open(store: FakeSecretStore, enclave, label) -> None:
    sealed = envelope.seal(store, KEY, ENCLAVE, SECRET_NATO, b"for NATO eyes in this enclave")
    # The fake, like a derived Vault key, binds the wrapped key to the context too; a Vault
    # key that ignores the context still fails at the GCM tag. Either way, nothing opens.
    with pytest.raises(SovereignError):
        envelope.open_sealed(store, sealed, enclave, label)


def test_context_binding_holds_even_if_the_store_ignores_context(store: FakeSecretStore) -> None:
    class ContextBlindStore(FakeSecretStore):
        # Vault and OpenBao ignore the context for non-derived keys; model that.
        def data_key(self, key: KeyRef, context: bytes) -> tuple[bytes, WrappedSecret]:
            return super().data_key(key, b"")

        def unwrap(self, wrapped: WrappedSecret, context: bytes) -> bytes:
            return super().unwrap(wrapped, b"")

    blind = ContextBlindStore()
    blind.create_key(KEY.mount, KEY.name)
    sealed = envelope.seal(blind, KEY, ENCLAVE, SECRET_NATO, b"payload")
    assert envelope.open_sealed(blind, sealed, ENCLAVE, SECRET_NATO) == b"payload"
    with pytest.raises(EnvelopeError, match="authentication failed") as info:
        envelope.open_sealed(blind, sealed, OTHER_ENCLAVE, SECRET_NATO)
    assert info.value.code == "envelope-invalid" and info.value.safe
    with pytest.raises(EnvelopeError):
        envelope.open_sealed(blind, sealed, ENCLAVE, SECRET_EU)


def test_associated_data_is_canonical() -> None:
    reordered = SCHEME.label("SECRET", ["NATO", "EU"])
    assert envelope.associated_data(ENCLAVE, reordered) == (
        b'{"enclave":"6f1c2a3e-58a5-4a51-9a6b-6f0c1f9b2d11","label":"SECRET//EU/NATO",'
        b'"purpose":"sovereign-envelope-v1"}'
    )


def test_tampering_with_any_byte_is_detected(store: FakeSecretStore) -> None:
    sealed = envelope.seal(store, KEY, ENCLAVE, SECRET_NATO, b"sixteen byte msg" * 2)
    blob = sealed.to_bytes()
    body_start = len(blob) - len(sealed.ciphertext) - envelope.NONCE_SIZE - 8
    for index in range(len(blob)):
        for flip in (0x01, 0x80):
            tampered = bytearray(blob)
            tampered[index] ^= flip
            # Structure, version and nonce/ciphertext changes are envelope errors; a changed
            # wrapped key, mount or name is refused by the store (or fails the GCM tag).
            expected = EnvelopeError if index >= body_start or index < 4 else SovereignError
            with pytest.raises(expected):
                envelope.open_sealed(
                    store, Sealed.from_bytes(bytes(tampered)), ENCLAVE, SECRET_NATO
                )


def test_non_canonical_wrapped_key_spelling_is_refused() -> None:
    # "AB==" and "AA==" decode to the same byte: the spare bits of the last character are
    # ignored by lenient decoders (Go's default, so Vault's), so only "AA==" is accepted.
    assert base64.b64decode("AB==") == base64.b64decode("AA==")
    assert Sealed("vault:v1:AA==", "m", "n", 1, bytes(12), bytes(16)).version == 1
    with pytest.raises(EnvelopeError, match="canonical"):
        Sealed("vault:v1:AB==", "m", "n", 1, bytes(12), bytes(16))


def test_seal_many_uses_one_data_key_and_unique_nonces(store: FakeSecretStore) -> None:
    items = [payload(n % 97, n) for n in range(2000)]
    batch = envelope.seal_many(store, KEY, ENCLAVE, SECRET_NATO, items)
    assert store.calls == ["data_key"]
    assert len({s.wrapped_key for s in batch}) == 1
    assert len({s.nonce for s in batch}) == len(items)
    assert envelope.open_many(store, batch, ENCLAVE, SECRET_NATO) == items
    assert store.calls == ["data_key", "unwrap"]
    # Each item also opens on its own.
    assert envelope.open_sealed(store, batch[1234], ENCLAVE, SECRET_NATO) == items[1234]
    assert envelope.seal_many(store, KEY, ENCLAVE, SECRET_NATO, []) == []


def test_batch_items_cannot_be_swapped_between_batches(store: FakeSecretStore) -> None:
    first = envelope.seal_many(store, KEY, ENCLAVE, SECRET_NATO, [b"a", b"b"])
    second = envelope.seal_many(store, KEY, ENCLAVE, SECRET_NATO, [b"c"])
    spliced = Sealed(
        second[0].wrapped_key, KEY.mount, KEY.name, 1, first[0].nonce, first[0].ciphertext
    )
    with pytest.raises(EnvelopeError):
        envelope.open_sealed(store, spliced, ENCLAVE, SECRET_NATO)


def test_rewrap_keeps_the_ciphertext_and_still_opens(store: FakeSecretStore) -> None:
    sealed = envelope.seal(store, KEY, ENCLAVE, SECRET_NATO, b"rotate me")
    store.rotate(KEY)
    rewrapped = envelope.rewrap_sealed(store, sealed, ENCLAVE, SECRET_NATO)
    assert rewrapped.version == 2 and rewrapped.wrapped_key.startswith("vault:v2:")
    assert (rewrapped.nonce, rewrapped.ciphertext) == (sealed.nonce, sealed.ciphertext)
    assert envelope.open_sealed(store, rewrapped, ENCLAVE, SECRET_NATO) == b"rotate me"


def test_destroyed_key_makes_data_unreadable(store: FakeSecretStore) -> None:
    sealed = envelope.seal(store, KEY, ENCLAVE, SECRET_NATO, b"gone with the enclave")
    store.destroy_key(KEY)
    with pytest.raises(NotFoundError):
        envelope.open_sealed(store, sealed, ENCLAVE, SECRET_NATO)


def test_wrong_size_data_key_is_refused(store: FakeSecretStore) -> None:
    class ShortKeyStore(FakeSecretStore):
        def data_key(self, key: KeyRef, context: bytes) -> tuple[bytes, WrappedSecret]:
            secret, wrapped = super().data_key(key, context)
            return secret[:16], wrapped

    short = ShortKeyStore()
    short.create_key(KEY.mount, KEY.name)
    with pytest.raises(EnvelopeError, match="16-byte data key"):
        envelope.seal(short, KEY, ENCLAVE, SECRET_NATO, b"x")


def _valid_blob() -> bytes:
    store = FakeSecretStore()
    store.create_key(KEY.mount, KEY.name)
    return envelope.seal(store, KEY, ENCLAVE, SECRET_NATO, b"hello").to_bytes()


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b"", "must start with"),
        (lambda b: b"SOV2" + b[4:], "must start with"),
        (lambda b: b[:6], "shorter than its header"),
        (lambda b: b[:20], "ends inside the wrapped key"),
        (lambda b: b[:-1], "ciphertext length says"),
        (lambda b: b + b"\x00", "ciphertext length says"),
        (lambda b: b[:-5], "ciphertext length says"),
    ],
)
def test_malformed_bytes_are_rejected(mangle, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        Sealed.from_bytes(mangle(_valid_blob()))


def _blob(
    wrapped: bytes, mount: bytes, name: bytes, version: int, nonce: bytes, ct: bytes
) -> bytes:
    return b"".join(
        (
            b"SOV1",
            envelope._HEADER.pack(len(wrapped), len(mount), len(name), version),
            wrapped,
            mount,
            name,
            nonce,
            envelope._LENGTH.pack(len(ct)),
            ct,
        )
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((b"vault:v1:AAAA", b"m", b"n", 0, bytes(12), bytes(16)), "key version"),
        ((b"vault:v2:AAAA", b"m", b"n", 1, bytes(12), bytes(16)), "key version 2"),
        ((b"vault:v1:AAAA", b"m", b"n", 1, bytes(12), bytes(15)), "at least the 16-byte tag"),
        ((b"vault:v1:AAAA", b"", b"n", 1, bytes(12), bytes(16)), "must not be empty"),
        ((b"vault:v1:A\xffAA", b"m", b"n", 1, bytes(12), bytes(16)), "not valid ascii"),
        ((b"vault:v1:AAAA", b"\xc3", b"n", 1, bytes(12), bytes(16)), "not valid utf-8"),
        ((b"vault:v1:AA A", b"m", b"n", 1, bytes(12), bytes(16)), "vault:v<N>:<base64>"),
        ((b"vault:v1:AAA", b"m", b"n", 1, bytes(12), bytes(16)), "not valid base64"),
        ((b"", b"m", b"n", 1, bytes(12), bytes(16)), "non-empty printable ASCII"),
    ],
)
def test_malformed_fields_are_rejected(fields, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        Sealed.from_bytes(_blob(*fields))


def test_well_formed_minimal_blob_parses() -> None:
    sealed = Sealed.from_bytes(_blob(b"other-store:opaque", b"m", b"n", 7, bytes(12), bytes(16)))
    assert sealed.wrapped == WrappedSecret(KeyRef("m", "n", 7), "other-store:opaque")
    assert Sealed.from_bytes(sealed.to_bytes()) == sealed


def test_data_key_copy_is_zeroed_after_use(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bytearray] = []
    real = envelope.AESGCM

    def spy(key: bytearray) -> Any:
        seen.append(key)
        return real(key)

    monkeypatch.setattr(envelope, "AESGCM", spy)
    fake = FakeSecretStore()
    fake.create_key(KEY.mount, KEY.name)
    sealed = envelope.seal(fake, KEY, ENCLAVE, SECRET_NATO, b"x")
    assert envelope.open_sealed(fake, sealed, ENCLAVE, SECRET_NATO) == b"x"
    assert len(seen) == 2
    assert all(isinstance(key, bytearray) and key == bytearray(32) for key in seen)
