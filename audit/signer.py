"""The note signer port and its Ed25519 backends (in memory, PEM file).

Owns :class:`Signer`, the port through which :func:`audit.note.sign_note` obtains signatures,
so the log's checkpoint key can live in a file, in memory for tests, or in Vault transit in
production (a Vault backend implements the same protocol elsewhere). Signatures are Ed25519
per RFC 8032, with key IDs and verifier keys as in c2sp.org/signed-note ("Ed25519
signatures"). Must never log, print or ``repr`` private key material; only names, key IDs and
file paths appear in messages. Imports neither ``sovereign`` nor Flask.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.note import NoteVerifier, check_key_name, key_id, verifier_key

#: Private key files must not be readable or writable by group or others (as ssh insists).
KEY_FILE_MODE = 0o600
_GROUP_OTHER_BITS = 0o077


class SignerError(Exception):
    """A signing key could not be created, loaded or used."""


@runtime_checkable
class Signer(Protocol):
    """Signs note texts with one Ed25519 key identified by a key name and 4-byte key ID."""

    @property
    def name(self) -> str:
        """The key name written in signature lines (c2sp.org/signed-note key name rules)."""
        ...

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID, SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
        ...

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        ...

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        ...


class Ed25519Signer:
    """An in-memory Ed25519 note signer, for tests and for keys loaded by other backends."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        """Wrap ``private_key`` under key name ``name``.

        :raises NoteError: if ``name`` breaks the signed-note key name rules.
        """
        check_key_name(name)
        self._name = name
        self._private_key = private_key
        self._public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._key_id = key_id(name, self._public_key)

    @classmethod
    def generate(cls, name: str) -> Ed25519Signer:
        """Create a signer with a fresh random key.

        :raises NoteError: if ``name`` breaks the signed-note key name rules.
        """
        return Ed25519Signer(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> Ed25519Signer:
        """Create a signer from a 32-byte RFC 8032 private key seed.

        :raises SignerError: if the seed is not 32 bytes.
        :raises NoteError: if ``name`` breaks the signed-note key name rules.
        """
        try:
            private_key = Ed25519PrivateKey.from_private_bytes(seed)
        except ValueError as exc:
            raise SignerError(
                f"Ed25519 seed for {name!r} must be 32 bytes, got {len(seed)}"
            ) from exc
        return Ed25519Signer(name, private_key)

    @property
    def name(self) -> str:
        """The key name written in signature lines."""
        return self._name

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID."""
        return self._key_id

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key."""
        return self._public_key

    @property
    def verifier_key(self) -> str:
        """The verifier key string to hand to whoever verifies this signer's notes."""
        return verifier_key(self._name, self._public_key)

    @property
    def verifier(self) -> NoteVerifier:
        """The :class:`NoteVerifier` for this signer's public key."""
        return NoteVerifier(self._name, self._key_id, self._public_key)

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``message``."""
        return self._private_key.sign(message)

    def __repr__(self) -> str:
        # Deliberately only public identifiers: the private key must never reach a log.
        return f"{type(self).__name__}(name={self._name!r}, key_id={self._key_id.hex()})"


class Ed25519FileSigner(Ed25519Signer):
    """An Ed25519 note signer whose key is an unencrypted PEM PKCS#8 file of mode 0600."""

    def __init__(self, name: str, path: str | os.PathLike[str], *, create: bool = False) -> None:
        """Load the key at ``path`` (mode 0600 only), or with ``create=True`` write a new one.

        :raises SignerError: if the file exists (creating), is missing, is open to group or
            others, or is not an Ed25519 PEM key (loading).
        :raises NoteError: if ``name`` breaks the signed-note key name rules.
        """
        check_key_name(name)
        self.path = Path(path)
        private_key = _create_key_file(self.path) if create else _load_key_file(self.path)
        super().__init__(name, private_key)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, key_id={self.key_id.hex()}, "
            f"path={str(self.path)!r})"
        )


def _create_key_file(path: Path) -> Ed25519PrivateKey:
    """Generate a key and write it to a new file of mode 0600.

    :raises SignerError: if the file exists or cannot be written.
    """
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        # O_EXCL: never overwrite a key, even one created between a check and this call.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    except FileExistsError as exc:
        raise SignerError(f"refusing to overwrite existing key file {path}") from exc
    except OSError as exc:
        raise SignerError(f"cannot create key file {path}: {exc.strerror}") from exc
    try:
        # The umask can only narrow the mode given to os.open; set it exactly anyway.
        os.fchmod(fd, KEY_FILE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise SignerError(f"cannot write key file {path}: {exc.strerror}") from exc
    return private_key


def _load_key_file(path: Path) -> Ed25519PrivateKey:
    """Read an Ed25519 private key from a PEM PKCS#8 file only its owner can access.

    :raises SignerError: if the file is missing, too open, or not an Ed25519 PEM key.
    """
    try:
        with path.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read()
    except OSError as exc:
        raise SignerError(f"cannot read key file {path}: {exc.strerror}") from exc
    if mode & _GROUP_OTHER_BITS:
        raise SignerError(
            f"key file {path} has mode {mode & 0o777:04o}; group and others must have no "
            f"access (chmod {KEY_FILE_MODE:o} it)"
        )
    try:
        private_key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # The parser's message never contains key bytes, but keep ours generic regardless.
        raise SignerError(f"key file {path} is not an unencrypted PEM PKCS#8 private key") from exc
    if not isinstance(private_key, Ed25519PrivateKey):
        raise SignerError(
            f"key file {path} holds a key of type {type(private_key).__name__}, expected Ed25519"
        )
    return private_key
