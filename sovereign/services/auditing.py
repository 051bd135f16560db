"""Use cases for reading and proving the audit log.

Owns who may read which events and proofs: officers and auditors, only events whose label their
clearance dominates (unlabelled events are visible to all of them); a proof carries the event,
so it follows the same rule. Checkpoints and the public key reveal nothing about events and are
open to every signed-in user. Denied reads are themselves recorded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime

from audit import AuditQuery, Outcome, StoredEvent
from audit.export import FORMATS, export
from audit.verify import LogVerificationError
from sovereign.domain.policy import AccessPolicy, Visibility
from sovereign.errors import (
    DependencyUnavailableError,
    InvalidInputError,
    NotFoundError,
)
from sovereign.services.ports import (
    AuditLog,
    Consistency,
    Document,
    Page,
    ReadModel,
    UnitOfWorkFactory,
)
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


@dataclass(frozen=True)
class LogCheck:
    """What verifying the whole log found: intact (with its size and root), or the first
    problem and, where known, the first bad index."""

    intact: bool
    size: int = 0
    root_hash: str = ""
    checkpoints: int = 0
    witnessed: int = 0
    problem: str = ""
    first_bad_index: int | None = None


#: Events read per page while exporting.
EXPORT_PAGE = 1000
#: The largest sequence number or tree size the log can hold (a signed 64-bit column). A larger
#: number names nothing, and must not reach the database driver, which cannot bind it.
MAX_SEQ = 2**63 - 1


class AuditReadService:
    """Reading the audit log, filtered by the reader's clearance, and proving it."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        policy: AccessPolicy,
        clock: Clock = utcnow,
        log: AuditLog | None = None,
        reads: ReadModel | None = None,
    ) -> None:
        self._uow = uow_factory
        self._policy = policy
        self._reads = reads
        self._recorder = Recorder(uow_factory, clock)
        self._log = log

    @property
    def log(self) -> AuditLog:
        """The tamper-evident log. :raises DependencyUnavailableError: if none is configured."""
        if self._log is None:
            raise DependencyUnavailableError(dependency="audit log")
        return self._log

    def public_keys(self) -> list[str]:
        """The note verifier keys that checkpoints and proofs verify under."""
        return self.log.public_keys

    def checkpoint(self) -> str:
        """The latest signed checkpoint. :raises NotFoundError: none signed yet."""
        return self.log.checkpoint()

    def _readable(self, ctx: CallContext, action: str, target: str) -> Visibility:
        with self._recorder.decision(ctx, action, target):
            return self._policy.audit_visibility(ctx.principal)

    def proof(self, ctx: CallContext, seq: int) -> str:
        """A tlog-proof for event ``seq`` if the caller may read that event.

        :raises PolicyDeniedError: wrong role. :raises NotFoundError: unknown, not yet
            checkpointed, or above the caller's clearance (the same answer, by the same path).
        """
        target = f"audit/{seq}"
        try:
            # A number no event can have takes the same path as one not (yet) in the log.
            stored: StoredEvent | None = self.log.event(seq) if 0 <= seq <= MAX_SEQ else None
        except NotFoundError:
            stored = None
        raw = stored.event.label if stored is not None else None
        # A refusal about an existing event carries its label: only readers cleared for it
        # learn that someone asked for it.
        label = self._policy.scheme.parse(raw) if raw is not None else None
        with self._recorder.decision(ctx, "audit:prove", target, label=label):
            visibility = self._policy.audit_visibility(ctx.principal)
            if stored is None or (label is not None and not visibility.covers(label)):
                raise NotFoundError(kind="audit event", ident=str(seq))
        return self.log.proof(seq)

    def consistency(self, ctx: CallContext, old_size: int, new_size: int) -> Consistency:
        """A consistency proof between two signed sizes (auditors and officers)."""
        self._readable(ctx, "audit:consistency", f"audit/{old_size}..{new_size}")
        if not 0 < old_size <= new_size:
            raise InvalidInputError(reason="need 0 < from <= to")
        return self.log.consistency(old_size, new_size)

    def _events_query(self, ctx: CallContext, flt: EventFilter) -> AuditQuery:
        """The query for a page of :meth:`events` (one more than a page: is there another?)."""
        visibility = self._readable(ctx, "audit:read", "audit-log")
        if flt.before is not None and not 0 <= flt.before <= MAX_SEQ:
            raise InvalidInputError(reason="the cursor is not a sequence number of this log")
        return AuditQuery(
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

    def events(self, ctx: CallContext, flt: EventFilter) -> Page[StoredEvent]:
        """Events the caller may read, newest first.

        :raises PolicyDeniedError: wrong role. :raises InvalidInputError: ``before`` out of range.
        """
        query = self._events_query(ctx, flt)
        with self._uow(readonly=True) as uow:
            found = uow.audit.query(query)
        more = len(found) > flt.limit
        found = found[: flt.limit]
        return Page(found, str(found[-1].seq) if more and found else None)

    def event_page(self, ctx: CallContext, flt: EventFilter) -> Page[Document]:
        """What :meth:`events` lists, read from the read model as the API's
        ``AuditEventOut`` documents: the same checks, refusals, visibility, rows and cursor.

        :raises PolicyDeniedError: wrong role. :raises InvalidInputError: ``before`` out of range.
        :raises DependencyUnavailableError: no read model (the in-memory backend), or no database.
        """
        query = self._events_query(ctx, flt)
        if self._reads is None:
            raise DependencyUnavailableError(dependency="read model")
        found = self._reads.events(query)
        more = len(found) > flt.limit
        found = found[: flt.limit]
        return Page(found, str(found[-1]["seq"]) if more and found else None)

    def verify(self, ctx: CallContext) -> LogCheck:
        """Rebuild the whole tree and hold it to every checkpoint and the witness (auditors and
        officers). The check and its result are themselves recorded.

        :raises PolicyDeniedError: wrong role.
        """
        self._readable(ctx, "audit:verify", "audit-log")
        try:
            report = self.log.verify()
        except LogVerificationError as e:
            check = LogCheck(intact=False, problem=str(e), first_bad_index=e.index)
        else:
            check = LogCheck(
                intact=True,
                size=report.size,
                root_hash=report.root_hash.hex(),
                checkpoints=report.checkpoints,
                witnessed=report.witnessed,
            )
        self._recorder.commit(
            self._recorder.event(
                ctx,
                "audit:verify",
                "audit-log",
                Outcome.ALLOW if check.intact else Outcome.ERROR,
                reason=check.problem,
                details={"intact": check.intact, "size": check.size, "root": check.root_hash},
            )
        )
        return check

    def export(
        self,
        ctx: CallContext,
        fmt: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Iterator[str]:
        """Lines (oldest first) of the events the caller may read, in ``fmt``; each carries its
        seq and leaf hash. Checks run now; lines are read page by page as they are consumed.

        :raises InvalidInputError: unknown format. :raises PolicyDeniedError: wrong role.
        """
        if fmt not in FORMATS:
            raise InvalidInputError(reason=f"format must be one of {', '.join(FORMATS)}")
        visibility = self._readable(ctx, "audit:export", "audit-log")
        query = AuditQuery(
            since=since,
            until=until,
            levels=visibility.levels,
            compartments=visibility.compartments,
            ascending=True,
            limit=EXPORT_PAGE,
        )
        return self._export(query, fmt)

    def _export(self, query: AuditQuery, fmt: str) -> Iterator[str]:
        after = -1
        while True:
            with self._uow(readonly=True) as uow:
                page = uow.audit.query(replace(query, after_seq=after))
            if not page:
                return
            yield from export(page, fmt)
            after = page[-1].seq


__all__ = ["AuditReadService", "EventFilter", "LogCheck"]
