"""Enclave requests, their approvals and their state machine.

Owns :class:`RequestState`, the allowed transitions, :class:`Approval` and
:class:`EnclaveRequest`. The request carries its whole life: ``pending -> approved | rejected |
cancelled``, then ``provisioning -> running -> terminating -> terminated``, plus ``failed`` and
``expired``. Who may do what is decided in :mod:`sovereign.domain.policy`, not here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sovereign.domain.labels import Label
from sovereign.domain.tenants import Resources
from sovereign.errors import InvalidTransitionError


class RequestState(StrEnum):
    """Where a request (and later its enclave) is in its life."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED = "failed"
    EXPIRED = "expired"


S = RequestState
TRANSITIONS: dict[RequestState, frozenset[RequestState]] = {
    S.PENDING: frozenset({S.APPROVED, S.REJECTED, S.CANCELLED}),
    S.APPROVED: frozenset({S.PROVISIONING, S.CANCELLED, S.EXPIRED}),
    S.PROVISIONING: frozenset({S.RUNNING, S.FAILED, S.TERMINATING}),
    S.RUNNING: frozenset({S.TERMINATING, S.EXPIRED, S.FAILED}),
    # An expired lease is torn down like a termination.
    S.EXPIRED: frozenset({S.TERMINATING}),
    S.FAILED: frozenset({S.TERMINATING}),
    S.TERMINATING: frozenset({S.TERMINATED, S.FAILED}),
    S.REJECTED: frozenset(),
    S.CANCELLED: frozenset(),
    S.TERMINATED: frozenset(),
}

#: States in which a request holds (or is about to hold) tenant quota.
COMMITTED_STATES: frozenset[RequestState] = frozenset(
    {S.APPROVED, S.PROVISIONING, S.RUNNING, S.TERMINATING}
)


class Decision(StrEnum):
    """What an officer decided."""

    APPROVE = "approve"
    REJECT = "reject"


@dataclass(frozen=True)
class Approval:
    """One officer's decision on a request."""

    officer: str
    officer_name: str
    decision: Decision
    reason: str
    decided_at: datetime


@dataclass
class EnclaveRequest:
    """An analyst's request for an enclave, and the enclave it becomes."""

    id: uuid.UUID
    tenant: str
    requester: str
    requester_name: str
    label: Label
    resources: Resources
    gpu_model: str | None
    image: str
    purpose: str
    lease_hours: int
    state: RequestState
    created_at: datetime
    updated_at: datetime
    approvals: list[Approval] = field(default_factory=list)
    #: Why the request was rejected or cancelled (empty otherwise).
    reason: str = ""
    #: Optimistic-concurrency counter, bumped on every stored change.
    version: int = 1
    #: The countries the requester narrowed the tenant's residency to (None: no narrowing).
    residency: tuple[str, ...] | None = None
    #: The country the enclave was pinned to at final approval (where its key lives).
    country: str | None = None

    def transition(self, target: RequestState, now: datetime) -> None:
        """Move to ``target``. :raises InvalidTransitionError: if the machine has no such edge."""
        if target not in TRANSITIONS[self.state]:
            raise InvalidTransitionError(current=self.state.value, target=target.value)
        self.state = target
        self.updated_at = now

    @property
    def approvers(self) -> list[str]:
        """Subjects of the officers who approved so far."""
        return [a.officer for a in self.approvals if a.decision is Decision.APPROVE]

    def record(self, approval: Approval) -> None:
        """Append an officer's decision (policy has already allowed it)."""
        self.approvals.append(approval)
        self.updated_at = approval.decided_at
