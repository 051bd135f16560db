"""Key references: where an enclave's keys live, never the keys themselves.

Owns :class:`KeyRef`, :class:`WrappedSecret` and :class:`EnclaveKeys` (the record the database
keeps per enclave: the Vault key, and the wrapped LUKS and vTPM data keys), and the rule that
picks the Vault transit mount of a tenant's security domain.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from datetime import datetime

from sovereign.domain.tenants import Tenant, TenantKind


@dataclass(frozen=True)
class KeyRef:
    """Where a key lives in the secret store: mount, name and version. Never the key itself."""

    mount: str
    name: str
    version: int = 1


@dataclass(frozen=True)
class WrappedSecret:
    """A data key encrypted under a store key (e.g. ``vault:v1:...``), safe to keep in the
    database; only the store can unwrap it."""

    key: KeyRef
    ciphertext: str


@dataclass(frozen=True)
class EnclaveKeys:
    """An enclave's key in Vault and its wrapped data keys (disk LUKS passphrase, vTPM state)."""

    request_id: uuid.UUID
    key: KeyRef
    luks: WrappedSecret
    vtpm: WrappedSecret
    created_at: datetime
    destroyed_at: datetime | None = None
    #: The country whose secret store holds the key (None for keys made before residency).
    country: str | None = None
    #: The name of the secret store that holds it (a country code, or ``default``), recorded
    #: at creation: every later use goes to that store, whatever the configuration says then
    #: (None for keys made before residency: the store of their country).
    vault: str | None = None

    def destroyed(self, when: datetime) -> EnclaveKeys:
        """The same record, marked crypto-erased."""
        return replace(self, destroyed_at=when)


#: Mount suffixes that are not a classified tenant's domain (the audit signing key, KV config,
#: the shared civilian domain): no classified tenant may be named after them.
RESERVED_DOMAINS = frozenset({"audit", "config", "civilian"})


@dataclass(frozen=True)
class EnclaveSecrets:
    """Plaintext secrets for the hypervisor, in memory only, for the moment of use."""

    luks_passphrase: bytes
    vtpm_secret: bytes

    def __repr__(self) -> str:
        return "EnclaveSecrets(<redacted>)"


def key_mount(tenant: Tenant, prefix: str = "sovereign-") -> str:
    """The transit mount of the tenant's security domain: one for all civilian tenants, one
    per classified tenant, so a classified tenant's keys never share a mount with anyone's."""
    if tenant.kind is TenantKind.CIVILIAN:
        return f"{prefix}civilian"
    return f"{prefix}{tenant.name}"


def enclave_key_name(request_id: uuid.UUID) -> str:
    """The transit key name of an enclave."""
    return f"enclave-{request_id}"
