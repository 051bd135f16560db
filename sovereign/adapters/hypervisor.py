"""Hypervisors through ``enclaves.host``; for now, their readiness probe.

Owns the translation of :mod:`enclaves.errors` into :mod:`sovereign.errors` for the control
plane.
"""

from __future__ import annotations

from collections.abc import Sequence

from enclaves.errors import EnclaveError
from enclaves.host import LibvirtHost
from sovereign.errors import DependencyUnavailableError


class HypervisorProbe:
    """Readiness of every configured libvirt URI."""

    name = "hypervisors"

    def __init__(self, uris: Sequence[str]) -> None:
        self._hosts = [LibvirtHost(uri) for uri in uris]

    def ping(self) -> None:
        """:raises DependencyUnavailableError: naming the first host that does not answer."""
        for host in self._hosts:
            try:
                host.ping()
            except EnclaveError as e:
                raise DependencyUnavailableError(
                    f"hypervisor {host.uri} is unavailable", dependency="hypervisors"
                ) from e
