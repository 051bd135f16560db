"""Use cases for enclaves as users see them: list, read, console, terminate, kill switch, and the
placement preview officers see before approving.

Owns who may see and end an enclave (the request's visibility rules; the requester or an officer
cleared for it may terminate; only officers pull the kill switch, two of them when it touches a
label at or above the two-person level) and the immediate effects of ending: the request moves to
``terminating`` (an approved request not yet placed is cancelled and its keys erased) and the
reconciler does the rest (:class:`EnclaveEnding`, shared by :class:`EnclaveService` and the
action service, which confirms a two-person kill switch through it). The kill switch also
crypto-erases the keys at once, so data is unreadable even before the domains are gone; it
reaches only enclaves its officers are cleared for, and answers the same whether or not others
exist above them.
"""

from __future__ import annotations

import builtins
import logging
import uuid
from dataclasses import dataclass, replace
from typing import Any

from sovereign.domain.actions import ActionKind, DualAction, check_officer
from sovereign.domain.fleet import Enclave, FleetView, Gpu, placement_request
from sovereign.domain.identity import Role
from sovereign.domain.labels import Label
from sovereign.domain.placement import Placement, as_seen_by, place
from sovereign.domain.policy import AccessPolicy, Visibility
from sovereign.domain.requests import EnclaveRequest, RequestState
from sovereign.domain.residency import allowed_countries
from sovereign.errors import (
    DependencyUnavailableError,
    InvalidInputError,
    NotFoundError,
    PolicyDeniedError,
    SovereignError,
)
from sovereign.services.collaborators import EnclaveKeyring, Proposals
from sovereign.services.ports import (
    Document,
    Hypervisor,
    Page,
    ReadModel,
    RequestFilter,
    UnitOfWork,
    UnitOfWorkFactory,
    plan_for,
)
from sovereign.services.recording import (
    CallContext,
    Clock,
    Recorder,
    enclave_target,
    request_target,
    utcnow,
)

log = logging.getLogger(__name__)
S = RequestState
#: States a termination (and the kill switch) applies to: an enclave exists or is about to
#: (an approved request not yet placed is cancelled instead).
TERMINABLE = frozenset({S.APPROVED, S.PROVISIONING, S.RUNNING, S.FAILED, S.EXPIRED})
#: Bytes of serial console shown by default.
CONSOLE_TAIL_BYTES = 8192


@dataclass(frozen=True)
class EnclaveView:
    """A request together with where its enclave runs (None before placement)."""

    request: EnclaveRequest
    enclave: Enclave | None
    host_site: str | None
    gpus: tuple[Gpu, ...]
    #: The country the enclave was placed in (None before placement).
    host_country: str | None = None
    #: The request's effective residency (its narrowing, else its tenant's).
    residency: tuple[str, ...] = ()


@dataclass(frozen=True)
class KillResult:
    """What the kill switch did: ended enclaves, or a proposal awaiting a second officer."""

    ended: tuple[uuid.UUID, ...]
    proposal: DualAction | None
    #: Whether the scope asked for may hold enclaves above the caller's clearance, which the
    #: kill switch does not touch; known from the tenant's ceiling, never from its enclaves.
    partial: bool = False


class EnclaveService:
    """Enclaves for analysts, officers and auditors."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        policy: AccessPolicy,
        ending: EnclaveEnding,
        actions: Proposals,
        hypervisor: Hypervisor,
        *,
        clock: Clock = utcnow,
        reads: ReadModel | None = None,
    ) -> None:
        self._uow = uow_factory
        self._policy = policy
        self._ending = ending
        self._actions = actions
        self._hypervisor = hypervisor
        self._recorder = Recorder(uow_factory, clock)
        self._reads = reads

    # -- reading -----------------------------------------------------------------------------

    def _view(self, uow: UnitOfWork, request: EnclaveRequest) -> EnclaveView:
        enclave = uow.enclaves.get(request.id)
        site = country = None
        gpus: tuple[Gpu, ...] = ()
        if enclave is not None:
            host = uow.hosts.get(enclave.host)
            site = host.site if host else None
            # Where it was placed (the host's country then), else the host's for old enclaves.
            country = enclave.country or (host.country if host else None)
            gpus = tuple(g for g in uow.gpus.list(enclave.host) if g.address in enclave.gpus)
        tenant = uow.tenants.get(request.tenant)
        residency = allowed_countries(request, tenant) if tenant is not None else ()
        return EnclaveView(request, enclave, site, gpus, country, residency)

    def list(self, ctx: CallContext, query: RequestFilter) -> Page[EnclaveView]:
        """Requests past approval the caller may see, with their enclaves, newest first.

        Pages follow the request pages, so a page may hold fewer items than the limit (pending,
        rejected and cancelled requests are left out); ``next_cursor`` says whether more follow.
        """
        with self._recorder.decision(ctx, "enclave:list", "enclaves"):
            visibility = self._policy.request_visibility(ctx.principal)
        with self._uow(readonly=True) as uow:
            page = uow.requests.list(visibility, query)
            views = [
                self._view(uow, r)
                for r in page.items
                if r.state not in (S.PENDING, S.REJECTED, S.CANCELLED)
            ]
        return Page(views, page.next_cursor)

    def page(self, ctx: CallContext, query: RequestFilter) -> Page[Document]:
        """What :meth:`list` lists, read from the read model as the API's ``EnclaveOut``
        documents: the same refusal (recorded), visibility, items and cursor.

        :raises PolicyDeniedError: no role that reads requests.
        :raises DependencyUnavailableError: no read model (the in-memory backend), or no database.
        """
        with self._recorder.decision(ctx, "enclave:list", "enclaves"):
            visibility = self._policy.request_visibility(ctx.principal)
        if self._reads is None:
            raise DependencyUnavailableError(dependency="read model")
        page = self._reads.enclaves(visibility, query)
        scheme = self._policy.scheme
        for doc in page.items:
            request = doc["request"]
            request["approvals_needed"] = self._policy.approvals_needed(
                scheme.label(request["label"]["level"])
            )
        return page

    def get(self, ctx: CallContext, enclave_id: uuid.UUID) -> EnclaveView:
        """One enclave, if the caller may see its request. :raises NotFoundError:."""
        with self._uow(readonly=True) as uow:
            request = uow.requests.get(enclave_id)
            if request is not None and self._policy.can_see(ctx.principal, request):
                return self._view(uow, request)
        # One answer for a missing enclave and one the caller may not see; the denial carries
        # the label of an existing one, so only auditors cleared for it read of the attempt.
        error = NotFoundError(kind="enclave", ident=str(enclave_id))
        self._recorder.denial(
            ctx, "enclave:read", enclave_target(enclave_id), error, label=_label_of(request)
        )
        raise error

    def console(
        self, ctx: CallContext, enclave_id: uuid.UUID, max_bytes: int = CONSOLE_TAIL_BYTES
    ) -> str:
        """The tail of the enclave's serial console: its requester and cleared officers."""
        view = self.get(ctx, enclave_id)
        request = view.request
        mine = request.requester == ctx.principal.subject
        if not (mine or ctx.principal.has_role(Role.OFFICER)):
            error = PolicyDeniedError(reason="only the requester and officers read the console")
            self._recorder.denial(
                ctx, "enclave:console", enclave_target(enclave_id), error, label=request.label
            )
            raise error
        if view.enclave is None or view.enclave.ended_at is not None:
            return ""
        with self._uow(readonly=True) as uow:
            plan = plan_for(uow, view.enclave)
        return self._hypervisor.console(plan, max_bytes)

    def preview(self, ctx: CallContext, request_id: uuid.UUID) -> Placement:
        """Where the request would be placed now, and why every other host would not.

        :raises NotFoundError: unknown, or not visible to the caller (the same answer).
        :raises PolicyDeniedError: visible, but the caller is not an officer.
        """
        with self._uow(readonly=True) as uow:
            request = uow.requests.get(request_id)
            with self._recorder.decision(
                ctx, "request:preview", request_target(request_id), label=_label_of(request)
            ):
                # Visibility first: whoever may not see the request gets the answer a
                # missing one gets, whatever their role.
                if request is None or not self._policy.can_see(ctx.principal, request):
                    raise NotFoundError(kind="request", ident=str(request_id))
                if not ctx.principal.has_role(Role.OFFICER):
                    raise PolicyDeniedError(reason="only officers see placement previews")
            tenant = uow.tenants.get(request.tenant)
            assert tenant is not None
            fleet = FleetView(uow.hosts.list(), uow.gpus.list(), uow.enclaves.list())
        snapshot = fleet.snapshot()
        # Other enclaves' labels are named only to an officer cleared for them.
        scheme = self._policy.scheme
        return as_seen_by(
            place(placement_request(request, tenant), snapshot),
            snapshot,
            lambda text: ctx.principal.cleared_for(scheme.parse(text)),
        )

    # -- ending ------------------------------------------------------------------------------

    def terminate(self, ctx: CallContext, enclave_id: uuid.UUID, reason: str) -> EnclaveRequest:
        """End an enclave: its requester, or an officer cleared for it.

        :raises NotFoundError: not visible. :raises PolicyDeniedError: someone else's.
        :raises InvalidTransitionError: already ending or ended.
        """
        with (
            self._recorder.decision(
                ctx, "enclave:terminate", enclave_target(enclave_id)
            ) as decision,
            self._uow() as uow,
        ):
            # Visibility is checked on a plain read before the row is locked, so that a request
            # the caller may not see is never locked (or waited for) on their behalf.
            seen = uow.requests.get(enclave_id)
            decision.label = _label_of(seen)
            if seen is None or not self._policy.can_see(ctx.principal, seen):
                raise NotFoundError(kind="enclave", ident=str(enclave_id))
            request = uow.requests.get(enclave_id, for_update=True)
            assert request is not None, "requests are never deleted"
            mine = request.requester == ctx.principal.subject
            if not (mine or ctx.principal.has_role(Role.OFFICER)):
                raise PolicyDeniedError(
                    reason="only the requester or a security officer may terminate it"
                )
            before = request.state
            erase = self._ending.end(uow, request, reason)
            decision.allow(
                uow,
                reason=reason,
                label=request.label,
                details={"from": before.value, "to": request.state.value},
            )
            uow.commit()
        if erase:
            self._ending.erase(ctx, [enclave_id])
        return request

    # -- kill switch -------------------------------------------------------------------------

    def kill_switch(
        self, ctx: CallContext, *, label: Label | None, tenant: str | None, reason: str
    ) -> KillResult:
        """End every enclave of ``label`` and/or ``tenant`` that the caller is cleared for, and
        erase their keys.

        The kill switch never reaches above the caller's clearance, and what it answers depends
        only on what the caller may see: a RESTRICTED officer who names a tenant ends its
        enclaves up to RESTRICTED and learns nothing about any above (``partial`` says that some
        may exist, from the tenant's ceiling, never from the enclaves). Below the two-person
        level it acts at once; at or above it, the first officer's call is a proposal that a
        second officer confirms (``POST /actions/{id}/confirm``).

        :raises InvalidInputError: neither label nor tenant, or no reason.
        :raises PolicyDeniedError: not an officer, or not cleared for the label named.
        """
        if label is None and tenant is None:
            raise InvalidInputError(reason="name a label, a tenant, or both")
        if not reason.strip():
            raise InvalidInputError(reason="a reason is required")
        scheme = self._policy.scheme
        with self._recorder.decision(ctx, "enclave:kill", "kill-switch", label=label):
            # Decided from the caller and the call alone, before any enclave is read.
            check_officer(ctx.principal, label or scheme.lowest)
        clearance = ctx.principal.clearance
        assert clearance is not None, "check_officer passed, so the caller has a clearance"
        with self._uow(readonly=True) as uow:
            scope = self._ending.scope(uow, label, tenant, clearance)
            found = uow.tenants.get(tenant) if tenant is not None else None
        partial = label is None and found is not None and not clearance.dominates(found.max_label)
        # The label the decision rests on: the join of what the caller can see and named. Both
        # officers must be cleared for it, and it bounds what the kill switch ends.
        bound = scheme.join([r.label for r in scope] + ([label] if label else []))
        params: dict[str, Any] = {
            "label": label.to_dict() if label else None,
            "tenant": tenant,
        }
        if self._policy.approvals_needed(bound) > 1:
            proposal = self._actions.propose(ctx, ActionKind.KILL_SWITCH, params, bound, reason)
            return KillResult(ended=(), proposal=proposal, partial=partial)
        with (
            self._recorder.decision(ctx, "enclave:kill", "kill-switch", label=bound),
            self._uow() as uow,
        ):
            ended = self._ending.kill(uow, ctx, params, reason, bound)
            uow.commit()
        self._ending.erase(ctx, list(ended))
        return KillResult(ended=tuple(ended), proposal=None, partial=partial)


class EnclaveEnding:
    """Ending enclaves: the state change of a termination or a kill switch, each kill audited
    in the caller's transaction, and the crypto-erase that follows the commit.

    Also the action service's executor for a confirmed two-person kill switch
    (:attr:`~sovereign.domain.actions.ActionKind.KILL_SWITCH`), given to it by the assembly.
    """

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        policy: AccessPolicy,
        keys: EnclaveKeyring,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self._policy = policy
        self._keys = keys
        self._clock = clock
        self._recorder = Recorder(uow_factory, clock)

    def end(self, uow: UnitOfWork, request: EnclaveRequest, reason: str) -> bool:
        """Move ``request`` towards its end; returns True if its keys must be erased now
        (approved but never placed: no reconciler teardown will run for it).

        :raises InvalidTransitionError: already ending or ended.
        """
        request.reason = reason
        if request.state is S.APPROVED and uow.enclaves.get(request.id) is None:
            request.transition(S.CANCELLED, self._clock())
            uow.requests.update(request)
            return True
        # Raises InvalidTransitionError for requests already ending or ended.
        request.transition(S.TERMINATING, self._clock())
        uow.requests.update(request)
        return False

    def erase(self, ctx: CallContext, ids: builtins.list[uuid.UUID]) -> None:
        """Crypto-erase the keys of the enclaves ``ids`` (after the commit that ended them); a
        failure is logged and left to the reconciler's teardown."""
        # The caller's decision to end the enclave is what authorises the erasure (an analyst
        # may end their own enclave but holds no key-management role); the events still name
        # the caller's subject.
        eraser = replace(ctx, actor="system:crypto-erase")
        for enclave_id in ids:
            try:
                self._keys.crypto_erase(eraser, enclave_id)
            except NotFoundError:
                continue
            except SovereignError:
                # The reconciler's teardown erases the keys again (idempotently).
                log.exception("crypto-erase of enclave %s failed; teardown will retry", enclave_id)

    def scope(
        self, uow: UnitOfWork, label: Label | None, tenant: str | None, bound: Label
    ) -> builtins.list[EnclaveRequest]:
        """Terminable requests matching ``label`` and ``tenant`` at labels ``bound`` dominates
        (filtered by the query itself: the others are never read)."""
        visibility = Visibility.up_to(self._policy.scheme, bound)
        found: builtins.list[EnclaveRequest] = []
        cursor: str | None = None
        while True:
            page = uow.requests.list(
                visibility, RequestFilter(tenant=tenant, limit=200, cursor=cursor)
            )
            found += [
                r
                for r in page.items
                if r.state in TERMINABLE and (label is None or r.label == label)
            ]
            if page.next_cursor is None:
                return found
            cursor = page.next_cursor

    def kill(
        self,
        uow: UnitOfWork,
        ctx: CallContext,
        params: dict[str, Any],
        reason: str,
        bound: Label,
    ) -> builtins.list[uuid.UUID]:
        """End the enclaves the kill switch ``params`` name, up to ``bound``, inside ``uow``
        (one ``enclave:kill`` event each); returns their ids."""
        label = self._policy.scheme.parse(params["label"]) if params.get("label") else None
        ended = []
        for request in self.scope(uow, label, params.get("tenant"), bound):
            current = uow.requests.get(request.id, for_update=True)
            assert current is not None
            before = current.state
            self.end(uow, current, f"kill switch: {reason}")
            ended.append(current.id)
            self._recorder.record(
                uow,
                ctx,
                "enclave:kill",
                enclave_target(current.id),
                reason=reason,
                label=current.label,
                details={"from": before.value, "to": current.state.value, **params},
            )
        return ended

    # -- the two-person kill switch, confirmed (ActionExecutor) ------------------------------

    def execute(self, uow: UnitOfWork, ctx: CallContext, action: DualAction) -> dict[str, Any]:
        """End what a confirmed kill switch proposal names, inside the confirming unit."""
        # Bounded by the proposal's label, which both officers are cleared for: an enclave the
        # proposer could not see is not ended on their proposal.
        ended = self.kill(uow, ctx, action.params, action.reason, action.label)
        return {"ended": [str(e) for e in ended]}

    def after_commit(self, ctx: CallContext, action: DualAction, details: dict[str, Any]) -> None:
        """Crypto-erase the keys of the enclaves the confirmed kill switch ended."""
        del action
        self.erase(ctx, [uuid.UUID(e) for e in details["ended"]])


def _label_of(request: EnclaveRequest | None) -> Label | None:
    """The label of ``request`` if it exists, for the audit event of a refusal about it."""
    return request.label if request is not None else None
