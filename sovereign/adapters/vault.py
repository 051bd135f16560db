"""Vault (or OpenBao) through hvac.

Owns the client construction and, for now, the readiness probe; the secret store built on it
(per-enclave keys, crypto-erase, checkpoint signing) lives here too as it grows. hvac and
requests exceptions are translated here. Tokens are never logged.
"""

from __future__ import annotations

import hvac
import requests
from hvac import exceptions as hvac_exc

from sovereign.errors import DependencyUnavailableError


class VaultProbe:
    """Readiness of Vault: reachable, initialised and unsealed."""

    name = "vault"

    def __init__(self, addr: str, token: str | None = None, timeout_s: float = 5) -> None:
        self._client = hvac.Client(url=addr, token=token, timeout=timeout_s)

    def ping(self) -> None:
        """:raises DependencyUnavailableError: unreachable, uninitialised or sealed."""
        try:
            status = self._client.sys.read_seal_status()
        except (hvac_exc.VaultError, requests.RequestException) as e:
            raise DependencyUnavailableError(dependency="vault") from e
        if not status.get("initialized", False):
            raise DependencyUnavailableError("vault is not initialised", dependency="vault")
        if status.get("sealed", True):
            raise DependencyUnavailableError("vault is sealed", dependency="vault")
