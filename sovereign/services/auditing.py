"""Use cases for reading the audit log.

Owns who may read which events: officers and auditors, only events whose label their clearance
dominates (unlabelled events are visible to all of them). Denied reads are themselves recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from audit import AuditQuery, StoredEvent
from sovereign.domain.policy import AccessPolicy
from sovereign.errors import SovereignError
from sovereign.services.ports import Page, UnitOfWorkFactory
from sovereign.services.recording import CallContext, Clock, Recorder, utcnow


@dataclass(frozen=True)
class EventFilter:
    """Filters from the caller; ``before`` is the cursor (a sequence number) of the next page."""

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: int | None = None
    limit: int = 50


class AuditReadService:
    """Reading the audit log, filtered by the reader's clearance."""

    def __init__(
        self, uow_factory: UnitOfWorkFactory, policy: AccessPolicy, clock: Clock = utcnow
    ) -> None:
        self._uow = uow_factory
        self._policy = policy
        self._recorder = Recorder(uow_factory, clock)

    def events(self, ctx: CallContext, flt: EventFilter) -> Page[StoredEvent]:
        """Events the caller may read, newest first. :raises PolicyDeniedError: wrong role."""
        try:
            visibility = self._policy.audit_visibility(ctx.principal)
        except SovereignError as e:
            self._recorder.denial(ctx, "audit:read", "audit-log", e)
            raise
        query = AuditQuery(
            actor=flt.actor,
            action=flt.action,
            target=flt.target,
            since=flt.since,
            until=flt.until,
            levels=visibility.levels,
            compartments=visibility.compartments,
            before_seq=flt.before,
            limit=flt.limit + 1,
        )
        with self._uow(readonly=True) as uow:
            found = uow.audit.query(query)
        more = len(found) > flt.limit
        found = found[: flt.limit]
        return Page(found, str(found[-1].seq) if more and found else None)


__all__ = ["AuditReadService", "EventFilter"]
