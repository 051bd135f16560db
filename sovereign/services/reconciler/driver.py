"""The reconciler's driver: one worker's passes, its phases in order, its event subscriptions.

Owns :class:`Reconciler`: it builds the shared :class:`PassContext` once, composes the five
phases (leases, placement, steps, sanitization, drift) and runs them in that order in
:meth:`Reconciler.run_once`, and subscribes to the hosts' domain lifecycle events. Must not do
any phase's work itself, nor pick backends (the sanitizer comes from the assembly).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from sovereign.domain.fleet import Enclave
from sovereign.domain.identity import Principal
from sovereign.domain.labels import LabelScheme
from sovereign.errors import ConflictError, DependencyUnavailableError
from sovereign.services.collaborators import EnclaveKeyring, HostGuard
from sovereign.services.ports import EnclavePlan, Hypervisor, Sanitizer, UnitOfWorkFactory
from sovereign.services.reconciler import leases, sanitization
from sovereign.services.reconciler.context import PassContext, PassReport, worker_name
from sovereign.services.reconciler.drift import DriftCheck
from sovereign.services.reconciler.placement import Placement
from sovereign.services.reconciler.steps import Steps
from sovereign.services.recording import CallContext, Clock, Recorder, utcnow
from sovereign.text import for_log

log = logging.getLogger(__name__)


class Reconciler:
    """One worker's reconciliation passes."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        hypervisor: Hypervisor,
        keys: EnclaveKeyring,
        scheme: LabelScheme,
        hosts: HostGuard,
        *,
        sanitizer: Sanitizer,
        clock: Clock = utcnow,
        worker: str | None = None,
        claim_ttl: timedelta = timedelta(minutes=5),
        max_attempts: int = 5,
        sanitizer_deadline: timedelta = timedelta(minutes=10),
        batch: int = 20,
        after_step: Callable[[str], None] | None = None,
    ) -> None:
        self._uow = uow_factory
        self._hypervisor = hypervisor
        self._sanitizer = sanitizer
        self._sanitizer_deadline = sanitizer_deadline
        self.worker = worker or worker_name()
        self._recorder = Recorder(uow_factory, clock)
        self.ctx = CallContext(
            principal=Principal(
                subject="system:reconciler", username="reconciler", clearance=scheme.highest
            ),
            actor="system:reconciler",
            source=self.worker,
        )
        self._c = PassContext(
            uow=uow_factory,
            hypervisor=hypervisor,
            recorder=self._recorder,
            clock=clock,
            worker=self.worker,
            ctx=self.ctx,
            claim_ttl=claim_ttl,
            batch=batch,
        )
        self._placement = Placement(self._c, scheme)
        self._steps = Steps(
            self._c, keys, max_attempts=max_attempts, after_step=after_step or (lambda _s: None)
        )
        self._drift = DriftCheck(self._c, hosts)
        #: URI -> unsubscribe function of the lifecycle events watched.
        self._watched: dict[str, Callable[[], None]] = {}

    def run_once(self) -> PassReport:
        """One pass over leases, placements, claimed work, dirty GPUs and drift."""
        report = PassReport()
        leases.expire_leases(self._c, report)
        self._placement.run(report)
        self._steps.run(report)
        sanitization.sanitize(self._c, self._sanitizer, self._sanitizer_deadline, report)
        self._drift.run(report)
        return report

    def plan(self, enclave: Enclave) -> EnclavePlan:
        """What the hypervisor needs to know about ``enclave``."""
        return self._c.plan(enclave)

    # -- events ------------------------------------------------------------------------------

    def watch_hosts(self, on_event: Callable[[], None]) -> None:
        """Subscribe ``on_event`` to the lifecycle events of every host not watched yet.

        Called before each pass, so hosts added meanwhile are watched too. A domain that
        crashes or is stopped behind the control plane's back then wakes the loop at once
        instead of at the next interval; the pass's drift check decides what it means.
        """
        with self._uow(readonly=True) as uow:
            uris = {host.uri for host in uow.hosts.list()}
        for uri in sorted(uris - self._watched.keys()):
            try:
                self._watched[uri] = self._hypervisor.watch(uri, lambda _d, _e: on_event())
            except (DependencyUnavailableError, ConflictError) as e:
                # Unreachable, or refused (a URI the policy no longer allows, another machine
                # answering): the drift check quarantines the latter; polling goes on.
                log.warning(
                    "cannot watch %s for domain events (polling only): %s",
                    for_log(uri),
                    for_log(e),
                )

    def unwatch(self) -> None:
        """Drop every event subscription."""
        for unsubscribe in self._watched.values():
            unsubscribe()
        self._watched.clear()
