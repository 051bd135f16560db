"""The API's request and response schemas (pydantic), the single source of the OpenAPI document.

Owns the shape of every body and query the API accepts or returns, with limits. Unknown fields
are refused. Domain objects are turned into responses here, and nowhere else; the listings of
requests, enclaves and audit events are the one exception, built from rows by the read model
(:class:`~sovereign.services.ports.ReadModel`) in the shapes these models document, which a test
holds them to (and to what ``*Out.of`` makes of the same rows).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    Field,
)

from audit import StoredEvent
from sovereign.channels.inputs import (
    NAME_PATTERN,
    PRINTABLE,
    FreeText,
    LabelIn,
    Name,
    Reason,
    RequestCreate,
    RequiredReason,
    ResourcesIn,
    Strict,
)
from sovereign.domain.identity import Principal
from sovereign.domain.keys import EnclaveKeys
from sovereign.domain.labels import Label
from sovereign.domain.policy import AccessPolicy
from sovereign.domain.requests import EnclaveRequest, RequestState
from sovereign.domain.tenants import Image, Resources, Tenant
from sovereign.services.auditing import MAX_SEQ

__all__ = [
    "NAME_PATTERN",
    "PRINTABLE",
    "FreeText",
    "LabelIn",
    "Name",
    "Reason",
    "RequestCreate",
    "RequiredReason",
    "ResourcesIn",
    "Strict",
]


#: RFC 3339 section 5.6 ``date-time``, which is what OpenAPI's ``format: date-time`` means: a
#: full date, a time and a time-zone offset (``Z`` or ``+hh:mm``), nothing else.
RFC3339_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"  # full-date
    r"[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"  # partial-time
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"  # time-offset
)


def _rfc3339(value: object) -> object:
    """Let only RFC 3339 date-time text through to pydantic's parser, which on its own would
    also take a number (seconds since 1970), a date alone or a time without an offset."""
    if not isinstance(value, str) or not RFC3339_DATE_TIME.fullmatch(value):
        raise ValueError("must be an RFC 3339 date-time with an offset, e.g. 2026-01-31T12:00:00Z")
    return value


def _in_utc(value: datetime) -> datetime:
    """``value`` in UTC, as the store compares it; year 1 or 9999 can fall off the calendar."""
    try:
        return value.astimezone(UTC)
    except OverflowError as e:
        raise ValueError("is out of range once converted to UTC") from e


#: A point in time given in a query: RFC 3339 with an offset, read as UTC.
DateTimeParam = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339),
    AfterValidator(_in_utc),
    Field(description="RFC 3339 date-time with a time-zone offset, e.g. 2026-01-31T12:00:00Z"),
]


class ApproveIn(Strict):
    """An approval, with an optional comment."""

    reason: Reason = ""


class RejectIn(Strict):
    """A rejection; the reason is required."""

    reason: RequiredReason


class CancelIn(Strict):
    """A cancellation, with an optional reason."""

    reason: Reason = ""


class PageQuery(Strict):
    """Pagination: page size and the cursor returned by the previous page."""

    limit: Annotated[int, Field(ge=1, le=200)] = 50
    cursor: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,512}$")] | None = None


class RequestQuery(PageQuery):
    """Filters for listing requests."""

    state: RequestState | None = None
    tenant: Name | None = None


class EventQuery(PageQuery):
    """Filters for listing audit events; the cursor is a sequence number."""

    actor: Annotated[str, Field(max_length=255, pattern=PRINTABLE)] | None = None
    action: Annotated[str, Field(max_length=100, pattern=PRINTABLE)] | None = None
    target: Annotated[str, Field(max_length=255, pattern=PRINTABLE)] | None = None
    since: DateTimeParam | None = None
    until: DateTimeParam | None = None
    # 18 digits always fit the log's signed 64-bit sequence numbers; 19 may not.
    cursor: Annotated[str, Field(pattern=r"^[0-9]{1,18}$")] | None = None


# -- outputs ----------------------------------------------------------------------------------


class LabelOut(BaseModel):
    """A security label."""

    level: str
    compartments: list[str]

    @classmethod
    def of(cls, label: Label) -> LabelOut:
        """From a domain label."""
        return cls(level=label.level, compartments=sorted(label.compartments))


class ResourcesOut(BaseModel):
    """An amount of compute."""

    vcpus: int
    memory_mib: int
    gpus: int
    disk_gib: int

    @classmethod
    def of(cls, r: Resources) -> ResourcesOut:
        """From domain resources."""
        return cls(vcpus=r.vcpus, memory_mib=r.memory_mib, gpus=r.gpus, disk_gib=r.disk_gib)


class ApprovalOut(BaseModel):
    """One officer's decision."""

    officer: str
    officer_name: str
    decision: Literal["approve", "reject"]
    reason: str
    decided_at: datetime


class RequestOut(BaseModel):
    """An enclave request and where it stands."""

    id: uuid.UUID
    tenant: str
    requester: str
    requester_name: str
    label: LabelOut
    resources: ResourcesOut
    gpu_model: str | None
    image: str
    purpose: str
    lease_hours: int
    state: RequestState
    reason: str
    approvals: list[ApprovalOut]
    approvals_needed: int
    approvals_received: int
    created_at: datetime
    updated_at: datetime
    #: The countries the enclave may run in: the request's narrowing, else its tenant's.
    residency: list[str]
    #: The country the enclave was pinned to at final approval (where its key lives).
    country: str | None

    @classmethod
    def of(cls, r: EnclaveRequest, policy: AccessPolicy, residency: Sequence[str]) -> RequestOut:
        """From a domain request; ``policy`` says how many approvals it needs, ``residency``
        is its effective residency."""
        return cls(
            id=r.id,
            tenant=r.tenant,
            requester=r.requester,
            requester_name=r.requester_name,
            label=LabelOut.of(r.label),
            resources=ResourcesOut.of(r.resources),
            gpu_model=r.gpu_model,
            image=r.image,
            purpose=r.purpose,
            lease_hours=r.lease_hours,
            state=r.state,
            reason=r.reason,
            approvals=[
                ApprovalOut(
                    officer=a.officer,
                    officer_name=a.officer_name,
                    decision=a.decision.value,
                    reason=a.reason,
                    decided_at=a.decided_at,
                )
                for a in r.approvals
            ],
            approvals_needed=policy.approvals_needed(r.label),
            approvals_received=len(set(r.approvers)),
            created_at=r.created_at,
            updated_at=r.updated_at,
            residency=list(residency),
            country=r.country,
        )


class RequestPage(BaseModel):
    """A page of requests; pass ``next_cursor`` as ``cursor`` for the next one."""

    items: list[RequestOut]
    next_cursor: str | None


class TenantOut(BaseModel):
    """A tenant, its ceiling and quota."""

    name: str
    display_name: str
    kind: Literal["classified", "civilian"]
    max_label: LabelOut
    quota: ResourcesOut
    #: The countries (ISO 3166-1 alpha-2) its enclaves and their keys may live in.
    residency: list[str]

    @classmethod
    def of(cls, t: Tenant) -> TenantOut:
        """From a domain tenant."""
        return cls(
            name=t.name,
            display_name=t.display_name,
            kind=t.kind.value,
            max_label=LabelOut.of(t.max_label),
            quota=ResourcesOut.of(t.quota),
            residency=list(t.residency),
        )


class TenantList(BaseModel):
    """Tenants the caller may see."""

    items: list[TenantOut]


class ImageOut(BaseModel):
    """An approved base image."""

    name: str
    format: str
    checksum: str
    max_label: LabelOut
    description: str

    @classmethod
    def of(cls, i: Image) -> ImageOut:
        """From a domain image."""
        return cls(
            name=i.name,
            format=i.format,
            checksum=i.checksum,
            max_label=LabelOut.of(i.max_label),
            description=i.description,
        )


class ImageList(BaseModel):
    """The image catalog."""

    items: list[ImageOut]


class MeOut(BaseModel):
    """The caller, as the control plane sees them."""

    subject: str
    username: str
    roles: list[str]
    clearance: LabelOut | None
    tenants: list[str]

    @classmethod
    def of(cls, p: Principal) -> MeOut:
        """From a principal."""
        return cls(
            subject=p.subject,
            username=p.username,
            roles=sorted(r.value for r in p.roles),
            clearance=LabelOut.of(p.clearance) if p.clearance else None,
            tenants=sorted(p.tenants),
        )


class AuditEventOut(BaseModel):
    """One recorded decision, with its place in the Merkle log."""

    seq: int
    leaf_hash: str
    id: uuid.UUID
    time: datetime
    actor: str
    action: str
    target: str
    outcome: Literal["allow", "deny", "error"]
    reason: str
    label: LabelOut | None
    request_id: str
    source: str
    details: dict[str, Any]

    @classmethod
    def of(cls, s: StoredEvent) -> AuditEventOut:
        """From a stored event."""
        e = s.event
        return cls(
            seq=s.seq,
            leaf_hash=s.leaf_hash.hex(),
            id=e.id,
            time=e.time,
            actor=e.actor,
            action=e.action,
            target=e.target,
            outcome=e.outcome.value,
            reason=e.reason,
            label=LabelOut.model_validate(e.label) if e.label else None,
            request_id=e.request_id,
            source=e.source,
            details=e.details,
        )


class AuditEventPage(BaseModel):
    """A page of audit events, newest first."""

    items: list[AuditEventOut]
    next_cursor: str | None


class ConsistencyQuery(Strict):
    """Two signed tree sizes."""

    from_: Annotated[int, Field(alias="from", ge=1, le=MAX_SEQ)]
    to: Annotated[int, Field(ge=1, le=MAX_SEQ)]


class ConsistencyOut(BaseModel):
    """An RFC 9162 consistency proof between two signed checkpoints (hashes in base64)."""

    old_size: int
    new_size: int
    proof: list[str]
    old_checkpoint: str
    new_checkpoint: str


class KeysOut(BaseModel):
    """An enclave's key references in Vault (never key material)."""

    mount: str
    name: str
    version: int
    created_at: datetime
    destroyed_at: datetime | None

    @classmethod
    def of(cls, k: EnclaveKeys) -> KeysOut:
        """From the domain record."""
        return cls(
            mount=k.key.mount,
            name=k.key.name,
            version=k.key.version,
            created_at=k.created_at,
            destroyed_at=k.destroyed_at,
        )


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    dependency: str | None = None


# -- attestation ------------------------------------------------------------------------------


class AttestationQuery(Strict):
    """The period of an attestation: ``since`` inclusive, ``until`` exclusive (default now)."""

    since: DateTimeParam | None = None
    until: DateTimeParam | None = None


class AttestationOut(BaseModel):
    """An attestation: the report (``sovereign-attestation/v1``) and the same report as a
    C2SP signed note under the log's key (verify it with ``sovereign audit
    verify-attestation``)."""

    report: dict[str, Any]
    note: str
