"""What every phase of a reconciler pass shares: its collaborators, its report, its plans.

Owns :class:`PassContext` (unit of work factory, hypervisor, recorder, clock, the worker's
name and call context, the claim settings) and :class:`PassReport`, and hands the phases the
helpers several of them need (:func:`enclave_target`, :func:`plan_for`, defined where all
services share them). Holds no state of its own between passes and runs no phase: the phases
are the sibling modules, composed by the driver.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from audit import Outcome
from sovereign.domain.fleet import Enclave
from sovereign.domain.labels import Label
from sovereign.domain.requests import RequestState
from sovereign.services.ports import (
    EnclavePlan,
    Hypervisor,
    UnitOfWork,
    UnitOfWorkFactory,
    plan_for,
)
from sovereign.services.recording import CallContext, Clock, Recorder, enclave_target

S = RequestState


def worker_name() -> str:
    """A name for this worker process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class PassReport:
    """What one reconciler pass did."""

    placed: int = 0
    unplaceable: int = 0
    steps: int = 0
    running: int = 0
    terminated: int = 0
    failed: int = 0
    #: GPUs handed over (with a certificate), and how many of those were quarantined.
    sanitized: int = 0
    quarantined: int = 0
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


@dataclass(frozen=True)
class PassContext:
    """The collaborators and settings of one worker's passes, shared by every phase."""

    uow: UnitOfWorkFactory
    hypervisor: Hypervisor
    recorder: Recorder
    clock: Clock
    #: This worker's name (the ``claimed_by`` of its claims) and its audit call context.
    worker: str
    ctx: CallContext
    claim_ttl: timedelta
    #: At most this many requests, claims or GPUs are taken per phase and pass.
    batch: int

    def event(
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
        """Append the reconciler's audit event to ``uow`` (committed with the change)."""
        self.recorder.record(
            uow, self.ctx, action, target, outcome, reason=reason, label=label, details=details
        )

    def plan(self, enclave: Enclave) -> EnclavePlan:
        """What the hypervisor needs to know about ``enclave``."""
        with self.uow(readonly=True) as uow:
            return plan_for(uow, enclave)


__all__ = [
    "PassContext",
    "PassReport",
    "S",
    "enclave_target",
    "worker_name",
]
