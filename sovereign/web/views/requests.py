"""Enclave requests in the console: the analyst's form and list, the officer's queue, and the
request page where officers approve or reject (with the placement preview) and requesters
cancel.

Owns what each role is offered. What is allowed is decided (and recorded) by
``services().requests``; a refused action shows the service's reason. Approving a classified
request needs a recent password (step-up, ``STEP_UP_MAX_AGE_S``): the service decides that,
as it does for the API; the page only asks it first, to send the browser to sign in again
instead of showing a refusal.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from flask import Response, redirect, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import Forbidden

from sovereign import app_context
from sovereign.app_context import services
from sovereign.domain.identity import Principal, Role
from sovereign.domain.labels import Label, LabelScheme
from sovereign.domain.policy import AUDIT_READERS
from sovereign.domain.requests import COMMITTED_STATES, Decision, EnclaveRequest, RequestState
from sovereign.domain.tenants import Resources, Tenant
from sovereign.services.ports import RequestFilter
from sovereign.services.recording import CallContext
from sovereign.web.console import bp, caller, current_session, flash, page, retry_form
from sovereign.web.forms import RequestForm, empty_request_form, parse_request_form, reason_field
from sovereign.web.sessions import Resume

PAGE_SIZE = 25
#: Pages read at most to add up a tenant's committed usage for the form.
USAGE_PAGES = 10
#: Pages read at most to fill one page of "my requests" from the tenant-wide listing.
MINE_PAGES = 10
#: States in which officers see the placement preview (not yet placed).
PREVIEW_STATES = frozenset({RequestState.PENDING, RequestState.APPROVED})
#: States of requests that never had an enclave (nor will).
NO_ENCLAVE_STATES = frozenset({RequestState.PENDING, RequestState.REJECTED, RequestState.CANCELLED})


def approval_status(request_: EnclaveRequest, needed: int) -> str:
    """The two-person status, e.g. ``1 of 2 approvals: officer-1``."""
    names = [a.officer_name for a in request_.approvals if a.decision is Decision.APPROVE]
    text = f"{len(names)} of {needed} approvals"
    return f"{text}: {', '.join(names)}" if names else text


def require_role(principal: Principal, role: Role, what: str) -> None:
    """Offer a page only to its role (the services still decide every action)."""
    if not principal.has_role(role):
        raise Forbidden(f"{what} is for users with the {role.value} role.")


def _state(value: str | None) -> RequestState | None:
    try:
        return RequestState(value) if value else None
    except ValueError:
        return None


@dataclass(frozen=True)
class Row:
    """A request as a list shows it."""

    request: EnclaveRequest
    status: str
    note: str = ""


def _row(principal: Principal, r: EnclaveRequest) -> Row:
    needed = services().policy.approvals_needed(r.label)
    note = ""
    if r.state is RequestState.PENDING and principal.has_role(Role.OFFICER):
        if r.requester == principal.subject:
            note = "your own request"
        elif any(a.officer == principal.subject for a in r.approvals):
            note = "you approved"
        else:
            note = "awaiting your decision"
    return Row(request=r, status=approval_status(r, needed), note=note)


# -- the analyst's form ----------------------------------------------------------------------


@dataclass(frozen=True)
class TenantChoice:
    """A tenant the analyst may ask for, the highest label they may ask at, and its quota."""

    tenant: Tenant
    ceiling: Label
    used: Resources

    @property
    def free(self) -> Resources:
        """Quota left after the committed requests the analyst can see."""
        q, u = self.tenant.quota, self.used
        return Resources(
            vcpus=max(q.vcpus - u.vcpus, 0),
            memory_mib=max(q.memory_mib - u.memory_mib, 0),
            gpus=max(q.gpus - u.gpus, 0),
            disk_gib=max(q.disk_gib - u.disk_gib, 0),
        )


def _ceiling(scheme: LabelScheme, clearance: Label, tenant: Tenant) -> Label:
    """The highest label both the user's clearance and the tenant allow (their meet)."""
    rank = min(clearance.rank, tenant.max_label.rank)
    return scheme.label(scheme.levels[rank], clearance.compartments & tenant.max_label.compartments)


def _visible_usage(ctx: CallContext, tenant: str) -> Resources:
    """Resources held by the tenant's committed requests that the caller can see."""
    total = Resources()
    for state in sorted(COMMITTED_STATES):
        cursor = None
        for _ in range(USAGE_PAGES):
            found = services().requests.list(
                ctx, RequestFilter(state=state, tenant=tenant, limit=200, cursor=cursor)
            )
            for item in found.items:
                total += item.resources
            cursor = found.next_cursor
            if cursor is None:
                break
    return total


def _choices(ctx: CallContext) -> list[TenantChoice]:
    principal = ctx.principal
    clearance = principal.clearance
    if clearance is None:
        return []
    scheme = services().scheme
    return [
        TenantChoice(t, _ceiling(scheme, clearance, t), _visible_usage(ctx, t.name))
        for t in services().catalog.tenants(ctx)
        if t.name in principal.tenants
    ]


def _form_page(ctx: CallContext, form: RequestForm, error: str | None = None) -> Response:
    choices = _choices(ctx)
    top = max((c.ceiling.rank for c in choices), default=-1)
    compartments: set[str] = set()
    for choice in choices:
        compartments |= choice.ceiling.compartments
    return page(
        "console/requests/new.html",
        title="Request an enclave",
        choices=choices,
        levels=services().scheme.levels[: top + 1],
        compartments=sorted(compartments),
        countries=sorted({code for choice in choices for code in choice.tenant.residency}),
        images=services().catalog.images(ctx),
        gpu_models=list(app_context.settings().gpu_models),
        max_lease_hours=services().policy.max_lease_hours,
        form=form,
        error=error,
        status=422 if form.errors else 200,
    )


@bp.get("/requests/new")
def new_request() -> ResponseReturnValue:
    """The request form: tenants and labels limited to what the analyst may ask for."""
    ctx = caller()
    require_role(ctx.principal, Role.ANALYST, "Requesting an enclave")
    tenants = sorted(ctx.principal.tenants)
    defaults = {
        "tenant": tenants[0] if tenants else "",
        "vcpus": "8",
        "memory_gib": "64",
        "gpus": "1",
        "disk_gib": "100",
        "lease_hours": "24",
    }
    return _form_page(ctx, empty_request_form(**defaults))


@bp.post("/requests")
def create_request() -> ResponseReturnValue:
    """File the request; the service checks membership, clearance, ceilings and quota."""
    ctx = caller()
    form = parse_request_form(request.form)
    if form.draft is None:
        return _form_page(ctx, form)
    retry_form(lambda error: _form_page(ctx, form, error.message))
    created = services().requests.create(ctx, form.draft)
    needed = services().policy.approvals_needed(created.label)
    flash(f"Request filed at {created.label}; it needs {needed} officer approval(s).")
    return redirect(url_for("console.request_detail", request_id=created.id), 303)


@bp.get("/requests")
def my_requests() -> ResponseReturnValue:
    """The requests the signed-in user filed, newest first, with their approvals."""
    ctx = caller()
    state = _state(request.args.get("state"))
    cursor = request.args.get("cursor") or None
    mine: list[EnclaveRequest] = []
    for _ in range(MINE_PAGES):
        found = services().requests.list(
            ctx, RequestFilter(state=state, limit=PAGE_SIZE, cursor=cursor)
        )
        mine += [r for r in found.items if r.requester == ctx.principal.subject]
        cursor = found.next_cursor
        if cursor is None or len(mine) >= PAGE_SIZE:
            break
    return page(
        "console/requests/list.html",
        title="My requests",
        shown=[r.label for r in mine],
        rows=[_row(ctx.principal, r) for r in mine],
        states=list(RequestState),
        state=state,
        next_url=url_for("console.my_requests", cursor=cursor, state=state.value if state else None)
        if cursor
        else None,
    )


# -- the officer's queue ---------------------------------------------------------------------


@bp.get("/queue")
def queue() -> ResponseReturnValue:
    """Pending requests the officer's clearance dominates (the service filters by label)."""
    ctx = caller()
    require_role(ctx.principal, Role.OFFICER, "The approval queue")
    found = services().requests.list(
        ctx,
        RequestFilter(
            state=RequestState.PENDING,
            limit=PAGE_SIZE,
            cursor=request.args.get("cursor") or None,
        ),
    )
    return page(
        "console/requests/queue.html",
        title="Approval queue",
        shown=[r.label for r in found.items],
        rows=[_row(ctx.principal, r) for r in found.items],
        next_url=url_for("console.queue", cursor=found.next_cursor) if found.next_cursor else None,
    )


# -- one request -----------------------------------------------------------------------------


def _detail_page(
    ctx: CallContext,
    request_id: uuid.UUID,
    *,
    error: str | None = None,
    reason: str = "",
    reject_reason: str = "",
) -> Response:
    principal = ctx.principal
    found = services().requests.get(ctx, request_id)
    pending = found.state is RequestState.PENDING
    officer = principal.has_role(Role.OFFICER)
    own = found.requester == principal.subject
    decided = any(a.officer == principal.subject for a in found.approvals)
    session = current_session()
    step_up = services().requests.step_up_required(ctx, found)
    # Officers see where the request would go while it waits for a decision or a placement.
    placement = (
        services().enclaves.preview(ctx, request_id)
        if officer and found.state in PREVIEW_STATES
        else None
    )
    if session is not None and session.resume and session.resume.request_id == str(request_id):
        # An approval interrupted by a step-up: offered again (never replayed), and forgotten
        # once the step-up is done.
        reason = reason or session.resume.reason
        if not step_up:
            session.resume = None
    return page(
        "console/requests/detail.html",
        title=f"Request {found.id}",
        shown=[found.label],
        r=found,
        residency=services().requests.residency([found])[0],
        status_text=approval_status(found, services().policy.approvals_needed(found.label)),
        can_cancel=pending and own,
        can_decide=pending and officer and not own and not decided,
        own_as_officer=pending and officer and own,
        already_decided=pending and officer and decided,
        step_up=step_up,
        step_up_minutes=max(app_context.settings().step_up_max_age_s // 60, 1),
        audit_reader=bool(principal.roles & AUDIT_READERS),
        placement=placement,
        enclave_url=url_for("console.enclave_detail", enclave_id=found.id)
        if found.state not in NO_ENCLAVE_STATES
        else None,
        can_read_console=own or officer,
        error=error,
        reason=reason,
        reject_reason=reject_reason,
    )


@bp.get("/requests/<uuid:request_id>")
def request_detail(request_id: uuid.UUID) -> ResponseReturnValue:
    """A request with its approvals, and what the caller may do with it."""
    return _detail_page(caller(), request_id)


@bp.post("/requests/<uuid:request_id>/approve")
def approve(request_id: uuid.UUID) -> ResponseReturnValue:
    """Add the officer's approval; classified requests need a recent password first."""
    ctx = caller()
    reason = reason_field(request.form)
    found = services().requests.get(ctx, request_id)
    if services().requests.step_up_required(ctx, found):
        session = current_session()
        assert session is not None  # caller() found it
        session.resume = Resume(request_id=str(request_id), reason=reason)
        flash(
            f"Approving a {found.label} request needs a recent sign-in: enter your password "
            "again, then confirm."
        )
        detail = url_for("console.request_detail", request_id=request_id)
        return redirect(url_for("console.login", next=detail, step_up="1"), 303)
    retry_form(lambda error: _detail_page(ctx, request_id, error=error.message, reason=reason))
    done = services().requests.approve(ctx, request_id, reason)
    status = approval_status(done, services().policy.approvals_needed(done.label))
    flash(f"Your approval is recorded. {status}. The request is {done.state.value}.")
    return redirect(url_for("console.request_detail", request_id=request_id), 303)


@bp.post("/requests/<uuid:request_id>/reject")
def reject(request_id: uuid.UUID) -> ResponseReturnValue:
    """Reject with a reason; final."""
    ctx = caller()
    reason = reason_field(request.form)
    retry_form(
        lambda error: _detail_page(ctx, request_id, error=error.message, reject_reason=reason)
    )
    services().requests.reject(ctx, request_id, reason)
    flash("The request is rejected.")
    return redirect(url_for("console.request_detail", request_id=request_id), 303)


@bp.post("/requests/<uuid:request_id>/cancel")
def cancel(request_id: uuid.UUID) -> ResponseReturnValue:
    """Withdraw one's own pending request."""
    ctx = caller()
    retry_form(lambda error: _detail_page(ctx, request_id, error=error.message))
    services().requests.cancel(ctx, request_id, reason_field(request.form))
    flash("The request is cancelled.")
    return redirect(url_for("console.request_detail", request_id=request_id), 303)
