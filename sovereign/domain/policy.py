"""The access policy: every rule about who may see, request, decide or cancel.

Owns label dominance checks against principals, separation of duties (never the requester), the
two-person rule, fresh authentication (step-up) for classified approvals, tenant membership,
tenant and image ceilings and quotas. Pure functions of their
arguments; the services call them and record the outcome in the audit log. A rule that says no
raises :class:`PolicyDeniedError` (or :class:`QuotaExceededError`) with the reason an officer
would want to read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sovereign.domain.identity import Principal, Role
from sovereign.domain.labels import Label, LabelScheme
from sovereign.domain.requests import Approval, Decision, EnclaveRequest, RequestState
from sovereign.domain.tenants import Image, Resources, Tenant
from sovereign.errors import (
    ConflictError,
    PolicyDeniedError,
    QuotaExceededError,
    StepUpRequiredError,
)

#: Roles that may read requests at all (each further filtered by tenant and clearance).
REQUEST_READERS = frozenset({Role.ANALYST, Role.OFFICER, Role.AUDITOR})
#: Roles that may read the audit log.
AUDIT_READERS = frozenset({Role.OFFICER, Role.AUDITOR})


@dataclass(frozen=True)
class Visibility:
    """What a principal may list: levels and compartments it dominates, and tenants (None: all)."""

    levels: tuple[str, ...]
    compartments: frozenset[str]
    tenants: frozenset[str] | None

    @classmethod
    def everything(cls, scheme: LabelScheme) -> Visibility:
        """Every level, compartment and tenant: for the system's own work (the reconciler, the
        kill switch's scope), never for a user's listing."""
        return cls(tuple(scheme.levels), scheme.compartments, None)

    @classmethod
    def up_to(cls, scheme: LabelScheme, label: Label) -> Visibility:
        """Every tenant, at labels ``label`` dominates: the reach of a kill switch bounded by
        what its officers are cleared for."""
        return cls(scheme.dominated_levels(label), label.compartments, None)

    def covers(self, label: Label) -> bool:
        """Whether a label is within these levels and compartments (tenants aside)."""
        return label.level in self.levels and label.compartments <= self.compartments


@dataclass(frozen=True)
class AccessPolicy:
    """The configured rules: the label scheme, the two-person threshold and lease limits."""

    scheme: LabelScheme
    #: Requests at or above this level need two distinct officers.
    two_person_level: str = "CONFIDENTIAL"
    max_lease_hours: int = 720
    #: Approving a classified request needs a password typed at most this many seconds ago
    #: (OIDC ``auth_time``), whichever channel (console or API) carries the approval.
    step_up_max_age_s: int = 600

    def __post_init__(self) -> None:
        # Fail at start-up, not at the first classified request, if the threshold is unknown.
        self.scheme.rank(self.two_person_level)
        if self.step_up_max_age_s < 0:
            raise ValueError("step_up_max_age_s must not be negative")

    # -- reading -----------------------------------------------------------------------------

    def can_see(self, principal: Principal, request: EnclaveRequest) -> bool:
        """Whether ``principal`` may know that ``request`` exists."""
        if not principal.cleared_for(request.label):
            return False
        if principal.has_role(Role.OFFICER) or principal.has_role(Role.AUDITOR):
            return True
        return principal.has_role(Role.ANALYST) and request.tenant in principal.tenants

    def request_visibility(self, principal: Principal) -> Visibility:
        """The filter that lists exactly what :meth:`can_see` allows.

        :raises PolicyDeniedError: if the principal holds no role that reads requests.
        """
        if not principal.roles & REQUEST_READERS:
            raise PolicyDeniedError(
                reason="reading requests needs the analyst, officer or auditor role"
            )
        return self._visibility(principal, all_tenants=bool(principal.roles & AUDIT_READERS))

    def audit_visibility(self, principal: Principal) -> Visibility:
        """The filter for audit events: officers and auditors, up to their clearance.

        :raises PolicyDeniedError: for any other role.
        """
        if not principal.roles & AUDIT_READERS:
            raise PolicyDeniedError(
                reason="reading the audit log needs the auditor or officer role"
            )
        return self._visibility(principal, all_tenants=True)

    def _visibility(self, principal: Principal, *, all_tenants: bool) -> Visibility:
        clearance = principal.clearance
        return Visibility(
            levels=self.scheme.dominated_levels(clearance) if clearance else (),
            compartments=clearance.compartments if clearance else frozenset(),
            tenants=None if all_tenants else principal.tenants,
        )

    # -- requesting --------------------------------------------------------------------------

    def check_request(
        self,
        principal: Principal,
        tenant: Tenant,
        label: Label,
        image: Image,
        *,
        resources: Resources,
        lease_hours: int,
        committed: Resources,
    ) -> None:
        """Check that ``principal`` may ask ``tenant`` for this enclave.

        :raises PolicyDeniedError: for role, membership, clearance, ceiling or lease violations.
        :raises QuotaExceededError: if the tenant's committed usage plus this would exceed quota.
        """
        self.check_requester(principal)
        if tenant.name not in principal.tenants:
            raise PolicyDeniedError(reason=f"you are not a member of tenant {tenant.name!r}")
        if not principal.cleared_for(label):
            raise PolicyDeniedError(reason=f"your clearance does not dominate {label}")
        if not tenant.max_label.dominates(label):
            raise PolicyDeniedError(
                reason=f"tenant {tenant.name!r} may not hold {label} (maximum {tenant.max_label})"
            )
        if not image.max_label.dominates(label):
            raise PolicyDeniedError(
                reason=f"image {image.name!r} may not run at {label} (maximum {image.max_label})"
            )
        if lease_hours > self.max_lease_hours:
            raise PolicyDeniedError(
                reason=f"lease of {lease_hours} h exceeds the maximum of {self.max_lease_hours} h"
            )
        self.check_quota(tenant, committed, resources)

    @staticmethod
    def check_requester(principal: Principal) -> None:
        """:raises PolicyDeniedError: unless ``principal`` is an analyst (only they request)."""
        if not principal.has_role(Role.ANALYST):
            raise PolicyDeniedError(reason="only analysts may request enclaves")

    @staticmethod
    def check_quota(tenant: Tenant, committed: Resources, resources: Resources) -> None:
        """:raises QuotaExceededError: if ``committed + resources`` does not fit the quota."""
        over = (committed + resources).exceeded(tenant.quota)
        if over:
            raise QuotaExceededError(tenant=tenant.name, reason="; ".join(over))

    # -- deciding ----------------------------------------------------------------------------

    def approvals_needed(self, label: Label) -> int:
        """Two distinct officers at or above the threshold level, one below it."""
        return 2 if label.rank >= self.scheme.rank(self.two_person_level) else 1

    def needs_step_up(self, label: Label) -> bool:
        """Whether approving at ``label`` needs a fresh sign-in: anything above the lowest level
        is classified."""
        return label.rank > self.scheme.lowest.rank

    def step_up_required(self, principal: Principal, label: Label, now: datetime) -> bool:
        """Whether ``principal`` must sign in again before approving at ``label``: the label
        needs it and the token's ``auth_time`` is absent or older than the configured age.

        A token refreshed without a new password keeps its original ``auth_time`` (OIDC Core
        1.0 section 2), so refreshing never makes an old sign-in fresh.
        """
        if not self.needs_step_up(label):
            return False
        if principal.auth_time is None:
            return True
        return now.timestamp() - principal.auth_time > self.step_up_max_age_s

    def check_fresh_authentication(self, principal: Principal, label: Label, now: datetime) -> None:
        """:raises StepUpRequiredError: if :meth:`step_up_required` says so."""
        if self.step_up_required(principal, label, now):
            raise StepUpRequiredError(
                action=f"Approving a {label} request", max_age=self.step_up_max_age_s
            )

    def decide(
        self,
        principal: Principal,
        request: EnclaveRequest,
        decision: Decision,
        reason: str,
        now: datetime,
        *,
        tenant: Tenant,
        committed: Resources,
    ) -> Approval:
        """Record an officer's decision on ``request``, moving it on when it is complete.

        A rejection by any officer is final. An approval completes the request once
        :meth:`approvals_needed` distinct officers have approved; the quota is checked again
        at every approval, against the tenant's usage at that moment.

        :raises PolicyDeniedError: if the principal is not an officer, is the requester, or is
            not cleared for the request's label.
        :raises StepUpRequiredError: if approving a classified request with a sign-in older
            than :attr:`step_up_max_age_s` (or of unknown age).
        :raises ConflictError: if the request is no longer pending or the officer already decided.
        :raises QuotaExceededError: if approving would exceed the tenant's quota.
        """
        if not principal.has_role(Role.OFFICER):
            raise PolicyDeniedError(reason="only security officers may approve or reject")
        if principal.subject == request.requester:
            raise PolicyDeniedError(reason="officers may not decide on their own requests")
        if not principal.cleared_for(request.label):
            raise PolicyDeniedError(reason=f"your clearance does not dominate {request.label}")
        if request.state is not RequestState.PENDING:
            raise ConflictError(reason=f"request is {request.state.value}, not pending")
        if any(a.officer == principal.subject for a in request.approvals):
            raise ConflictError(reason="you have already decided on this request")
        if decision is Decision.APPROVE:
            self.check_fresh_authentication(principal, request.label, now)
            self.check_quota(tenant, committed, request.resources)
        approval = Approval(
            officer=principal.subject,
            officer_name=principal.username,
            decision=decision,
            reason=reason,
            decided_at=now,
        )
        request.record(approval)
        if decision is Decision.REJECT:
            request.reason = reason
            request.transition(RequestState.REJECTED, now)
        elif len(set(request.approvers)) >= self.approvals_needed(request.label):
            request.transition(RequestState.APPROVED, now)
        return approval

    # -- cancelling --------------------------------------------------------------------------

    @staticmethod
    def check_cancel(principal: Principal, request: EnclaveRequest) -> None:
        """Only the requester may cancel, and only while the request is pending.

        :raises PolicyDeniedError: for anyone but the requester.
        :raises ConflictError: if the request is no longer pending.
        """
        if principal.subject != request.requester:
            raise PolicyDeniedError(reason="only the requester may cancel a request")
        if request.state is not RequestState.PENDING:
            raise ConflictError(reason=f"request is {request.state.value}, not pending")
