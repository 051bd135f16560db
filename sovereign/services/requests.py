"""Use cases for enclave requests: create, read, list, approve, reject, cancel.

At final approval the enclave is pinned to one country of its residency (:func:`choose_country`)
before its keys are created there, so it always runs where its key lives.

Owns the coordination of policy, repositories and the audit log for requests. Every change and
its audit event commit together; every refusal is recorded with its reason; requests the caller
may not see answer "not found" so their existence does not leak.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sovereign.domain.fleet import FleetView, placement_request
from sovereign.domain.labels import LabelScheme
from sovereign.domain.placement import place
from sovereign.domain.policy import AccessPolicy
from sovereign.domain.requests import Decision, EnclaveRequest, RequestState
from sovereign.domain.residency import allowed_countries, narrow
from sovereign.domain.tenants import Resources, Tenant
from sovereign.errors import (
    ConcurrentUpdateError,
    DependencyUnavailableError,
    InvalidInputError,
    NotFoundError,
)
from sovereign.services.collaborators import EnclaveKeyring
from sovereign.services.ports import (
    Document,
    Page,
    ReadModel,
    RequestFilter,
    UnitOfWork,
    UnitOfWorkFactory,
)
from sovereign.services.recording import (
    CallContext,
    Clock,
    Recorder,
    clearance_detail,
    request_target,
    utcnow,
)

#: How often a decision is retried when another one changed the request at the same moment.
CONCURRENCY_RETRIES = 3

#: Orders a tenant's allowed countries, most preferred first: (unit of work, tenant name,
#: allowed countries, now) -> countries (e.g. fewest recent GPU hours first, for parity).
CountryOrder = Callable[[UnitOfWork, str, Sequence[str], datetime], list[str]]


def sorted_countries(
    _uow: UnitOfWork, _tenant: str, allowed: Sequence[str], _now: datetime
) -> list[str]:
    """The default :data:`CountryOrder`: alphabetical."""
    return sorted(allowed)


def choose_country(
    uow: UnitOfWork,
    request: EnclaveRequest,
    tenant: Tenant,
    order: CountryOrder,
    now: datetime,
) -> str:
    """The country to pin an approved request's enclave (and its key) to: the first allowed
    country, in ``order``, where a placement preview on the fleet as it is now finds a host;
    if none fits now, the first one (the request waits there for capacity)."""
    ordered = order(uow, tenant.name, allowed_countries(request, tenant), now)
    snapshot = FleetView(uow.hosts.list(), uow.gpus.list(), uow.enclaves.list()).snapshot()
    wanted = placement_request(request, tenant)
    for country in ordered:
        if place(replace(wanted, countries=frozenset({country})), snapshot).ok:
            return country
    return ordered[0]


@dataclass(frozen=True)
class RequestDraft:
    """What an analyst asks for, already shape-checked by the API."""

    tenant: str
    label: Mapping[str, Any]
    resources: Resources
    gpu_model: str | None
    image: str
    purpose: str
    lease_hours: int
    #: A narrowing of the tenant's residency (None: any country the tenant allows).
    residency: tuple[str, ...] | None = None


class RequestService:
    """Enclave requests from draft to decision."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        policy: AccessPolicy,
        *,
        gpu_models: Collection[str],
        keys: EnclaveKeyring | None = None,
        country_order: CountryOrder = sorted_countries,
        clock: Clock = utcnow,
        reads: ReadModel | None = None,
    ) -> None:
        self._uow = uow_factory
        self._policy = policy
        self._reads = reads
        # Approvals needed depend on the level alone (the two-person threshold).
        self._needed = {
            level: policy.approvals_needed(policy.scheme.label(level))
            for level in policy.scheme.levels
        }
        self._keys = keys
        self._country_order = country_order
        self._gpu_models = frozenset(gpu_models)
        self._clock = clock
        self._recorder = Recorder(uow_factory, clock)

    @property
    def scheme(self) -> LabelScheme:
        """The label scheme requests are checked against."""
        return self._policy.scheme

    # -- create ------------------------------------------------------------------------------

    def create(self, ctx: CallContext, draft: RequestDraft) -> EnclaveRequest:
        """File a new request in ``pending``.

        :raises InvalidInputError: unknown tenant, image, label or GPU model.
        :raises PolicyDeniedError: membership, clearance, ceilings, lease.
        :raises QuotaExceededError: if the tenant's quota cannot hold it.
        """
        with self._recorder.decision(ctx, "request:create", f"tenant/{draft.tenant}") as decision:
            label = decision.label = self.scheme.parse(draft.label)
            self._check_gpus(draft)
            # Who may request at all is decided before any tenant is read. Analysts know only
            # their own tenants: any other answers as an unknown one, by the same path.
            self._policy.check_requester(ctx.principal)
            # Checks read in a unit of their own, so the write lock is held only for the
            # insert and its audit event. The quota at request time counts committed usage,
            # which creating a request does not change; approvals re-check it under a lock.
            with self._uow(readonly=True) as uow:
                tenant = uow.tenants.get(draft.tenant)
                if tenant is None or tenant.name not in ctx.principal.tenants:
                    raise InvalidInputError(reason=f"unknown tenant {draft.tenant!r}")
                image = uow.images.get(draft.image)
                if image is None:
                    raise InvalidInputError(reason=f"unknown image {draft.image!r}")
                committed = uow.requests.committed_usage(tenant.name)
            narrowing = None if draft.residency is None else narrow(tenant, draft.residency)
            self._policy.check_request(
                ctx.principal,
                tenant,
                label,
                image,
                resources=draft.resources,
                lease_hours=draft.lease_hours,
                committed=committed,
            )
            now = self._clock()
            request = EnclaveRequest(
                id=uuid.uuid4(),
                tenant=tenant.name,
                requester=ctx.principal.subject,
                requester_name=ctx.principal.username,
                label=label,
                resources=draft.resources,
                gpu_model=draft.gpu_model,
                image=image.name,
                purpose=draft.purpose,
                lease_hours=draft.lease_hours,
                state=RequestState.PENDING,
                created_at=now,
                updated_at=now,
                residency=narrowing,
            )
            with self._uow() as uow:
                uow.requests.add(request)
                decision.allow(
                    uow,
                    target=request_target(request.id),
                    details={
                        "tenant": tenant.name,
                        "image": image.name,
                        "resources": vars(draft.resources),
                        "approvals_needed": self._policy.approvals_needed(label),
                        "residency": list(allowed_countries(request, tenant)),
                    },
                )
                uow.commit()
        return request

    def _check_gpus(self, draft: RequestDraft) -> None:
        if draft.resources.gpus > 0 and draft.gpu_model is None:
            raise InvalidInputError(reason="gpu_model is required when gpus > 0")
        if draft.gpu_model is not None and draft.gpu_model not in self._gpu_models:
            known = ", ".join(sorted(self._gpu_models))
            raise InvalidInputError(reason=f"unknown gpu_model {draft.gpu_model!r}; known: {known}")

    # -- read --------------------------------------------------------------------------------

    def get(self, ctx: CallContext, request_id: uuid.UUID) -> EnclaveRequest:
        """The request, if the caller may see it. :raises NotFoundError: otherwise."""
        with self._uow(readonly=True) as uow:
            request = uow.requests.get(request_id)
        if request is None or not self._policy.can_see(ctx.principal, request):
            # One answer for a missing request and one the caller may not see; the denial
            # carries the label of an existing one, so only auditors cleared for it read of it.
            error = NotFoundError(kind="request", ident=str(request_id))
            label = request.label if request is not None else None
            self._recorder.denial(
                ctx, "request:read", request_target(request_id), error, label=label
            )
            raise error
        return request

    def residency(self, requests: Sequence[EnclaveRequest]) -> list[tuple[str, ...]]:
        """The effective residency of each request (its narrowing, else its tenant's), for
        requests the caller was already allowed to read."""
        with self._uow(readonly=True) as uow:
            tenants = {t.name: t for t in uow.tenants.list()}
        return [allowed_countries(r, tenants[r.tenant]) for r in requests]

    def list(self, ctx: CallContext, query: RequestFilter) -> Page[EnclaveRequest]:
        """Requests the caller may see, newest first. :raises PolicyDeniedError: no such role."""
        with self._recorder.decision(ctx, "request:list", "requests"):
            visibility = self._policy.request_visibility(ctx.principal)
        with self._uow(readonly=True) as uow:
            return uow.requests.list(visibility, query)

    def page(self, ctx: CallContext, query: RequestFilter) -> Page[Document]:
        """What :meth:`list` lists, read from the read model as the API's ``RequestOut``
        documents: the same refusal (recorded), the same visibility, rows and cursor.

        :raises PolicyDeniedError: no such role.
        :raises DependencyUnavailableError: no read model (the in-memory backend), or no database.
        """
        with self._recorder.decision(ctx, "request:list", "requests"):
            visibility = self._policy.request_visibility(ctx.principal)
        if self._reads is None:
            raise DependencyUnavailableError(dependency="read model")
        page = self._reads.requests(visibility, query)
        needed = self._needed
        for doc in page.items:
            doc["approvals_needed"] = needed[doc["label"]["level"]]
        return page

    # -- decide ------------------------------------------------------------------------------

    def approve(self, ctx: CallContext, request_id: uuid.UUID, reason: str) -> EnclaveRequest:
        """Add the caller's approval; the request is approved once enough officers agree.

        :raises StepUpRequiredError: a classified request and a sign-in older than the policy's
            step-up age (recorded as a denial like any refusal).
        """
        return self._decide(ctx, request_id, Decision.APPROVE, reason)

    def step_up_required(self, ctx: CallContext, request: EnclaveRequest) -> bool:
        """Whether :meth:`approve` would refuse the caller for a sign-in that is not recent
        enough (the console asks first so that it can send the browser to sign in again)."""
        return self._policy.step_up_required(ctx.principal, request.label, self._clock())

    def reject(self, ctx: CallContext, request_id: uuid.UUID, reason: str) -> EnclaveRequest:
        """Reject the request; final. ``reason`` is required."""
        if not reason.strip():
            raise InvalidInputError(reason="a reason is required to reject a request")
        return self._decide(ctx, request_id, Decision.REJECT, reason)

    def _decide(
        self, ctx: CallContext, request_id: uuid.UUID, decision: Decision, reason: str
    ) -> EnclaveRequest:
        def step(uow: UnitOfWork, request: EnclaveRequest) -> None:
            # Lock the tenant: approvals of two of its requests must not both fit the same
            # remaining quota.
            tenant = uow.tenants.get(request.tenant, for_update=decision is Decision.APPROVE)
            assert tenant is not None, "foreign key guarantees the tenant"
            self._policy.decide(
                ctx.principal,
                request,
                decision,
                reason,
                self._clock(),
                tenant=tenant,
                committed=uow.requests.committed_usage(tenant.name),
            )

        return self._change(ctx, request_id, f"request:{decision.value}", step, reason)

    def cancel(self, ctx: CallContext, request_id: uuid.UUID, reason: str = "") -> EnclaveRequest:
        """Withdraw a pending request; only its requester may."""

        def step(_uow: UnitOfWork, request: EnclaveRequest) -> None:
            self._policy.check_cancel(ctx.principal, request)
            request.reason = reason
            request.transition(RequestState.CANCELLED, self._clock())

        return self._change(ctx, request_id, "request:cancel", step, reason)

    def _on_approval(
        self, uow: UnitOfWork, ctx: CallContext, request: EnclaveRequest, before: RequestState
    ) -> AbstractContextManager[object]:
        """When this decision completed the approval: pin the enclave's country, and create
        its keys in that country's Vault."""
        if before is not RequestState.PENDING or request.state is not RequestState.APPROVED:
            return nullcontext()
        tenant = uow.tenants.get(request.tenant)
        assert tenant is not None, "foreign key guarantees the tenant"
        request.country = choose_country(uow, request, tenant, self._country_order, self._clock())
        if self._keys is None:
            return nullcontext()
        return self._keys.provisioned(uow, ctx, request, tenant)

    def _change(
        self,
        ctx: CallContext,
        request_id: uuid.UUID,
        action: str,
        step: Callable[[UnitOfWork, EnclaveRequest], None],
        reason: str,
    ) -> EnclaveRequest:
        """Load, check visibility, apply ``step``, store and audit; retry on a lost race."""
        for attempt in range(CONCURRENCY_RETRIES):
            try:
                return self._change_once(ctx, request_id, action, step, reason)
            except ConcurrentUpdateError:
                if attempt == CONCURRENCY_RETRIES - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _change_once(
        self,
        ctx: CallContext,
        request_id: uuid.UUID,
        action: str,
        step: Callable[[UnitOfWork, EnclaveRequest], None],
        reason: str,
    ) -> EnclaveRequest:
        # A lost race is retried by the caller, not recorded. Anything else refused is recorded
        # with the request's label (when it was loaded), so only readers cleared for the
        # request learn of the attempt; a dependency failure (Vault) changed nothing (the unit
        # rolled back, keys were discarded) and is on the record as a failure.
        with (
            self._recorder.decision(
                ctx, action, request_target(request_id), unrecorded=(ConcurrentUpdateError,)
            ) as decision,
            self._uow() as uow,
        ):
            # Visibility first, on a plain read: a request the caller may not see answers
            # exactly as a missing one (same reads, same message, a denial labelled as the
            # request) and is never locked on their behalf.
            seen = uow.requests.get(request_id)
            decision.label = seen.label if seen is not None else None
            if seen is None or not self._policy.can_see(ctx.principal, seen):
                raise NotFoundError(kind="request", ident=str(request_id))
            request = uow.requests.get(request_id, for_update=True)
            assert request is not None, "requests are never deleted"
            before = request.state
            step(uow, request)
            with self._on_approval(uow, ctx, request, before):
                uow.requests.update(request)
                details: dict[str, Any] = {
                    "from": before.value,
                    "to": request.state.value,
                    "approvals": len(request.approvers),
                    "approvals_needed": self._policy.approvals_needed(request.label),
                    # What the attestation's two-person claim holds the decider to.
                    "clearance": clearance_detail(ctx, request.label),
                }
                if before is RequestState.PENDING and request.state is RequestState.APPROVED:
                    details["country"] = request.country
                decision.allow(uow, reason=reason, label=request.label, details=details)
                uow.commit()
            return request
