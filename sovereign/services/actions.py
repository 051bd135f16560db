"""Use cases for two-person actions: propose, confirm, list.

Owns the coordination of :class:`~sovereign.domain.actions.DualAction` proposals with the audit
log. What a confirmed action does is an executor per kind, given by the assembly (hosts:
accreditation; enclaves: the kill switch); it runs in the same transaction as the confirmation
and its audit event, so an action is either confirmed and done or neither.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from sovereign.domain.actions import ActionKind, ActionState, DualAction, check_officer
from sovereign.domain.identity import Role
from sovereign.domain.labels import Label
from sovereign.errors import NotFoundError, PolicyDeniedError, SovereignError
from sovereign.services.collaborators import ActionExecutor
from sovereign.services.ports import UnitOfWork, UnitOfWorkFactory
from sovereign.services.recording import (
    CallContext,
    Clock,
    Recorder,
    action_target,
    clearance_detail,
    utcnow,
)


class ActionService:
    """Two-person actions from proposal to confirmation."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        executors: Mapping[ActionKind, ActionExecutor],
        *,
        ttl: timedelta = timedelta(hours=1),
        clock: Clock = utcnow,
    ) -> None:
        self._uow = uow_factory
        self._executors = dict(executors)
        self._ttl = ttl
        self._clock = clock
        self._recorder = Recorder(uow_factory, clock)

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
        with self._recorder.decision(
            ctx, kind.value, f"{kind.value}:{params}", label=label
        ) as decision:
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
            decision.target = action_target(action.id)
            with self._uow() as uow:
                if check is not None:
                    check(uow)
                uow.actions.add(action)
                decision.allow(
                    uow,
                    action="action:propose",
                    reason=reason,
                    details={
                        "kind": kind.value,
                        "params": params,
                        "status": action.status(),
                        "clearance": clearance_detail(ctx, action.label),
                    },
                )
                uow.commit()
        return action

    def confirm(self, ctx: CallContext, action_id: uuid.UUID) -> DualAction:
        """Confirm as the second officer and carry the action out, in one transaction.

        :raises NotFoundError: unknown, or not visible to the caller (no officer, or not
            cleared for its label): the same answer.
        :raises PolicyDeniedError: the proposer.
        :raises ConflictError: already confirmed or expired.
        """
        with (
            self._recorder.decision(ctx, "action:confirm", action_target(action_id)) as decision,
            self._uow() as uow,
        ):
            # Visibility first, on a plain read: a proposal the caller may not see answers
            # exactly as a missing one and is never locked on their behalf; the denial
            # carries its label, so only auditors cleared for it read of the attempt.
            seen = uow.actions.get(action_id)
            decision.label = seen.label if seen is not None else None
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
            executor = self._executors[action.kind]
            details = executor.execute(uow, ctx, action)
            action.notes = details
            uow.actions.update(action)
            decision.allow(
                uow,
                reason=action.reason,
                label=action.label,
                details={
                    "kind": action.kind.value,
                    "params": action.params,
                    "proposer": action.proposer_name,
                    "status": action.status(),
                    "clearance": clearance_detail(ctx, action.label),
                    **details,
                },
            )
            uow.commit()
        executor.after_commit(ctx, action, details)
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
