"""A small history of enclaves for the usage report's tests over real SQLite: hosts in Spain
and Portugal, civilian enclaves in both, one SECRET enclave, written through the repositories
(placement itself is tested elsewhere; these tests need ended enclaves at known times)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sovereign.domain.fleet import Enclave, Host, domain_name
from sovereign.domain.labels import Label, LabelScheme
from sovereign.domain.requests import EnclaveRequest, RequestState
from sovereign.domain.tenants import Resources
from sovereign.services.ports import UnitOfWorkFactory

SCHEME = LabelScheme()
SECRET = SCHEME.label("SECRET", ["NATO"])
OPEN = SCHEME.label("UNCLASSIFIED")
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Used:
    """One enclave of the history: who, where, how many GPUs, from and to (hours after t0)."""

    tenant: str
    host: str
    gpus: int
    start: float
    end: float | None
    label: Label = OPEN


#: Research: 2 GPUs x 10 h and 4 x 2 h in Spain (28 GPU h), 1 x 5 h in Portugal; defence:
#: 8 GPUs x 3 h at SECRET in Spain (24 GPU h, which only readers cleared for it count).
HISTORY = (
    Used("research", "mad-open", 2, 0, 10),
    Used("research", "mad-open", 4, 2, 4),
    Used("research", "lis-open", 1, 0, 5),
    Used("defence", "mad-secret", 8, 0, 3, SECRET),
)
HOSTS = {"mad-open": "ES", "mad-secret": "ES", "lis-open": "PT"}


def record_history(uow: UnitOfWorkFactory, t0: datetime) -> dict[str, str]:
    """Store :data:`HOSTS` and :data:`HISTORY` (tenants and images must exist); returns each
    host's country as stored (empty where the database does not record countries yet)."""
    with uow() as u:
        for name, country in HOSTS.items():
            u.hosts.add(
                Host(
                    id=uuid.uuid4(),
                    name=name,
                    uri=f"qemu+tls://{name}.example/system",
                    site=f"site-{name}",
                    accreditation=SCHEME.label("SECRET", ["CRYPTO", "EU", "NATO"]),
                    domain_type="kvm",
                    vcpus=128,
                    memory_mib=1_048_576,
                    created_at=t0,
                    updated_at=t0,
                    country=country,
                )
            )
        for used in HISTORY:
            rid = uuid.uuid4()
            start = t0 + used.start * HOUR
            end = None if used.end is None else t0 + used.end * HOUR
            u.requests.add(
                EnclaveRequest(
                    id=rid,
                    tenant=used.tenant,
                    requester="sub-analyst",
                    requester_name="analyst",
                    label=used.label,
                    resources=Resources(4, 8192, used.gpus, 10),
                    gpu_model="H100-SXM5-80GB",
                    image="debian-12-cuda" if used.tenant == "defence" else "ubuntu-24.04-research",
                    purpose="usage history",
                    lease_hours=24,
                    state=RequestState.TERMINATED if end else RequestState.RUNNING,
                    created_at=start,
                    updated_at=end or start,
                )
            )
            u.enclaves.add(
                Enclave(
                    id=rid,
                    host=used.host,
                    gpus=tuple(f"0000:{0x18 + i:02x}:00.0" for i in range(used.gpus)),
                    domain_name=domain_name(rid),
                    label=used.label,
                    classified=used.label != OPEN,
                    tenant=used.tenant,
                    vcpus=4,
                    memory_mib=8192,
                    disk_gib=10,
                    lease_expires_at=start + 24 * HOUR,
                    created_at=start,
                    updated_at=end or start,
                    ended_at=end,
                )
            )
        u.commit()
    with uow() as u:
        return {h.name: h.country for h in u.hosts.list()}
