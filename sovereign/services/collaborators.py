"""What one use case needs of another, as ``typing.Protocol``.

Owns the interfaces through which services work together: a service never imports another
service's module; the assembly (:func:`sovereign.bootstrap.build_services`) hands it the real
collaborator, typed here by what it is used for. Two-person actions get their executors the same
way (:class:`ActionExecutor`), rather than services registering callbacks. Must not hold any
implementation.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

from audit import Outcome
from sovereign.domain.actions import ActionKind, DualAction
from sovereign.domain.fleet import Host
from sovereign.domain.keys import EnclaveKeys, EnclaveSecrets
from sovereign.domain.labels import Label
from sovereign.domain.placement import HostStatus
from sovereign.domain.requests import EnclaveRequest
from sovereign.domain.tenants import Tenant
from sovereign.services.ports import UnitOfWork
from sovereign.services.recording import CallContext


class EnclaveKeyring(Protocol):
    """An enclave's keys: created at approval, unwrapped for the hypervisor, crypto-erased at
    its end (:class:`~sovereign.services.keys.KeyService`)."""

    def provisioned(
        self, uow: UnitOfWork, ctx: CallContext, request: EnclaveRequest, tenant: Tenant
    ) -> AbstractContextManager[EnclaveKeys]:
        """Create the keys inside ``uow``; destroyed again if the block fails."""
        ...

    def secrets(self, request_id: uuid.UUID) -> EnclaveSecrets:
        """The unwrapped secrets for the hypervisor. :raises NotFoundError:."""
        ...

    def crypto_erase(self, ctx: CallContext, request_id: uuid.UUID) -> EnclaveKeys:
        """Destroy the enclave's key (audited). :raises NotFoundError:."""
        ...


class Proposals(Protocol):
    """Where two-person actions are proposed
    (:class:`~sovereign.services.actions.ActionService`)."""

    def propose(
        self,
        ctx: CallContext,
        kind: ActionKind,
        params: dict[str, Any],
        label: Label,
        reason: str,
        *,
        check: Callable[[UnitOfWork], None] | None = None,
    ) -> DualAction:
        """Record a proposal that a second officer must confirm (audited)."""
        ...


class ActionExecutor(Protocol):
    """What confirming a two-person action of one kind does; given to the action service by
    the assembly, one per :class:`~sovereign.domain.actions.ActionKind`."""

    def execute(self, uow: UnitOfWork, ctx: CallContext, action: DualAction) -> dict[str, Any]:
        """Carry ``action`` out inside the confirming unit of work; returns audit details."""
        ...

    def after_commit(self, ctx: CallContext, action: DualAction, details: dict[str, Any]) -> None:
        """Run once the confirmation committed (e.g. crypto-erase in Vault)."""
        ...


class HostGuard(Protocol):
    """What the reconciler asks of the host service
    (:class:`~sovereign.services.hosts.HostService`)."""

    def check_identity(self, ctx: CallContext, host: Host) -> bool:
        """Whether the host still answers as itself (quarantined, audited, if not)."""
        ...

    def set_state(self, ctx: CallContext, name: str, state: HostStatus, reason: str) -> Host:
        """Drain, quarantine or activate a host (audited)."""
        ...


class FailureCounter(Protocol):
    """Where refused sign-ins are counted
    (:class:`~sovereign.services.authfailures.AuthFailureAudit`)."""

    def failed(
        self,
        source: str,
        action: str,
        target: str,
        code: str,
        reason: str,
        *,
        outcome: Outcome = ...,
        request_id: str = "",
    ) -> None:
        """Count one failure from ``source``; never raises for the log."""
        ...
