"""Who is calling, and how decisions reach the audit log.

Owns :class:`CallContext` (principal, request id, source address) and :class:`Recorder`, which
writes allowed decisions inside the caller's unit of work (fail-closed: no event, no change)
and denied ones in a unit of their own after the change was rolled back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from audit import AuditEvent, Outcome
from sovereign.domain.identity import Principal
from sovereign.domain.labels import Label
from sovereign.errors import AuditUnavailableError, InvalidInputError, SovereignError
from sovereign.services.ports import UnitOfWork, UnitOfWorkFactory
from sovereign.text import control_character, describe

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class CallContext:
    """The authenticated caller and where the call came from (for the audit trail)."""

    principal: Principal
    request_id: str = ""
    source: str = ""
    #: The actor name written to the log: the token subject, or e.g. ``system:bootstrap``.
    actor: str = field(default="")

    @property
    def actor_name(self) -> str:
        """``actor`` if set, else ``user:<username>``."""
        return self.actor or f"user:{self.principal.username}"


class Recorder:
    """Builds audit events for a caller and appends them fail-closed."""

    def __init__(self, uow_factory: UnitOfWorkFactory, clock: Clock = utcnow) -> None:
        self._uow = uow_factory
        self._clock = clock

    def event(
        self,
        ctx: CallContext,
        action: str,
        target: str,
        outcome: Outcome,
        *,
        reason: str = "",
        label: Label | None = None,
        details: dict[str, Any] | None = None,
    ) -> AuditEvent:
        """An event for ``ctx`` at the current time.

        :raises InvalidInputError: if an identifier (actor, target, source, request id) holds a
            control character or line separator: the API refuses those where they enter, and
            an event never records one raw, whatever path it came by.
        """
        for name, value in (
            ("actor", ctx.actor_name),
            ("target", target),
            ("source", ctx.source),
            ("request id", ctx.request_id),
        ):
            char = control_character(value)
            if char is not None:
                raise InvalidInputError(
                    reason=f"the {name} holds the control character {describe(char)}"
                )
        return AuditEvent(
            actor=ctx.actor_name,
            action=action,
            target=target,
            outcome=outcome,
            reason=reason,
            label=label.to_dict() if label else None,
            request_id=ctx.request_id,
            source=ctx.source,
            details={"subject": ctx.principal.subject, **(details or {})},
            time=self._clock(),
        )

    @staticmethod
    def append(uow: UnitOfWork, *events: AuditEvent) -> None:
        """Append inside ``uow``'s transaction.

        :raises AuditUnavailableError: on any failure, so the change it records fails too.
        """
        try:
            uow.audit.append(events)
        except Exception as e:
            raise AuditUnavailableError from e

    def failure(
        self,
        ctx: CallContext,
        action: str,
        target: str,
        error: SovereignError,
        *,
        label: Label | None = None,
    ) -> None:
        """Record that ``action`` failed on a dependency (outcome ``error``), in its own unit.

        :raises AuditUnavailableError: if even that cannot be written.
        """
        self._record_alone(ctx, action, target, error=error, outcome=Outcome.ERROR, label=label)

    def denial(
        self,
        ctx: CallContext,
        action: str,
        target: str,
        error: SovereignError,
        *,
        label: Label | None = None,
    ) -> None:
        """Record that ``action`` was refused with ``error``, in a transaction of its own.

        :raises AuditUnavailableError: if even that cannot be written.
        """
        self._record_alone(ctx, action, target, error=error, outcome=Outcome.DENY, label=label)

    def _record_alone(
        self,
        ctx: CallContext,
        action: str,
        target: str,
        *,
        error: SovereignError,
        outcome: Outcome,
        label: Label | None,
    ) -> None:
        event = self.event(
            ctx,
            action,
            target,
            outcome,
            reason=error.message,
            label=label,
            details={"error": error.code},
        )
        try:
            with self._uow() as uow:
                self.append(uow, event)
                uow.commit()
        except AuditUnavailableError:
            raise
        except Exception as e:
            raise AuditUnavailableError from e
