"""Hosts, their GPUs and the enclaves placed on them, as the control plane records them.

Owns :class:`Host`, :class:`Gpu` and :class:`Enclave` with their state machines: a host is
``active``, ``draining`` or ``quarantined``; a GPU goes ``free -> allocated -> dirty ->
sanitizing -> free`` (isolation rule 2: a dirty GPU is never allocated) and may be
``quarantined`` from any state but ``allocated``; an enclave records where a request was placed
and how far provisioning or teardown got (its life itself is the request's state). It also turns
records into the snapshot :mod:`sovereign.domain.placement` decides on, and names the libvirt
domains of enclaves and of GPU sanitizers. It must not talk to libvirt or the database.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

# The one module of enclaves the domain may import: the steps, named once for every layer (a
# pure enum; see its docstring and the import-linter contract "domain is plain Python").
from enclaves.steps import PROVISION_STEPS, TEARDOWN_STEPS, ProvisionStep, TeardownStep
from sovereign.domain.labels import Label
from sovereign.domain.placement import (
    GpuStatus,
    HostState,
    HostStatus,
    PlacementRequest,
)
from sovereign.domain.requests import EnclaveRequest
from sovereign.domain.residency import placement_countries
from sovereign.domain.tenants import Tenant, TenantKind
from sovereign.errors import InvalidTransitionError

__all__ = [
    "CANARY_NONCE_BYTES",
    "DOMAIN_TYPES",
    "GPU_STATES",
    "GPU_TRANSITIONS",
    "HOST_STATES",
    "PROVISION_STEPS",
    "SANITIZER_DOMAIN_PREFIX",
    "TEARDOWN_STEPS",
    "Enclave",
    "FleetView",
    "Gpu",
    "Host",
    "HostIdentity",
    "ProvisionStep",
    "TeardownStep",
    "domain_name",
    "placement_request",
    "sanitizer_domain_name",
]

HOST_STATES: tuple[HostStatus, ...] = ("active", "draining", "quarantined")
GPU_STATES: tuple[GpuStatus, ...] = ("free", "allocated", "dirty", "sanitizing", "quarantined")
DOMAIN_TYPES = ("kvm", "qemu")
#: Size of an enclave's GPU canary nonce.
CANARY_NONCE_BYTES = 32

GPU_TRANSITIONS: dict[str, frozenset[str]] = {
    "free": frozenset({"allocated", "quarantined"}),
    # The enclave ended: whatever ran on it may have left data in GPU memory.
    "allocated": frozenset({"dirty"}),
    "dirty": frozenset({"sanitizing", "quarantined"}),
    # A failed sanitization sends it back to dirty (retried) or to quarantine.
    "sanitizing": frozenset({"free", "dirty", "quarantined"}),
    # Leaving quarantine goes through sanitization: nobody vouches for what happened meanwhile.
    "quarantined": frozenset({"dirty"}),
}


@dataclass(frozen=True)
class HostIdentity:
    """Who a hypervisor says it is: libvirt's host UUID and the host's name.

    The same machine answers the same whatever URI reached it (a name or its address, another
    port or spelling), so two host records never share a host UUID, and a host that answers
    with another identity than its record's is quarantined.
    """

    #: Lower-case UUID; None when the hypervisor reports none (such a host is not registered).
    host_uuid: str | None
    hostname: str

    def __str__(self) -> str:
        return f"host UUID {self.host_uuid or '(none)'}, hostname {self.hostname or '(none)'}"


@dataclass
class Gpu:
    """One whole GPU of a host."""

    host: str
    address: str
    model: str
    numa_node: int | None
    iommu_group: int | None
    group_members: tuple[str, ...]
    state: GpuStatus = "free"
    #: The enclave (request id) holding it while ``allocated``, last holder afterwards.
    enclave_id: uuid.UUID | None = None
    #: Label and tenant of the last enclave that used it (shown to officers).
    last_label: Label | None = None
    last_tenant: str | None = None
    updated_at: datetime | None = None
    #: The host's hypervisor identity: (host UUID, PCI address) names one physical device, so
    #: no two records can hold it even under two host names.
    host_uuid: str | None = None
    #: The GPU's own UUID where NVML reports it (``GPU-...``), unique across the fleet.
    uuid: str | None = None

    def move(self, target: GpuStatus, now: datetime) -> None:
        """Change state. :raises InvalidTransitionError: if the GPU machine has no such edge."""
        if target not in GPU_TRANSITIONS[self.state]:
            raise InvalidTransitionError(current=f"gpu {self.state}", target=target)
        self.state = target
        self.updated_at = now


@dataclass
class Host:
    """A hypervisor the control plane may place enclaves on."""

    id: uuid.UUID
    name: str
    uri: str
    site: str
    accreditation: Label
    domain_type: str
    vcpus: int
    memory_mib: int
    created_at: datetime
    updated_at: datetime
    state: HostStatus = "active"
    #: Why the host is draining or quarantined (empty when active).
    reason: str = ""
    version: int = 1
    #: The hypervisor's identity when it was registered (None only for hosts registered
    #: before identities were recorded; the reconciler records it, or quarantines the host).
    host_uuid: str | None = None
    hostname: str | None = None
    #: The country of the host's site (ISO 3166-1 alpha-2), copied at registration and
    #: relocation so placement and listings need no join.
    country: str = ""

    def identity(self) -> HostIdentity | None:
        """The recorded hypervisor identity, if any."""
        if self.host_uuid is None:
            return None
        return HostIdentity(self.host_uuid, self.hostname or "")


@dataclass
class Enclave:
    """Where a request's enclave lives and how far the reconciler got with it."""

    id: uuid.UUID
    host: str
    gpus: tuple[str, ...]
    domain_name: str
    #: The label and tenant kind of the enclave (copied from its request).
    label: Label
    classified: bool
    tenant: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    lease_expires_at: datetime
    created_at: datetime
    updated_at: datetime
    #: The last provisioning or teardown step done, as ``provision:<step>`` or
    #: ``teardown:<step>`` (:class:`ProvisionStep`, :class:`TeardownStep`; ``""`` before the first).
    step: str = ""
    #: Consecutive failed attempts at the current step, and the last error.
    attempts: int = 0
    error: str = ""
    #: Which worker holds the enclave, until when (so two workers never work on one).
    claimed_by: str | None = None
    claim_until: datetime | None = None
    #: Earliest time a retry may be tried (backoff after a failed step).
    retry_at: datetime | None = None
    version: int = 1
    ended_at: datetime | None = None
    #: The enclave's GPU canary nonce (32 random bytes; None for enclaves placed before
    #: canaries): the job runner plants a pattern derived from it over the GPU memory a job
    #: freed, and the next hand-over looks for it. Only the control plane keeps it: it is
    #: never logged nor put in an audit event.
    canary_nonce: bytes | None = field(default=None, repr=False)
    #: The country of its host when it was placed (ISO 3166-1 alpha-2; "" for enclaves placed
    #: before countries): where it ran, whatever later relocations do to the host.
    country: str = ""

    def claimable(self, now: datetime, worker: str) -> bool:
        """Whether ``worker`` may work on the enclave now (unclaimed, or claim lapsed/own)."""
        if self.retry_at is not None and self.retry_at > now:
            return False
        return self.claimed_by in (None, worker) or (
            self.claim_until is not None and self.claim_until <= now
        )

    def claim(self, worker: str, now: datetime, ttl: timedelta) -> None:
        """Take the enclave for ``ttl``."""
        self.claimed_by = worker
        self.claim_until = now + ttl
        self.updated_at = now

    def release(self, now: datetime) -> None:
        """Give the claim back."""
        self.claimed_by = None
        self.claim_until = None
        self.updated_at = now


@dataclass(frozen=True)
class FleetView:
    """Hosts with their GPUs and live enclaves, as one consistent read."""

    hosts: Sequence[Host]
    gpus: Sequence[Gpu]
    #: Enclaves that occupy a host (not yet terminated).
    enclaves: Sequence[Enclave] = field(default_factory=tuple)

    def snapshot(self) -> list[HostState]:
        """The placement snapshot: per host, labels carried, free capacity and GPU states."""
        by_host: dict[str, list[Gpu]] = {}
        for gpu in self.gpus:
            by_host.setdefault(gpu.host, []).append(gpu)
        used: dict[str, list[Enclave]] = {}
        for enclave in self.enclaves:
            used.setdefault(enclave.host, []).append(enclave)
        return [
            _host_state(host, by_host.get(host.name, []), used.get(host.name, []))
            for host in self.hosts
        ]


def _host_state(host: Host, gpus: Iterable[Gpu], enclaves: Sequence[Enclave]) -> HostState:
    kinds = {enclave.classified for enclave in enclaves}
    return HostState(
        name=host.name,
        accreditation=host.accreditation,
        state=host.state,
        labels_present=frozenset(str(enclave.label) for enclave in enclaves),
        # Mixed kinds cannot happen while the rules hold; reporting "classified" then keeps
        # civilian requests off the host until an officer looks.
        classified_present=(True in kinds) if kinds else None,
        free_vcpus=host.vcpus - sum(enclave.vcpus for enclave in enclaves),
        free_memory_mib=host.memory_mib - sum(enclave.memory_mib for enclave in enclaves),
        # The records themselves: placement reads them and never changes them.
        gpus=tuple(sorted(gpus, key=lambda g: g.address)),
        country=host.country,
    )


def placement_request(request: EnclaveRequest, tenant: Tenant) -> PlacementRequest:
    """What placement needs to know of an approved request of ``tenant``."""
    return PlacementRequest(
        label=request.label,
        classified=tenant.kind is TenantKind.CLASSIFIED,
        gpus=request.resources.gpus,
        gpu_model=request.gpu_model,
        vcpus=request.resources.vcpus,
        memory_mib=request.resources.memory_mib,
        countries=placement_countries(request, tenant),
        tenant=tenant.name,
    )


def domain_name(enclave_id: uuid.UUID) -> str:
    """The libvirt domain name of an enclave (stable, unique, no label in it)."""
    return f"sov-{enclave_id.hex[:16]}"


#: A PCI function address as the inventory records it (``DDDD:BB:SS.F``, hexadecimal).
_PCI_ADDRESS = re.compile(r"[0-9A-Fa-f]{4}:[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]")

#: The prefix of every sanitizer domain's name (no enclave's name starts with it).
SANITIZER_DOMAIN_PREFIX = "sov-sanitize-"


def sanitizer_domain_name(address: str) -> str:
    """The libvirt domain name of the short-lived sanitizer domain of the GPU at ``address``.

    One name per GPU (a leftover of a killed hand-over is found and destroyed by the next one),
    ``sov-sanitize-`` and the PCI address with ``:`` and ``.`` replaced by ``-``.

    :raises ValueError: ``address`` is not a PCI address (``DDDD:BB:SS.F``).
    """
    if not _PCI_ADDRESS.fullmatch(address):
        raise ValueError(f"not a PCI address (expected DDDD:BB:SS.F): {address!r}")
    return SANITIZER_DOMAIN_PREFIX + address.replace(":", "-").replace(".", "-")
