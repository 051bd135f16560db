"""The console's navigation: which pages each role is offered.

Owns :data:`NAV`, the entries in order, and :func:`nav_items`, the entries one page shows. An
entry is hidden while its endpoint is not registered or the services lack what it ``needs``,
so pages can be added independently. Offering is not allowing: the services decide.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, request, url_for

from sovereign.app_context import services
from sovereign.domain.identity import Principal, Role
from sovereign.domain.policy import AUDIT_READERS
from sovereign.services.hosts import HOST_READERS


@dataclass(frozen=True)
class NavItem:
    """A navigation entry, shown to holders of ``roles`` when its page exists."""

    label: str
    endpoint: str
    roles: frozenset[Role]
    description: str = ""
    #: A ``Services`` attribute the page needs; the entry is hidden while it is absent.
    needs: str | None = None


@dataclass(frozen=True)
class NavLink:
    """A navigation entry as one page shows it."""

    label: str
    url: str
    current: bool
    description: str


ANALYST, OFFICER = frozenset({Role.ANALYST}), frozenset({Role.OFFICER})

#: The console's navigation, in order. Entries whose endpoint is not registered, or whose
#: ``needs`` is missing from the services, are hidden, so pages can be added independently.
NAV: list[NavItem] = [
    NavItem(
        "Request an enclave",
        "console.new_request",
        ANALYST,
        "An isolated VM with whole GPUs, an encrypted disk and no shared network, for a lease.",
    ),
    NavItem(
        "My requests",
        "console.my_requests",
        ANALYST,
        "Where each of your requests stands, with the officers' approvals.",
    ),
    NavItem(
        "My enclaves",
        "console.my_enclaves",
        ANALYST,
        "Your running enclaves: host, GPUs, lease end, serial console.",
        needs="enclaves",
    ),
    NavItem(
        "Datasets",
        "console.datasets",
        ANALYST,
        "Input data for your jobs, stored encrypted under your tenant's key at a label.",
    ),
    NavItem(
        "Approval queue",
        "console.queue",
        OFFICER,
        "Pending requests your clearance covers; classified levels need two distinct officers.",
    ),
    NavItem(
        "Hosts and GPUs",
        "console.hosts",
        HOST_READERS,
        "Hypervisors with their state, accreditation and site; GPUs with their state and the "
        "label of their last tenant.",
        needs="hosts",
    ),
    NavItem(
        "Sites",
        "console.sites",
        HOST_READERS,
        "Where hosts stand: each site's country and operator; operators record new sites.",
        needs="sites",
    ),
    NavItem(
        "Two-person actions",
        "console.actions",
        OFFICER,
        "Accreditation changes, relocations and kill switches waiting for a second officer.",
        needs="actions",
    ),
    NavItem(
        "Kill switch",
        "console.kill_switch",
        OFFICER,
        "End every enclave of a label or tenant at once and erase their keys, with confirmation.",
        needs="enclaves",
    ),
    NavItem(
        "Audit log",
        "console.audit_events",
        frozenset(AUDIT_READERS),
        "Every decision with its place in the Merkle tree; verify the log, download proofs "
        "and exports.",
    ),
    NavItem(
        "Attestation",
        "console.audit_attestation",
        frozenset({Role.AUDITOR}),
        "What the log proves about a period (no co-residency, GPU hand-overs, crypto-erase, "
        "two-person approvals, residency, completeness), signed, and the controls of ENS, "
        "SecNumCloud and C5 it evidences.",
        needs="attestation",
    ),
]


def nav_items(principal: Principal | None) -> list[NavLink]:
    """The entries ``principal`` should see on this page."""
    if principal is None:
        return []
    svc = services()
    links = []
    for item in NAV:
        if not principal.roles & item.roles:
            continue
        if item.needs is not None and not hasattr(svc, item.needs):
            continue
        if item.endpoint not in current_app.view_functions:
            continue
        links.append(
            NavLink(
                label=item.label,
                url=url_for(item.endpoint),
                current=request.endpoint == item.endpoint,
                description=item.description,
            )
        )
    return links
