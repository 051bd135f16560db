"""Actions that need two distinct security officers: one proposes, another confirms.

Owns :class:`DualAction` and its rules (the two-person rule for the most dangerous changes that
are not request approvals: a host's accreditation, the kill switch for classified enclaves, a
quarantined GPU's return to service, a host's relocation to another site and country). A
proposal names what will be done and why; it expires if nobody confirms it in time; the
confirming officer must differ from the proposer and be cleared for the action's label. What the
action does once confirmed is the services' business, not this module's.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sovereign.domain.identity import Principal, Role
from sovereign.domain.labels import Label
from sovereign.errors import ConflictError, PolicyDeniedError


class ActionKind(StrEnum):
    """What a dual action does once confirmed."""

    ACCREDIT_HOST = "host:accredit"
    KILL_SWITCH = "enclave:kill"
    #: A quarantined GPU back to service: ``quarantined -> dirty``, so it gets a new hand-over.
    RETURN_GPU = "gpu:return"
    #: A host moves to another site (and with it, maybe, another country); never while it
    #: carries live enclaves, whose data would cross a border with it.
    RELOCATE_HOST = "host:relocate"


class ActionState(StrEnum):
    """Where a proposal is."""

    PENDING = "pending"
    CONFIRMED = "confirmed"
    EXPIRED = "expired"


@dataclass
class DualAction:
    """A proposed two-person action."""

    id: uuid.UUID
    kind: ActionKind
    params: dict[str, Any]
    #: The most sensitive label the action touches: both officers must be cleared for it.
    label: Label
    reason: str
    proposer: str
    proposer_name: str
    created_at: datetime
    expires_at: datetime
    state: ActionState = ActionState.PENDING
    confirmer: str | None = None
    confirmer_name: str | None = None
    decided_at: datetime | None = None
    version: int = 1
    #: What carrying the action out did (set on confirmation; not stored, it is in the
    #: ``action:confirm`` audit event), e.g. the enclaves a kill switch ended.
    notes: dict[str, Any] = field(default_factory=dict)

    def visible_to(self, principal: Principal) -> bool:
        """Whether ``principal`` may know that this proposal exists: officers cleared for its
        label (the only people who could confirm it)."""
        return principal.has_role(Role.OFFICER) and principal.cleared_for(self.label)

    def confirm(self, principal: Principal, now: datetime) -> None:
        """Confirm as ``principal``.

        :raises ConflictError: if the proposal is no longer pending or has expired.
        :raises PolicyDeniedError: if ``principal`` proposed it, is no officer or not cleared.
        """
        check_officer(principal, self.label)
        if self.state is not ActionState.PENDING:
            raise ConflictError(reason=f"the proposal is already {self.state.value}")
        if now >= self.expires_at:
            self.state = ActionState.EXPIRED
            self.decided_at = now
            raise ConflictError(reason="the proposal expired; propose it again")
        if principal.subject == self.proposer:
            raise PolicyDeniedError(
                reason="two-person rule: a second, different officer must confirm this action"
            )
        self.state = ActionState.CONFIRMED
        self.confirmer = principal.subject
        self.confirmer_name = principal.username
        self.decided_at = now

    def status(self) -> str:
        """The two-person status for humans, e.g. ``1 of 2 officers: officer-1``."""
        names = [self.proposer_name] + ([self.confirmer_name] if self.confirmer_name else [])
        return f"{len(names)} of 2 officers: {', '.join(names)}"


def check_officer(principal: Principal, label: Label) -> None:
    """:raises PolicyDeniedError: unless ``principal`` is an officer cleared for ``label``."""
    if not principal.has_role(Role.OFFICER):
        raise PolicyDeniedError(reason="only security officers may do this")
    if not principal.cleared_for(label):
        raise PolicyDeniedError(reason=f"your clearance does not dominate {label}")
