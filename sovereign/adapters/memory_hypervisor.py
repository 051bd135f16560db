"""An in-memory fleet of hypervisors for fast tests of the reconciler.

Owns :class:`MemoryHypervisor`, which keeps domains, volumes, secrets and networks per URI in
dictionaries and behaves like :class:`~sovereign.adapters.hypervisor.LibvirtHypervisor` where
the reconciler can tell: every step idempotent, a GPU held by another domain refused, unknown
steps refused. Tests can make a URI unreachable or make one step fail, point two URIs at one
host (aliases of one machine) or change a host's identity behind the control plane's back. URIs
are checked like the libvirt adapter checks them (``mem://NAME`` stands for a host of this
fleet; other URIs go through the same :class:`~enclaves.uri.UriPolicy`), and a URI that once
answered with one identity must keep answering with it. The contract test in
``tests/contract/test_hypervisor_port.py`` holds both to the same behaviour.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from enclaves.inventory import GpuDevice
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

#: The in-memory fleet's own URIs: ``mem://NAME``.
_MEMORY_URI = re.compile(r"mem://[a-z0-9][a-z0-9.-]{0,62}")


@dataclass
class MemoryHost:
    """One simulated hypervisor."""

    cpus: int = 64
    memory_mib: int = 512 * 1024
    gpus: tuple[GpuDevice, ...] = ()
    #: Domain uuid -> (name, running, enclave id, GPU addresses).
    domains: dict[uuid.UUID, tuple[str, bool, uuid.UUID | None, frozenset[str]]] = field(
        default_factory=dict
    )
    volumes: set[str] = field(default_factory=set)
    secrets: set[uuid.UUID] = field(default_factory=set)
    networks: set[str] = field(default_factory=set)
    reachable: bool = True
    #: What the host answers as (libvirt's host UUID and hostname).
    host_uuid: str | None = field(default_factory=lambda: str(uuid.uuid4()))
    hostname: str = "memory-host"

    @property
    def identity(self) -> HostIdentity:
        """The identity the host answers with now."""
        return HostIdentity(self.host_uuid, self.hostname)


class MemoryHypervisor:
    """Hypervisors in memory, addressed by URI."""

    def __init__(self, uris: UriPolicy | None = None) -> None:
        #: Which non-``mem://`` URIs may be used (default: ``qemu+tls://`` only).
        self.uris = uris if uris is not None else UriPolicy()
        #: URI -> the identity it answered with first (or was pinned to).
        self.pinned: dict[str, HostIdentity] = {}
        #: URIs a connection was attempted to (tests prove refused ones never are).
        self.connected: list[str] = []
        self.hosts: dict[str, MemoryHost] = {}
        #: "provision:step" or "teardown:step" -> error raised the next time that step runs,
        #: before it has any effect ...
        self.failures: dict[str, BaseException] = {}
        #: ... or after it took effect (a worker dying between the hypervisor and the record).
        self.after_effect: dict[str, BaseException] = {}
        #: Lifecycle event subscribers per URI.
        self.watchers: dict[str, list[Callable[[uuid.UUID, str], None]]] = {}
        #: Every step done, in order, as (uri, "provision:volume", enclave id).
        self.calls: list[tuple[str, str, uuid.UUID]] = []

    def add_host(self, uri: str, host: MemoryHost) -> MemoryHost:
        """Make a host exist at ``uri``."""
        self.hosts[uri] = host
        return host

    def check_uri(self, uri: str) -> str:
        """The canonical form of ``uri``; ``mem://NAME`` passes as it is.

        :raises InvalidInputError: refused by the policy.
        """
        if _MEMORY_URI.fullmatch(uri):
            return uri
        try:
            return check_uri(uri, self.uris)
        except UriRefusedError as e:
            raise InvalidInputError(reason=f"hypervisor URI refused: {e}") from e

    def _host(self, uri: str) -> MemoryHost:
        try:
            uri = self.check_uri(uri)
        except InvalidInputError as e:
            raise ConflictError(
                reason=f"hypervisor URI {uri} is not allowed by the URI policy ({e.message})"
            ) from e
        self.connected.append(uri)
        host = self.hosts.get(uri)
        if host is None or not host.reachable:
            raise DependencyUnavailableError(
                f"hypervisor {uri} is unavailable", dependency="hypervisor"
            )
        pinned = self.pinned.setdefault(uri, host.identity)
        if host.identity != pinned:
            raise HostIdentityError(
                reason=f"{uri} answers with {host.identity}, not as {pinned}: "
                "it reaches another machine now"
            )
        return host

    def _fail(self, key: str) -> None:
        error = self.failures.pop(key, None)
        if error is not None:
            raise error

    def _fail_after(self, key: str) -> None:
        error = self.after_effect.pop(key, None)
        if error is not None:
            raise error

    def discover(self, uri: str) -> HostFacts:
        """The host's capacity, GPUs and identity."""
        host = self._host(uri)
        return HostFacts("MEMORY", host.cpus, host.memory_mib, host.gpus, host.identity)

    def identify(self, uri: str, expected: HostIdentity | None = None) -> HostIdentity:
        """The host's identity; ``expected`` is required from now on."""
        if expected is not None and expected.host_uuid is not None:
            # A refused URI is pinned nowhere: _host refuses it below.
            with contextlib.suppress(InvalidInputError):
                self.pinned[self.check_uri(uri)] = expected
        return self._host(uri).identity

    def domains(self, uri: str) -> list[DomainFacts]:
        """Every domain on the host."""
        host = self._host(uri)
        return [
            DomainFacts(domain_uuid=key, name=name, running=running, enclave_id=enclave)
            for key, (name, running, enclave, _gpus) in sorted(host.domains.items())
        ]

    def provision(
        self, step: ProvisionStep, plan: EnclavePlan, secrets: EnclaveSecrets | None
    ) -> str:
        """One idempotent provisioning step."""
        host = self._host(plan.uri)
        self._fail(f"provision:{step}")
        self.calls.append((plan.uri, f"provision:{step}", plan.enclave_id))
        key = plan.enclave_id
        if step == ProvisionStep.VOLUME:
            host.volumes.add(plan.domain_name)
        elif step == ProvisionStep.SECRETS:
            if secrets is None:
                raise ConflictError(reason="no secrets")
            host.secrets |= {uuid.uuid5(key, "luks"), uuid.uuid5(key, "vtpm")}
        elif step == ProvisionStep.NETWORK:
            host.networks.add(f"net-{key.hex[:12]}")
        elif step == ProvisionStep.DEFINE:
            wanted = frozenset(m for gpu in plan.gpus for m in gpu.group_members)
            present = {m for gpu in host.gpus for m in gpu.group_members}
            if not wanted <= present:
                raise ConflictError(reason=f"host has no GPU {sorted(wanted - present)}")
            for other, (name, _r, _e, gpus) in host.domains.items():
                if other != key and gpus & wanted:
                    raise ConflictError(reason=f"GPU already passed to domain {name}")
            running = host.domains.get(key, ("", False, None, frozenset()))[1]
            host.domains[key] = (plan.domain_name, running, key, wanted)
        elif step == ProvisionStep.START:
            if key not in host.domains:
                raise ConflictError(reason=f"domain {plan.domain_name} is not defined")
            name, _running, enclave, gpus = host.domains[key]
            host.domains[key] = (name, True, enclave, gpus)
        else:
            raise ValueError(f"unknown provisioning step {step!r}")
        self._fail_after(f"provision:{step}")
        return f"{step} done"

    def teardown(self, step: TeardownStep, plan: EnclavePlan) -> str:
        """One idempotent teardown step."""
        host = self._host(plan.uri)
        self._fail(f"teardown:{step}")
        self.calls.append((plan.uri, f"teardown:{step}", plan.enclave_id))
        key = plan.enclave_id
        if step == TeardownStep.STOP:
            if key in host.domains:
                name, _running, enclave, gpus = host.domains[key]
                host.domains[key] = (name, False, enclave, gpus)
        elif step == TeardownStep.UNDEFINE:
            host.domains.pop(key, None)
        elif step == TeardownStep.VOLUME:
            host.volumes.discard(plan.domain_name)
        elif step == TeardownStep.SECRETS:
            host.secrets -= {uuid.uuid5(key, "luks"), uuid.uuid5(key, "vtpm")}
        elif step == TeardownStep.NETWORK:
            host.networks.discard(f"net-{key.hex[:12]}")
        else:
            raise ValueError(f"unknown teardown step {step!r}")
        self._fail_after(f"teardown:{step}")
        return f"{step} done"

    def watch(self, uri: str, callback: Callable[[uuid.UUID, str], None]) -> Callable[[], None]:
        """Remember ``callback``; :meth:`emit` calls it (tests drive events by hand)."""
        self._host(uri)
        self.watchers.setdefault(uri, []).append(callback)

        def unsubscribe() -> None:
            self.watchers[uri].remove(callback)

        return unsubscribe

    def emit(self, uri: str, domain_uuid: uuid.UUID, event: str) -> None:
        """Deliver a lifecycle event to the watchers of ``uri``."""
        for callback in list(self.watchers.get(uri, [])):
            callback(domain_uuid, event)

    def console(self, plan: EnclavePlan, max_bytes: int) -> str:
        """A fixed console line for a running domain."""
        host = self._host(plan.uri)
        running = host.domains.get(plan.enclave_id, ("", False, None, frozenset()))[1]
        return f"{plan.domain_name} console\n"[-max_bytes:] if running else ""
