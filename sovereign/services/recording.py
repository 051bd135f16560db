"""Who is calling, and how decisions reach the audit log.

Owns :class:`CallContext` (principal, request id, source address), the audit target names of
the objects services decide about (:func:`request_target`, :func:`enclave_target`,
:func:`host_target`, :func:`action_target`, :func:`gpu_target`), and :class:`Recorder`, which
writes allowed decisions inside the caller's unit of work (fail-closed: no event, no change)
and denied ones in a unit of their own after the change was rolled back.
:meth:`Recorder.decision` is the one place that rule is written: services open a decision,
allow it in their transaction, and leave the refusals and dependency failures to it. Must not
decide anything itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from audit import AuditEvent, Outcome
from audit.event import MAX_ACTOR, MAX_TARGET
from sovereign.domain.identity import Principal
from sovereign.domain.labels import Label
from sovereign.errors import (
    AuditUnavailableError,
    DependencyUnavailableError,
    InvalidInputError,
    SovereignError,
)
from sovereign.services.ports import UnitOfWork, UnitOfWorkFactory
from sovereign.text import control_character, describe

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time, timezone-aware (UTC)."""
    return datetime.now(UTC)


def clearance_detail(ctx: CallContext, label: Label) -> dict[str, Any] | None:
    """The caller's clearance as far as ``label`` reaches, as an event detail (the label dict
    events use; None if they have none): the greatest lower bound of the two. It equals
    ``label`` exactly when the caller was cleared for it, which is what the attestation's
    two-person claim checks, and names no level or compartment above ``label``, the label the
    event is read at (an officer's whole clearance would tell a lower auditor of compartments
    above them)."""
    clearance = ctx.principal.clearance
    if clearance is None:
        return None
    low = clearance if clearance.rank <= label.rank else label
    return Label(
        level=low.level,
        rank=low.rank,
        compartments=clearance.compartments & label.compartments,
    ).to_dict()


def request_target(request_id: uuid.UUID) -> str:
    """The audit target name of a request."""
    return f"request/{request_id}"


def enclave_target(enclave_id: uuid.UUID) -> str:
    """The audit target name of an enclave (the same id as its request)."""
    return f"enclave/{enclave_id}"


def host_target(name: str) -> str:
    """The audit target name of a host."""
    return f"host/{name}"


def site_target(name: str) -> str:
    """The audit target name of a site."""
    return f"site/{name}"


def action_target(action_id: uuid.UUID) -> str:
    """The audit target name of a two-person action's proposal."""
    return f"action/{action_id}"


def gpu_target(host: str, address: str) -> str:
    """The audit target name of a GPU: its host and PCI address."""
    return f"gpu/{host}/{address}"


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
    """Builds audit events for a caller and writes them fail-closed.

    :meth:`decision` for a use case that may be refused; :meth:`record` for an event in the
    caller's unit of work (committed with the change), :meth:`commit` for events in a unit of
    their own, :meth:`denial` for a refusal decided without a change in view.
    """

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
            an event never records one raw, whatever path it came by; or if the actor or the
            target is longer than the audit log's columns hold.
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
        for name, value, limit in (
            ("actor", ctx.actor_name, MAX_ACTOR),
            ("target", target, MAX_TARGET),
        ):
            if len(value) > limit:
                raise InvalidInputError(reason=f"the {name} is longer than {limit} characters")
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
        """Append events built by :meth:`event` inside ``uow``'s transaction (the primitive
        under :meth:`record` and :meth:`commit`, which services use).

        :raises AuditUnavailableError: on any failure, so the change it records fails too.
        """
        try:
            uow.audit.append(events)
        except Exception as e:
            raise AuditUnavailableError from e

    def record(
        self,
        uow: UnitOfWork,
        ctx: CallContext,
        action: str,
        target: str,
        outcome: Outcome = Outcome.ALLOW,
        *,
        reason: str = "",
        label: Label | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append the event for ``ctx`` inside ``uow``'s transaction (committed with the change).

        :raises AuditUnavailableError: if it cannot be appended, so the change fails too.
        """
        self.append(
            uow,
            self.event(ctx, action, target, outcome, reason=reason, label=label, details=details),
        )

    def commit(self, *events: AuditEvent) -> None:
        """Write ``events`` in a unit of work of their own.

        :raises AuditUnavailableError: on any failure (database down, audit table broken).
        """
        try:
            with self._uow() as uow:
                self.append(uow, *events)
                uow.commit()
        except AuditUnavailableError:
            raise
        except Exception as e:
            raise AuditUnavailableError from e

    @contextmanager
    def decision(
        self,
        ctx: CallContext,
        action: str,
        target: str,
        *,
        label: Label | None = None,
        unrecorded: tuple[type[SovereignError], ...] = (),
    ) -> Iterator[Decision]:
        """A decision of ``ctx`` to do ``action`` on ``target``, audited fail-closed.

        Inside the block the service checks, changes and calls :meth:`Decision.allow` in its
        unit of work, so the allow event commits with the change or not at all. On the way out
        a :class:`~sovereign.errors.SovereignError` is recorded in a unit of its own, as a
        denial (outcome ``deny``) or, for a :class:`~sovereign.errors.DependencyUnavailableError`,
        a failure (outcome ``error``), with the decision's :attr:`Decision.label` (set it as
        soon as the object is known, so only readers cleared for it learn of the attempt), and
        raised on. Open the decision outside the unit of work, so that the refusal is written
        after the change rolled back.

        An :class:`~sovereign.errors.AuditUnavailableError` and the ``unrecorded`` errors (e.g.
        a lost race the caller retries) pass through unrecorded.

        :raises AuditUnavailableError: if the refusal or failure cannot be recorded.
        """
        decision = Decision(self, ctx, action, target, label)
        try:
            yield decision
        except AuditUnavailableError:
            raise
        except unrecorded:
            raise
        except DependencyUnavailableError as e:
            self.failure(ctx, decision.action, decision.target, e, label=decision.label)
            raise
        except SovereignError as e:
            self.denial(ctx, decision.action, decision.target, e, label=decision.label)
            raise

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
        self.commit(
            self.event(
                ctx,
                action,
                target,
                outcome,
                reason=error.message,
                label=label,
                details={"error": error.code},
            )
        )


@dataclass
class Decision:
    """One audited decision in progress (see :meth:`Recorder.decision`).

    ``action``, ``target`` and ``label`` are what a refusal or failure is recorded with; a
    service may set them once it knows more (the label of the object loaded, the id of the
    object created).
    """

    recorder: Recorder
    ctx: CallContext
    action: str
    target: str
    label: Label | None = None

    def allow(
        self,
        uow: UnitOfWork,
        *,
        action: str | None = None,
        target: str | None = None,
        reason: str = "",
        label: Label | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append the allow event inside ``uow``'s transaction, with the decision's action,
        target and label unless others are given.

        :raises AuditUnavailableError: if it cannot be appended, so the change fails too.
        """
        self.recorder.record(
            uow,
            self.ctx,
            action or self.action,
            target or self.target,
            Outcome.ALLOW,
            reason=reason,
            label=label if label is not None else self.label,
            details=details,
        )
