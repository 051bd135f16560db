"""The attestation use case: evaluate the claims over the live log for a caller, sign it.

Owns who may attest and what they see: **auditors** only, over the events their clearance
dominates (unlabelled events included): nothing above it is counted, named or hinted at, and
the report says so in ``scope.clearance``. The system's own callers (``system:*`` actors, the
command line on the control plane's host) see every event. Completeness (claim f) verifies the
whole log, which reveals nothing about any event beyond the tree size and root that checkpoints
already publish. Each attestation is itself recorded (``audit:attest``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from audit import AuditQuery, Outcome, StoredEvent
from audit.verify import LogVerificationError
from sovereign.domain.identity import Role
from sovereign.domain.policy import AccessPolicy
from sovereign.errors import DependencyUnavailableError, InvalidInputError, PolicyDeniedError
from sovereign.services.attestation.claims import AttestParams, LogStatus, evaluate
from sovereign.services.attestation.report import build_report, note_text
from sovereign.services.ports import AuditLog, UnitOfWorkFactory
from sovereign.services.recording import CallContext, Clock, Recorder, utcnow

#: Events read per page.
PAGE = 5000
#: The target of ``audit:attest`` events.
TARGET = "audit-log"

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Scope:
    """Which events a caller's attestation reads: None filters mean every event."""

    levels: tuple[str, ...] | None
    compartments: frozenset[str] | None
    clearance: dict[str, Any] | None


def is_system(ctx: CallContext) -> bool:
    """Whether ``ctx`` is the control plane itself (the CLI, the worker), not a user."""
    return ctx.actor.startswith("system:")


def read_events(
    log: AuditLog,
    scope: Scope,
    until: datetime | None,
    progress: Progress | None = None,
) -> list[StoredEvent]:
    """Every sequenced event before ``until`` that ``scope`` lets through, oldest first."""
    return list(_pages(log, scope, until, progress))


def _pages(
    log: AuditLog, scope: Scope, until: datetime | None, progress: Progress | None
) -> Iterator[StoredEvent]:
    after = -1
    read = 0
    while True:
        page = log.events(
            AuditQuery(
                until=until,
                levels=scope.levels,
                compartments=scope.compartments,
                after_seq=after,
                ascending=True,
                limit=PAGE,
            )
        )
        if not page:
            return
        yield from page
        after = page[-1].seq
        read += len(page)
        if progress is not None:
            progress(f"read {read:,} events (up to seq {after})")


def log_status(log: AuditLog, progress: Progress | None = None) -> LogStatus:
    """Verify the whole log (tree, signatures, witness) and list the signed sizes."""

    def step(done: int, total: int) -> None:
        if progress is not None:
            progress(f"verified {done:,} of {total:,} events")

    try:
        report = log.verify(step)
        sizes = log.signed_sizes()
    except LogVerificationError as e:
        return LogStatus(intact=False, problem=str(e))
    return LogStatus.intact_as(report, sizes)


def check_period(since: datetime | None, until: datetime | None) -> None:
    """:raises InvalidInputError: naive times, or ``since`` after ``until``."""
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise InvalidInputError(reason=f"{name} must carry a time zone")
    if since is not None and until is not None and since > until:
        raise InvalidInputError(reason="since must not be after until")


#: The configuration facts of the control plane, given the registered sites' countries
#: (:func:`sovereign.services.attestation.frameworks.gather_facts` over the settings).
Facts = Callable[[list[str]], dict[str, Any]]


class AttestationService:
    """Attestations over the live log, for auditors (and the system)."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        policy: AccessPolicy,
        clock: Clock = utcnow,
        log: AuditLog | None = None,
        origin: str = "",
        *,
        facts: Facts | None = None,
    ) -> None:
        self._policy = policy
        self._uow = uow_factory
        self._facts = facts
        self._clock = clock
        self._recorder = Recorder(uow_factory, clock)
        self._log = log
        self._origin = origin

    @property
    def log(self) -> AuditLog:
        """The tamper-evident log. :raises DependencyUnavailableError: none configured."""
        if self._log is None:
            raise DependencyUnavailableError(dependency="audit log")
        return self._log

    def _scope(self, ctx: CallContext) -> Scope:
        if is_system(ctx):
            return Scope(None, None, None)
        principal = ctx.principal
        if not principal.has_role(Role.AUDITOR):
            raise PolicyDeniedError(reason="attesting the audit log needs the auditor role")
        visibility = self._policy.audit_visibility(principal)
        clearance = principal.clearance
        return Scope(
            tuple(visibility.levels or ()),
            visibility.compartments,
            clearance.to_dict() if clearance is not None else None,
        )

    def attest(
        self,
        ctx: CallContext,
        since: datetime | None,
        until: datetime | None,
        progress: Progress | None = None,
    ) -> tuple[dict[str, Any], str]:
        """The report over ``[since, until)`` (``until`` None: now) and its signed note.

        :raises PolicyDeniedError: not an auditor. :raises InvalidInputError: a bad period.
        :raises DependencyUnavailableError: no audit log configured.
        """
        with self._recorder.decision(ctx, "audit:attest", TARGET):
            scope = self._scope(ctx)
            check_period(since, until)
            log = self.log
        now = self._clock()
        # Nothing is attested beyond the present: a report signed "holds until 2099" would
        # vouch for events that have not happened.
        end = now if until is None or until > now else until
        events = read_events(log, scope, end, progress)
        status = log_status(log, progress)
        params = AttestParams(self._policy.scheme, self._policy.two_person_level, since, end)
        claims = evaluate(events, params, status)
        in_period = [s.seq for s in events if params.in_period(s)]
        report = build_report(
            claims,
            status,
            origin=self._origin,
            generated_at=now,
            since=since,
            until=end,
            source="live",
            clearance=scope.clearance,
            events=len(in_period),
            first_seq=min(in_period, default=None),
            last_seq=max(in_period, default=None),
            levels=self._policy.scheme.levels,
            two_person_level=self._policy.two_person_level,
        )
        if self._facts is not None:
            # What the control plane states about its own configuration, signed with the
            # claims: the controls of the frameworks read them (sites' countries from the
            # records, the rest from the settings).
            with self._uow(readonly=True) as uow:
                countries = [site.country for site in uow.sites.list()]
            report["facts"] = self._facts(countries)
        note = log.sign_note(note_text(report))
        # The figures of a report (events counted, verdicts) are about what its scope saw: the
        # event carries that scope's label, so no auditor below it learns of them.
        clearance = ctx.principal.clearance
        label = self._policy.scheme.highest if is_system(ctx) or clearance is None else clearance
        self._recorder.commit(
            self._recorder.event(
                ctx,
                "audit:attest",
                TARGET,
                Outcome.ALLOW,
                label=label,
                details={
                    "verdict": report["verdict"],
                    "since": report["period"]["since"],
                    "until": report["period"]["until"],
                    "events": len(in_period),
                    "claims": {c["id"]: c["verdict"] for c in report["claims"]},
                },
            )
        )
        return report, note


__all__ = [
    "AttestationService",
    "Scope",
    "check_period",
    "is_system",
    "log_status",
    "read_events",
]
