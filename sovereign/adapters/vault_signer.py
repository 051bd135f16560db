"""The audit checkpoint signer backed by a Vault (or OpenBao) transit Ed25519 key.

Owns :class:`VaultTransitSigner`, the Vault implementation of the :class:`audit.signer.Signer`
port, and :func:`ensure_audit_key`, which creates the transit mount and the non-exportable
Ed25519 key idempotently for development and test setups. The private key never leaves Vault:
this module only ever sees public keys and signatures. Public keys of every key version stay
published (:meth:`VaultTransitSigner.public_keys_all`), so checkpoints signed before a rotation
keep verifying offline.

hvac and requests exceptions are translated to :class:`DependencyUnavailableError` here, in
:func:`_vault_errors`, and nowhere else. Tokens are never logged; only mount and key names and
key versions appear in messages. Vault's per-enclave data keys live in
:mod:`sovereign.adapters.vault`, not here.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeAlias

import hvac
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hvac import exceptions as hvac_exc

from audit.note import ED25519_PUBLIC_KEY_SIZE, ED25519_SIGNATURE_SIZE, check_key_name, key_id
from audit.note import verifier_key as note_verifier_key
from sovereign.errors import ConfigurationError, DependencyUnavailableError

log = logging.getLogger(__name__)

DEFAULT_MOUNT = "sovereign-audit"
DEFAULT_KEY_NAME = "audit-checkpoints"
#: Transit's name for RFC 8032 Ed25519 keys. Vault signs the message itself with them (pure
#: Ed25519, no prehash); ``hash_algorithm``, ``prehashed``, ``signature_algorithm`` and
#: ``marshaling_algorithm`` only matter for RSA and ECDSA keys, so none of them is sent.
KEY_TYPE = "ed25519"

# Transit signatures are "vault:v<version>:<standard base64 of the raw signature>".
_SIGNATURE = re.compile(r"vault:v([1-9][0-9]*):([A-Za-z0-9+/]+={0,2})")

#: An authenticated client, or a zero-argument callable returning one (for example one that
#: renews an AppRole login before the token expires); called once per Vault request.
ClientSource: TypeAlias = "hvac.Client | Callable[[], hvac.Client]"


@contextmanager
def _vault_errors(action: str, mount: str, key_name: str) -> Iterator[None]:
    """Translate hvac and requests exceptions raised inside the block.

    :raises DependencyUnavailableError: naming the dependency "vault"; the cause is chained.
    """
    try:
        yield
    except (hvac_exc.VaultError, requests.RequestException) as exc:
        # The exception class and the path say what failed; hvac's own text carries the URL and
        # Vault's error strings but never the token. Still, only our own words go to the log.
        log.warning("vault: cannot %s %s/%s (%s)", action, mount, key_name, type(exc).__name__)
        raise DependencyUnavailableError(dependency="vault") from exc


def _decode_b64(text: Any, what: str) -> bytes:
    """Decode standard base64 from a Vault answer.

    :raises DependencyUnavailableError: if ``text`` is not standard base64.
    """
    try:
        return base64.b64decode(str(text).encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise DependencyUnavailableError(
            f"vault returned a malformed {what}", dependency="vault"
        ) from exc


def _key_data(response: Any) -> Mapping[str, Any]:
    """The ``data`` member of a ``read_key`` answer.

    :raises DependencyUnavailableError: if the answer has no ``data`` mapping.
    """
    data = response.get("data") if isinstance(response, Mapping) else None
    if not isinstance(data, Mapping):
        raise DependencyUnavailableError(
            "vault returned a malformed transit key description", dependency="vault"
        )
    return data


def _check_key_policy(data: Mapping[str, Any], mount: str, key_name: str) -> None:
    """Refuse a transit key that is not a plain, non-exportable Ed25519 key.

    :raises ConfigurationError: naming the offending property.
    """
    where = f"transit key {mount}/{key_name}"
    if data.get("type") != KEY_TYPE:
        raise ConfigurationError(
            reason=f"{where} has type {data.get('type')!r}, expected {KEY_TYPE!r}"
        )
    # The checkpoint key must be usable but never extractable: an exportable key, or one whose
    # plaintext backup is allowed, could leave Vault, so the signer refuses to use it.
    if data.get("exportable") is not False:
        raise ConfigurationError(reason=f"{where} is exportable; it must not be")
    if data.get("allow_plaintext_backup") is not False:
        raise ConfigurationError(reason=f"{where} allows plaintext backup; it must not")
    # A derived key signs with a per-context key, which our notes have no way to name.
    if data.get("derived") is not False:
        raise ConfigurationError(reason=f"{where} is a derived key; it must not be")


def _public_keys(data: Mapping[str, Any]) -> dict[int, bytes]:
    """Every key version's raw Ed25519 public key, by version.

    :raises DependencyUnavailableError: if a version or public key is malformed.
    """
    keys = data.get("keys")
    if not isinstance(keys, Mapping) or not keys:
        raise DependencyUnavailableError(
            "vault returned a transit key without key versions", dependency="vault"
        )
    found: dict[int, bytes] = {}
    for version_text, entry in keys.items():
        if not (isinstance(version_text, str) and version_text.isdecimal()):
            raise DependencyUnavailableError(
                "vault returned a malformed transit key version", dependency="vault"
            )
        encoded = entry.get("public_key") if isinstance(entry, Mapping) else None
        public_key = _decode_b64(encoded, "Ed25519 public key")
        if len(public_key) != ED25519_PUBLIC_KEY_SIZE:
            raise DependencyUnavailableError(
                f"vault returned a {len(public_key)}-byte Ed25519 public key, expected "
                f"{ED25519_PUBLIC_KEY_SIZE}",
                dependency="vault",
            )
        found[int(version_text)] = public_key
    return found


@dataclass(frozen=True)
class _KeyState:
    """What the signer advertises: one key version, its public key and key ID."""

    version: int
    public_key: bytes
    key_id: bytes


class VaultTransitSigner:
    """A note signer whose Ed25519 private key lives in a Vault transit mount, never outside.

    The signer advertises one key version at a time (``public_key``, ``key_id``, ``version``)
    and signs only with that version, so the public key, key ID and signature of one note always
    agree even if the key is rotated in Vault while the note is being signed. The advertised
    version is read lazily on first use and changes only in :meth:`refresh` (call it between
    notes, from the thread that signs, to pick up a rotation) or when Vault refuses to sign with
    the advertised version any more (see :meth:`sign`).
    """

    def __init__(
        self,
        client: ClientSource,
        name: str,
        *,
        mount: str = DEFAULT_MOUNT,
        key_name: str = DEFAULT_KEY_NAME,
    ) -> None:
        """Sign as note key ``name`` (the log origin) with transit key ``mount``/``key_name``.

        No request is made here; the key is read on first use.

        :raises NoteError: if ``name`` breaks the signed-note key name rules.
        """
        check_key_name(name)
        self._client_source = client
        self._name = name
        self.mount = mount
        self.key_name = key_name
        self._state: _KeyState | None = None
        self._lock = threading.Lock()

    # -- Signer port ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The key name written in signature lines (the log origin)."""
        return self._name

    @property
    def key_id(self) -> bytes:
        """The 4-byte key ID of the advertised version.

        :raises DependencyUnavailableError: if the key cannot be read from Vault.
        :raises ConfigurationError: if the key is not a non-exportable Ed25519 key.
        """
        return self._current().key_id

    @property
    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key of the advertised version.

        :raises DependencyUnavailableError: if the key cannot be read from Vault.
        :raises ConfigurationError: if the key is not a non-exportable Ed25519 key.
        """
        return self._current().public_key

    def sign(self, message: bytes) -> bytes:
        """Return Vault's 64-byte Ed25519 signature of ``message`` by the advertised version.

        If Vault refuses the advertised version (rotated and retired with
        ``min_encryption_version``) or signs with another key (the key was deleted and created
        again), the signer refreshes, so the next note is signed with what Vault now holds, and
        this call fails: a signature by another key than the one the caller already read would
        make the note unverifiable.

        :raises DependencyUnavailableError: if Vault is down, sealed or refuses, or its
            signature is not by the advertised key version.
        """
        state = self._current()
        try:
            with _vault_errors("sign with", self.mount, self.key_name):
                response = self._client().secrets.transit.sign_data(
                    self.key_name,
                    hash_input=base64.b64encode(message).decode("ascii"),
                    key_version=state.version,
                    mount_point=self.mount,
                )
        except DependencyUnavailableError as exc:
            if isinstance(exc.__cause__, hvac_exc.VaultError):
                # Vault answered but would not sign with this version (OpenBao says so with a
                # 500): re-read the key so the next note uses what Vault will sign with. The
                # refresh is best effort; the original failure is what the caller sees.
                self._refresh_quietly()
            raise
        version, signature = self._parse_signature(response)
        if version != state.version:
            raise DependencyUnavailableError(
                f"vault signed with key version {version}, but version {state.version} was "
                "requested",
                dependency="vault",
            )
        # sign_note verifies too, but only here can the signer notice that the key behind the
        # version changed and stop advertising a public key Vault no longer signs for.
        try:
            Ed25519PublicKey.from_public_bytes(state.public_key).verify(signature, message)
        except InvalidSignature:
            log.warning(
                "vault: %s/%s v%d signed with another key than its advertised public key",
                self.mount,
                self.key_name,
                state.version,
            )
            self._refresh_quietly()
            raise DependencyUnavailableError(
                "vault signed with another key than the advertised one", dependency="vault"
            ) from None
        return signature

    # -- Beyond the port ------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The advertised transit key version.

        :raises DependencyUnavailableError: if the key cannot be read from Vault.
        """
        return self._current().version

    @property
    def verifier_key(self) -> str:
        """The note verifier key string of the advertised version.

        :raises DependencyUnavailableError: if the key cannot be read from Vault.
        """
        return note_verifier_key(self._name, self.public_key)

    def refresh(self) -> bool:
        """Re-read the key from Vault and advertise its latest version; True if it changed.

        Must not run while a note is being signed by this signer (the sequencer calls it
        between checkpoints).

        :raises DependencyUnavailableError: if the key cannot be read from Vault.
        :raises ConfigurationError: if the key is not a non-exportable Ed25519 key.
        """
        with self._lock:
            before = self._state
            self._state = self._load()
            return before is None or before.version != self._state.version

    def public_keys_all(self) -> list[str]:
        """Note verifier keys of every version Vault still holds, newest first.

        Read fresh from Vault, so versions rotated in by other processes are included.

        :raises DependencyUnavailableError: if the key cannot be read from Vault.
        :raises ConfigurationError: if the key is not a non-exportable Ed25519 key.
        """
        keys = _public_keys(self._read_key())
        return [note_verifier_key(self._name, keys[v]) for v in sorted(keys, reverse=True)]

    def __repr__(self) -> str:
        # Only public identifiers: never the client, whose token must not reach a log.
        state = self._state
        version = "unread" if state is None else f"v{state.version}"
        return (
            f"{type(self).__name__}(name={self._name!r}, key={self.mount}/{self.key_name}, "
            f"version={version})"
        )

    # -- Internals ------------------------------------------------------------------------

    def _client(self) -> Any:
        """The hvac client, calling the factory when one was given."""
        if isinstance(self._client_source, hvac.Client):
            return self._client_source
        return self._client_source()

    def _current(self) -> _KeyState:
        """The advertised key state, read from Vault on first use."""
        state = self._state
        if state is not None:
            return state
        with self._lock:
            if self._state is None:
                self._state = self._load()
            return self._state

    def _refresh_quietly(self) -> None:
        """Re-read the key after a refused signature, keeping the old state on failure."""
        try:
            self.refresh()
        except (DependencyUnavailableError, ConfigurationError):
            log.warning("vault: could not refresh %s/%s", self.mount, self.key_name)

    def _read_key(self) -> Mapping[str, Any]:
        """The transit key description, checked to be a non-exportable Ed25519 key.

        :raises DependencyUnavailableError: if Vault cannot be read or the key is missing.
        :raises ConfigurationError: if the key is not a non-exportable Ed25519 key.
        """
        with _vault_errors("read transit key", self.mount, self.key_name):
            response = self._client().secrets.transit.read_key(
                self.key_name, mount_point=self.mount
            )
        data = _key_data(response)
        _check_key_policy(data, self.mount, self.key_name)
        return data

    def _load(self) -> _KeyState:
        """Read the key and pick its latest version's public key.

        :raises DependencyUnavailableError: if Vault cannot be read or answers malformed data.
        :raises ConfigurationError: if the key is not a non-exportable Ed25519 key.
        """
        data = self._read_key()
        keys = _public_keys(data)
        latest = data.get("latest_version")
        if isinstance(latest, bool) or not isinstance(latest, int) or latest not in keys:
            raise DependencyUnavailableError(
                "vault returned a transit key whose latest version has no public key",
                dependency="vault",
            )
        return _KeyState(latest, keys[latest], key_id(self._name, keys[latest]))

    @staticmethod
    def _parse_signature(response: Any) -> tuple[int, bytes]:
        """Split ``vault:v<N>:<base64>`` into the version and the 64 signature bytes.

        :raises DependencyUnavailableError: if the answer is not a transit Ed25519 signature.
        """
        data = response.get("data") if isinstance(response, Mapping) else None
        text = data.get("signature") if isinstance(data, Mapping) else None
        match = _SIGNATURE.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            raise DependencyUnavailableError(
                "vault returned a malformed transit signature", dependency="vault"
            )
        signature = _decode_b64(match.group(2), "transit signature")
        if len(signature) != ED25519_SIGNATURE_SIZE:
            raise DependencyUnavailableError(
                f"vault returned a {len(signature)}-byte signature, expected "
                f"{ED25519_SIGNATURE_SIZE}",
                dependency="vault",
            )
        return int(match.group(1)), signature


def ensure_audit_key(
    client: hvac.Client, mount: str = DEFAULT_MOUNT, key_name: str = DEFAULT_KEY_NAME
) -> int:
    """Enable the transit mount and create the non-exportable Ed25519 key if missing.

    Idempotent and safe to race with another bootstrap doing the same; returns the key's
    latest version. Needs a token allowed to list and enable mounts (dev root, bootstrap).

    :raises DependencyUnavailableError: if Vault is down, sealed or refuses.
    :raises ConfigurationError: if ``mount`` holds another engine, or the key exists but is
        not a non-exportable Ed25519 key.
    """
    with _vault_errors("enable transit mount for", mount, key_name):
        if _mount_type(client, mount) is None:
            try:
                client.sys.enable_secrets_engine("transit", path=mount)
            except hvac_exc.InvalidRequest:
                # Someone else enabled it between our look and our write; checked just below.
                log.info("vault: mount %s appeared concurrently", mount)
        found = _mount_type(client, mount)
    if found != "transit":
        raise ConfigurationError(
            reason=f"vault mount {mount}/ holds {found or 'nothing'}, expected a transit engine"
        )
    transit = client.secrets.transit
    with _vault_errors("create transit key", mount, key_name):
        try:
            response = transit.read_key(key_name, mount_point=mount)
        except hvac_exc.InvalidPath:
            # Creating an existing key is a no-op in Vault and OpenBao (200 with the key as it
            # was, even if another type was asked for), so losing a race here is harmless and
            # the type is checked on what is read back.
            transit.create_key(key_name, key_type=KEY_TYPE, exportable=False, mount_point=mount)
            response = transit.read_key(key_name, mount_point=mount)
    data = _key_data(response)
    _check_key_policy(data, mount, key_name)
    latest = data.get("latest_version")
    if isinstance(latest, bool) or not isinstance(latest, int):
        raise DependencyUnavailableError(
            "vault returned a transit key without a latest version", dependency="vault"
        )
    return latest


def _mount_type(client: Any, mount: str) -> str | None:
    """The engine type mounted at ``mount``, or None when nothing is mounted there."""
    response = client.sys.list_mounted_secrets_engines()
    mounts = response.get("data", response) if isinstance(response, Mapping) else {}
    entry = mounts.get(f"{mount.strip('/')}/") if isinstance(mounts, Mapping) else None
    if not isinstance(entry, Mapping):
        return None
    kind = entry.get("type")
    return str(kind) if kind is not None else None


__all__ = [
    "DEFAULT_KEY_NAME",
    "DEFAULT_MOUNT",
    "ClientSource",
    "VaultTransitSigner",
    "ensure_audit_key",
]
