"""Phase 4 of a pass: dirty GPUs handed over, ``dirty -> sanitizing -> free | quarantined``.

Owns the GPU moves of isolation rule 2 around the :class:`~sovereign.services.ports.Sanitizer`
port. A dirty GPU is taken by a compare-and-set move to ``sanitizing`` (``gpu:sanitize``);
the port resets it, scrubs and verifies its memory and looks for the previous enclave's canary;
the certificate (:mod:`sovereign.domain.handover`) decides, and in ONE unit of work the GPU
moves to ``free`` (clean certificate) or ``quarantined`` (failed certificate) with the audit
event ``gpu:handover`` that carries the certificate.

Deadline: one attempt may take ``deadline`` (the port enforces it; an answer that comes later
is not trusted either): no answer within it, or the port's
:class:`~sovereign.errors.GpuHandoverError`, or a report that does not verify, quarantines the
GPU. A host that cannot be reached now (:class:`~sovereign.errors.DependencyUnavailableError`)
leaves the GPU ``sanitizing`` and is retried. A worker killed mid-hand-over leaves the GPU
``sanitizing`` (never ``free``): once no live attempt can still be running (the longer of the
claim TTL and the deadline since the attempt began, ``gpu.updated_at``), another worker
retakes it (``gpu:sanitize`` with ``resumed``) and redoes the whole hand-over.

Must not know how a GPU is reset or scrubbed (the port's backend, wired by the assembly, does),
nor judge the evidence itself (the domain does). Never logs nor records the canary nonce.
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timedelta
from typing import Any

from sovereign.domain.fleet import Gpu, Host, sanitizer_domain_name
from sovereign.domain.handover import HandoverSubject, certificate, failed_certificate
from sovereign.domain.placement import GpuStatus
from sovereign.errors import ConcurrentUpdateError, DependencyUnavailableError, GpuHandoverError
from sovereign.services.ports import HandoverRequest, Sanitizer
from sovereign.services.reconciler.context import PassContext, PassReport
from sovereign.text import for_log

log = logging.getLogger(__name__)

#: Size of the fresh nonce of each scrub's fill pattern.
NONCE_BYTES = 32


def sanitize(c: PassContext, sanitizer: Sanitizer, deadline: timedelta, report: PassReport) -> None:
    """Hand over up to one batch of dirty GPUs (and ``sanitizing`` ones a dead worker left)."""
    now = c.clock()
    stale = max(c.claim_ttl, deadline)
    with c.uow(readonly=True) as uow:
        hosts = {host.name: host for host in uow.hosts.list()}
        waiting = [
            gpu
            for gpu in uow.gpus.list()
            if gpu.state == "dirty"
            or (gpu.state == "sanitizing" and (gpu.updated_at or now) <= now - stale)
        ]
    for gpu in waiting[: c.batch]:
        try:
            verdict = _hand_over(c, sanitizer, deadline, gpu, hosts[gpu.host])
        except (ConcurrentUpdateError, DependencyUnavailableError) as e:
            log.warning(
                "GPU %s/%s: %s; will retry", for_log(gpu.host), for_log(gpu.address), for_log(e)
            )
            continue
        report.sanitized += 1
        if verdict != "clean":
            report.quarantined += 1


def _hand_over(
    c: PassContext, sanitizer: Sanitizer, deadline: timedelta, gpu: Gpu, host: Host
) -> str:
    """One GPU's whole hand-over; returns the verdict.

    :raises ConcurrentUpdateError: another worker took or moved the GPU first.
    :raises DependencyUnavailableError: the host cannot be reached now (retried later).
    """
    if gpu.state == "dirty":
        _move(c, gpu, "sanitizing", "gpu:sanitize", {})
    else:
        _resume(c, gpu)
    # This attempt's stamp as stored: the final move requires it unchanged, so an attempt that
    # another worker has since retaken (or that an officer's return restarted) frees nothing.
    stamp = _stored(c, gpu).updated_at
    started = gpu.updated_at or c.clock()
    subject, canary_nonce = _subject(c, gpu, host)
    request = HandoverRequest(
        host=host.name,
        uri=host.uri,
        host_uuid=host.host_uuid,
        address=gpu.address,
        gpu_uuid=gpu.uuid,
        model=gpu.model,
        group_members=tuple(gpu.group_members) or (gpu.address,),
        nonce=secrets.token_bytes(NONCE_BYTES),
        canary_nonce=canary_nonce,
        deadline_s=deadline.total_seconds(),
        domain_name=sanitizer_domain_name(gpu.address),
        domain_type=host.domain_type,
    )
    shared = _other_gpus_in_group(c, gpu)
    if shared:
        # A sanitizer domain would hold both GPUs, and its report could not say which one it
        # scrubbed: such a GPU is never certified (fail closed).
        cert = failed_certificate(
            subject,
            reason=(
                f"its IOMMU group also holds GPU {', '.join(shared)}: a sanitizer domain would "
                "see both and could not prove which one it scrubbed"
            ),
            simulated=_simulated(host),
            issued_at=c.clock(),
        )
    else:
        cert = _certify(c, sanitizer, request, subject, started=started, deadline=deadline)
    verdict = str(cert["verdict"])
    target: GpuStatus = "free" if verdict == "clean" else "quarantined"
    if target == "quarantined":
        log.warning(
            "GPU %s/%s quarantined: %s",
            for_log(gpu.host),
            for_log(gpu.address),
            for_log(str(cert.get("reason", ""))),
        )
    _move(c, gpu, target, "gpu:handover", {"certificate": cert}, stamp=stamp)
    return verdict


def _simulated(host: Host) -> bool:
    """Whether the host's GPUs are simulated (libvirt's test driver)."""
    return _simulated_uri(host.uri)


def _simulated_uri(uri: str) -> bool:
    return uri.startswith("test:")


def _stored(c: PassContext, gpu: Gpu) -> Gpu:
    """The GPU as stored now. :raises ConcurrentUpdateError: if it is gone."""
    with c.uow(readonly=True) as uow:
        current = next((g for g in uow.gpus.list(gpu.host) if g.address == gpu.address), None)
    if current is None:
        raise ConcurrentUpdateError(kind="gpu", ident=f"{gpu.host}/{gpu.address}")
    return current


def _other_gpus_in_group(c: PassContext, gpu: Gpu) -> list[str]:
    """The host's other recorded GPUs that share ``gpu``'s IOMMU group."""
    members = set(gpu.group_members)
    with c.uow(readonly=True) as uow:
        others = uow.gpus.list(gpu.host)
    return sorted(o.address for o in others if o.address != gpu.address and o.address in members)


def _certify(
    c: PassContext,
    sanitizer: Sanitizer,
    request: HandoverRequest,
    subject: HandoverSubject,
    *,
    started: datetime,
    deadline: timedelta,
) -> dict[str, Any]:
    """Ask the port for the hand-over and judge what it answers (never raises for a failed
    hand-over: that is a failed certificate)."""
    try:
        evidence = sanitizer.hand_over(request)
    except DependencyUnavailableError:
        raise
    except GpuHandoverError as e:
        return failed_certificate(
            subject, reason=e.reason, simulated=_simulated_uri(request.uri), issued_at=c.clock()
        )
    except Exception as e:
        # A backend that breaks is no evidence of anything: quarantine, and say so in the log.
        log.exception(
            "GPU %s/%s: the sanitizer failed", for_log(subject.host), for_log(subject.address)
        )
        return failed_certificate(
            subject,
            reason=f"the sanitizer failed unexpectedly ({type(e).__name__})",
            simulated=_simulated_uri(request.uri),
            issued_at=c.clock(),
        )
    issued_at = c.clock()
    if issued_at - started > deadline:
        return failed_certificate(
            subject,
            reason=f"no answer within {deadline.total_seconds():g} s",
            # Nothing of a late answer is trusted, not even its reset record.
            simulated=evidence.simulated,
            issued_at=issued_at,
        )
    return certificate(
        subject,
        reset=evidence.reset,
        report=evidence.report,
        simulated=evidence.simulated,
        canary_expected=request.canary_nonce is not None,
        issued_at=issued_at,
    )


def _subject(c: PassContext, gpu: Gpu, host: Host) -> tuple[HandoverSubject, bytes | None]:
    """Who the GPU is and whom it comes from, and the previous enclave's canary nonce."""
    canary_nonce = None
    if gpu.enclave_id is not None:
        with c.uow(readonly=True) as uow:
            enclave = uow.enclaves.get(gpu.enclave_id)
        canary_nonce = enclave.canary_nonce if enclave is not None else None
    subject = HandoverSubject(
        host=host.name,
        host_uuid=host.host_uuid,
        address=gpu.address,
        gpu_uuid=gpu.uuid,
        previous_enclave=str(gpu.enclave_id) if gpu.enclave_id is not None else None,
        previous_label=str(gpu.last_label) if gpu.last_label is not None else None,
    )
    return subject, canary_nonce


def _resume(c: PassContext, gpu: Gpu) -> None:
    """Retake a GPU a dead worker left ``sanitizing``: a new attempt begins now.

    The host row is locked and the GPU read again, so of two workers retaking it at once
    only the first goes on.

    :raises ConcurrentUpdateError: someone else moved or retook it first.
    """
    seen = gpu.updated_at
    with c.uow() as uow:
        uow.hosts.get(gpu.host, for_update=True)
        current = next((g for g in uow.gpus.list(gpu.host) if g.address == gpu.address), None)
        if current is None or current.state != "sanitizing" or current.updated_at != seen:
            raise ConcurrentUpdateError(kind="gpu", ident=f"{gpu.host}/{gpu.address}")
        gpu.updated_at = c.clock()
        uow.gpus.update(gpu, "sanitizing")
        c.event(
            uow,
            "gpu:sanitize",
            f"gpu/{gpu.host}/{gpu.address}",
            label=gpu.last_label,
            details={"from": "sanitizing", "to": "sanitizing", "resumed": True},
        )
        uow.commit()


def _move(
    c: PassContext,
    gpu: Gpu,
    target: GpuStatus,
    action: str,
    details: dict[str, Any],
    *,
    stamp: datetime | None = None,
) -> None:
    """Move ``gpu`` to ``target`` (compare-and-set) with its audit event, in one unit of work.

    With ``stamp`` (a hand-over attempt's), the host row is locked and the move happens only if
    the GPU is still in that attempt (same state, same ``updated_at``).

    :raises ConcurrentUpdateError: someone else moved or retook the GPU first.
    """
    before = gpu.state
    with c.uow() as uow:
        if stamp is not None:
            uow.hosts.get(gpu.host, for_update=True)
            current = next((g for g in uow.gpus.list(gpu.host) if g.address == gpu.address), None)
            if current is None or current.state != before or current.updated_at != stamp:
                raise ConcurrentUpdateError(kind="gpu", ident=f"{gpu.host}/{gpu.address}")
        gpu.move(target, c.clock())
        uow.gpus.update(gpu, before)
        c.event(
            uow,
            action,
            f"gpu/{gpu.host}/{gpu.address}",
            label=gpu.last_label,
            details={"from": before, "to": target, **details},
        )
        uow.commit()
