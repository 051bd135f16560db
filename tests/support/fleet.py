"""A control plane over a real database with an in-memory fleet, for reconciler tests.

:func:`make_fleet` migrates a database, builds the services with a
:class:`~sovereign.adapters.memory_hypervisor.MemoryHypervisor` (or any hypervisor given),
seeds the demo tenants and images, registers hosts and sanitizes their GPUs, and offers helpers
to file and approve requests. The clock is controllable so leases and claims can lapse.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

from audit import AuditEvent, AuditQuery
from enclaves.inventory import GpuDevice
from sovereign import config as settings
from sovereign.adapters.memory_hypervisor import MemoryHost, MemoryHypervisor
from sovereign.adapters.memory_sanitizer import MemorySanitizer
from sovereign.adapters.memory_secrets import MemorySecretStore
from sovereign.bootstrap import Services, build_services
from sovereign.domain.identity import Principal
from sovereign.domain.tenants import Resources
from sovereign.services.reconciler import Reconciler
from sovereign.services.recording import CallContext
from sovereign.services.requests import RequestDraft
from tests.support.factories import ANALYST_DEFENCE, ANALYST_RESEARCH, OFFICER_1, OFFICER_2, ctx

SYSTEM = CallContext(
    principal=Principal(subject="system:cli:test", username="test"),
    actor="system:cli",
    source="test",
)
SECRET_NATO = {"level": "SECRET", "compartments": ["NATO"]}
UNCLASSIFIED = {"level": "UNCLASSIFIED", "compartments": []}


class Clock:
    """A clock tests move forward."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        """Move forward by ``timedelta(**delta)``."""
        self.now += timedelta(**delta)


class _NoIdentity:
    def authenticate(self, token: str) -> Principal:
        raise AssertionError("these tests call services directly")

    def ping(self) -> None:
        return None


def gpus(count: int, bus_base: int = 0x18) -> tuple[GpuDevice, ...]:
    """``count`` H100s, each alone in its IOMMU group, split over two NUMA nodes."""
    found = []
    for i in range(count):
        address = f"0000:{bus_base + i:02x}:00.0"
        found.append(
            GpuDevice(
                address=address,
                model="H100-SXM5-80GB",
                numa_node=0 if i < count // 2 else 1,
                iommu_group=10 + i,
                group_members=(address,),
            )
        )
    return tuple(found)


@dataclass
class Fleet:
    """Services, the memory hypervisor, the clock and request helpers."""

    services: Services
    hypervisor: Any
    clock: Any
    reconcilers: dict[str, Reconciler] = field(default_factory=dict)

    def reconciler(self, worker: str = "w1", **overrides: Any) -> Reconciler:
        """The reconciler of ``worker`` (one per name)."""
        if worker not in self.reconcilers:
            self.reconcilers[worker] = self.services.reconciler(worker=worker, **overrides)
        return self.reconcilers[worker]

    def request(
        self,
        label: dict[str, Any] = SECRET_NATO,
        *,
        gpus: int = 2,
        lease_hours: int = 4,
        civilian: bool = False,
        vcpus: int = 4,
        memory_mib: int = 8192,
        disk_gib: int = 20,
        approve_last: bool = True,
        image: str | None = None,
    ) -> uuid.UUID:
        """File a request and have it approved (two officers when classified; the second
        one only if ``approve_last``)."""
        analyst = ANALYST_RESEARCH if civilian else ANALYST_DEFENCE
        draft = RequestDraft(
            tenant="research" if civilian else "defence",
            label=label,
            resources=Resources(vcpus=vcpus, memory_mib=memory_mib, gpus=gpus, disk_gib=disk_gib),
            gpu_model="H100-SXM5-80GB" if gpus else None,
            image=image or ("ubuntu-24.04-research" if civilian else "debian-12-cuda"),
            purpose="test",
            lease_hours=lease_hours,
        )
        request = self.services.requests.create(ctx(analyst), draft)
        self.services.requests.approve(self.signed_in(OFFICER_1), request.id, "ok")
        if not civilian and approve_last:
            self.approve_last(request.id)
        return request.id

    def approve_last(self, request_id: uuid.UUID) -> None:
        """The second officer's approval of a classified request."""
        self.services.requests.approve(self.signed_in(OFFICER_2), request_id, "ok")

    def signed_in(self, officer: Principal) -> CallContext:
        """``officer`` calling from a sign-in made now on the fleet's clock (step-up)."""
        return ctx(replace(officer, auth_time=int(self.clock().timestamp())))

    def state(self, request_id: uuid.UUID) -> str:
        """The request's state now."""
        with self.services.uow(readonly=True) as uow:
            request = uow.requests.get(request_id)
        assert request is not None
        return request.state.value

    def gpu_states(self) -> dict[str, str]:
        """``host/address`` -> state."""
        with self.services.uow(readonly=True) as uow:
            return {f"{g.host}/{g.address}": g.state for g in uow.gpus.list()}

    def events(self, prefix: str = "") -> list[AuditEvent]:
        """Audit events so far (sequenced first), oldest first, optionally by action prefix."""
        self.services.audit.log.sequence()
        with self.services.uow(readonly=True) as uow:
            stored = uow.audit.query(AuditQuery(limit=100_000))
        ordered = sorted(stored, key=lambda e: e.seq)
        return [e.event for e in ordered if e.event.action.startswith(prefix)]

    def actions(self, prefix: str = "") -> list[str]:
        """The actions of :meth:`events`."""
        return [event.action for event in self.events(prefix)]

    def settle(self, worker: str = "w1", passes: int = 10) -> None:
        """Run passes until nothing changes (at most ``passes``)."""
        for _ in range(passes):
            if not self.reconciler(worker).run_once().busy:
                return


def make_fleet(
    database_url: str,
    *,
    folder: Path,
    hypervisor: Any = None,
    hosts: dict[str, tuple[str, dict[str, Any], MemoryHost | None]] | None = None,
    secrets: Any = None,
    domain_type: str = "kvm",
    clock: Any = None,
    workloads: Any = None,
    sanitizer: Any = None,
    **config: Any,
) -> Fleet:
    """Services on ``database_url`` with the demo catalog and hosts registered and sanitized.

    The audit log's signing key and witness file live in ``folder`` (never in the instance
    folder of a developer's ``make run``).

    ``hosts`` maps a name to (uri, accreditation, memory host or None for a real URI).
    ``sanitizer`` hands GPUs over; by default a :class:`MemorySanitizer` when the hypervisor
    is the memory one, else the assembly's (simulated GPUs scrubbed on 1 MiB each).
    """
    app = settings.new_app()
    settings.load(
        app,
        {
            "ENV": "testing",
            "DATABASE_URL": database_url,
            "RECONCILER_CLAIM_TTL_S": 60,
            "SANITIZER_SIMULATED_MIB": 1,
            "AUDIT_SIGNING_KEY": str(folder / "audit.key"),
            "AUDIT_WITNESS_PATH": str(folder / "witness.jsonl"),
            **config,
        },
        check=False,
    )
    clock = clock if clock is not None else Clock()
    if hypervisor is None:
        hypervisor = MemoryHypervisor()
    if sanitizer is None and isinstance(hypervisor, MemoryHypervisor):
        sanitizer = MemorySanitizer()
    services = build_services(
        app.config,
        identity=_NoIdentity(),
        secrets=secrets if secrets is not None else MemorySecretStore(),
        hypervisor=hypervisor,
        workloads=workloads,
        sanitizer=sanitizer,
        probes=[],
        clock=clock,
    )
    demo = json.loads((resources.files("sovereign") / "data" / "demo.json").read_text())
    services.catalog.bootstrap(
        CallContext(principal=SYSTEM.principal, actor="system:bootstrap"), demo
    )
    if hosts is None:
        hosts = {
            "secret-1": (
                "mem://secret-1",
                {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]},
                MemoryHost(gpus=gpus(8)),
            ),
            "civil-1": ("mem://civil-1", UNCLASSIFIED, MemoryHost(gpus=gpus(4, 0x3A))),
        }
    for name, (uri, label, memory) in hosts.items():
        if memory is not None:
            hypervisor.add_host(uri, memory)
        services.hosts.add(
            SYSTEM,
            name=name,
            uri=uri,
            site=f"site-{name}",
            accreditation=services.scheme.parse(label),
            domain_type=domain_type,
        )
    fleet = Fleet(services, hypervisor, clock)
    fleet.settle()
    return fleet
