"""Schemas of the fleet endpoints: sites, hosts, GPUs, enclaves, placement previews, two-person
actions and the kill switch (pydantic; the same models validate input and generate OpenAPI).

Owns the shape of those bodies and how fleet domain objects become responses.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from sovereign.api.schemas import (
    LabelIn,
    LabelOut,
    Name,
    PageQuery,
    Reason,
    RequestOut,
    RequiredReason,
    Strict,
)
from sovereign.domain.actions import DualAction
from sovereign.domain.fleet import Gpu, Host
from sovereign.domain.placement import Placement
from sovereign.domain.policy import AccessPolicy
from sovereign.domain.requests import RequestState
from sovereign.domain.sites import Site
from sovereign.services.certificates import GpuCertificate
from sovereign.services.enclaves import EnclaveView, KillResult


class HostCreate(Strict):
    """A hypervisor to register (it starts at the lowest accreditation over the API)."""

    name: Name
    #: Checked by the service against the URI policy (422 with the reason), never here, so
    #: that the refusal is audited; the canonical form is what gets stored.
    uri: Annotated[str, Field(min_length=3, max_length=1024)]
    site: Annotated[str, Field(min_length=1, max_length=128)]
    domain_type: Literal["kvm", "qemu"] = "kvm"


class RelocationIn(Strict):
    """A host's new site (two officers; never while it carries live enclaves)."""

    site: Annotated[str, Field(min_length=1, max_length=128)]
    reason: RequiredReason


class SiteCreate(Strict):
    """A site to record. Name, country and operator are checked by the service (422 with the
    reason, audited): a lower-case slug, an ISO 3166-1 alpha-2 code such as ``ES``, one line."""

    name: Annotated[str, Field(min_length=1, max_length=128)]
    country: Annotated[str, Field(min_length=1, max_length=16)]
    operator: Annotated[str, Field(min_length=1, max_length=256)]


class SiteOut(BaseModel):
    """A site hosts stand in, its country and operator."""

    name: str
    #: ISO 3166-1 alpha-2.
    country: str
    operator: str
    created_at: datetime

    @classmethod
    def of(cls, site: Site) -> SiteOut:
        """From a domain site."""
        return cls(
            name=site.name,
            country=site.country,
            operator=site.operator,
            created_at=site.created_at,
        )


class SiteList(BaseModel):
    """Sites, by name."""

    items: list[SiteOut]


class HostStateIn(Strict):
    """Take a host out of service, or return it."""

    state: Literal["active", "draining", "quarantined"]
    reason: Reason = ""


class AccreditationIn(Strict):
    """A new accreditation for a host (two officers)."""

    accreditation: LabelIn
    reason: RequiredReason


class HostOut(BaseModel):
    """A hypervisor host."""

    name: str
    uri: str
    site: str
    #: The country of its site (ISO 3166-1 alpha-2), copied at registration and relocation.
    country: str
    accreditation: LabelOut
    domain_type: str
    #: The hypervisor's identity (libvirt's host UUID and hostname) recorded at registration.
    host_uuid: str | None
    hostname: str | None
    state: str
    reason: str
    vcpus: int
    memory_mib: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, h: Host) -> HostOut:
        """From a domain host."""
        return cls(
            name=h.name,
            uri=h.uri,
            site=h.site,
            country=h.country,
            accreditation=LabelOut.of(h.accreditation),
            domain_type=h.domain_type,
            host_uuid=h.host_uuid,
            hostname=h.hostname,
            state=h.state,
            reason=h.reason,
            vcpus=h.vcpus,
            memory_mib=h.memory_mib,
            created_at=h.created_at,
            updated_at=h.updated_at,
        )


class HostList(BaseModel):
    """Hosts, by name."""

    items: list[HostOut]


class GpuQuery(Strict):
    """Filter GPUs by host."""

    host: Name | None = None


class GpuOut(BaseModel):
    """One whole GPU, its state and the label of its last tenant (if you are cleared for it)."""

    host: str
    address: str
    model: str
    numa_node: int | None
    iommu_group: int | None
    group_members: list[str]
    state: str
    enclave_id: uuid.UUID | None
    last_label: LabelOut | None
    last_tenant: str | None
    updated_at: datetime | None

    @classmethod
    def of(cls, g: Gpu) -> GpuOut:
        """From a domain GPU."""
        return cls(
            host=g.host,
            address=g.address,
            model=g.model,
            numa_node=g.numa_node,
            iommu_group=g.iommu_group,
            group_members=list(g.group_members),
            state=g.state,
            enclave_id=g.enclave_id if g.state == "allocated" else None,
            last_label=LabelOut.of(g.last_label) if g.last_label else None,
            last_tenant=g.last_tenant,
            updated_at=g.updated_at,
        )


class GpuList(BaseModel):
    """GPUs, by host and address."""

    items: list[GpuOut]


class CertificateQuery(PageQuery):
    """A page of a GPU's hand-over certificates; the cursor is a sequence number."""

    # 18 digits always fit the log's signed 64-bit sequence numbers; 19 may not.
    cursor: Annotated[str, Field(pattern=r"^[0-9]{1,18}$")] | None = None


class CertificateOut(BaseModel):
    """One GPU hand-over certificate, with its place in the audit log (its event's sequence
    number: ``GET /audit/proof/{seq}`` proves it)."""

    seq: int
    leaf_hash: str
    time: datetime
    host: str
    address: str
    #: Where the GPU went with it: ``free`` (clean) or ``quarantined`` (failed).
    to: str
    verdict: Literal["clean", "failed"]
    reason: str
    simulated: bool
    coverage: float | None
    gb_per_s: float | None
    #: The label of the event: the previous tenant's (null where the GPU had none).
    label: LabelOut | None
    proof: str = Field(description="Where its inclusion proof is, relative to the API root.")
    #: The certificate as recorded (canonical JSON; see the README).
    certificate: dict[str, Any]

    @classmethod
    def of(cls, c: GpuCertificate) -> CertificateOut:
        """From a certificate read from the log."""
        label = c.label
        return cls(
            seq=c.seq,
            leaf_hash=c.leaf_hash,
            time=c.time,
            host=c.host,
            address=c.address,
            to=c.to,
            verdict="clean" if c.verdict == "clean" else "failed",
            reason=c.reason,
            simulated=c.simulated,
            coverage=c.coverage,
            gb_per_s=c.gb_per_s,
            label=LabelOut(
                level=str(label.get("level", "")),
                compartments=sorted(str(x) for x in label.get("compartments", [])),
            )
            if label
            else None,
            proof=f"/audit/proof/{c.seq}",
            certificate=c.document,
        )


class CertificateList(BaseModel):
    """A GPU's hand-over certificates you are cleared for, newest first; pass ``next_cursor``
    on while it is not null."""

    items: list[CertificateOut]
    next_cursor: str | None


class GpuReturnIn(Strict):
    """Why a quarantined GPU may go back to service (two officers)."""

    reason: RequiredReason


class EnclaveQuery(PageQuery):
    """Filters for listing enclaves."""

    state: RequestState | None = None
    tenant: Name | None = None


class PlacementOut(BaseModel):
    """Where an enclave runs (or would run) and why other hosts were not chosen."""

    host: str | None
    gpus: list[str]
    gpu_model: str | None
    rejected: dict[str, str]


class EnclaveOut(BaseModel):
    """An enclave: its request, host, GPUs and progress."""

    id: uuid.UUID
    state: RequestState
    request: RequestOut
    host: str | None
    site: str | None
    #: The country of the host's site (ISO 3166-1 alpha-2), None before placement.
    country: str | None
    gpus: list[str]
    domain_name: str | None
    lease_expires_at: datetime | None
    step: str
    error: str

    @classmethod
    def of(cls, v: EnclaveView, policy: AccessPolicy) -> EnclaveOut:
        """From a service view."""
        e = v.enclave
        return cls(
            id=v.request.id,
            state=v.request.state,
            request=RequestOut.of(v.request, policy, v.residency),
            host=e.host if e else None,
            site=v.host_site,
            country=v.host_country,
            gpus=list(e.gpus) if e else [],
            domain_name=e.domain_name if e else None,
            lease_expires_at=e.lease_expires_at if e else None,
            step=e.step if e else "",
            error=e.error if e else "",
        )


class EnclaveList(BaseModel):
    """Enclaves, newest first; a page may hold fewer than ``limit`` (pending requests are
    left out), pass ``next_cursor`` on while it is not null."""

    items: list[EnclaveOut]
    next_cursor: str | None


class TerminateIn(Strict):
    """Why the enclave is ended."""

    reason: Reason = ""


class KillSwitchIn(Strict):
    """Which enclaves to end at once: a label, a tenant, or both (all must match)."""

    label: LabelIn | None = None
    tenant: Name | None = None
    reason: RequiredReason


class ActionOut(BaseModel):
    """A two-person action and its status."""

    id: uuid.UUID
    kind: str
    params: dict[str, Any]
    label: LabelOut
    reason: str
    state: str
    status: str
    proposer_name: str
    confirmer_name: str | None
    created_at: datetime
    expires_at: datetime

    @classmethod
    def of(cls, a: DualAction) -> ActionOut:
        """From a domain action."""
        return cls(
            id=a.id,
            kind=a.kind.value,
            params=a.params,
            label=LabelOut.of(a.label),
            reason=a.reason,
            state=a.state.value,
            status=a.status(),
            proposer_name=a.proposer_name,
            confirmer_name=a.confirmer_name,
            created_at=a.created_at,
            expires_at=a.expires_at,
        )


class ActionList(BaseModel):
    """Pending two-person actions you are cleared for."""

    items: list[ActionOut]


class KillOut(BaseModel):
    """Enclaves ended now, or the proposal a second officer must confirm."""

    ended: list[uuid.UUID]
    proposal: ActionOut | None
    partial: bool = Field(
        description="The tenant's ceiling is above your clearance: enclaves above it, if any, "
        "were not touched; an officer cleared for them must pull the kill switch too. Says "
        "nothing about whether such enclaves exist."
    )

    @classmethod
    def of(cls, r: KillResult) -> KillOut:
        """From the service's result."""
        return cls(
            ended=list(r.ended),
            proposal=ActionOut.of(r.proposal) if r.proposal else None,
            partial=r.partial,
        )


def placement_out(p: Placement) -> PlacementOut:
    """From a domain placement."""
    return PlacementOut(host=p.host, gpus=list(p.gpus), gpu_model=p.gpu_model, rejected=p.reasons)
