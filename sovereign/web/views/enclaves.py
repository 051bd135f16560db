"""Enclaves in the console: the analyst's "My enclaves" list and an enclave's page with its
serial console tail, its jobs (:mod:`sovereign.web.views.jobs`) and the terminate form.

Owns what each role is offered. Who may see, read the console of and end an enclave is decided
(and recorded) by ``services().enclaves``; this module only chooses what to show, and shows a
refusal's reason. The console log is untrusted text from inside the guest: it is only ever put
into a ``<pre>`` through Jinja's autoescaping.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from flask import Response, redirect, request, url_for
from flask.typing import ResponseReturnValue

from sovereign.app_context import services
from sovereign.domain.identity import Principal, Role
from sovereign.domain.requests import EnclaveRequest, RequestState
from sovereign.services.enclaves import TERMINABLE, EnclaveView
from sovereign.services.ports import RequestFilter
from sovereign.services.recording import CallContext
from sovereign.web.console import bp, caller, flash, page, retry_form
from sovereign.web.forms import reason_field
from sovereign.web.views.jobs import jobs_section
from sovereign.web.views.requests import MINE_PAGES, PAGE_SIZE, require_role

S = RequestState
#: Request states in which an enclave exists, is about to, or did (what "My enclaves" lists).
ENCLAVE_STATES = (
    S.APPROVED,
    S.PROVISIONING,
    S.RUNNING,
    S.TERMINATING,
    S.FAILED,
    S.EXPIRED,
    S.TERMINATED,
)
#: The checkbox a user ticks to confirm ending an enclave.
CONFIRM_FIELD = "confirm"


def _state(value: str | None) -> RequestState | None:
    try:
        found = RequestState(value) if value else None
    except ValueError:
        return None
    return found if found in ENCLAVE_STATES else None


def may_end(principal: Principal, r: EnclaveRequest) -> bool:
    """Whether to offer ``principal`` the terminate form (the service still decides)."""
    mine = r.requester == principal.subject
    return r.state in TERMINABLE and (mine or principal.has_role(Role.OFFICER))


def may_read_console(principal: Principal, r: EnclaveRequest) -> bool:
    """Whether to show ``principal`` the serial console (the service still decides)."""
    return r.requester == principal.subject or principal.has_role(Role.OFFICER)


@bp.get("/enclaves")
def my_enclaves() -> ResponseReturnValue:
    """The signed-in analyst's enclaves, newest first: state, host and site, GPUs, lease end
    and how far provisioning or teardown got."""
    ctx = caller()
    require_role(ctx.principal, Role.ANALYST, "My enclaves")
    state = _state(request.args.get("state"))
    cursor = request.args.get("cursor") or None
    mine: list[EnclaveView] = []
    for _ in range(MINE_PAGES):
        # Requests page with a cursor; the enclave of each of the analyst's own is read after.
        found = services().requests.list(
            ctx, RequestFilter(state=state, limit=PAGE_SIZE, cursor=cursor)
        )
        mine += [
            services().enclaves.get(ctx, r.id)
            for r in found.items
            if r.requester == ctx.principal.subject and r.state in ENCLAVE_STATES
        ]
        cursor = found.next_cursor
        if cursor is None or len(mine) >= PAGE_SIZE:
            break
    return page(
        "console/enclaves/list.html",
        title="My enclaves",
        shown=[v.request.label for v in mine],
        views=mine,
        states=ENCLAVE_STATES,
        state=state,
        next_url=url_for("console.my_enclaves", cursor=cursor, state=state.value if state else None)
        if cursor
        else None,
    )


@dataclass(frozen=True)
class TerminateForm:
    """What was typed into the terminate form, and what is wrong with it."""

    reason: str = ""
    confirmed: bool = False
    error: str | None = None


def _detail_page(
    ctx: CallContext, enclave_id: uuid.UUID, form: TerminateForm | None = None
) -> Response:
    principal = ctx.principal
    view = services().enclaves.get(ctx, enclave_id)
    r = view.request
    show_console = may_read_console(principal, r)
    log = services().enclaves.console(ctx, enclave_id) if show_console else ""
    models = {gpu.address: gpu.model for gpu in view.gpus}
    return page(
        "console/enclaves/detail.html",
        title=f"Enclave {r.id}",
        shown=[r.label],
        v=view,
        r=r,
        e=view.enclave,
        gpus=[(address, models.get(address, "")) for address in view.enclave.gpus]
        if view.enclave
        else [],
        show_console=show_console,
        console_log=log,
        can_end=may_end(principal, r),
        mine=r.requester == principal.subject,
        form=form or TerminateForm(),
        status=422 if form is not None and form.error else 200,
        **jobs_section(ctx, view),
    )


@bp.get("/enclaves/<uuid:enclave_id>")
def enclave_detail(enclave_id: uuid.UUID) -> ResponseReturnValue:
    """One enclave: where it runs, its GPUs and lease, its serial console, and terminate."""
    return _detail_page(caller(), enclave_id)


@bp.post("/enclaves/<uuid:enclave_id>/terminate")
def terminate(enclave_id: uuid.UUID) -> ResponseReturnValue:
    """End the enclave once the user ticked the confirmation; the reconciler tears it down."""
    ctx = caller()
    reason = reason_field(request.form)
    confirmed = request.form.get(CONFIRM_FIELD) == "yes"
    if not confirmed:
        form = TerminateForm(
            reason=reason,
            error="Tick the box to confirm that the enclave, its disk and its keys are to be "
            "destroyed. Nothing was changed.",
        )
        return _detail_page(ctx, enclave_id, form)
    retry_form(
        lambda error: _detail_page(
            ctx, enclave_id, TerminateForm(reason=reason, confirmed=True, error=error.message)
        )
    )
    done = services().enclaves.terminate(ctx, enclave_id, reason)
    if done.state is S.CANCELLED:
        flash("The request was approved but not yet placed: it is cancelled and its keys erased.")
    else:
        flash(
            "The enclave is terminating: its VM is stopped and removed, its disk and keys are "
            "destroyed, and its GPUs are sanitized before anyone else gets them."
        )
    return redirect(url_for("console.enclave_detail", enclave_id=enclave_id), 303)
