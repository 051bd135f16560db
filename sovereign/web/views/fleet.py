"""The fleet in the console: hosts and their GPUs with each GPU's latest hand-over certificate,
drain / quarantine / reactivate, proposing a new accreditation, a relocation to another site or
a quarantined GPU's return to service, the pending two-person actions, and the kill switch.

Owns what officers (and, for hosts, operators and auditors) are offered. Every decision stays in
the services: ``services().hosts`` (who reads hosts, who changes their state, GPU labels shown
only to cleared readers, who proposes a GPU's return), ``services().certificates`` (officers
and auditors, up to their clearance), ``services().actions`` (the two-person rule) and
``services().enclaves.kill_switch`` (one officer below the two-person level, two at or above
it). A refusal shows the service's reason on the form it came from; nothing is changed then.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flask import Response, redirect, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import MultiDict

from sovereign.app_context import services
from sovereign.domain.actions import ActionKind, DualAction
from sovereign.domain.fleet import GPU_STATES, HOST_STATES, Gpu, Host
from sovereign.domain.identity import Principal, Role
from sovereign.domain.labels import Label, LabelScheme
from sovereign.errors import InvalidInputError, LabelError, SovereignError
from sovereign.services.certificates import CERTIFICATE_READERS, GpuCertificate
from sovereign.services.enclaves import EnclaveView, KillResult
from sovereign.services.hosts import HOST_OPERATORS
from sovereign.services.recording import CallContext
from sovereign.web.console import bp, caller, flash, page, retry_form
from sovereign.web.forms import reason_field
from sovereign.web.views.requests import require_role

#: What each host state means, for the state form.
STATE_CHOICES = {
    "draining": "Drain: no new placements; running enclaves stay until they end",
    "quarantined": "Quarantine: out of service until an officer reactivates it",
    "active": "Reactivate: back in service (officers cleared for its accreditation)",
}
#: The checkbox an officer ticks to confirm the kill switch.
KILL_CONFIRM = "I understand this ends every matching enclave and destroys their keys"


def levels_within(scheme: LabelScheme, principal: Principal) -> tuple[list[str], list[str]]:
    """The levels and compartments ``principal``'s clearance dominates, for label choices."""
    clearance = principal.clearance
    if clearance is None:
        return [], []
    return list(scheme.levels[: clearance.rank + 1]), sorted(clearance.compartments)


def describe_action(action: DualAction) -> str:
    """What confirming ``action`` would do, in words."""
    params = action.params
    if action.kind is ActionKind.ACCREDIT_HOST:
        new = _label_text(params.get("accreditation"))
        return f"Change the accreditation of host {params.get('host')} to {new}"
    if action.kind is ActionKind.RELOCATE_HOST:
        return f"Relocate host {params.get('host')} to site {params.get('site')}"
    if action.kind is ActionKind.RETURN_GPU:
        return (
            f"Return the quarantined GPU {params.get('address')} of host {params.get('host')} "
            "to service (it goes dirty and is handed over again before any use)"
        )
    what = []
    if params.get("label"):
        what.append(f"labelled {_label_text(params['label'])}")
    if params.get("tenant"):
        what.append(f"of tenant {params['tenant']}")
    return f"Kill switch: end every enclave {' and '.join(what)} and erase their keys"


def _label_text(value: Any) -> str:
    try:
        return str(services().scheme.parse(value))
    except (LabelError, AttributeError, TypeError):
        return str(value)


# -- hosts and GPUs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HostRow:
    """A host with a count of its GPUs per state."""

    host: Host
    gpu_counts: dict[str, int]
    gpus: int


def _gpu_labels(gpus: Iterable[Gpu]) -> list[Label | None]:
    """The labels a GPU list shows (last tenants' labels, already filtered by clearance)."""
    return [gpu.last_label for gpu in gpus]


@bp.get("/hosts")
def hosts() -> ResponseReturnValue:
    """Every host with its state, accreditation, site and GPUs by state; every GPU with its
    state and, where the reader is cleared for it, the label of its last tenant."""
    ctx = caller()
    found = services().hosts.list(ctx)
    gpus = services().hosts.gpus(ctx)
    by_host: dict[str, list[Gpu]] = {}
    for gpu in gpus:
        by_host.setdefault(gpu.host, []).append(gpu)
    rows = []
    for host in found:
        counts = Counter(gpu.state for gpu in by_host.get(host.name, []))
        rows.append(
            HostRow(
                host=host,
                gpu_counts={state: counts[state] for state in GPU_STATES if counts[state]},
                gpus=sum(counts.values()),
            )
        )
    return page(
        "console/hosts/list.html",
        title="Hosts and GPUs",
        shown=_gpu_labels(gpus),
        rows=rows,
        gpus_by_host=by_host,
    )


@dataclass
class HostForms:
    """What was typed into a host page's forms, and the error of the one that was sent."""

    state: str = ""
    state_reason: str = ""
    level: str = ""
    compartments: list[str] = field(default_factory=list)
    accreditation_reason: str = ""
    site: str = ""
    relocation_reason: str = ""
    #: The GPU whose return form was sent, and its reason.
    gpu: str = ""
    return_reason: str = ""
    error: str | None = None
    #: Which form ``error`` belongs to: "state", "accreditation", "relocation" or "return".
    failed: str | None = None


def _host_page(ctx: CallContext, name: str, forms: HostForms | None = None) -> Response:
    principal = ctx.principal
    host = services().hosts.get(ctx, name)
    gpus = services().hosts.gpus(ctx, name)
    forms = forms or HostForms()
    officer = principal.has_role(Role.OFFICER)
    states = [
        state
        for state in HOST_STATES
        if state != host.state
        and (officer if state == "active" else bool(principal.roles & HOST_OPERATORS))
    ]
    levels, compartments = levels_within(services().scheme, principal)
    if not forms.level:
        forms.level = host.accreditation.level
        forms.compartments = sorted(host.accreditation.compartments)
    # Only officers and auditors read certificates; an operator is not asked (no refusal).
    readers = bool(principal.roles & CERTIFICATE_READERS)
    certificates: dict[str, GpuCertificate] = (
        services().certificates.latest_of_host(ctx, name) if readers else {}
    )
    can_accredit = officer and principal.cleared_for(host.accreditation)
    # The sites a cleared officer may propose to move the host to (any but its own).
    sites = [s for s in services().sites.list(ctx) if s.name != host.site] if can_accredit else []
    return page(
        "console/hosts/detail.html",
        title=f"Host {host.name}",
        shown=[*_gpu_labels(gpus), *(c.label for c in certificates.values())],
        host=host,
        gpus=gpus,
        certificates=certificates,
        certificate_reader=readers,
        can_return=officer,
        states=[(state, STATE_CHOICES[state]) for state in states],
        can_accredit=can_accredit,
        sites=sites,
        levels=levels,
        compartments=compartments,
        forms=forms,
        status=422 if forms.error else 200,
    )


@bp.get("/hosts/<name>")
def host_detail(name: str) -> ResponseReturnValue:
    """One host, its GPUs, and the forms to change its state or propose an accreditation."""
    return _host_page(caller(), name)


@bp.post("/hosts/<name>/state")
def host_state(name: str) -> ResponseReturnValue:
    """Drain, quarantine or reactivate the host, with a reason."""
    ctx = caller()
    state = request.form.get("state", "")
    reason = reason_field(request.form)
    forms = HostForms(state=state, state_reason=reason, failed="state")

    def again(error: SovereignError) -> Response:
        forms.error = error.message
        return _host_page(ctx, name, forms)

    retry_form(again)
    if state not in HOST_STATES:
        raise InvalidInputError(reason=f"choose one of {', '.join(HOST_STATES)}")
    host = services().hosts.set_state(ctx, name, state, reason)
    flash(f"Host {host.name} is now {host.state}.")
    return redirect(url_for("console.host_detail", name=name), 303)


@bp.post("/hosts/<name>/accreditation")
def propose_accreditation(name: str) -> ResponseReturnValue:
    """Propose a new accreditation; a second officer confirms it under two-person actions."""
    ctx = caller()
    level = request.form.get("level", "")
    compartments = request.form.getlist("compartments")
    reason = reason_field(request.form)
    forms = HostForms(
        level=level,
        compartments=compartments,
        accreditation_reason=reason,
        failed="accreditation",
    )

    def again(error: SovereignError) -> Response:
        forms.error = error.message
        return _host_page(ctx, name, forms)

    retry_form(again)
    label = services().scheme.label(level, compartments)
    proposal = services().hosts.propose_accreditation(ctx, name, label, reason)
    flash(
        f"Proposed: accreditation {label} for host {name} ({proposal.status()}). A second, "
        "different officer must confirm it here."
    )
    return redirect(url_for("console.actions"), 303)


@bp.post("/hosts/<name>/relocation")
def propose_relocation(name: str) -> ResponseReturnValue:
    """Propose moving the host to another site; a second officer confirms it under two-person
    actions (refused while the host carries live enclaves)."""
    ctx = caller()
    site = request.form.get("site", "")
    reason = reason_field(request.form)
    forms = HostForms(site=site, relocation_reason=reason, failed="relocation")

    def again(error: SovereignError) -> Response:
        forms.error = error.message
        return _host_page(ctx, name, forms)

    retry_form(again)
    proposal = services().hosts.propose_relocation(ctx, name, site, reason)
    flash(
        f"Proposed: relocate host {name} to site {site} ({proposal.status()}). A second, "
        "different officer must confirm it here."
    )
    return redirect(url_for("console.actions"), 303)


@bp.post("/hosts/<name>/gpus/<pci:address>/return")
def propose_gpu_return(name: str, address: str) -> ResponseReturnValue:
    """Propose returning a quarantined GPU to service; a second officer confirms it under
    two-person actions (the GPU then goes dirty and is handed over again)."""
    ctx = caller()
    reason = reason_field(request.form)
    forms = HostForms(gpu=address, return_reason=reason, failed="return")

    def again(error: SovereignError) -> Response:
        forms.error = error.message
        return _host_page(ctx, name, forms)

    retry_form(again)
    proposal = services().hosts.propose_return(ctx, name, address, reason)
    flash(
        f"Proposed: return GPU {address} of host {name} to service ({proposal.status()}). A "
        "second, different officer must confirm it here."
    )
    return redirect(url_for("console.actions"), 303)


# -- two-person actions -----------------------------------------------------------------------


@dataclass(frozen=True)
class ActionRow:
    """A pending proposal as the actions page shows it."""

    action: DualAction
    what: str
    own: bool


def _actions_page(ctx: CallContext, error: str | None = None) -> Response:
    found = services().actions.list(ctx)
    rows = [
        ActionRow(
            action=action,
            what=describe_action(action),
            own=action.proposer == ctx.principal.subject,
        )
        for action in found
    ]
    return page(
        "console/actions/list.html",
        title="Two-person actions",
        shown=[action.label for action in found],
        rows=rows,
        error=error,
    )


@bp.get("/actions")
def actions() -> ResponseReturnValue:
    """Proposals waiting for a second officer, up to the officer's clearance."""
    return _actions_page(caller())


@bp.post("/actions/<uuid:action_id>/confirm")
def confirm_action(action_id: uuid.UUID) -> ResponseReturnValue:
    """Confirm as the second officer: the action is carried out at once."""
    ctx = caller()
    retry_form(lambda error: _actions_page(ctx, error.message))
    done = services().actions.confirm(ctx, action_id)
    flash(f"Confirmed ({done.status()}): {describe_action(done)}. It is carried out.", "success")
    return redirect(url_for("console.actions"), 303)


# -- the kill switch --------------------------------------------------------------------------


@dataclass
class KillForm:
    """What was typed into the kill switch form, and what is wrong with it."""

    level: str = ""
    compartments: list[str] = field(default_factory=list)
    tenant: str = ""
    reason: str = ""
    confirmed: bool = False
    error: str | None = None

    @classmethod
    def parse(cls, form: MultiDict[str, str]) -> KillForm:
        """The posted fields, trimmed."""
        return cls(
            level=form.get("level", "").strip(),
            compartments=form.getlist("compartments"),
            tenant=form.get("tenant", "").strip(),
            reason=reason_field(form),
            confirmed=form.get("confirm") == "yes",
        )

    def label(self, scheme: LabelScheme) -> Label | None:
        """The chosen label, if any. :raises InvalidInputError: compartments without a level,
        or names the scheme does not know."""
        if not self.level:
            if self.compartments:
                raise InvalidInputError(reason="choose a level for the compartments")
            return None
        return scheme.label(self.level, self.compartments)


def _kill_page(ctx: CallContext, form: KillForm) -> Response:
    levels, compartments = levels_within(services().scheme, ctx.principal)
    shown: list[Label] = []
    if form.level in levels:
        shown.append(
            services().scheme.label(form.level, set(form.compartments) & set(compartments))
        )
    return page(
        "console/kill/form.html",
        title="Kill switch",
        shown=shown,
        levels=levels,
        compartments=compartments,
        tenants=services().catalog.tenants(ctx),
        form=form,
        confirm_text=KILL_CONFIRM,
        two_person_level=services().policy.two_person_level,
        status=422 if form.error else 200,
    )


@bp.get("/kill-switch")
def kill_switch() -> ResponseReturnValue:
    """Choose a label and/or a tenant, give a reason and confirm."""
    ctx = caller()
    require_role(ctx.principal, Role.OFFICER, "The kill switch")
    return _kill_page(ctx, KillForm())


@bp.post("/kill-switch")
def pull_kill_switch() -> ResponseReturnValue:
    """End every matching enclave and erase their keys, or propose it to a second officer."""
    ctx = caller()
    form = KillForm.parse(request.form)

    def again(error: SovereignError) -> Response:
        form.error = error.message
        return _kill_page(ctx, form)

    if ctx.principal.has_role(Role.OFFICER):
        # Only officers are offered the form again; anyone else gets the refusal alone.
        retry_form(again)
    if not form.confirmed:
        raise InvalidInputError(reason=f"tick “{KILL_CONFIRM}” to confirm; nothing was changed")
    label = form.label(services().scheme)
    result = services().enclaves.kill_switch(
        ctx, label=label, tenant=form.tenant or None, reason=form.reason
    )
    return _kill_result(ctx, result, form, label)


def _kill_result(
    ctx: CallContext, result: KillResult, form: KillForm, label: Label | None
) -> Response:
    ended: list[EnclaveView] = [services().enclaves.get(ctx, i) for i in result.ended]
    shown: list[Label | None] = [label, *(v.request.label for v in ended)]
    if result.proposal is not None:
        shown.append(result.proposal.label)
    return page(
        "console/kill/result.html",
        title="Kill switch",
        shown=shown,
        ended=ended,
        proposal=result.proposal,
        what=describe_action(result.proposal) if result.proposal else None,
        form=form,
        label=label,
        partial=result.partial,
    )
