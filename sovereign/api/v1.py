"""REST API v1: thin views, parse -> service -> serialise.

Owns the endpoints under ``/api/v1``. Views hold no policy and catch no domain errors: the
services decide, and the app-level handler table in :mod:`sovereign.api.problems` answers.
"""

from __future__ import annotations

import base64
import uuid

from flask import Blueprint

from sovereign.api import schemas as s
from sovereign.api.routing import TEXT, Api, Json, encode
from sovereign.app_context import services
from sovereign.domain.requests import EnclaveRequest
from sovereign.services.auditing import EventFilter
from sovereign.services.ports import RequestFilter
from sovereign.services.recording import CallContext

PREFIX = "/api/v1"
blueprint = Blueprint("api_v1", __name__, url_prefix=PREFIX)
api = Api(blueprint)


def _out(request: EnclaveRequest) -> s.RequestOut:
    (residency,) = services().requests.residency([request])
    return s.RequestOut.of(request, services().policy, residency)


@api.route(
    "POST",
    "/requests",
    summary="Request an enclave",
    tag="requests",
    body=s.RequestCreate,
    response=s.RequestOut,
    status=201,
    roles="analysts, for their own tenants, at labels their clearance and the tenant allow",
)
def create_request(ctx: CallContext, body: s.RequestCreate) -> s.RequestOut:
    """File a request; it starts ``pending``."""
    return _out(services().requests.create(ctx, body.draft()))


@api.route(
    "GET",
    "/requests",
    summary="List requests",
    tag="requests",
    query=s.RequestQuery,
    response=s.RequestPage,
    roles="analysts (their tenants), officers and auditors; always up to your clearance",
)
def list_requests(ctx: CallContext, query: s.RequestQuery) -> Json:
    """Newest first, one page at a time (from the read model: a ``RequestPage``)."""
    page = services().requests.page(
        ctx,
        RequestFilter(
            state=query.state, tenant=query.tenant, limit=query.limit, cursor=query.cursor
        ),
    )
    return encode({"items": page.items, "next_cursor": page.next_cursor})


@api.route(
    "GET",
    "/requests/<uuid:request_id>",
    summary="Get one request",
    tag="requests",
    response=s.RequestOut,
    roles="whoever may list it; others get 404",
)
def get_request(ctx: CallContext, request_id: uuid.UUID) -> s.RequestOut:
    """One request with its approvals."""
    return _out(services().requests.get(ctx, request_id))


@api.route(
    "POST",
    "/requests/<uuid:request_id>/approve",
    summary="Approve a request",
    tag="requests",
    body=s.ApproveIn,
    body_optional=True,
    response=s.RequestOut,
    roles="security officers cleared for the label, never the requester",
)
def approve_request(ctx: CallContext, request_id: uuid.UUID, body: s.ApproveIn) -> s.RequestOut:
    """Add your approval; two distinct officers are needed at or above the threshold level."""
    return _out(services().requests.approve(ctx, request_id, body.reason))


@api.route(
    "POST",
    "/requests/<uuid:request_id>/reject",
    summary="Reject a request",
    tag="requests",
    body=s.RejectIn,
    response=s.RequestOut,
    roles="security officers cleared for the label, never the requester",
)
def reject_request(ctx: CallContext, request_id: uuid.UUID, body: s.RejectIn) -> s.RequestOut:
    """Reject with a reason; final."""
    return _out(services().requests.reject(ctx, request_id, body.reason))


@api.route(
    "POST",
    "/requests/<uuid:request_id>/cancel",
    summary="Cancel a pending request",
    tag="requests",
    body=s.CancelIn,
    body_optional=True,
    response=s.RequestOut,
    roles="the requester",
)
def cancel_request(ctx: CallContext, request_id: uuid.UUID, body: s.CancelIn) -> s.RequestOut:
    """Withdraw your own pending request."""
    return _out(services().requests.cancel(ctx, request_id, body.reason))


@api.route(
    "POST",
    "/requests/<uuid:request_id>/keys/rotate",
    summary="Rotate an enclave's key",
    tag="keys",
    response=s.KeysOut,
    roles="security officers cleared for the label",
)
def rotate_keys(ctx: CallContext, request_id: uuid.UUID) -> s.KeysOut:
    """Rotate the enclave's Vault key and rewrap its data keys (no plaintext leaves Vault)."""
    return s.KeysOut.of(services().keys.rotate(ctx, request_id))


@api.route("GET", "/tenants", summary="List tenants", tag="catalog", response=s.TenantList)
def list_tenants(ctx: CallContext) -> s.TenantList:
    """Analysts see their own tenants; officers, auditors and operators see all."""
    return s.TenantList(items=[s.TenantOut.of(t) for t in services().catalog.tenants(ctx)])


@api.route("GET", "/images", summary="List approved images", tag="catalog", response=s.ImageList)
def list_images(ctx: CallContext) -> s.ImageList:
    """The approved image catalog and each image's highest label."""
    return s.ImageList(items=[s.ImageOut.of(i) for i in services().catalog.images(ctx)])


@api.route("GET", "/me", summary="Who am I", tag="identity", response=s.MeOut)
def me(ctx: CallContext) -> s.MeOut:
    """Your subject, roles, clearance and tenants as verified from your token."""
    return s.MeOut.of(ctx.principal)


@api.route(
    "GET",
    "/audit/events",
    summary="List audit events",
    tag="audit",
    query=s.EventQuery,
    response=s.AuditEventPage,
    roles="auditors and officers, up to their clearance",
)
def list_audit_events(ctx: CallContext, query: s.EventQuery) -> Json:
    """Newest first; filter by actor, action, target and time range (from the read model: an
    ``AuditEventPage``)."""
    page = services().audit.event_page(
        ctx,
        EventFilter(
            actor=query.actor,
            action=query.action,
            target=query.target,
            since=query.since,
            until=query.until,
            before=int(query.cursor) if query.cursor else None,
            limit=query.limit,
        ),
    )
    return encode({"items": page.items, "next_cursor": page.next_cursor})


@api.route(
    "GET",
    "/audit/checkpoint",
    summary="Latest signed checkpoint",
    tag="audit",
    response=None,
    media_type=TEXT,
    roles="every signed-in user",
)
def audit_checkpoint(ctx: CallContext) -> str:
    """The latest C2SP tlog-checkpoint signed note (text/plain)."""
    del ctx
    return services().audit.checkpoint()


@api.route(
    "GET",
    "/audit/proof/<int:seq>",
    summary="Inclusion proof of one event",
    tag="audit",
    response=None,
    media_type=TEXT,
    roles="auditors and officers cleared for the event's label",
)
def audit_proof(ctx: CallContext, seq: int) -> str:
    """A C2SP tlog-proof@v1: the event's bytes, its index, the path and the signed checkpoint;
    verify it offline with ``sovereign audit verify-proof FILE --key KEY``."""
    return services().audit.proof(ctx, seq)


@api.route(
    "GET",
    "/audit/consistency",
    summary="Consistency proof between two checkpoints",
    tag="audit",
    query=s.ConsistencyQuery,
    response=s.ConsistencyOut,
    roles="auditors and officers",
)
def audit_consistency(ctx: CallContext, query: s.ConsistencyQuery) -> s.ConsistencyOut:
    """Proof that the log at ``to`` extends the log at ``from`` (RFC 9162 2.1.4)."""
    c = services().audit.consistency(ctx, query.from_, query.to)
    return s.ConsistencyOut(
        old_size=c.old_size,
        new_size=c.new_size,
        proof=[base64.b64encode(h).decode() for h in c.path],
        old_checkpoint=c.old_checkpoint,
        new_checkpoint=c.new_checkpoint,
    )


@api.route(
    "GET",
    "/audit/public-key",
    summary="The log's public key",
    tag="audit",
    response=None,
    media_type=TEXT,
    auth=False,
    roles="anyone",
)
def audit_public_key() -> str:
    """The signed-note verifier key(s) of the log, one per line, newest first."""
    return "".join(f"{key}\n" for key in services().audit.public_keys())


@api.route(
    "GET",
    "/audit/attestation",
    summary="Attest the audit log over a period",
    tag="audit",
    query=s.AttestationQuery,
    response=s.AttestationOut,
    roles="auditors, over the events their clearance dominates",
)
def audit_attestation(ctx: CallContext, query: s.AttestationQuery) -> s.AttestationOut:
    """The six claims (co-residency, GPU hand-over, crypto-erase, two-person control,
    residency, completeness) evaluated over the log, with the seqs each verdict rests on, and
    the report signed as a note under the log's key."""
    report, note = services().attestation.attest(ctx, query.since, query.until)
    return s.AttestationOut(report=report, note=note)


@api.route(
    "GET",
    "/audit/attestation/note",
    summary="Attest the audit log over a period, as a signed note",
    tag="audit",
    query=s.AttestationQuery,
    response=None,
    media_type=TEXT,
    roles="auditors, over the events their clearance dominates",
)
def audit_attestation_note(ctx: CallContext, query: s.AttestationQuery) -> str:
    """The attestation report as a C2SP signed note (text/plain); verify it offline with
    ``sovereign audit verify-attestation FILE --key KEY``."""
    return services().attestation.attest(ctx, query.since, query.until)[1]
