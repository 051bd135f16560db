"""Phase 2 of a pass: approved requests placed on a host and their GPUs claimed.

Owns placement's transaction: placement (:func:`sovereign.domain.placement.place`) on a
consistent snapshot (every host row locked), the GPUs claimed (compare-and-set ``free ->
allocated``), the enclave recorded (with its fresh GPU canary nonce) and the request moved to
``provisioning``, with its ``enclave:place`` event. A request that fits nowhere is reported
once per set of reasons. Must not decide placement itself (the domain does)
nor touch the hypervisor.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import timedelta

from audit import Outcome
from sovereign.domain.fleet import (
    CANARY_NONCE_BYTES,
    Enclave,
    FleetView,
    domain_name,
    placement_request,
)
from sovereign.domain.labels import LabelScheme
from sovereign.domain.placement import named_labels, place
from sovereign.domain.policy import Visibility
from sovereign.domain.residency import allowed_countries
from sovereign.errors import ConcurrentUpdateError
from sovereign.services.ports import RequestFilter
from sovereign.services.reconciler.context import PassContext, PassReport, S, enclave_target


class Placement:
    """Places approved requests; remembers which were reported unplaceable, and why."""

    def __init__(self, c: PassContext, scheme: LabelScheme) -> None:
        self._c = c
        self._scheme = scheme
        #: (request id, reasons) already reported as unplaceable by this worker.
        self._reported: dict[uuid.UUID, str] = {}

    def run(self, report: PassReport) -> None:
        """Place up to one batch of approved requests, oldest first."""
        with self._c.uow(readonly=True) as uow:
            page = uow.requests.list(
                Visibility.everything(self._scheme),
                RequestFilter(state=S.APPROVED, limit=self._c.batch),
            )
        for request in sorted(page.items, key=lambda r: r.created_at):
            try:
                self._place(request.id, report)
            except ConcurrentUpdateError:
                continue

    def _place(self, request_id: uuid.UUID, report: PassReport) -> None:
        c = self._c
        with c.uow() as uow:
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
                    c.event(
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
            now = c.clock()
            host = next(h for h in fleet.hosts if h.name == placement.host)
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
                canary_nonce=secrets.token_bytes(CANARY_NONCE_BYTES),
                country=host.country,
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
            c.event(
                uow,
                "enclave:place",
                target,
                label=label,
                details={
                    "host": placement.host,
                    # The enclave's own label (the event's label also covers the rejected
                    # hosts' enclaves): the attestation's co-residency claim reads it.
                    "label": request.label.to_dict(),
                    "gpus": list(placement.gpus),
                    "gpu_model": placement.gpu_model,
                    "rejected": placement.reasons,
                    "site": host.site,
                    "country": host.country,
                    "tenant": request.tenant,
                    "classified": wanted.classified,
                    "residency": list(allowed_countries(request, tenant)),
                },
            )
            uow.commit()
        self._reported.pop(request_id, None)
        report.placed += 1
