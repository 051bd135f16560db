"""Phase 5 of a pass: drift between the database and every host, checked and repaired.

Owns the comparison: a host whose hypervisor answers with another identity (host UUID,
hostname) than its record is quarantined (by :meth:`HostService.check_identity`) and left
alone; a domain nobody recorded is reported and its host quarantined (never adopted); an
enclave recorded ``running`` whose domain does not run is failed (the steps phase tears it
down); a domain of an ended enclave is torn down again. A standing condition (a domain nobody
recorded) is not work: it is logged and audited once when it appears, changes or clears
(:class:`~sovereign.services.drift.DriftLedger`). The one domain without a record that is not
drift: a GPU's short-lived sanitizer domain (its exact name,
:func:`~sovereign.domain.fleet.sanitizer_domain_name`), while that host has that GPU in a
hand-over (``sanitizing``). Must not adopt a domain nor repair a host whose identity changed.
"""

from __future__ import annotations

import logging
import uuid

from audit import Outcome
from enclaves.plan import sanitizer_uuid
from enclaves.steps import HOST_TEARDOWN_STEPS
from sovereign.domain.fleet import (
    SANITIZER_DOMAIN_PREFIX,
    Enclave,
    Gpu,
    Host,
    sanitizer_domain_name,
)
from sovereign.errors import ConcurrentUpdateError, DependencyUnavailableError, SovereignError
from sovereign.services.collaborators import HostGuard
from sovereign.services.drift import DriftChange, DriftLedger, LogLimiter, held_note
from sovereign.services.ports import DomainFacts, UnitOfWork
from sovereign.services.reconciler.context import PassContext, PassReport, S, enclave_target
from sovereign.services.recording import host_target
from sovereign.text import for_log

log = logging.getLogger(__name__)

#: The kind of drift condition of a domain nobody recorded.
UNKNOWN_DOMAIN = "unknown-domain"
#: The teardown steps that remove an orphan domain: the host's (keys were already erased at
#: its end).
ORPHAN_STEPS = HOST_TEARDOWN_STEPS


class DriftCheck:
    """Compares every host's domains with the records; remembers what it reported."""

    def __init__(self, c: PassContext, hosts: HostGuard) -> None:
        self._c = c
        self._hosts = hosts
        #: Drift conditions this worker has reported (each once, again when it changes).
        self._drift = DriftLedger(c.clock)
        #: Bounds the lines a host that cannot be listed writes, one pass after another.
        self._limiter = LogLimiter(c.clock)

    def run(self, report: PassReport) -> None:
        """Check every host once."""
        c = self._c
        # Open enclaves are read before the domains are listed (see _check_running); ended
        # ones are looked up only for a domain that names one, so a pass does not grow with
        # the history of the fleet.
        with c.uow(readonly=True) as uow:
            hosts = uow.hosts.list()
            open_enclaves = {e.id: e for e in uow.enclaves.list()}
            gpus_before = uow.gpus.list()
        for host in hosts:
            try:
                if not self._hosts.check_identity(c.ctx, host):
                    # Another machine answers at the URI (or one another record holds): its
                    # domains are not this host's, so nothing is compared or torn down there.
                    if host.state != "quarantined":
                        report.drift.append(f"host {host.name}: hypervisor identity changed")
                    continue
                domains = c.hypervisor.domains(host.uri)
            except DependencyUnavailableError as e:
                held = self._limiter.allow(f"drift-check:{host.name}")
                if held is not None:
                    log.warning(
                        "drift check of %s skipped: %s%s",
                        for_log(host.name),
                        for_log(e),
                        held_note(held),
                    )
                continue
            running = {d.enclave_id for d in domains if d.running and d.enclave_id}
            unknown: dict[tuple[str, str], str] = {}
            handovers = self._handovers(host, domains, gpus_before)
            for domain in domains:
                if (
                    domain.enclave_id is None
                    and domain.name in handovers
                    and domain.domain_uuid == sanitizer_uuid(domain.name)
                ):
                    continue
                enclave = self._recorded(domain.enclave_id, open_enclaves)
                if enclave is None or enclave.host != host.name:
                    unknown[domain.name, UNKNOWN_DOMAIN] = (
                        f"domain {domain.name} on host {host.name} has no enclave record; "
                        "not adopted"
                    )
                elif enclave.ended_at is not None:
                    self._orphan(enclave, report)
            self._unknown_domains(host, unknown, report)
            for enclave in open_enclaves.values():
                if enclave.host == host.name:
                    self._check_running(enclave, enclave.id in running, report)

    def _handovers(
        self, host: Host, domains: list[DomainFacts], gpus_before: list[Gpu]
    ) -> frozenset[str]:
        """Names of the sanitizer domains on ``host`` that belong to a hand-over in progress.

        A sanitizer domain lives only while its GPU is ``sanitizing``, so it was when the
        domains were listed; the GPUs are read before and after the listing, and a GPU that was
        ``sanitizing`` in either read, or changed between them (a whole hand-over in between),
        explains its domain (if it also has the UUID the sanitizer gives that name). Any other
        domain with such a name is drift like any other.
        """
        if not any(d.name.startswith(SANITIZER_DOMAIN_PREFIX) for d in domains):
            return frozenset()
        with self._c.uow(readonly=True) as uow:
            after = {g.address: g for g in uow.gpus.list(host.name)}
        names = set()
        for before in gpus_before:
            now = after.get(before.address)
            if before.host != host.name or now is None:
                continue
            if "sanitizing" in (before.state, now.state) or before.updated_at != now.updated_at:
                names.add(sanitizer_domain_name(before.address))
        return frozenset(names)

    def _recorded(
        self, enclave_id: uuid.UUID | None, open_enclaves: dict[uuid.UUID, Enclave]
    ) -> Enclave | None:
        """The enclave a domain says it belongs to, open or ended; None if there is none."""
        if enclave_id is None:
            return None
        if enclave_id in open_enclaves:
            return open_enclaves[enclave_id]
        with self._c.uow(readonly=True) as uow:
            return uow.enclaves.get(enclave_id)

    def _unknown_domains(
        self, host: Host, unknown: dict[tuple[str, str], str], report: PassReport
    ) -> None:
        """Report what changed among the domains nobody recorded; quarantine their host."""
        changes = self._drift.observe(host.name, unknown)
        if changes:
            try:
                with self._c.uow() as uow:
                    for change in changes:
                        self._drift_event(uow, host, change)
                    uow.commit()
            except SovereignError:
                # Not recorded: report it all again next pass rather than never.
                self._drift.forget(host.name)
                raise
        for change in changes:
            report.drift.append(change.message)
            if change.cleared:
                log.warning("drift on host %s: %s", for_log(host.name), for_log(change.message))
            else:
                log.error("drift on host %s: %s", for_log(host.name), for_log(change.message))
        if unknown and host.state != "quarantined":
            # Once: the next pass reads the host quarantined. An officer who returns it to
            # service while the domain is still there sees it quarantined again, once.
            reason = min(unknown.values())
            self._hosts.set_state(self._c.ctx, host.name, "quarantined", reason)
            log.error("host %s quarantined: %s", for_log(host.name), for_log(reason))

    def _drift_event(self, uow: UnitOfWork, host: Host, change: DriftChange) -> None:
        self._c.event(
            uow,
            "host:drift",
            host_target(host.name),
            label=host.accreditation,
            outcome=Outcome.ALLOW if change.cleared else Outcome.DENY,
            reason=change.message,
            details={
                "kind": change.kind,
                "domain": change.subject,
                "state": "cleared"
                if change.cleared
                else ("new" if change.before is None else "changed"),
                "unreported_changes": change.skipped,
            },
        )

    def _orphan(self, enclave: Enclave, report: PassReport) -> None:
        """A domain of an ended enclave: remove it again (idempotent teardown steps)."""
        c = self._c
        report.drift.append(f"domain {enclave.domain_name} of ended enclave {enclave.id}")
        report.repaired += 1
        plan = c.plan(enclave)
        notes = [c.hypervisor.teardown(step, plan) for step in ORPHAN_STEPS]
        with c.uow() as uow:
            c.event(
                uow,
                "enclave:orphan-removed",
                enclave_target(enclave.id),
                label=enclave.label,
                details={"host": enclave.host, "notes": notes},
            )
            uow.commit()

    def _check_running(self, enclave: Enclave, runs: bool, report: PassReport) -> None:
        if runs:
            return
        c = self._c
        try:
            with c.uow() as uow:
                request = uow.requests.get(enclave.id, for_update=True)
                if request is None or request.state is not S.RUNNING:
                    return
                current = uow.enclaves.get(enclave.id)
                if current is None or current.version != enclave.version:
                    # A worker recorded a step after our snapshot, which was taken before the
                    # domains were listed: the listing may predate the start. Next pass decides.
                    return
                message = f"domain {enclave.domain_name} is not running on {enclave.host}"
                request.reason = message
                request.transition(S.FAILED, c.clock())
                uow.requests.update(request)
                c.event(
                    uow,
                    "enclave:fail",
                    enclave_target(enclave.id),
                    label=request.label,
                    reason=message,
                    details={"from": "running", "to": "failed"},
                )
                uow.commit()
            report.drift.append(message)
            report.repaired += 1
        except ConcurrentUpdateError:
            return
