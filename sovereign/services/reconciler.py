"""The reconciler: turns approved requests into running enclaves and terminated ones into nothing.

Owns the lifecycle after approval. Each pass:

1. **expires leases**: running enclaves past their lease go ``expired -> terminating``;
2. **places** approved requests: placement (:func:`sovereign.domain.placement.place`) on a
   consistent snapshot, the GPUs claimed (compare-and-set ``free -> allocated``), the enclave
   recorded and the request moved to ``provisioning``, all in one transaction with its event;
3. **advances** claimed enclaves one idempotent step at a time: provisioning is volume, secrets
   (unwrapped from Vault, handed to libvirt, never stored), network, define, start, then
   ``running``; teardown is stop, undefine (with NVRAM and TPM state), volume, secrets,
   network, keys (crypto-erase), then the GPUs go ``dirty`` and the request ``terminated``;
4. **sanitizes** dirty GPUs through the :class:`~sovereign.services.ports.Sanitizer` port
   (``dirty -> sanitizing -> free``, the evidence in the audit event);
5. **checks drift** between the database and every host: a host whose hypervisor answers with
   another identity (host UUID, hostname) than its record is quarantined and left alone; a
   domain nobody recorded is reported and its host quarantined (never adopted); an enclave
   recorded ``running`` whose domain does not run is failed and torn down; a domain of an
   ended enclave is torn down. A standing condition (a domain nobody recorded) is not work: it
   is logged and audited once when it appears, changes or clears
   (:class:`~sovereign.services.drift.DriftLedger`), and a pass that found only such conditions
   lets the worker wait its interval.

Every step is recorded (step name in the ``enclaves`` row and an audit event, in one
transaction) *after* it was done on the hypervisor; a crash in between repeats the step, which
is idempotent, so any crash converges. Workers claim enclaves with a lease (``claimed_by``,
``claim_until``; ``FOR UPDATE SKIP LOCKED`` on PostgreSQL), so several may run at once. A step
that fails for an unavailable dependency is retried with backoff; a step the hypervisor refuses,
or the last retry, fails the enclave and tears it down. Nothing here talks to libvirt directly.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from audit import Outcome
from sovereign.domain.fleet import (
    PROVISION_STEPS,
    TEARDOWN_STEPS,
    Enclave,
    FleetView,
    Gpu,
    Host,
    domain_name,
    placement_request,
)
from sovereign.domain.identity import Principal
from sovereign.domain.keys import EnclaveSecrets
from sovereign.domain.labels import Label, LabelScheme
from sovereign.domain.placement import GpuStatus, named_labels, place
from sovereign.domain.policy import Visibility
from sovereign.domain.requests import EnclaveRequest, RequestState
from sovereign.errors import (
    ConcurrentUpdateError,
    ConflictError,
    DependencyUnavailableError,
    InvalidTransitionError,
    NotFoundError,
    SovereignError,
)
from sovereign.services.drift import DriftChange, DriftLedger, LogLimiter, held_note
from sovereign.services.hosts import HostService, host_target
from sovereign.services.keys import KeyService
from sovereign.services.ports import (
    DiscoveredGpu,
    EnclavePlan,
    Hypervisor,
    RequestFilter,
    Sanitizer,
    UnitOfWork,
    UnitOfWorkFactory,
)
from sovereign.services.recording import CallContext, Clock, Recorder, utcnow
from sovereign.text import for_log

log = logging.getLogger(__name__)

S = RequestState
#: Request states in which a claimed enclave has work to do.
WORK_STATES = (S.PROVISIONING, S.TERMINATING, S.EXPIRED, S.FAILED)
#: Prefixes of the ``step`` column, so provisioning and teardown steps never mix up.
PROVISION, TEARDOWN = "provision:", "teardown:"
#: The kind of drift condition of a domain nobody recorded.
UNKNOWN_DOMAIN = "unknown-domain"


def enclave_target(enclave_id: uuid.UUID) -> str:
    """The audit target name of an enclave (the same id as its request)."""
    return f"enclave/{enclave_id}"


def worker_name() -> str:
    """A name for this worker process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class RecordedSanitizer:
    """The default sanitizer: records that a host-side reset of the GPU was requested.

    The real sanitization job (a function-level reset plus a memory scrub inside a scratch
    enclave, with hashes as evidence) is a later issue; this keeps the ``dirty -> sanitizing
    -> free`` machine and its audit trail honest about what was done.
    """

    def sanitize(self, uri: str, address: str) -> dict[str, Any]:
        """Return the evidence: a reset was requested, nothing was verified."""
        return {"method": "host-reset-requested", "host": uri, "gpu": address, "verified": False}


@dataclass
class PassReport:
    """What one reconciler pass did."""

    placed: int = 0
    unplaceable: int = 0
    steps: int = 0
    running: int = 0
    terminated: int = 0
    failed: int = 0
    sanitized: int = 0
    #: Drift repaired: orphan domains removed, enclaves whose domain stopped failed.
    repaired: int = 0
    #: Drift reported in this pass: new, changed or cleared conditions, and the repairs.
    drift: list[str] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        """Whether anything changed (the worker loops again at once when it did).

        Drift that was only reported is not work: running again at once would find it again.
        """
        return bool(self.placed or self.steps or self.sanitized or self.repaired)

    @property
    def notable(self) -> bool:
        """Whether the pass has anything to say (work done or drift reported)."""
        return self.busy or bool(self.drift)


class _StepFailedError(Exception):
    """A step failed; the enclave's attempt counter and error were recorded."""


class _SupersededError(Exception):
    """The request changed state under us (terminated while provisioning); stop working."""


class Reconciler:
    """One worker's reconciliation passes."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        hypervisor: Hypervisor,
        keys: KeyService,
        scheme: LabelScheme,
        hosts: HostService,
        *,
        sanitizer: Sanitizer | None = None,
        clock: Clock = utcnow,
        worker: str | None = None,
        claim_ttl: timedelta = timedelta(minutes=5),
        max_attempts: int = 5,
        batch: int = 20,
        after_step: Callable[[str], None] | None = None,
    ) -> None:
        self._uow = uow_factory
        self._hypervisor = hypervisor
        self._keys = keys
        self._scheme = scheme
        self._hosts = hosts
        self._sanitizer = sanitizer or RecordedSanitizer()
        self._clock = clock
        self.worker = worker or worker_name()
        self._ttl = claim_ttl
        self._max_attempts = max_attempts
        self._batch = batch
        #: Called with ``provision:define`` etc. after each recorded step (crash tests).
        self._after_step = after_step or (lambda _step: None)
        self._recorder = Recorder(uow_factory, clock)
        self.ctx = CallContext(
            principal=Principal(
                subject="system:reconciler", username="reconciler", clearance=scheme.highest
            ),
            actor="system:reconciler",
            source=self.worker,
        )
        #: (request id, reasons) already reported as unplaceable by this worker.
        self._reported: dict[uuid.UUID, str] = {}
        #: Set by _record_step when the request left the phase being worked on.
        self._superseded = False
        #: URI -> unsubscribe function of the lifecycle events watched.
        self._watched: dict[str, Callable[[], None]] = {}
        #: Drift conditions this worker has reported (each once, again when it changes).
        self._drift = DriftLedger(clock)
        #: Bounds the lines a host that cannot be listed writes, one pass after another.
        self._limiter = LogLimiter(clock)

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

    # -- the pass ----------------------------------------------------------------------------

    def run_once(self) -> PassReport:
        """One pass over leases, placements, claimed work, dirty GPUs and drift."""
        report = PassReport()
        self._expire_leases(report)
        self._place_approved(report)
        for enclave_id in self._claim():
            self._advance(enclave_id, report)
        self._sanitize(report)
        self._check_drift(report)
        return report

    def _event(
        self,
        uow: UnitOfWork,
        action: str,
        target: str,
        *,
        label: Label | None,
        outcome: Outcome = Outcome.ALLOW,
        reason: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        self._recorder.append(
            uow,
            self._recorder.event(
                self.ctx, action, target, outcome, reason=reason, label=label, details=details
            ),
        )

    # -- 1. leases ---------------------------------------------------------------------------

    def _expire_leases(self, report: PassReport) -> None:
        now = self._clock()
        with self._uow(readonly=True) as uow:
            due = [e.id for e in uow.enclaves.list() if e.lease_expires_at <= now]
        for enclave_id in due:
            try:
                with self._uow() as uow:
                    request = uow.requests.get(enclave_id, for_update=True)
                    if request is None or request.state is not S.RUNNING:
                        continue
                    request.transition(S.EXPIRED, now)
                    request.transition(S.TERMINATING, now)
                    uow.requests.update(request)
                    self._event(
                        uow,
                        "enclave:expire",
                        enclave_target(enclave_id),
                        label=request.label,
                        reason="lease ended",
                        details={"from": "running", "to": "terminating"},
                    )
                    uow.commit()
                    report.steps += 1
            except ConcurrentUpdateError:
                continue

    # -- 2. placement ------------------------------------------------------------------------

    def _place_approved(self, report: PassReport) -> None:
        with self._uow(readonly=True) as uow:
            page = uow.requests.list(
                Visibility.everything(self._scheme),
                RequestFilter(state=S.APPROVED, limit=self._batch),
            )
        for request in sorted(page.items, key=lambda r: r.created_at):
            try:
                self._place(request.id, report)
            except ConcurrentUpdateError:
                continue

    def _place(self, request_id: uuid.UUID, report: PassReport) -> None:
        with self._uow() as uow:
            request = uow.requests.get(request_id, for_update=True)
            if request is None or request.state is not S.APPROVED:
                return
            if uow.enclaves.get(request_id) is not None:
                return
            uow.hosts.lock_all()
            tenant = uow.tenants.get(request.tenant)
            assert tenant is not None, "foreign key guarantees the tenant"
            fleet = FleetView(uow.hosts.list(), uow.gpus.list(), uow.enclaves.list())
            wanted = placement_request(request, tenant)
            snapshot = fleet.snapshot()
            placement = place(wanted, snapshot)
            target = enclave_target(request.id)
            # The reasons may name other enclaves' labels: the event is labelled with all of
            # them, so only auditors cleared for everything it names read it.
            label = self._scheme.join(
                [request.label, *map(self._scheme.parse, named_labels(placement, snapshot))]
            )
            if placement.host is None:
                explained = placement.explain() or "no hosts are registered"
                if self._reported.get(request.id) != explained:
                    self._reported[request.id] = explained
                    self._event(
                        uow,
                        "enclave:place",
                        target,
                        label=label,
                        outcome=Outcome.DENY,
                        reason="no host fits; the request waits for capacity",
                        details={"reasons": placement.reasons},
                    )
                    uow.commit()
                report.unplaceable += 1
                return
            now = self._clock()
            enclave = Enclave(
                id=request.id,
                host=placement.host,
                gpus=placement.gpus,
                domain_name=domain_name(request.id),
                label=request.label,
                classified=wanted.classified,
                tenant=request.tenant,
                vcpus=request.resources.vcpus,
                memory_mib=request.resources.memory_mib,
                disk_gib=request.resources.disk_gib,
                lease_expires_at=now + timedelta(hours=request.lease_hours),
                created_at=now,
                updated_at=now,
            )
            uow.enclaves.add(enclave)
            chosen = set(placement.gpus)
            for gpu in fleet.gpus:
                if gpu.host == placement.host and gpu.address in chosen:
                    gpu.move("allocated", now)
                    gpu.enclave_id = request.id
                    gpu.last_label = request.label
                    gpu.last_tenant = request.tenant
                    # Compare-and-set: a GPU someone else took meanwhile fails the placement.
                    uow.gpus.update(gpu, "free")
            request.transition(S.PROVISIONING, now)
            uow.requests.update(request)
            self._event(
                uow,
                "enclave:place",
                target,
                label=label,
                details={
                    "host": placement.host,
                    "gpus": list(placement.gpus),
                    "gpu_model": placement.gpu_model,
                    "rejected": placement.reasons,
                },
            )
            uow.commit()
        self._reported.pop(request_id, None)
        report.placed += 1

    # -- 3. claimed work ---------------------------------------------------------------------

    def _claim(self) -> list[uuid.UUID]:
        now = self._clock()
        claimed = []
        try:
            with self._uow() as uow:
                for enclave in uow.enclaves.claimable(
                    self.worker, now, self._batch, states=[s.value for s in WORK_STATES]
                ):
                    enclave.claim(self.worker, now, self._ttl)
                    uow.enclaves.update(enclave)
                    claimed.append(enclave.id)
                uow.commit()
        except ConcurrentUpdateError:
            return []
        return claimed

    def _advance(self, enclave_id: uuid.UUID, report: PassReport) -> None:
        """Run every remaining step of one claimed enclave, then release it."""
        try:
            with self._uow(readonly=True) as uow:
                request = uow.requests.get(enclave_id)
                enclave = uow.enclaves.get(enclave_id)
            if request is None or enclave is None or enclave.claimed_by != self.worker:
                return
            if request.state in (S.EXPIRED, S.FAILED):
                self._transition(enclave_id, S.TERMINATING, "enclave:terminate", request.reason)
                request.state = S.TERMINATING
            if request.state is S.PROVISIONING:
                self._provision(request, enclave, report)
            elif request.state is S.TERMINATING:
                self._teardown(request, enclave, report)
        except _StepFailedError:
            report.failed += 1
        except (_SupersededError, InvalidTransitionError):
            log.info("enclave %s changed state while being worked on; next pass", enclave_id)
        except (ConcurrentUpdateError, DependencyUnavailableError) as e:
            log.warning("enclave %s: %s; will retry", enclave_id, for_log(e))
        # Released on every handled outcome; a worker that dies keeps its claim until the TTL
        # lapses, and then another worker resumes from the last recorded step.
        self._release(enclave_id)

    def _release(self, enclave_id: uuid.UUID) -> None:
        try:
            with self._uow() as uow:
                enclave = uow.enclaves.get(enclave_id)
                if enclave is not None and enclave.claimed_by == self.worker:
                    enclave.release(self._clock())
                    uow.enclaves.update(enclave)
                    uow.commit()
        except SovereignError:
            # The claim lapses on its own after the TTL.
            log.warning("could not release enclave %s", enclave_id, exc_info=True)

    def plan(self, enclave: Enclave) -> EnclavePlan:
        """What the hypervisor needs to know about ``enclave``."""
        with self._uow(readonly=True) as uow:
            return plan_for(uow, enclave)

    def _provision(self, request: EnclaveRequest, enclave: Enclave, report: PassReport) -> None:
        plan = self.plan(enclave)
        done = _done_steps(enclave.step, PROVISION)
        for step in PROVISION_STEPS[done:]:
            secrets: EnclaveSecrets | None = None
            try:
                if step == "secrets":
                    secrets = self._keys.secrets(enclave.id)
                note = self._hypervisor.provision(step, plan, secrets)
            except (DependencyUnavailableError, ConflictError, NotFoundError) as e:
                self._step_failed(request, enclave, PROVISION + step, e)
            self._record_step(enclave, request.label, PROVISION + step, note)
            report.steps += 1
        self._transition(enclave.id, S.RUNNING, "enclave:running", "")
        report.running += 1

    def _teardown(self, request: EnclaveRequest, enclave: Enclave, report: PassReport) -> None:
        plan = self.plan(enclave)
        done = _done_steps(enclave.step, TEARDOWN)
        for step in TEARDOWN_STEPS[done:]:
            try:
                if step == "keys":
                    note = self._erase_keys(enclave.id)
                else:
                    note = self._hypervisor.teardown(step, plan)
            except (DependencyUnavailableError, ConflictError) as e:
                self._step_failed(request, enclave, TEARDOWN + step, e, give_up=False)
            self._record_step(enclave, request.label, TEARDOWN + step, note)
            report.steps += 1
        self._finish(enclave.id)
        report.terminated += 1

    def _erase_keys(self, enclave_id: uuid.UUID) -> str:
        with self._uow(readonly=True) as uow:
            keys = uow.keys.get(enclave_id)
        if keys is None:
            return "no keys were created for this enclave"
        if keys.destroyed_at is not None:
            return f"keys already crypto-erased at {keys.destroyed_at.isoformat()}"
        self._keys.crypto_erase(self.ctx, enclave_id)
        return f"key {keys.key.mount}/{keys.key.name} crypto-erased (see key:destroy)"

    def _record_step(self, enclave: Enclave, label: Label, step: str, note: str) -> None:
        with self._uow() as uow:
            current = uow.enclaves.get(enclave.id, for_update=True)
            if current is None or current.claimed_by != self.worker:
                # Our claim lapsed and another worker took over: stop here, it continues.
                raise ConcurrentUpdateError(kind="enclave", ident=str(enclave.id))
            request = uow.requests.get(enclave.id)
            expected = S.PROVISIONING if step.startswith(PROVISION) else S.TERMINATING
            if request is None or request.state is not expected:
                # Terminated (or killed) while we provisioned: the step is done on the host
                # and recorded, but we stop here; the next pass tears everything down.
                self._superseded = True
            current.step, current.attempts, current.error = step, 0, ""
            current.claim(self.worker, self._clock(), self._ttl)
            uow.enclaves.update(current)
            action = "enclave:provision" if step.startswith(PROVISION) else "enclave:teardown"
            self._event(
                uow,
                action,
                enclave_target(enclave.id),
                label=label,
                details={"step": step.split(":", 1)[1], "host": enclave.host, "note": note},
            )
            uow.commit()
        enclave.step = step
        self._after_step(step)
        if self._superseded:
            self._superseded = False
            raise _SupersededError(step)

    def _step_failed(
        self,
        request: EnclaveRequest,
        enclave: Enclave,
        step: str,
        error: SovereignError,
        *,
        give_up: bool = True,
    ) -> None:
        """Record a failed step; fail the enclave when retrying cannot help.

        :raises _StepFailedError: always (the caller stops working on the enclave).
        """
        now = self._clock()
        retryable = isinstance(error, DependencyUnavailableError)
        with self._uow() as uow:
            current = uow.enclaves.get(enclave.id, for_update=True)
            assert current is not None
            current.attempts += 1
            current.error = error.message
            # Exponential backoff, capped at five minutes.
            current.retry_at = now + timedelta(seconds=min(300, 2**current.attempts))
            uow.enclaves.update(current)
            fail = give_up and (not retryable or current.attempts >= self._max_attempts)
            self._event(
                uow,
                "enclave:provision" if step.startswith(PROVISION) else "enclave:teardown",
                enclave_target(enclave.id),
                label=request.label,
                outcome=Outcome.ERROR,
                reason=error.message,
                details={"step": step.split(":", 1)[1], "attempt": current.attempts},
            )
            if fail:
                current_request = uow.requests.get(enclave.id, for_update=True)
                assert current_request is not None
                current_request.reason = error.message
                current_request.transition(S.FAILED, now)
                uow.requests.update(current_request)
                current.retry_at = None
                uow.enclaves.update(current)
                self._event(
                    uow,
                    "enclave:fail",
                    enclave_target(enclave.id),
                    label=request.label,
                    reason=error.message,
                    details={"step": step.split(":", 1)[1], "to": "failed"},
                )
            uow.commit()
        raise _StepFailedError(step)

    def _transition(
        self, enclave_id: uuid.UUID, target: RequestState, action: str, reason: str
    ) -> None:
        with self._uow() as uow:
            request = uow.requests.get(enclave_id, for_update=True)
            assert request is not None
            before = request.state
            request.transition(target, self._clock())
            uow.requests.update(request)
            self._event(
                uow,
                action,
                enclave_target(enclave_id),
                label=request.label,
                reason=reason,
                details={"from": before.value, "to": target.value},
            )
            uow.commit()

    def _finish(self, enclave_id: uuid.UUID) -> None:
        """GPUs dirty, enclave ended, request terminated: one transaction."""
        now = self._clock()
        with self._uow() as uow:
            request = uow.requests.get(enclave_id, for_update=True)
            enclave = uow.enclaves.get(enclave_id, for_update=True)
            assert request is not None
            assert enclave is not None
            dirty = []
            for gpu in uow.gpus.for_enclave(enclave_id):
                if gpu.state == "allocated":
                    gpu.move("dirty", now)
                    uow.gpus.update(gpu, "allocated")
                    dirty.append(gpu.address)
            enclave.ended_at = now
            enclave.release(now)
            uow.enclaves.update(enclave)
            request.transition(S.TERMINATED, now)
            uow.requests.update(request)
            self._event(
                uow,
                "enclave:terminated",
                enclave_target(enclave_id),
                label=request.label,
                details={"host": enclave.host, "gpus_dirty": dirty},
            )
            uow.commit()

    # -- 4. sanitization ---------------------------------------------------------------------

    def _sanitize(self, report: PassReport) -> None:
        now = self._clock()
        with self._uow(readonly=True) as uow:
            hosts = {host.name: host for host in uow.hosts.list()}
            waiting = [
                gpu
                for gpu in uow.gpus.list()
                if gpu.state == "dirty"
                # A GPU left "sanitizing" by a crashed worker is taken again after the TTL.
                or (gpu.state == "sanitizing" and (gpu.updated_at or now) <= now - self._ttl)
            ]
        for gpu in waiting[: self._batch]:
            try:
                self._sanitize_one(gpu, hosts[gpu.host].uri)
                report.sanitized += 1
            except (ConcurrentUpdateError, DependencyUnavailableError) as e:
                log.warning(
                    "GPU %s/%s: %s; will retry", for_log(gpu.host), for_log(gpu.address), for_log(e)
                )

    def _sanitize_one(self, gpu: Gpu, uri: str) -> None:
        if gpu.state == "dirty":
            self._move_gpu(gpu, "sanitizing", "gpu:sanitize", {})
        evidence = self._sanitizer.sanitize(uri, gpu.address)
        self._move_gpu(gpu, "free", "gpu:sanitized", {"evidence": evidence})

    def _move_gpu(self, gpu: Gpu, target: GpuStatus, action: str, details: dict[str, Any]) -> None:
        """Move ``gpu`` to ``target`` (compare-and-set) with its audit event."""
        before = gpu.state
        with self._uow() as uow:
            gpu.move(target, self._clock())
            uow.gpus.update(gpu, before)
            self._event(
                uow,
                action,
                f"gpu/{gpu.host}/{gpu.address}",
                label=gpu.last_label,
                details={"from": before, "to": target, **details},
            )
            uow.commit()

    # -- 5. drift ----------------------------------------------------------------------------

    def _check_drift(self, report: PassReport) -> None:
        # Open enclaves are read before the domains are listed (see _check_running); ended
        # ones are looked up only for a domain that names one, so a pass does not grow with
        # the history of the fleet.
        with self._uow(readonly=True) as uow:
            hosts = uow.hosts.list()
            open_enclaves = {e.id: e for e in uow.enclaves.list()}
        for host in hosts:
            try:
                if not self._hosts.check_identity(self.ctx, host):
                    # Another machine answers at the URI (or one another record holds): its
                    # domains are not this host's, so nothing is compared or torn down there.
                    if host.state != "quarantined":
                        report.drift.append(f"host {host.name}: hypervisor identity changed")
                    continue
                domains = self._hypervisor.domains(host.uri)
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
            for domain in domains:
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

    def _recorded(
        self, enclave_id: uuid.UUID | None, open_enclaves: dict[uuid.UUID, Enclave]
    ) -> Enclave | None:
        """The enclave a domain says it belongs to, open or ended; None if there is none."""
        if enclave_id is None:
            return None
        if enclave_id in open_enclaves:
            return open_enclaves[enclave_id]
        with self._uow(readonly=True) as uow:
            return uow.enclaves.get(enclave_id)

    def _unknown_domains(
        self, host: Host, unknown: dict[tuple[str, str], str], report: PassReport
    ) -> None:
        """Report what changed among the domains nobody recorded; quarantine their host."""
        changes = self._drift.observe(host.name, unknown)
        if changes:
            try:
                with self._uow() as uow:
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
            self._hosts.set_state(self.ctx, host.name, "quarantined", reason)
            log.error("host %s quarantined: %s", for_log(host.name), for_log(reason))

    def _drift_event(self, uow: UnitOfWork, host: Host, change: DriftChange) -> None:
        self._event(
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
        report.drift.append(f"domain {enclave.domain_name} of ended enclave {enclave.id}")
        report.repaired += 1
        plan = self.plan(enclave)
        notes = []
        for step in ("stop", "undefine", "volume", "secrets", "network"):
            notes.append(self._hypervisor.teardown(step, plan))
        with self._uow() as uow:
            self._event(
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
        try:
            with self._uow() as uow:
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
                request.transition(S.FAILED, self._clock())
                uow.requests.update(request)
                self._event(
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


def plan_for(uow: UnitOfWork, enclave: Enclave) -> EnclavePlan:
    """What the hypervisor needs to know about ``enclave``, read in ``uow``."""
    host = uow.hosts.get(enclave.host)
    assert host is not None, "foreign key guarantees the host"
    gpus = {gpu.address: gpu for gpu in uow.gpus.list(enclave.host)}
    return EnclavePlan(
        enclave_id=enclave.id,
        uri=host.uri,
        domain_name=enclave.domain_name,
        domain_type=host.domain_type,
        vcpus=enclave.vcpus,
        memory_mib=enclave.memory_mib,
        disk_gib=enclave.disk_gib,
        gpus=tuple(_discovered(gpus[address]) for address in enclave.gpus),
        label=str(enclave.label),
        classified=enclave.classified,
    )


def _done_steps(step: str, prefix: str) -> int:
    """How many steps of a phase are recorded as done."""
    if not step.startswith(prefix):
        return 0
    steps = PROVISION_STEPS if prefix == PROVISION else TEARDOWN_STEPS
    return steps.index(step.removeprefix(prefix)) + 1


def _discovered(gpu: Gpu) -> DiscoveredGpu:
    return DiscoveredGpu(
        address=gpu.address,
        model=gpu.model,
        numa_node=gpu.numa_node,
        iommu_group=gpu.iommu_group,
        group_members=gpu.group_members,
    )
