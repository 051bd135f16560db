"""Which secret store holds an enclave's key: the store of the enclave's country.

Owns :class:`KeyStores`, the small routing object the key service asks for the store of a
country (data residency: an enclave's key lives in its country's Vault, and its data keys are
unwrapped there), with the name the audit events give that store and its transit mount prefix.
Countries without a store of their own (and keys made before residency, which have no country)
use the one configured Vault, named ``default``. Built by :mod:`sovereign.bootstrap` from the
``VAULT_COUNTRIES`` setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sovereign.domain.keys import EnclaveKeys
from sovereign.errors import DependencyUnavailableError
from sovereign.services.ports import SecretStore

#: The name the audit events give the one configured Vault.
DEFAULT_STORE = "default"


@dataclass(frozen=True)
class KeyStore:
    """One secret store: the store, its name in audit events, its transit mount prefix."""

    store: SecretStore
    name: str
    mount_prefix: str


class KeyStores:
    """The default store and the stores of the countries that have their own."""

    def __init__(
        self,
        default: SecretStore,
        mount_prefix: str = "sovereign-",
        countries: Mapping[str, tuple[SecretStore, str | None]] | None = None,
    ) -> None:
        """``countries`` maps a country code to its store and mount prefix (None: the
        default prefix)."""
        self.default = KeyStore(default, DEFAULT_STORE, mount_prefix)
        self._countries = {
            code: KeyStore(store, code, prefix if prefix is not None else mount_prefix)
            for code, (store, prefix) in (countries or {}).items()
        }

    @property
    def countries(self) -> tuple[str, ...]:
        """The countries with a store of their own, sorted."""
        return tuple(sorted(self._countries))

    def for_country(self, country: str | None) -> KeyStore:
        """The store a new key of ``country`` is created in (the default one when the country
        has none of its own; the key's record then names ``default``)."""
        if country is None:
            return self.default
        return self._countries.get(country, self.default)

    def holding(self, keys: EnclaveKeys) -> KeyStore:
        """The store that holds ``keys``: the one named when they were created.

        Fails closed: a key is never unwrapped, rotated or erased through another store than
        the one that holds it (after ``VAULT_COUNTRIES`` changed, the other store would answer
        "no such key" and an erasure would look done while the key lived on).

        :raises DependencyUnavailableError: that store is no longer configured.
        """
        if keys.vault is None:
            # Made before the store was recorded: the store of its country, as then.
            return self.for_country(keys.country)
        if keys.vault == DEFAULT_STORE:
            return self.default
        found = self._countries.get(keys.vault)
        if found is None:
            raise DependencyUnavailableError(dependency=f"vault-{keys.vault}")
        return found
