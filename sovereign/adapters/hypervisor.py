"""Hypervisors through :mod:`enclaves`: the :class:`~sovereign.services.ports.Hypervisor` port.

Owns :class:`LibvirtHypervisor`, a thin translation onto :mod:`enclaves.enclave`: one
long-lived :class:`~enclaves.enclave.EnclaveHost` per libvirt URI (the test driver keeps its
state per connection, so reconnecting would forget every domain), the mapping of an
:class:`~sovereign.services.ports.EnclavePlan` to the hypervisor side's own plan, and the
translation of :mod:`enclaves.errors` into :mod:`sovereign.errors`, once, here. Every URI is
checked against the configured :class:`~enclaves.uri.UriPolicy` before a connection to it is
even created, and opened under a time limit; every (re)opened connection must answer with the
host identity it first had, or the one pinned by :meth:`LibvirtHypervisor.identify`. What a
step does on a host (and the GPU checks libvirt's test driver does not make) is
:class:`~enclaves.enclave.HostedEnclave`'s; this module writes no domain XML and logs no secret.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence

from enclaves import enclave as hosted
from enclaves.enclave import GuestSettings, HostedEnclave
from enclaves.errors import EnclaveError, HostIdentityChangedError, HypervisorUnavailableError
from enclaves.host import HostIdentity as LibvirtIdentity
from enclaves.host import LibvirtHost
from enclaves.steps import ProvisionStep, TeardownStep
from enclaves.uri import UriPolicy, UriRefusedError, check_uri
from sovereign.domain.fleet import HostIdentity
from sovereign.domain.keys import EnclaveSecrets
from sovereign.errors import (
    ConflictError,
    DependencyUnavailableError,
    HostIdentityError,
    InvalidInputError,
)
from sovereign.services.ports import DomainFacts, EnclavePlan, HostFacts

__all__ = ["GuestSettings", "HypervisorProbe", "LibvirtHypervisor"]


@contextlib.contextmanager
def _translated(uri: str, action: str) -> Iterator[None]:
    """Turn an :class:`EnclaveError` into the control plane's errors (the one place)."""
    try:
        yield
    except HypervisorUnavailableError as e:
        raise DependencyUnavailableError(
            f"hypervisor {uri} is unavailable ({action})", dependency="hypervisor"
        ) from e
    except HostIdentityChangedError as e:
        raise HostIdentityError(reason=e.message) from e
    except EnclaveError as e:
        # A refusal (an isolation rule, a GPU held elsewhere) or libvirt's: not an outage.
        raise ConflictError(reason=f"hypervisor {uri} refused to {action}: {e.message}") from e


class LibvirtHypervisor:
    """The fleet's hypervisors over libvirt, one cached connection per URI."""

    def __init__(self, settings: GuestSettings, uris: UriPolicy | None = None) -> None:
        """``uris`` says which URIs may be opened (default: ``qemu+tls://`` only)."""
        self._settings = settings
        self._uris = uris if uris is not None else UriPolicy()
        self._hosts: dict[str, hosted.EnclaveHost] = {}
        self._lock = threading.Lock()

    def check_uri(self, uri: str) -> str:
        """The canonical form of ``uri`` if the policy allows it; nothing is opened.

        :raises InvalidInputError: saying why the URI is refused.
        """
        try:
            return check_uri(uri, self._uris)
        except UriRefusedError as e:
            raise InvalidInputError(reason=f"hypervisor URI refused: {e}") from e

    def _host(self, uri: str) -> hosted.EnclaveHost:
        # Defence in depth: a URI stored before the policy (or typed into the configuration)
        # is checked again here, so no connection to a refused URI is ever created; what is
        # opened is the canonical form.
        try:
            canonical = check_uri(uri, self._uris)
        except UriRefusedError as e:
            raise ConflictError(
                reason=f"hypervisor URI {uri} is not allowed by the URI policy ({e})"
            ) from e
        with self._lock:
            host = self._hosts.get(canonical)
            if host is None:
                host = self._hosts[canonical] = hosted.EnclaveHost(canonical, self._settings)
            return host

    def enclave_host(self, uri: str) -> hosted.EnclaveHost:
        """The host's connection and objects (shared with the GPU sanitizer backend).

        :raises ConflictError: if the URI policy refuses ``uri``.
        """
        return self._host(uri)

    def _enclave(self, plan: EnclavePlan) -> HostedEnclave:
        # The port's plan is the hypervisor side's plan plus the host's URI.
        return self._host(plan.uri).enclave(plan)

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            hosts, self._hosts = list(self._hosts.values()), {}
        for host in hosts:
            host.close()

    def ping(self, uri: str) -> None:
        """:raises DependencyUnavailableError: if the host does not answer."""
        with _translated(uri, "answer"):
            self._host(uri).conn.ping()

    def discover(self, uri: str) -> HostFacts:
        """Capacity, GPUs and identity of the host."""
        host = self._host(uri)
        with _translated(uri, "describe itself"):
            found = host.inventory()
            kind = host.hypervisor_type()
            identity = host.identity()
        return HostFacts(
            hypervisor_type=kind,
            cpus=found.cpus,
            memory_mib=found.memory_mib,
            gpus=found.gpus,
            identity=HostIdentity(identity.host_uuid, identity.hostname),
        )

    def identify(self, uri: str, expected: HostIdentity | None = None) -> HostIdentity:
        """The host's identity; ``expected`` is required of every later (re)connection."""
        host = self._host(uri)
        pinned = (
            None if expected is None else LibvirtIdentity(expected.host_uuid, expected.hostname)
        )
        with _translated(uri, "identify itself"):
            found = host.identity(pinned)
        identity = HostIdentity(found.host_uuid, found.hostname)
        if expected is not None and identity != expected:
            raise HostIdentityError(reason=f"{uri} answers with {identity}, recorded as {expected}")
        return identity

    def domains(self, uri: str) -> list[DomainFacts]:
        """Every domain defined on the host."""
        with _translated(uri, "list domains"):
            statuses = self._host(uri).domains()
        return [
            DomainFacts(
                domain_uuid=status.uuid,
                name=status.name,
                running=status.state in ("running", "paused"),
                enclave_id=status.enclave_id,
            )
            for status in statuses
        ]

    def provision(
        self, step: ProvisionStep, plan: EnclavePlan, secrets: EnclaveSecrets | None
    ) -> str:
        """Do one idempotent provisioning step."""
        enclave = self._enclave(plan)
        with _translated(plan.uri, f"{step} enclave {plan.domain_name}"):
            return enclave.provision(step, secrets)

    def teardown(self, step: TeardownStep, plan: EnclavePlan) -> str:
        """Do one idempotent teardown step."""
        enclave = self._enclave(plan)
        with _translated(plan.uri, f"{step} enclave {plan.domain_name}"):
            return enclave.teardown(step)

    def console(self, plan: EnclavePlan, max_bytes: int) -> str:
        """The tail of the serial console log, when this machine can read it."""
        return self._enclave(plan).console(max_bytes)

    def watch(self, uri: str, callback: Callable[[uuid.UUID, str], None]) -> Callable[[], None]:
        """Subscribe to the host's domain lifecycle events (libvirt's event loop thread)."""
        with _translated(uri, "subscribe to domain events"):
            return self._host(uri).watch(callback)


class HypervisorProbe:
    """Readiness of every configured libvirt URI."""

    name = "hypervisors"

    def __init__(self, uris: Sequence[str], *, timeout_s: float = 10.0) -> None:
        self._hosts = [LibvirtHost(uri, open_timeout=timeout_s) for uri in uris]

    def ping(self) -> None:
        """:raises DependencyUnavailableError: naming the first host that does not answer."""
        for host in self._hosts:
            try:
                host.ping()
            except EnclaveError as e:
                raise DependencyUnavailableError(
                    f"hypervisor {host.uri} is unavailable", dependency="hypervisors"
                ) from e
