"""Phase 4 of a pass: dirty GPUs sanitized, ``dirty -> sanitizing -> free``.

Owns the GPU moves of isolation rule 2 around the :class:`~sovereign.services.ports.Sanitizer`
port: each move a compare-and-set with its audit event (the evidence in ``gpu:sanitized``).
A GPU left ``sanitizing`` by a crashed worker is taken again after the claim TTL. Must not
know how a GPU is sanitized: the port's backend (wired by the assembly) does.
"""

from __future__ import annotations

import logging
from typing import Any

from sovereign.domain.fleet import Gpu
from sovereign.domain.placement import GpuStatus
from sovereign.errors import ConcurrentUpdateError, DependencyUnavailableError
from sovereign.services.ports import Sanitizer
from sovereign.services.reconciler.context import PassContext, PassReport
from sovereign.text import for_log

log = logging.getLogger(__name__)


def sanitize(c: PassContext, sanitizer: Sanitizer, report: PassReport) -> None:
    """Sanitize up to one batch of dirty GPUs (and stale ``sanitizing`` ones)."""
    now = c.clock()
    with c.uow(readonly=True) as uow:
        hosts = {host.name: host for host in uow.hosts.list()}
        waiting = [
            gpu
            for gpu in uow.gpus.list()
            if gpu.state == "dirty"
            # A GPU left "sanitizing" by a crashed worker is taken again after the TTL.
            or (gpu.state == "sanitizing" and (gpu.updated_at or now) <= now - c.claim_ttl)
        ]
    for gpu in waiting[: c.batch]:
        try:
            _sanitize_one(c, sanitizer, gpu, hosts[gpu.host].uri)
            report.sanitized += 1
        except (ConcurrentUpdateError, DependencyUnavailableError) as e:
            log.warning(
                "GPU %s/%s: %s; will retry", for_log(gpu.host), for_log(gpu.address), for_log(e)
            )


def _sanitize_one(c: PassContext, sanitizer: Sanitizer, gpu: Gpu, uri: str) -> None:
    if gpu.state == "dirty":
        _move_gpu(c, gpu, "sanitizing", "gpu:sanitize", {})
    evidence = sanitizer.sanitize(uri, gpu.address)
    _move_gpu(c, gpu, "free", "gpu:sanitized", {"evidence": evidence})


def _move_gpu(
    c: PassContext, gpu: Gpu, target: GpuStatus, action: str, details: dict[str, Any]
) -> None:
    """Move ``gpu`` to ``target`` (compare-and-set) with its audit event."""
    before = gpu.state
    with c.uow() as uow:
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
