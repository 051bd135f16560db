"""Use cases for two-person actions: propose, confirm, list.

Owns the coordination of :class:`~sovereign.domain.actions.DualAction` proposals with the audit
log. What a confirmed action does is a handler registered by the service that owns the change
(hosts: accreditation; enclaves: the kill switch); it runs in the same transaction as the
confirmation and its audit event, so an action is either confirmed and done or neither.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from audit import Outcome
from sovereign.domain.actions import ActionKind, ActionState, DualAction, check_officer
from sovereign.domain.identity import Role
from sovereign.domain.labels import Label
from sovereign.errors import (
    AuditUnavailableError,
    DependencyUnavailableError,
    NotFoundError,
    PolicyDeniedError,
    SovereignError,
)
from sovereign.services.ports import UnitOfWork, UnitOfWorkFactory
from sovereign.services.recording import CallContext, Clock, Recorder, utcnow

#: Runs a confirmed action inside the confirming unit of work; returns audit details.
Handler = Callable[[UnitOfWork, CallContext, DualAction], dict[str, Any]]
#: Runs after the confirming transaction committed (e.g. crypto-erase in Vault).
AfterCommit = Callable[[CallContext, DualAction, dict[str, Any]], None]


def action_target(action_id: uuid.UUID) -> str:
    """The audit target name of a proposal."""
    return f"action/{action_id}"


class ActionService:
    """Two-person actions from proposal to confirmation."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        *,
        ttl: timedelta = timedelta(hours=1),
        clock: Clock = utcnow,
    ) -> None:
        self._uow = uow_factory
        self._ttl = ttl
        self._clock = clock
        self._recorder = Recorder(uow_factory, clock)
        self._handlers: dict[ActionKind, tuple[Handler, AfterCommit | None]] = {}

    def register(
        self, kind: ActionKind, handler: Handler, after_commit: AfterCommit | None = None
    ) -> None:
        """Say what confirming an action of ``kind`` does."""
        self._handlers[kind] = (handler, after_commit)

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
        """Record a proposal that a second officer must confirm.

        ``check`` validates the proposal against current state inside the unit (e.g. the host
        exists) before it is stored.

        :raises PolicyDeniedError: if the caller is no officer cleared for ``label``.
        """
        target = f"{kind.value}:{params}"
        try:
            check_officer(ctx.principal, label)
            now = self._clock()
            action = DualAction(
                id=uuid.uuid4(),
                kind=kind,
                params=params,
                label=label,
                reason=reason,
                proposer=ctx.principal.subject,
                proposer_name=ctx.principal.username,
                created_at=now,
                expires_at=now + self._ttl,
            )
            target = action_target(action.id)
            with self._uow() as uow:
                if check is not None:
                    check(uow)
                uow.actions.add(action)
                self._recorder.append(
                    uow,
                    self._recorder.event(
                        ctx,
                        "action:propose",
                        target,
                        Outcome.ALLOW,
                        reason=reason,
                        label=label,
                        details={"kind": kind.value, "params": params, "status": action.status()},
                    ),
                )
                uow.commit()
        except AuditUnavailableError:
            raise
        except SovereignError as e:
            self._recorder.denial(ctx, f"{kind.value}", target, e, label=label)
            raise
        return action

    def confirm(self, ctx: CallContext, action_id: uuid.UUID) -> DualAction:
        """Confirm as the second officer and carry the action out, in one transaction.

        :raises NotFoundError: unknown, or not visible to the caller (no officer, or not
            cleared for its label): the same answer.
        :raises PolicyDeniedError: the proposer.
        :raises ConflictError: already confirmed or expired.
        """
        target = action_target(action_id)
        label: Label | None = None
        try:
            with self._uow() as uow:
                # Visibility first, on a plain read: a proposal the caller may not see answers
                # exactly as a missing one and is never locked on their behalf; the denial
                # carries its label, so only auditors cleared for it read of the attempt.
                seen = uow.actions.get(action_id)
                label = seen.label if seen is not None else None
                if seen is None or not seen.visible_to(ctx.principal):
                    raise NotFoundError(kind="action", ident=str(action_id))
                action = uow.actions.get(action_id, for_update=True)
                assert action is not None, "proposals are never deleted"
                try:
                    action.confirm(ctx.principal, self._clock())
                except SovereignError:
                    if action.state is ActionState.EXPIRED:
                        uow.actions.update(action)
                        uow.commit()
                    raise
                handler, after = self._handlers[action.kind]
                details = handler(uow, ctx, action)
                action.notes = details
                uow.actions.update(action)
                self._recorder.append(
                    uow,
                    self._recorder.event(
                        ctx,
                        "action:confirm",
                        target,
                        Outcome.ALLOW,
                        reason=action.reason,
                        label=action.label,
                        details={
                            "kind": action.kind.value,
                            "params": action.params,
                            "proposer": action.proposer_name,
                            "status": action.status(),
                            **details,
                        },
                    ),
                )
                uow.commit()
        except AuditUnavailableError:
            raise
        except DependencyUnavailableError as e:
            self._recorder.failure(ctx, "action:confirm", target, e, label=label)
            raise
        except SovereignError as e:
            self._recorder.denial(ctx, "action:confirm", target, e, label=label)
            raise
        if after is not None:
            after(ctx, action, details)
        return action

    def list(
        self, ctx: CallContext, state: ActionState | None = ActionState.PENDING
    ) -> list[DualAction]:
        """Proposals the caller (an officer) is cleared for, newest first."""
        if not ctx.principal.has_role(Role.OFFICER):
            error = PolicyDeniedError(reason="only security officers see two-person actions")
            self._recorder.denial(ctx, "action:list", "actions", error)
            raise error
        with self._uow(readonly=True) as uow:
            actions = uow.actions.list(state)
        return [a for a in actions if a.visible_to(ctx.principal)]
