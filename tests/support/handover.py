"""GPU hand-overs recorded as the reconciler's sanitization phase records them, for the tests of
what reads certificates (API, console, CLI) without running a sanitizer.

:func:`handed_over` gives the GPU a previous tenant's label, puts it ``sanitizing`` and then, in
ONE unit of work, moves it to ``free`` (clean) or ``quarantined`` (failed) with the audit event
``gpu:handover`` (target ``gpu/{host}/{address}``, label = the previous label, details
``{"from": "sanitizing", "to": ..., "certificate": {...}}``) through the real recorder; the
certificate is built by :mod:`sovereign.domain.handover` from a scrub report. The log is then
sequenced and checkpointed, so the event has a sequence number and an inclusion proof.
"""

from __future__ import annotations

import uuid
from typing import Any

from sovereign.bootstrap import Services
from sovereign.domain.handover import HandoverSubject, certificate
from sovereign.domain.identity import Principal
from sovereign.services.recording import CallContext, Recorder, gpu_target

RECONCILER = CallContext(
    principal=Principal(subject="system:reconciler:test", username="reconciler"),
    actor="system:reconciler",
    source="test",
)
MIB = 1 << 20


def report(
    *,
    total: int = 64 * MIB,
    covered: int | None = None,
    mismatches: int = 0,
    canary_hits: int = 0,
    simulated: bool = True,
) -> dict[str, Any]:
    """A ``sovereign-scrub/1`` report as the scrub program writes it."""
    covered = total if covered is None else covered
    return {
        "program": "sovereign-scrub/1",
        "device": "cpu" if simulated else "cuda:0",
        "simulated": simulated,
        "bytes_total": total,
        "bytes_covered": covered,
        "patterns": ["zeros", "nonce"],
        "mismatches": mismatches,
        "canary_checked": True,
        "canary_hits": canary_hits,
        "passes": [
            {"name": "canary", "bytes": covered, "seconds": 0.01, "gb_per_s": 6.4},
            {"name": "zeros", "bytes": covered, "seconds": 0.02, "gb_per_s": 6.4},
            {"name": "nonce", "bytes": covered, "seconds": 0.02, "gb_per_s": 6.4},
        ],
        "gb_per_s": 6.4,
        "seconds": 0.05,
        "device_state": {"nvml": "unavailable", "reason": "simulated device memory"},
    }


def handed_over(
    services: Services,
    host: str,
    address: str,
    *,
    label: dict[str, Any] | None = None,
    mismatches: int = 0,
    canary_hits: int = 0,
    sequence: bool = True,
) -> dict[str, Any]:
    """Record one hand-over of ``host``/``address`` whose previous tenant had ``label``; a
    report with mismatches or canary hits fails it (the GPU is quarantined). Returns the
    certificate."""
    scheme = services.scheme
    previous = scheme.parse(label) if label is not None else None
    with services.uow() as uow:
        gpu = next(g for g in uow.gpus.list(host) if g.address == address)
        before = gpu.state
        gpu.state, gpu.last_label = "sanitizing", previous
        gpu.enclave_id = uuid.uuid4() if previous is not None else None
        uow.gpus.update(gpu, before)
        uow.commit()
    now = services.reconciler_settings["clock"]()
    cert = certificate(
        HandoverSubject(
            host=host,
            host_uuid=None,
            address=address,
            gpu_uuid=None,
            previous_enclave=str(gpu.enclave_id) if gpu.enclave_id else None,
            previous_label=str(previous) if previous is not None else None,
        ),
        reset={"type": "none", "simulated": True, "note": "test"},
        report=report(mismatches=mismatches, canary_hits=canary_hits),
        simulated=True,
        canary_expected=False,
        issued_at=now,
    )
    target = "free" if cert["verdict"] == "clean" else "quarantined"
    with services.uow() as uow:
        gpu.move(target, now)
        uow.gpus.update(gpu, "sanitizing")
        Recorder(services.uow, services.reconciler_settings["clock"]).record(
            uow,
            RECONCILER,
            "gpu:handover",
            gpu_target(host, address),
            label=previous,
            details={"from": "sanitizing", "to": target, "certificate": cert},
        )
        uow.commit()
    if sequence:
        services.audit.log.sequence()
    return cert
