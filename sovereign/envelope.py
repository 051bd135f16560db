"""Envelope encryption of data the control plane keeps about enclaves (job inputs, outputs).

Owns :class:`Sealed`, its byte format, and :func:`seal`, :func:`seal_many`, :func:`open_sealed`,
:func:`open_many` and :func:`rewrap_sealed`. Each payload is encrypted with AES-256-GCM
(NIST SP 800-38D, via ``cryptography``) under a 256-bit data key that the
:class:`~sovereign.services.ports.SecretStore` generates and wraps under a store key (a Vault
transit key); only the wrapped copy is kept. The GCM associated data binds each ciphertext to
its enclave id and security label, so a ciphertext moved to another enclave or label does not
open. The same bytes are passed to the store as the data key's context (Vault and OpenBao
ignore it for non-derived keys; the GCM binding does not depend on it).

Must not talk to Vault or hvac directly (it uses the port), must not log or store plaintext
data keys, and does not decide which key an enclave uses: callers pass the key reference.

Plaintext data keys are handled as far as Python allows: the store's key is copied into a
``bytearray`` that is overwritten with zeroes as soon as the AES context holds it, and the
reference to the store's ``bytes`` object is dropped. Python cannot wipe that immutable
``bytes`` object (nor the JSON text and base64 strings the store parsed it from); its memory is
freed, not cleared, when the last reference goes. The AES context keeps its own copy in
OpenSSL memory, which OpenSSL cleanses when the context is freed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace

import rfc8785
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sovereign.domain.keys import KeyRef, WrappedSecret
from sovereign.domain.labels import Label
from sovereign.errors import SovereignError
from sovereign.services.ports import SecretStore

#: Magic and format version at the start of :meth:`Sealed.to_bytes`.
MAGIC = b"SOV1"
#: AES-256: the data key is 32 bytes.
DATA_KEY_SIZE = 32
#: 96-bit nonces, the size GCM is specified for (SP 800-38D section 5.2.1.1).
NONCE_SIZE = 12
#: The 128-bit GCM tag that ``cryptography`` appends to the ciphertext.
TAG_SIZE = 16
#: SP 800-38D section 8.3: at most 2**32 invocations per key with random 96-bit nonces.
MAX_BATCH = 2**32
#: Domain separation of the associated data, so it cannot be confused with other contexts.
PURPOSE = "sovereign-envelope-v1"

# After the magic: wrapped key, mount and name lengths (u16), key version (u32).
_HEADER = struct.Struct(">HHHI")
# Before the ciphertext: its length (u64).
_LENGTH = struct.Struct(">Q")
# Vault and OpenBao wrapped keys: "vault:v<version>:<standard base64>".
_VAULT_WRAPPED = re.compile(r"vault:v([1-9][0-9]*):([A-Za-z0-9+/]*={0,2})")
_MAX_U16 = 0xFFFF
_MAX_U32 = 0xFFFFFFFF


class EnvelopeError(SovereignError):
    """Sealed data is malformed, tampered with, or belongs to another enclave or label."""

    msg_fmt = "Sealed data is invalid: {reason}"
    safe = True
    code = "envelope-invalid"


@dataclass(frozen=True)
class Sealed:
    """One encrypted payload: the wrapped data key, the store key that wraps it, nonce and
    ciphertext (with its GCM tag). Holds no secret; safe to store anywhere."""

    wrapped_key: str
    mount: str
    name: str
    version: int
    nonce: bytes
    ciphertext: bytes

    def __post_init__(self) -> None:
        if not self.mount or not self.name:
            raise EnvelopeError(reason="the store key's mount and name must not be empty")
        if isinstance(self.version, bool) or not 1 <= self.version <= _MAX_U32:
            raise EnvelopeError(reason=f"key version must be in [1, 2**32 - 1], got {self.version}")
        if len(self.nonce) != NONCE_SIZE:
            raise EnvelopeError(reason=f"nonce must be {NONCE_SIZE} bytes, got {len(self.nonce)}")
        if len(self.ciphertext) < TAG_SIZE:
            raise EnvelopeError(
                reason=f"ciphertext must hold at least the {TAG_SIZE}-byte tag, "
                f"got {len(self.ciphertext)} bytes"
            )
        _check_wrapped_key(self.wrapped_key, self.version)

    @property
    def key_ref(self) -> KeyRef:
        """The store key (and version) that wrapped the data key."""
        return KeyRef(self.mount, self.name, self.version)

    @property
    def wrapped(self) -> WrappedSecret:
        """The wrapped data key, as the store takes it back."""
        return WrappedSecret(self.key_ref, self.wrapped_key)

    def to_bytes(self) -> bytes:
        """``SOV1``, the field lengths and key version, the fields, nonce, ciphertext length
        and ciphertext (all integers big-endian)."""
        wrapped = self.wrapped_key.encode("ascii")
        mount = self.mount.encode("utf-8")
        name = self.name.encode("utf-8")
        for what, field in (("wrapped key", wrapped), ("mount", mount), ("name", name)):
            if len(field) > _MAX_U16:
                raise EnvelopeError(reason=f"{what} is longer than {_MAX_U16} bytes")
        return b"".join(
            (
                MAGIC,
                _HEADER.pack(len(wrapped), len(mount), len(name), self.version),
                wrapped,
                mount,
                name,
                self.nonce,
                _LENGTH.pack(len(self.ciphertext)),
                self.ciphertext,
            )
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Sealed:
        """Parse :meth:`to_bytes` output strictly: exact lengths, no trailing bytes.

        :raises EnvelopeError: saying which part is malformed.
        """
        view = memoryview(data)
        if bytes(view[: len(MAGIC)]) != MAGIC:
            raise EnvelopeError(reason=f"sealed data must start with {MAGIC!r}")
        offset = len(MAGIC)
        if len(view) < offset + _HEADER.size:
            raise EnvelopeError(reason="sealed data is shorter than its header")
        wrapped_len, mount_len, name_len, version = _HEADER.unpack_from(view, offset)
        offset += _HEADER.size
        fields: list[str] = []
        for what, length, encoding in (
            ("wrapped key", wrapped_len, "ascii"),
            ("mount", mount_len, "utf-8"),
            ("name", name_len, "utf-8"),
        ):
            raw = bytes(view[offset : offset + length])
            if len(raw) != length:
                raise EnvelopeError(reason=f"sealed data ends inside the {what}")
            try:
                fields.append(raw.decode(encoding))
            except UnicodeDecodeError as exc:
                raise EnvelopeError(reason=f"the {what} is not valid {encoding}") from exc
            offset += length
        nonce = bytes(view[offset : offset + NONCE_SIZE])
        offset += NONCE_SIZE
        if len(nonce) != NONCE_SIZE or len(view) < offset + _LENGTH.size:
            raise EnvelopeError(reason="sealed data ends inside the nonce or ciphertext length")
        (ct_len,) = _LENGTH.unpack_from(view, offset)
        offset += _LENGTH.size
        if len(view) - offset != ct_len:
            raise EnvelopeError(
                reason=f"ciphertext length says {ct_len} bytes, {len(view) - offset} follow"
            )
        wrapped_key, mount, name = fields
        return cls(wrapped_key, mount, name, version, nonce, bytes(view[offset:]))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(key={self.mount}/{self.name} v{self.version}, "
            f"ciphertext={len(self.ciphertext)} bytes)"
        )


def associated_data(enclave_id: uuid.UUID, label: Label) -> bytes:
    """The GCM associated data (and data key context): RFC 8785 canonical JSON of the purpose,
    the enclave id and the label's canonical text (``SECRET//EU/NATO``)."""
    return rfc8785.dumps({"purpose": PURPOSE, "enclave": str(enclave_id), "label": str(label)})


def seal(
    store: SecretStore, key_ref: KeyRef, enclave_id: uuid.UUID, label: Label, plaintext: bytes
) -> Sealed:
    """Encrypt ``plaintext`` for the enclave and label under a fresh data key wrapped by
    ``key_ref``.

    :raises EnvelopeError: if the store hands back a data key of the wrong size.
    :raises DependencyUnavailableError: from the store, if it cannot make a data key.
    """
    return seal_many(store, key_ref, enclave_id, label, [plaintext])[0]


def seal_many(
    store: SecretStore,
    key_ref: KeyRef,
    enclave_id: uuid.UUID,
    label: Label,
    items: Sequence[bytes],
) -> list[Sealed]:
    """Encrypt each item under one shared data key (one store round trip for the batch), each
    with its own random 96-bit nonce.

    :raises EnvelopeError: if the batch is too large for one key or the data key is malformed.
    :raises DependencyUnavailableError: from the store, if it cannot make a data key.
    """
    if len(items) > MAX_BATCH:
        raise EnvelopeError(reason=f"at most {MAX_BATCH} items may share one data key")
    if not items:
        return []
    aad = associated_data(enclave_id, label)
    plaintext_key, wrapped = store.data_key(key_ref, aad)
    aead = _aead(plaintext_key)
    # Drop our reference to the store's immutable copy of the key (see the module docstring).
    del plaintext_key
    sealed: list[Sealed] = []
    for item in items:
        # Random nonces: with at most 2**32 items per key the collision probability stays below
        # the 2**-32 bound of SP 800-38D section 8.3.
        nonce = os.urandom(NONCE_SIZE)
        ciphertext = aead.encrypt(nonce, item, aad)
        sealed.append(
            Sealed(
                wrapped.ciphertext,
                wrapped.key.mount,
                wrapped.key.name,
                wrapped.key.version,
                nonce,
                ciphertext,
            )
        )
    return sealed


def open_sealed(store: SecretStore, sealed: Sealed, enclave_id: uuid.UUID, label: Label) -> bytes:
    """Decrypt a payload sealed for this enclave and label.

    :raises EnvelopeError: if it was sealed for another enclave or label, or was tampered with.
    :raises NotFoundError: from the store, if the store key was destroyed (crypto-erased).
    :raises DependencyUnavailableError: from the store, if it cannot unwrap the data key.
    """
    return open_many(store, [sealed], enclave_id, label)[0]


def open_many(
    store: SecretStore, items: Sequence[Sealed], enclave_id: uuid.UUID, label: Label
) -> list[bytes]:
    """Decrypt payloads of one enclave and label, unwrapping each distinct data key once (so a
    :func:`seal_many` batch costs one store round trip).

    :raises EnvelopeError: if one was sealed for another enclave or label, or tampered with.
    :raises NotFoundError: from the store, if the store key was destroyed (crypto-erased).
    :raises DependencyUnavailableError: from the store, if it cannot unwrap a data key.
    """
    aad = associated_data(enclave_id, label)
    contexts: dict[WrappedSecret, AESGCM] = {}
    opened: list[bytes] = []
    for sealed in items:
        wrapped = sealed.wrapped
        aead = contexts.get(wrapped)
        if aead is None:
            aead = contexts[wrapped] = _aead(store.unwrap(wrapped, aad))
        try:
            opened.append(aead.decrypt(sealed.nonce, sealed.ciphertext, aad))
        except InvalidTag:
            # One message for every cause, so the error says nothing about which one it was.
            raise EnvelopeError(
                reason="authentication failed: the data was altered, or was sealed for another "
                "enclave or label"
            ) from None
    return opened


def rewrap_sealed(
    store: SecretStore, sealed: Sealed, enclave_id: uuid.UUID, label: Label
) -> Sealed:
    """Re-wrap the data key under the store key's latest version; the ciphertext is unchanged
    and no plaintext leaves the store.

    :raises DependencyUnavailableError: from the store, if it cannot rewrap.
    """
    rewrapped = store.rewrap(sealed.wrapped, associated_data(enclave_id, label))
    return replace(
        sealed,
        wrapped_key=rewrapped.ciphertext,
        mount=rewrapped.key.mount,
        name=rewrapped.key.name,
        version=rewrapped.key.version,
    )


def _aead(plaintext_key: bytes) -> AESGCM:
    """An AES-256-GCM context for the data key; our mutable copy of it is zeroed before return.

    :raises EnvelopeError: if the key is not 32 bytes.
    """
    key = bytearray(plaintext_key)
    try:
        if len(key) != DATA_KEY_SIZE:
            raise EnvelopeError(
                reason=f"the secret store returned a {len(key)}-byte data key, "
                f"expected {DATA_KEY_SIZE}"
            )
        # AESGCM copies the key into its own (OpenSSL) context, so zeroing ours is safe.
        return AESGCM(key)
    finally:
        key[:] = bytes(len(key))


# Pure, and every item of a batch carries the same wrapped key: check each distinct one once
# (lru_cache does not cache the EnvelopeError of an invalid one).
@functools.lru_cache(maxsize=1024)
def _check_wrapped_key(wrapped_key: str, version: int) -> None:
    """Check the wrapped key is printable ASCII and, for Vault's ``vault:vN:<base64>`` format,
    that N is the header's version and the base64 is canonical (one spelling per key).

    :raises EnvelopeError: naming what is wrong.
    """
    if not wrapped_key or not (wrapped_key.isascii() and wrapped_key.isprintable()):
        raise EnvelopeError(reason="the wrapped key must be non-empty printable ASCII")
    if not wrapped_key.startswith("vault:"):
        return
    match = _VAULT_WRAPPED.fullmatch(wrapped_key)
    if match is None:
        raise EnvelopeError(reason="the wrapped key is not a vault:v<N>:<base64> ciphertext")
    if int(match.group(1)) != version:
        raise EnvelopeError(
            reason=f"the wrapped key is of key version {match.group(1)}, the header says {version}"
        )
    # Go's base64 decoder ignores non-zero trailing bits, so Vault would accept several spellings
    # of one wrapped key; only the canonical one is accepted, so no byte can change unnoticed.
    encoded = match.group(2)
    try:
        canonical = base64.b64encode(base64.b64decode(encoded, validate=True)).decode("ascii")
    except binascii.Error as exc:
        raise EnvelopeError(reason="the wrapped key is not valid base64") from exc
    if canonical != encoded:
        raise EnvelopeError(reason="the wrapped key is not canonical base64")


__all__ = [
    "MAGIC",
    "EnvelopeError",
    "Sealed",
    "associated_data",
    "open_many",
    "open_sealed",
    "rewrap_sealed",
    "seal",
    "seal_many",
]
