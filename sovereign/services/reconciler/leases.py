"""Phase 1 of a pass: running enclaves past their lease go ``expired -> terminating``.

Owns lease expiry only: the request's transition and its ``enclave:expire`` event, in one
transaction. Must not tear anything down itself: the steps phase does that on a later claim.
"""

from __future__ import annotations

from sovereign.errors import ConcurrentUpdateError
from sovereign.services.reconciler.context import PassContext, PassReport, S, enclave_target


def expire_leases(c: PassContext, report: PassReport) -> None:
    """Move every running enclave whose lease has ended to ``terminating``."""
    now = c.clock()
    with c.uow(readonly=True) as uow:
        due = [e.id for e in uow.enclaves.list() if e.lease_expires_at <= now]
    for enclave_id in due:
        try:
            with c.uow() as uow:
                request = uow.requests.get(enclave_id, for_update=True)
                if request is None or request.state is not S.RUNNING:
                    continue
                request.transition(S.EXPIRED, now)
                request.transition(S.TERMINATING, now)
                uow.requests.update(request)
                c.event(
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
