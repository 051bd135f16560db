"""An in-memory :class:`~sovereign.services.ports.SecretStore` for fast tests of the services.

Owns :class:`MemorySecretStore`, which behaves like
:class:`~sovereign.adapters.vault.VaultSecretStore` where the services can tell: versioned
AES-256-GCM keys that never leave it, data keys wrapped as ``vault:vN:...``, rotation and
rewrap, deletion after which unwrapping raises :class:`NotFoundError`, and a switch that makes
every call fail as if Vault were down. The contract test in ``tests/contract`` holds both to the
same behaviour. Not for production: the keys live in process memory.
"""

from __future__ import annotations

import base64
import os
import re
import threading
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sovereign.domain.keys import KeyRef, WrappedSecret
from sovereign.errors import DependencyUnavailableError, InvalidInputError, NotFoundError

_NONCE_BYTES = 12  # 96-bit GCM nonce, as transit's aes256-gcm96
_DATA_KEY_BYTES = 32
_WRAPPED = re.compile(r"^vault:v(\d+):([A-Za-z0-9+/=]+)$")


class MemorySecretStore:
    """Transit-like keys in a dict. Set :attr:`down` to make every call raise
    :class:`DependencyUnavailableError` as an unreachable Vault would.

    ``context`` is ignored, as the Vault backend does not send it (non-derived keys); the
    wrapped copy is bound to the key's mount and name through AES-GCM associated data, so it
    does not unwrap under another key, as in Vault.
    """

    name = "vault"

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], list[bytes]] = {}
        self._lock = threading.Lock()
        #: Simulate Vault being unreachable.
        self.down = False
        #: The Vault round trips the real backend would have made (destroy makes two).
        self.round_trips = 0

    def _enter(self, trips: int = 1) -> None:
        if self.down:
            raise DependencyUnavailableError("vault is unreachable (simulated)", dependency="vault")
        self.round_trips += trips

    def _versions(self, key: KeyRef) -> list[bytes]:
        versions = self._keys.get((key.mount, key.name))
        if versions is None:
            raise NotFoundError(kind="key", ident=f"{key.mount}/{key.name}")
        return versions

    @staticmethod
    def _aad(key: KeyRef) -> bytes:
        return f"{key.mount}/{key.name}".encode()

    def _wrap(self, key: KeyRef, versions: list[bytes], plaintext: bytes) -> WrappedSecret:
        version = len(versions)
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(versions[-1]).encrypt(nonce, plaintext, self._aad(key))
        text = base64.b64encode(nonce + sealed).decode()
        return WrappedSecret(KeyRef(key.mount, key.name, version), f"vault:v{version}:{text}")

    def _open(self, wrapped: WrappedSecret, versions: list[bytes]) -> bytes:
        m = _WRAPPED.match(wrapped.ciphertext)
        if m is None or not 1 <= int(m.group(1)) <= len(versions):
            raise InvalidInputError(reason="vault rejected the request to unwrap a data key")
        blob = base64.b64decode(m.group(2))
        try:
            return AESGCM(versions[int(m.group(1)) - 1]).decrypt(
                blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], self._aad(wrapped.key)
            )
        except InvalidTag as e:
            raise InvalidInputError(reason="vault rejected the request to unwrap a data key") from e

    def create_key(self, mount: str, name: str) -> KeyRef:
        """Create a key (idempotent); returns its latest version."""
        with self._lock:
            self._enter()
            versions = self._keys.setdefault((mount, name), [AESGCM.generate_key(256)])
            return KeyRef(mount, name, len(versions))

    def data_key(self, key: KeyRef, context: bytes) -> tuple[bytes, WrappedSecret]:
        """A fresh 256-bit data key and its copy wrapped under the latest version."""
        with self._lock:
            self._enter()
            versions = self._versions(key)
            plaintext = os.urandom(_DATA_KEY_BYTES)
            return plaintext, self._wrap(key, versions, plaintext)

    def unwrap(self, wrapped: WrappedSecret, context: bytes) -> bytes:
        """The plaintext data key. :raises NotFoundError: key destroyed."""
        with self._lock:
            self._enter()
            return self._open(wrapped, self._versions(wrapped.key))

    def rotate(self, key: KeyRef) -> KeyRef:
        """Add a version. :raises NotFoundError:."""
        with self._lock:
            self._enter()
            versions = self._versions(key)
            versions.append(AESGCM.generate_key(256))
            return KeyRef(key.mount, key.name, len(versions))

    def rewrap(self, wrapped: WrappedSecret, context: bytes) -> WrappedSecret:
        """Re-encrypt under the latest version. :raises NotFoundError:."""
        with self._lock:
            self._enter()
            versions = self._versions(wrapped.key)
            return self._wrap(wrapped.key, versions, self._open(wrapped, versions))

    def destroy_key(self, key: KeyRef) -> dict[str, Any]:
        """Forget every version (idempotent); answers like the Vault backend."""
        with self._lock:
            self._enter(trips=2)
            gone = self._keys.pop((key.mount, key.name), None) is None
            return {
                "mount": key.mount,
                "name": key.name,
                "deleted": True,
                "already_deleted": gone,
                "status": 404 if gone else 204,
            }

    def ping(self) -> None:
        """:raises DependencyUnavailableError: when :attr:`down`."""
        self._enter(trips=2)  # seal status and token lookup
